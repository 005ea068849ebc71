"""`python -m model.sample`: streams the same answer the pipeline's greedy decoding gives, in the
instruction format for instruction checkpoints, interactive mode, and bad checkpoints."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from model.checkpoint import load_checkpoint
from model.instruct import respond
from model.tokenizer import Tokenizer

PROMPT = "Describe the red ball in under 10 words."


def sample(*args, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "model.sample", *args], capture_output=True, text=True, input=stdin, timeout=120)


def make_sft(root: Path) -> Path:
    shutil.copytree(root / "models/pretrain", root / "models/sft")
    meta = json.loads((root / "models/sft/meta.json").read_text())
    (root / "models/sft/meta.json").write_text(json.dumps({**meta, "stage": "sft", "format": "prompt\\nAnswer: response<|endoftext|>"}))
    return root / "models/sft"


def test_answers_an_instruction_like_greedy_decoding(instruct_workspace):
    sft = make_sft(instruct_workspace)
    proc = sample(str(sft), PROMPT, "--max-new-tokens", "12")
    assert proc.returncode == 0, proc.stderr
    model, tok = load_checkpoint(sft).model, Tokenizer.load(sft / "tokenizer.json")
    expected = respond(model, tok, [PROMPT], 12, temperature=0.0)[0]["text"]
    assert proc.stdout.strip() == expected
    # the raw mode continues the text itself (no "\nAnswer:")
    raw = sample(str(sft), PROMPT, "--max-new-tokens", "12", "--raw")
    ids = tok.encode(PROMPT)
    from model.generate import generate

    assert raw.stdout.rstrip("\n") == tok.decode(generate(model, [ids], 12, temperature=0.0).tokens[0])


def test_interactive_mode_keeps_asking(instruct_workspace):
    sft = make_sft(instruct_workspace)
    proc = sample(str(sft), "-i", "--max-new-tokens", "6", "--temperature", "0.8", "--top-p", "0.9", "--seed", "1",
                  stdin=f"{PROMPT}\nName the colour of grass.\n\n")
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stdout.splitlines()) == 2


def test_missing_or_foreign_checkpoint_is_one_line(instruct_workspace):
    proc = sample("models/nowhere", PROMPT)
    assert proc.returncode == 2 and proc.stderr.strip() == "error: models/nowhere: checkpoint folder not found"
    shutil.copytree("models/pretrain", "models/foreign")
    Path("models/foreign/config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 8}))
    proc = sample("models/foreign", PROMPT)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1 and proc.stderr.startswith("error: ")
