"""Generation throughput: our generate with its KV cache vs without (full recompute) vs transformers.

    .venv/bin/python bench/bench_generate.py [--new 256] [--prompt 16] [--rounds 5] [--threads 2]

Greedy decoding of exactly `--new` tokens (no EOS) from random `--prompt`-token prompts, batch 1
and batch 8, with the same weights in both libraries (our checkpoint exported through model.hf;
transformers runs GPT2LMHeadModel.generate with its default cache, do_sample=False). Rounds
alternate between the contenders so a busy machine slows each alike; tokens/s come from the
median and the best round. Also checks that the greedy tokens agree.

Then rows that stop, as the pipeline's do (`--stop-batch` rows, 20-60-token prompts, at most
`--stop-new` tokens, an EOS that rows reach at different steps): ours dropping stopped rows from
the batch (the default), ours keeping them to the end (`compact=False`, as before), and
transformers with `eos_token_id` (it keeps them too). Tokens/s count the tokens the rows keep.
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
    ap.add_argument("--stop-batch", type=int, default=64, help="rows of the stopping-rows comparison")
    ap.add_argument("--stop-new", type=int, default=40, help="its token budget (the pipeline's max_new_tokens)")
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

    stopping_rows(args, g)


def stopping_rows(args, g):
    """Rows that stop at different steps: compaction against keeping every row, and transformers.
    The weights get noise (std 0.1) so that greedy rows vary as a trained model's do (at the initial
    std 0.02 every row repeats one token), and a common token of theirs is the EOS."""
    from transformers import GPT2LMHeadModel

    torch.manual_seed(1)
    ours = GPT(CONFIG).eval()
    with torch.no_grad():
        for p in ours.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    with tempfile.TemporaryDirectory() as tmp:
        save_checkpoint(Path(tmp) / "ck", ours, {})
        export_hf(Path(tmp) / "ck", Path(tmp) / "hf")
        hf = GPT2LMHeadModel.from_pretrained(Path(tmp) / "hf").float().eval()
    B, new = args.stop_batch, args.stop_new
    lens = torch.randint(20, 61, (B,), generator=g).tolist()
    prompts = [torch.randint(1, CONFIG.vocab_size, (n,), generator=g).tolist() for n in lens]
    first = generate(ours, prompts, new, temperature=0).tokens

    def kept_share(tok):  # the share of B x new tokens rows keep when `tok` ends them (greedy: same tokens before it)
        return sum(row.index(tok) + 1 if tok in row else new for row in first) / (B * new)

    # the EOS: the token that leaves rows about a third of the budget, as the pipeline's responses (~13 of 40)
    eos = min({t for row in first for t in row}, key=lambda t: (abs(kept_share(t) - 1 / 3), t))
    P = max(lens)
    idx = torch.tensor([[0] * (P - len(p)) + p for p in prompts])
    mask = (torch.arange(P)[None, :] >= (P - torch.tensor(lens))[:, None]).long()

    def hf_generate():
        with torch.inference_mode():
            out = hf.generate(idx, attention_mask=mask, max_new_tokens=new, do_sample=False,
                              eos_token_id=eos, pad_token_id=0)[:, P:].tolist()
        return [row[: row.index(eos) + 1] if eos in row else row for row in out]

    contenders = {
        "ours, stopped rows leave": lambda: generate(ours, prompts, new, temperature=0, eos_id=eos).tokens,
        "ours, stopped rows kept": lambda: generate(ours, prompts, new, temperature=0, eos_id=eos, compact=False).tokens,
        "transformers, eos_token_id": hf_generate,
    }
    seconds, tokens = {n: [] for n in contenders}, {}
    for _ in range(args.rounds):
        for name, fn in contenders.items():
            t0 = time.perf_counter()
            tokens[name] = fn()
            seconds[name].append(time.perf_counter() - t0)
    ref = next(iter(contenders))
    kept = sum(map(len, tokens[ref]))
    print(f"\nrows that stop: {B} rows, 20-60-token prompts, up to {new} new tokens, greedy, EOS = token {eos}: "
          f"{kept} tokens kept (mean {kept / B:.1f} per row, {kept / (B * new):.0%} of {B} x {new})")
    print(f"{'contender':<28}{'tokens/s (median)':>18}{'this / ours':>13}{'tokens/s (best)':>17}{'this / ours':>13}  same tokens")
    med = {n: statistics.median(s) for n, s in seconds.items()}
    best = {n: min(s) for n, s in seconds.items()}
    for name in contenders:
        same = sum(a == b for a, b in zip(tokens[name], tokens[ref]))
        print(f"{name:<28}{kept / med[name]:>18,.0f}{med[name] / med[ref]:>12.2f}x"
              f"{kept / best[name]:>17,.0f}{best[name] / best[ref]:>12.2f}x  {same}/{B} rows")


if __name__ == "__main__":
    main()
