"""Prompt-eval scoring throughput: the batched choice scorer vs scoring one choice at a time.

    .venv/bin/python bench/bench_prompt_eval.py [--items 64] [--choices 4] [--rounds 3] [--threads 2]

Both paths score the same items (random token contexts of a 4-shot prompt's length, 1-12
token choices) with the default tiny model (4 layers, 128 wide, block 128):
`model.scoring.score_choices` packs whole items into `--batch-size` choice rows and runs each
context once (KV cache shared by its choices); the baseline runs one forward pass per
[context + choice]. Rounds alternate; each figure is the best
round. Greedy generation is timed the same way (batched left-padded vs one prompt at a time).
"""

import argparse
import sys
import time
from pathlib import Path

import torch
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from model.generate import generate
from model.gpt import GPT, GPTConfig
from model.scoring import score_choices  # noqa: E402

CONFIG = GPTConfig(vocab_size=4096, block_size=128, n_layer=4, n_head=4, n_embd=128, dropout=0.0)


def make_items(n: int, n_choices: int, seed: int = 0) -> tuple[list[list[int]], list[list[list[int]]]]:
    g = torch.Generator().manual_seed(seed)
    contexts, choices = [], []
    for _ in range(n):
        T = int(torch.randint(60, 100, (1,), generator=g))  # a 4-shot prompt of the tiny tasks
        contexts.append(torch.randint(5, CONFIG.vocab_size, (T,), generator=g).tolist())
        lens = torch.randint(1, 13, (n_choices,), generator=g).tolist()
        choices.append([torch.randint(5, CONFIG.vocab_size, (m,), generator=g).tolist() for m in lens])
    return contexts, choices


@torch.inference_mode()
def one_at_a_time(model, contexts, choices) -> list[list[float]]:
    """The plain way: one forward pass over each [context + choice], summing the choice's log-probs."""
    out = []
    for ctx, chs in zip(contexts, choices):
        scores = []
        for c in chs:
            ids = torch.tensor([ctx + c])
            logp = F.log_softmax(model(ids[:, :-1])[0, len(ctx) - 1 :].float(), dim=-1)  # (len(c), vocab)
            scores.append(logp.gather(1, ids[0, len(ctx) :, None]).sum().item())
        out.append(scores)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, default=64)
    ap.add_argument("--choices", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=64, help="rows per forward pass of the batched scorer")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads; 0 = torch's default")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = GPT(CONFIG).to(args.device).eval()
    contexts, choices = make_items(args.items, args.choices)

    best = {"batched": 0.0, "one choice at a time": 0.0}
    for _ in range(args.rounds):
        for name, fn in (
            ("batched", lambda: score_choices(model, contexts, choices, args.batch_size)),
            ("one choice at a time", lambda: one_at_a_time(model, contexts, choices)),
        ):
            t0 = time.perf_counter()
            scores = fn()
            best[name] = max(best[name], args.items / (time.perf_counter() - t0))
            if name == "batched":
                ref = scores
            else:
                diff = max(abs(a - b) for ra, rb in zip(ref, scores) for a, b in zip(ra, rb))
    print(f"device={args.device} threads={torch.get_num_threads()} items={args.items} x {args.choices} choices")
    for name, v in best.items():
        print(f"  scoring {name:>22}: {v:8.1f} items/s")
    print(f"  batched / one at a time: {best['batched'] / best['one choice at a time']:.1f}x "
          f"(max |score difference| {diff:.1e})")

    prompts = contexts[: args.items // 2]
    gbest = {"batched": 0.0, "one prompt at a time": 0.0}
    for _ in range(args.rounds):
        for name in gbest:
            t0 = time.perf_counter()
            if name == "batched":
                generate(model, prompts, 8, temperature=0.0, pad_id=0)
            else:
                for p in prompts:
                    generate(model, [p], 8, temperature=0.0, pad_id=0)
            gbest[name] = max(gbest[name], len(prompts) / (time.perf_counter() - t0))
    for name, v in gbest.items():
        print(f"  greedy 8 tokens {name:>20}: {v:8.1f} prompts/s")
    print(f"  batched / one at a time: {gbest['batched'] / gbest['one prompt at a time']:.1f}x")


if __name__ == "__main__":
    main()
