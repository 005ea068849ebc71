"""GPT-1 fine-tuning step: ours (model.heads.TaskModel) vs transformers' GPT2DoubleHeadsModel.

    .venv/bin/python bench/bench_finetune.py [--steps 40] [--threads 1] [--batch 8 --choices 4] [--levers]

The default shape is the default pipeline's story-cloze step (conf/finetune.yaml): 8 examples of 4
answers, each `<|start|> context <|delim|> answer <|extract|>` of 25-50 tokens (the world's
story-cloze rows average 38), right-padded to the longest in the batch; loss = the answer
cross-entropy + 0.5 x the auxiliary LM loss (GPT-1's L2 + λ·L1), one torch thread as the pipeline
runs it. GPT2DoubleHeadsModel is transformers' model for exactly this (GPT-1's multiple-choice head
plus the LM head): the same body weights (exported through model.hf), the same batches, the same
plain AdamW. Steps are interleaved; examples/s from the median and the best step time.

`--levers` adds variants of ours, to measure what each buys: every row padded to the batch's
longest (TaskModel before it ran rows ragged), AdamW with `fused=True` (one kernel for every
parameter; not bit-identical to the plain one) and `torch.compile` (inductor's C++ backend, dynamic
shapes; its compile time, spent in the warm-up steps, is printed).
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
from model.checkpoint import save_checkpoint  # noqa: E402
from model.gpt import GPT, GPTConfig  # noqa: E402
from model.heads import TaskHead, TaskModel  # noqa: E402
from model.hf import export_hf  # noqa: E402

LM_COEF = 0.5


def batches(n: int, batch: int, choices: int, lo: int, hi: int, vocab: int, pad: int, seed: int = 0):
    """n batches: ids (B, V, T) right-padded, lengths (B, V), labels (B,)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        lengths = torch.randint(lo, hi + 1, (batch, choices), generator=g)
        T = int(lengths.max())
        ids = torch.randint(4, vocab, (batch, choices, T), generator=g)
        ids = ids.masked_fill(torch.arange(T)[None, None, :] >= lengths[..., None], pad)
        out.append((ids, lengths, torch.randint(choices, (batch,), generator=g)))
    return out


class PaddedTaskModel(TaskModel):
    """TaskModel with every row padded to the batch's longest (the per-token layers see the padding)."""

    def forward(self, idx, lengths, *, lm=False):
        B, V, T = idx.shape
        flat, n = idx.view(B * V, T), lengths.view(B * V)
        x = self.gpt.hidden_states(flat)
        logits = self.head(x[torch.arange(B * V), n - 1].view(B, V, -1))
        keep = torch.arange(T - 1)[None, :] < (n - 1)[:, None]
        return logits, F.cross_entropy(self.gpt.lm_head(x[:, :-1][keep]), flat[:, 1:][keep])


def ours_loss(model, ids, lengths, y):
    scores, lm = model(ids, lengths, lm=True)
    return F.cross_entropy(scores, y) + LM_COEF * lm


def hf_loss(model, ids, lengths, y):
    T = ids.size(-1)
    real = torch.arange(T)[None, None, :] < lengths[..., None]
    out = model(input_ids=ids, attention_mask=real.long(), mc_token_ids=lengths - 1,
                labels=ids.masked_fill(~real, -100), mc_labels=y)
    return out.mc_loss + LM_COEF * out.loss


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=40, help="timed steps per model")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=8, help="examples per step")
    ap.add_argument("--choices", type=int, default=4, help="answers (views) per example")
    ap.add_argument("--min-len", type=int, default=25)
    ap.add_argument("--max-len", type=int, default=50)
    ap.add_argument("--vocab", type=int, default=1300)
    ap.add_argument("--levers", action="store_true", help="also ours with fused AdamW and ours under torch.compile")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    import transformers
    from transformers import GPT2DoubleHeadsModel

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()

    config = GPTConfig(vocab_size=args.vocab, block_size=512, n_layer=4, n_head=4, n_embd=128, dropout=0.0)
    torch.manual_seed(0)
    body = GPT(config)
    ours = TaskModel(body, TaskHead(config.n_embd, "choice", 1, 0.1))
    contenders = {"ours (TaskModel)": (ours, ours_loss)}
    fused = set()
    if args.levers:
        padded = PaddedTaskModel(copy.deepcopy(body), copy.deepcopy(ours.head))
        contenders["ours, padded rows"] = (padded, ours_loss)
        contenders["ours, fused AdamW"] = (copy.deepcopy(ours), ours_loss)
        fused.add("ours, fused AdamW")
        contenders["ours, torch.compile"] = (torch.compile(copy.deepcopy(ours), dynamic=True), ours_loss)
    with tempfile.TemporaryDirectory() as tmp:
        save_checkpoint(Path(tmp) / "ck", body, {})
        export_hf(Path(tmp) / "ck", Path(tmp) / "hf")
        for impl in ("eager", "sdpa"):
            try:
                hf = GPT2DoubleHeadsModel.from_pretrained(Path(tmp) / "hf", attn_implementation=impl).float()
            except (ValueError, ImportError) as e:
                print(f"transformers {impl}: unavailable ({e})")
                continue
            hf.config.summary_first_dropout = 0.1
            contenders[f"transformers {impl}"] = (hf, hf_loss)

    data = batches(args.warmup + args.steps, args.batch, args.choices, args.min_len, args.max_len, args.vocab, pad=0)
    optimizers = {name: torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=0.01, **({"fused": True} if name in fused else {}))
                  for name, (model, _) in contenders.items()}
    times = {name: [] for name in contenders}
    warmup = {name: 0.0 for name in contenders}
    for i, (ids, lengths, y) in enumerate(data):
        for name, (model, loss_fn) in contenders.items():
            model.train()
            t0 = time.perf_counter()
            loss = loss_fn(model, ids, lengths, y)
            optimizers[name].zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizers[name].step()
            if i >= args.warmup:
                times[name].append(time.perf_counter() - t0)
            else:
                warmup[name] += time.perf_counter() - t0

    med = {name: args.batch / statistics.median(t) for name, t in times.items()}
    best = {name: args.batch / min(t) for name, t in times.items()}
    ref = next(iter(contenders))
    print(
        f"\nfine-tuning step (GPT-1 multiple choice, L2 + {LM_COEF}·L1), {config.n_layer} layers x {config.n_embd} wide, "
        f"batch {args.batch} x {args.choices} answers of {args.min_len}-{args.max_len} tokens, vocab {config.vocab_size}, "
        f"{args.threads} threads, {args.steps} interleaved steps, torch {torch.__version__}, transformers {transformers.__version__}"
    )
    print(f"{'model':<24}{'examples/s (median)':>21}{'ours / this':>13}{'examples/s (best)':>19}{'ours / this':>13}")
    for name in contenders:
        print(f"{name:<24}{med[name]:>21,.1f}{med[ref] / med[name]:>12.2f}x{best[name]:>19,.1f}{best[ref] / best[name]:>12.2f}x")
    if args.levers:
        print(f"warm-up ({args.warmup} steps, seconds): " + ", ".join(f"{name} {s:.1f}" for name, s in warmup.items()))


if __name__ == "__main__":
    main()
