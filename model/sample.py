"""Sample from any checkpoint, streaming the tokens as they come.

    python -m model.sample models/sft "Describe the red ball in under 10 words."
    python -m model.sample models/pretrain "The cat" --temperature 0.8 --top-p 0.9 --max-new-tokens 60
    python -m model.sample models/ppo_ptx -i              # interactive: asks for prompt after prompt
    python -m model.sample exported/ "Hello" --raw        # an exported Hugging Face GPT-2 folder

CHECKPOINT is any stage's checkpoint folder (or a Hugging Face GPT-2 folder with config.json,
model.safetensors and tokenizer.json). Checkpoints of the instruction stages (SFT, PPO, DPO:
their meta.json records the instruction format) get the prompt in that format,
`{prompt}\\nAnswer:`, and stop at <|endoftext|>; other checkpoints continue the text as it is.
`--instruct` / `--raw` force either. Greedy at `--temperature 0`. A missing or unreadable
checkpoint, or a tokenizer that does not fit the model, is one line on stderr and exit 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from pathlib import Path

import torch

from model.checkpoint import CheckpointError
from model.generate import _pick
from model.gpt import GPT, KVCache
from model.load import from_pretrained
from model.instruct import encode_prompt
from model.tokenizer import Tokenizer, TokenizerError

INSTRUCTION_STAGES = ("sft", "ppo", "dpo")


def is_instruction_model(folder: Path) -> bool:
    """True for checkpoints written by the instruction stages (their meta names the format)."""
    try:
        meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return "format" in meta or meta.get("stage") in INSTRUCTION_STAGES


@torch.inference_mode()
def stream(model: GPT, ids: list[int], max_new_tokens: int, *, temperature: float = 1.0, top_p: float = 1.0,
           eos_id: int | None = None, generator: torch.Generator | None = None) -> Iterator[int]:
    """Yield new token ids one at a time (KV cache; the EOS, if sampled, is yielded last)."""
    model.eval()
    device = next(model.parameters()).device
    ids = ids[-(model.config.block_size - 1):]
    max_new_tokens = min(max_new_tokens, model.config.block_size - len(ids))
    if max_new_tokens < 1:
        return
    cache = KVCache(model.config, 1, len(ids) + max_new_tokens, device=device, dtype=next(model.parameters()).dtype)
    logits = model(torch.tensor([ids], device=device), kv_cache=cache)[:, -1]
    for n in range(max_new_tokens):
        tok = _pick(logits, temperature, 0, top_p, generator)
        yield int(tok)
        if eos_id is not None and int(tok) == eos_id or n + 1 == max_new_tokens:
            return
        logits = model(tok[:, None], kv_cache=cache)[:, -1]


def answer(model: GPT, tok: Tokenizer, prompt: str, args, out=sys.stdout) -> str:
    """Write the continuation of `prompt` to `out` as it is sampled; return it."""
    if args.instruct:
        ids = encode_prompt(tok, prompt)[0]
        eos = tok.eos_id
    else:
        ids = tok.encode(prompt)
        eos = tok.eos_id if args.stop_at_eos else None
    if not ids:
        return ""
    g = torch.Generator(device=next(model.parameters()).device).manual_seed(args.seed) if args.seed is not None else None
    new: list[int] = []
    shown = ""
    for t in stream(model, ids, args.max_new_tokens, temperature=args.temperature, top_p=args.top_p, eos_id=eos, generator=g):
        if t == eos:
            break
        new.append(t)
        text = tok.decode(new)  # decode the whole tail: byte-level BPE pieces join into characters
        if not text.endswith("\ufffd"):
            out.write(text[len(shown):])
            out.flush()
            shown = text
    text = tok.decode(new)
    out.write(text[len(shown):] + "\n")
    out.flush()
    return text.strip() if args.instruct else text


def load(folder: Path) -> tuple[GPT, Tokenizer]:
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: checkpoint folder not found")
    model = from_pretrained(folder)
    try:
        tok = Tokenizer.load(folder / "tokenizer.json")
    except (OSError, TokenizerError, ValueError) as e:
        raise CheckpointError(f"{folder}/tokenizer.json: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    if tok.vocab_size > model.config.vocab_size:
        raise CheckpointError(f"{folder}/tokenizer.json: {tok.vocab_size} tokens, more than the model's {model.config.vocab_size}")
    return model, tok


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m model.sample", description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", type=Path)
    p.add_argument("prompt", nargs="?", help="the prompt (omit with -i)")
    p.add_argument("-i", "--interactive", action="store_true", help="keep asking for prompts (empty line or EOF ends)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--seed", type=int, default=None)
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--instruct", action="store_true", default=None, help="apply the instruction format")
    mode.add_argument("--raw", action="store_true", help="continue the text as given")
    p.add_argument("--stop-at-eos", action="store_true", help="raw mode: stop at <|endoftext|> too")
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    if args.prompt is None and not args.interactive:
        p.error("give a prompt, or -i for interactive mode")
    if args.temperature < 0 or not 0 < args.top_p <= 1 or args.max_new_tokens < 1:
        p.error("need --temperature >= 0, 0 < --top-p <= 1, --max-new-tokens >= 1")
    try:
        model, tok = load(args.checkpoint)
    except CheckpointError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    model.to(args.device)
    if args.instruct is None:
        args.instruct = not args.raw and is_instruction_model(args.checkpoint)
    if args.prompt is not None:
        answer(model, tok, args.prompt, args)
    if args.interactive:
        while True:
            try:
                line = input("> " if sys.stdin.isatty() else "")
            except EOFError:
                break
            if not line.strip():
                break
            answer(model, tok, line, args)


if __name__ == "__main__":
    main()
