"""A checkpoint that copies from its context before it has read the corpus: the default model's
shape trained on the copy probe's own task (model/induction.py `train_copying`), written where
`pretrain.init` can start from it.

    python -m tasks.copy_warmup models/copy_warmup --steps 2000        # then:
    python -m tasks.pretrain pretrain.init=models/copy_warmup

The shape is `conf/`'s `model` (any override after `--`, e.g. `-- model.n_layer=2`), the
vocabulary and tokenizer those of `pretrain.data_dir` (run `dvc repro tokenize` first). Prints one
JSON line per probe (every `--probe-every` steps): loss, copy score, copy accuracy. Not a stage of
the pipeline: docs/prompting.md ("Copying from the context, measured") has what it does.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tasks.common import InputError


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    cut = argv.index("--") if "--" in argv else len(argv)  # our options, then Hydra overrides after `--`
    ap = argparse.ArgumentParser(prog="python -m tasks.copy_warmup", description=__doc__.split("\n\n")[0])
    ap.add_argument("out_dir", type=Path)
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--min-length", type=int, default=10)
    ap.add_argument("--max-length", type=int, default=60)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--probe-every", type=int, default=250)
    args = ap.parse_args(argv[:cut])

    import torch
    from omegaconf import OmegaConf

    from model.checkpoint import save_checkpoint
    from model.gpt import GPT, GPTConfig
    from model.induction import train_copying
    from model.tokenizer import SPECIALS, Tokenizer
    from tasks.config import ConfigError, compose
    from tasks.induction import probe_length

    try:
        cfg = compose(argv[cut + 1 :])
        tok_path = Path(cfg.pretrain.data_dir) / "tokenizer.json"
        if not tok_path.is_file():
            raise InputError(f"{tok_path}: not found (run `dvc repro tokenize` first)")
        tok = Tokenizer.load(tok_path)
        torch.manual_seed(cfg.seed)
        shape = {k: v for k, v in OmegaConf.to_container(cfg.model).items() if k != "name"}
        model = GPT(GPTConfig(vocab_size=tok.vocab_size, **shape))
        log = train_copying(model, tok.eos_id, len(SPECIALS), tok.vocab_size, steps=args.steps, batch_size=args.batch_size,
                            min_length=args.min_length, max_length=args.max_length, lr=args.lr, seed=cfg.seed,
                            probe_every=args.probe_every, probe_length=probe_length(50, model.config.block_size))
        save_checkpoint(args.out_dir, model.eval(), {"stage": "copy_warmup", "steps": args.steps, "log": log}, tokenizer_path=tok_path)
    except (InputError, ConfigError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    for row in log:
        print(json.dumps(row))


if __name__ == "__main__":
    main()
