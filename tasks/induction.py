"""The copy probe on any checkpoint: Olsson et al.'s repeated random tokens (model/induction.py).

    python -m tasks.induction models/pretrain                    # one checkpoint
    python -m tasks.induction models/pretrain models/scaling/L6-d192 --length 50 --sequences 32 --seed 1337
    python -m tasks.induction models/pretrain --words 20          # 20 random words of the world, said twice

Prints one JSON object per checkpoint: loss on the first and second copy, the copy score (second
minus first, nats; negative: the model copies from its context) and the copy accuracy (the second
copy's tokens predicted exactly). Not a stage: `tasks/scaling.py` runs the same probe on every size.
`--words N` probes with text the corpus could hold instead: N words drawn from the world's
animals, objects, foods, colours and places, space-separated, said twice (in distribution, so a
model that copies only familiar tokens shows it here and not on random ids).
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


WORD_POOL = ("ANIMALS", "OBJECTS", "FOODS", "COLOURS", "PLACES")


def word_probe(model, folder: Path, words: int, sequences: int, seed: int):
    """The probe on sequences of `words` random words of the world (one draw per word, seeded), each
    the encoding of " w1 w2 ... wN", said twice."""
    import random

    from model.induction import repeat_loss_of
    from model.tokenizer import Tokenizer
    from tasks.world import lexicon

    tok = Tokenizer.load(folder / "tokenizer.json")
    pool = [w for name in WORD_POOL for w in getattr(lexicon, name)]
    rng = random.Random(seed)
    seqs = [tok.encode(" " + " ".join(rng.choice(pool) for _ in range(words))) for _ in range(sequences)]
    return repeat_loss_of(model, tok.eos_id, seqs)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m tasks.induction", description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoints", nargs="+", type=Path)
    ap.add_argument("--length", type=int, default=50)
    ap.add_argument("--sequences", type=int, default=32)
    ap.add_argument("--seed", type=int, default=1337)
    ap.add_argument("--words", type=int, default=0, help="probe with this many random words of the world instead of random ids")
    args = ap.parse_args(argv)
    from model.load import from_pretrained

    for folder in args.checkpoints:
        try:
            if not (folder / "tokenizer.json").is_file():
                raise InputError(f"{folder}: no tokenizer.json (a checkpoint folder of this project is needed)")
            model = from_pretrained(folder)
            r = (word_probe(model, folder, args.words, args.sequences, args.seed) if args.words > 0
                 else copy_probe(model, folder, args.length, args.sequences, args.seed))
        except (InputError, CheckpointError, ValueError, OSError) as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)
        print(json.dumps({"checkpoint": str(folder), **dataclasses.asdict(r)}))


if __name__ == "__main__":
    main()
