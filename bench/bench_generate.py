"""Generation throughput: our generate with its KV cache vs without (full recompute) vs transformers.

    .venv/bin/python bench/bench_generate.py [--new 256] [--prompt 16] [--rounds 5] [--threads 2]

Greedy decoding of exactly `--new` tokens (no EOS) from random `--prompt`-token prompts, batch 1
and batch 8, with the same weights in both libraries (our checkpoint exported through model.hf;
transformers runs GPT2LMHeadModel.generate with its default cache, do_sample=False). Rounds
alternate between the contenders so a busy machine slows each alike; tokens/s come from the
median and the best round. Also checks that the greedy tokens agree.
"""

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from model.checkpoint import save_checkpoint
from model.generate import generate
from model.gpt import GPT, GPTConfig
from model.hf import export_hf  # noqa: E402

CONFIG = GPTConfig(vocab_size=1024, block_size=512, n_layer=4, n_head=4, n_embd=128, dropout=0.0)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--new", type=int, default=256, help="new tokens per row")
    ap.add_argument("--prompt", type=int, default=16, help="prompt tokens per row")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    import transformers
    from transformers import GPT2LMHeadModel

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()

    torch.manual_seed(0)
    ours = GPT(CONFIG).eval()
    with tempfile.TemporaryDirectory() as tmp:
        save_checkpoint(Path(tmp) / "ck", ours, {})
        export_hf(Path(tmp) / "ck", Path(tmp) / "hf")
        hf = GPT2LMHeadModel.from_pretrained(Path(tmp) / "hf").float().eval()

    def hf_generate(prompts):
        idx = torch.tensor(prompts)
        with torch.inference_mode():
            out = hf.generate(
                idx,
                attention_mask=torch.ones_like(idx),
                max_new_tokens=args.new,
                min_new_tokens=args.new,
                do_sample=False,
                pad_token_id=0,
            )
        return out[:, idx.size(1) :].tolist()

    contenders = {
        "ours, KV cache": lambda p: generate(ours, p, args.new, temperature=0).tokens,
        "ours, no cache": lambda p: generate(ours, p, args.new, temperature=0, use_cache=False).tokens,
        f"transformers {transformers.__version__}": hf_generate,
    }
    g = torch.Generator().manual_seed(0)
    print(f"\ngreedy generation, {args.prompt}-token prompts + {args.new} new tokens, {CONFIG.n_layer} layers x "
          f"{CONFIG.n_embd} wide, vocab {CONFIG.vocab_size}, {args.threads} threads, torch {torch.__version__}")
    print(f"{'batch':>5}  {'contender':<26}{'tokens/s (median)':>18}{'cache / this':>13}"
          f"{'tokens/s (best)':>17}{'cache / this':>13}  same tokens")
    for B in args.batches:
        prompts = torch.randint(CONFIG.vocab_size, (B, args.prompt), generator=g).tolist()
        for fn in contenders.values():  # warm-up
            fn([p[:4] for p in prompts[:1]])
        seconds = {name: [] for name in contenders}
        tokens = {}
        for _ in range(args.rounds):
            for name, fn in contenders.items():
                t0 = time.perf_counter()
                tokens[name] = fn(prompts)
                seconds[name].append(time.perf_counter() - t0)
        med = {name: statistics.median(s) for name, s in seconds.items()}
        best = {name: min(s) for name, s in seconds.items()}
        ref = next(iter(contenders))
        for name in contenders:
            same = sum(a == b for a, b in zip(tokens[name], tokens[ref]))
            print(
                f"{B:>5}  {name:<26}{B * args.new / med[name]:>18,.0f}{med[name] / med[ref]:>12.2f}x"
                f"{B * args.new / best[name]:>17,.0f}{best[name] / best[ref]:>12.2f}x  {same}/{B} rows"
            )


if __name__ == "__main__":
    main()
