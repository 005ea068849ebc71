"""The copy probe on any checkpoint: Olsson et al.'s repeated random tokens (model/induction.py).

    python -m tasks.induction models/pretrain                    # one checkpoint
    python -m tasks.induction models/pretrain models/scaling/L6-d192 --length 50 --sequences 32 --seed 1337

Prints one JSON object per checkpoint: loss on the first and second copy, the copy score (second
minus first, nats; negative: the model copies from its context) and the copy accuracy (the second
copy's tokens predicted exactly). Not a stage: `tasks/scaling.py` runs the same probe on every size.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from model.errors import CheckpointError
from tasks.common import InputError


def probe_length(length: int, block_size: int) -> int:
    """`length`, or less where two copies and EOS would not fit a window of `block_size` tokens."""
    return max(2, min(length, (block_size - 1) // 2))


def copy_probe(model, folder: Path, length: int, sequences: int, seed: int):
    """The probe on `model` (loaded from `folder`, whose tokenizer.json gives the ids): tokens drawn from
    every id but the special ones; `length` cut to what two copies and EOS leave of the model's window."""
    from model.induction import repeat_loss
    from model.tokenizer import SPECIALS, Tokenizer

    tok = Tokenizer.load(folder / "tokenizer.json")
    return repeat_loss(model, tok.eos_id, len(SPECIALS), tok.vocab_size, length=probe_length(length, model.config.block_size),
                       sequences=sequences, seed=seed)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m tasks.induction", description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoints", nargs="+", type=Path)
    ap.add_argument("--length", type=int, default=50)
    ap.add_argument("--sequences", type=int, default=32)
    ap.add_argument("--seed", type=int, default=1337)
    args = ap.parse_args(argv)
    from model.load import from_pretrained

    for folder in args.checkpoints:
        try:
            if not (folder / "tokenizer.json").is_file():
                raise InputError(f"{folder}: no tokenizer.json (a checkpoint folder of this project is needed)")
            r = copy_probe(from_pretrained(folder), folder, args.length, args.sequences, args.seed)
        except (InputError, CheckpointError, ValueError, OSError) as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)
        print(json.dumps({"checkpoint": str(folder), **dataclasses.asdict(r)}))


if __name__ == "__main__":
    main()
