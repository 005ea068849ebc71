"""Training throughput: our GPT vs transformers' GPT2LMHeadModel, same config, data and optimizer.

    .venv/bin/python bench/bench_pretrain.py [--steps 20] [--threads 2] [--block-size 512 --batch 8 --short-fraction 0.75] [--bf16]

The default shape is the default pipeline's pre-training step (conf/pretrain.yaml, conf/model/tiny.yaml):
8 windows of 512 tokens, 6 of them (short_fraction 0.75) cut into 128-token pieces, vocabulary 1,300.
`--block-size 128 --short-fraction 0 --vocab 1024` is the small shape of the earlier figures. Both models get the same weights (exported through model.hf), the same random token batches and
the same AdamW; the loss is the same F.cross_entropy on the logits for both, so only the model's
forward + backward differs. Steps are interleaved (one step of each model in turn) so a busy
machine slows every contender alike; tokens/s come from the median and the best step time.
"""

import argparse
import copy
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from model.checkpoint import save_checkpoint
from model.gpt import GPT, GPTConfig
from model.hf import export_hf  # noqa: E402


def ours_loss(model, x, y):
    return model(x, y)[1]


def hf_loss(model, x, y):
    logits = model(input_ids=x).logits
    return F.cross_entropy(logits.view(-1, logits.size(-1)), y.reshape(-1))


def autocast_bf16(loss_fn):
    """The same loss under CPU bf16 autocast (`pretrain.dtype=bfloat16`): matmuls in bf16, fp32 weights."""
    def loss(model, x, y):
        with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
            return loss_fn(model, x, y)
    return loss


def window_loss(loss_fn, model, x, y, n_short: int, short: int):
    """tasks/pretrain.py's step: the first n_short windows cut into `short`-token pieces (attention
    within each piece), the rest whole; the mean over every window's tokens."""
    if n_short == 0:
        return loss_fn(model, x, y)
    a = loss_fn(model, x[:n_short].reshape(-1, short), y[:n_short].reshape(-1, short))
    if n_short == len(x):
        return a
    return (n_short * a + (len(x) - n_short) * loss_fn(model, x[n_short:], y[n_short:])) / len(x)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=20, help="timed steps per model")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--block-size", type=int, default=512, help="tokens per window")
    ap.add_argument("--batch", type=int, default=8, help="windows per step")
    ap.add_argument("--short-fraction", type=float, default=0.75, help="share of the windows cut into --short-block pieces")
    ap.add_argument("--short-block", type=int, default=128)
    ap.add_argument("--vocab", type=int, default=1300)
    ap.add_argument("--bf16", action="store_true", help="also ours and transformers eager under bf16 autocast (pretrain.dtype=bfloat16)")
    args = ap.parse_args()
    n_short = round(args.short_fraction * args.batch)
    if n_short and args.block_size % args.short_block:
        ap.error("--short-block must divide --block-size")
    torch.set_num_threads(args.threads)
    import transformers
    from transformers import GPT2LMHeadModel

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()

    config = GPTConfig(vocab_size=args.vocab, block_size=args.block_size, n_layer=4, n_head=4, n_embd=128, dropout=0.0)
    torch.manual_seed(0)
    ours = GPT(config)
    contenders = {"ours (SDPA)": (ours, ours_loss)}
    with tempfile.TemporaryDirectory() as tmp:
        save_checkpoint(Path(tmp) / "ck", ours, {})
        export_hf(Path(tmp) / "ck", Path(tmp) / "hf")
        for impl in ("eager", "sdpa"):
            try:
                hf = GPT2LMHeadModel.from_pretrained(Path(tmp) / "hf", attn_implementation=impl).float()
            except (ValueError, ImportError) as e:
                print(f"transformers {impl}: unavailable ({e})")
                continue
            contenders[f"transformers {impl}"] = (hf, hf_loss)
    if args.bf16:
        contenders["ours, bf16 autocast"] = (copy.deepcopy(ours), autocast_bf16(ours_loss))
        if "transformers eager" in contenders:
            contenders["transformers eager, bf16"] = (copy.deepcopy(contenders["transformers eager"][0]), autocast_bf16(hf_loss))

    g = torch.Generator().manual_seed(0)
    data = torch.randint(config.vocab_size, (args.warmup + args.steps, args.batch, config.block_size + 1), generator=g)
    optimizers = {
        name: torch.optim.AdamW(model.parameters(), lr=3e-4, betas=(0.9, 0.95), weight_decay=0.1)
        for name, (model, _) in contenders.items()
    }
    times = {name: [] for name in contenders}
    for i, d in enumerate(data):
        x, y = d[:, :-1], d[:, 1:]
        for name, (model, loss_fn) in contenders.items():
            model.train()
            t0 = time.perf_counter()
            loss = window_loss(loss_fn, model, x, y, n_short, args.short_block)
            optimizers[name].zero_grad(set_to_none=True)
            loss.backward()
            optimizers[name].step()
            if i >= args.warmup:
                times[name].append(time.perf_counter() - t0)

    tokens = args.batch * config.block_size
    med = {name: tokens / statistics.median(t) for name, t in times.items()}
    best = {name: tokens / min(t) for name, t in times.items()}
    ref = "ours (SDPA)"
    print(
        f"\ntraining throughput, {config.n_layer} layers x {config.n_embd} wide, {config.n_head} heads, "
        f"batch {args.batch} x {config.block_size} tokens ({n_short} cut into {args.short_block}-token pieces), "
        f"vocab {config.vocab_size}, {args.threads} threads, "
        f"{args.steps} interleaved steps, torch {torch.__version__}, transformers {transformers.__version__}"
    )
    print(f"{'model':<27}{'tokens/s (median)':>19}{'ours / this':>13}{'tokens/s (best)':>17}{'ours / this':>13}")
    for name in contenders:
        print(
            f"{name:<27}{med[name]:>19,.0f}{med[ref] / med[name]:>12.2f}x"
            f"{best[name]:>17,.0f}{best[ref] / best[name]:>12.2f}x"
        )


if __name__ == "__main__":
    main()
