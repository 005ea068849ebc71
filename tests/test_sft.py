"""sft stage (InstructGPT step 1): it learns the demonstrations, reports oracle scores for SFT and the
pre-trained baselines, resumes bit-exactly after a kill, and refuses a tokenizer without EOS."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import run_and_kill
from model.checkpoint import load_checkpoint
from tasks import sft
from tasks.common import InputError
from tasks.config import compose, write_params

QUICK = ["experiment=smoke", "tracking.enabled=false", "sft.progress=false", "sft.batch_size=8", "sft.log_every=1",
         "sft.eval_prompts=12", "sft.max_new_tokens=8", "sft.n_samples=5"]


def curve(path="metrics/sft_curve.csv") -> dict[int, str]:
    rows = Path(path).read_text().splitlines()[1:]
    return {int(r.split(",")[0]): r.split(",")[1] for r in rows}


def test_sft_learns_and_reports_oracle_scores(instruct_workspace):
    metrics = sft.run(compose([*QUICK, "sft.epochs=3", "sft.lr=3e-3", "sft.warmup_steps=2"]))
    losses = {k: float(v) for k, v in curve().items()}
    assert losses[max(losses)] < losses[1] - 1.0  # the response tokens are being learned
    saved = json.loads(Path("metrics/sft.json").read_text())
    assert saved["val_loss"] == metrics["val_loss"] and saved["examples"]["train"]["rows"] == 60
    for name in ("sft", "pretrain_zero_shot", "pretrain_few_shot"):
        s = saved["oracle_score"][name]
        assert 0.0 <= s["mean"] <= 1.0 and 0.0 <= s["eos_rate"] <= 1.0 and s["n"] == 12
        assert set(s["by_kind"]) <= {"mood_sentence", "story_where", "story_colour", "list", "describe", "opposite"}
        assert sum(k["n"] for k in s["by_kind"].values()) == 12
    assert saved["oracle_score"]["pretrain_few_shot"]["shots_mean"] > 0
    ckpt = load_checkpoint("models/sft")
    assert ckpt.meta["stage"] == "sft" and ckpt.tokenizer_path is not None and ckpt.config.dropout == 0.0
    with open("metrics/sft_samples.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert len(table) == 5 and {"prompt", "sft", "sft_score", "pretrain_few_shot_score"} <= set(table[0])


def test_kill_and_run_again_gives_the_same_losses(instruct_workspace):
    args = [*QUICK, "sft.epochs=4", "sft.ckpt_every=5", "sft.eval_every=10", "sft.baselines=false", "sft.eval_prompts=2"]
    sft.run(compose(args))
    reference = curve()
    steps = max(reference)
    write_params(compose(args), "params.yaml")
    killed_at = run_and_kill("sft", Path(".resume/models/sft/meta.json"), "step", 10)
    assert killed_at is not None and killed_at < steps, "the run finished before it could be killed"
    assert Path(".resume/models/sft/trainer.pt").is_file()
    sft.run(compose(args))  # resume=auto: the same settings and inputs, so it continues
    assert curve() == reference  # every logged loss, bit for bit
    assert not Path(".resume").exists(), sorted(Path(".resume").rglob("*"))


def test_tokenizer_without_eos_is_refused(instruct_workspace):
    path = Path("models/pretrain/tokenizer.json")
    raw = json.loads(path.read_text())
    raw["added_tokens"] = [t for t in raw["added_tokens"] if t["content"] != "<|endoftext|>"]
    raw["model"]["vocab"].pop("<|endoftext|>", None)
    path.write_text(json.dumps(raw))
    with pytest.raises(InputError, match="endoftext"):
        sft.run(compose(QUICK))
    assert not Path("models/sft").exists() and not Path("metrics/sft.json").exists()


def test_bad_demonstration_row_is_one_line(instruct_workspace):
    path = Path("data/raw/instructions/sft_train.jsonl")
    lines = path.read_text().splitlines()
    row = json.loads(lines[3])
    row["response"] = ""
    lines[3] = json.dumps(row)
    path.write_text("\n".join(lines) + "\n")
    write_params(compose(QUICK), "params.yaml")
    proc = subprocess.run([sys.executable, "-m", "tasks.sft", "--params", "params.yaml"], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"error: {path}: row 4 has no 'response' text"
    assert not Path("models/sft").exists()
