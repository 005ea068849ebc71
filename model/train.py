"""What every training stage shares, in plain PyTorch: LR schedules, one optimizer step, seeded
orders and generators, dropout switches and the curve file's text.

Each function is a pure function of its arguments (no config objects, no I/O, no tracking), so
the stages that use it (pre-training, fine-tuning, SFT, the reward model, PPO, DPO) stay wiring
and the numbers stay bit-identical whichever stage calls it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch

from model.errors import NonFiniteLoss  # noqa: F401  (raised here; callers import it from here too)



# --- learning-rate schedules ------------------------------------------------------------------


def warmup_steps(fraction: float, total: int) -> int:
    """Warm-up length as a fraction of `total` steps (at least 1)."""
    return max(1, round(fraction * total))


def warmup_cosine(step: int, total: int, warmup: int, lr: float, min_lr: float) -> float:
    """Linear warm-up over `warmup` steps to `lr`, then cosine decay to `min_lr` at `total`."""
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return min_lr + 0.5 * (lr - min_lr) * (1 + math.cos(math.pi * min(1.0, progress)))


def warmup_linear(step: int, total: int, warmup: int, lr: float) -> float:
    """Linear warm-up over `warmup` steps to `lr`, then linear decay to 0 at `total` (GPT-1 §4.1)."""
    if step < warmup:
        return lr * (step + 1) / warmup
    return lr * max(0.0, (total - step) / max(1, total - warmup))


def set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    for group in opt.param_groups:
        group["lr"] = lr


# --- one optimizer step -------------------------------------------------------------------------


def check_finite(loss: torch.Tensor | float, message: str) -> None:
    """Raise NonFiniteLoss(message) unless the loss is finite."""
    value = loss.item() if isinstance(loss, torch.Tensor) else float(loss)
    if not math.isfinite(value):
        raise NonFiniteLoss(message)


def apply_gradients(opt: torch.optim.Optimizer, params: Iterable[torch.nn.Parameter], grad_clip: float) -> None:
    """Clip the gradients' global norm to `grad_clip` (0 = no clipping), step, zero the gradients."""
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(params, grad_clip)
    opt.step()
    opt.zero_grad(set_to_none=True)


def optimizer_step(loss: torch.Tensor, opt: torch.optim.Optimizer, params: Iterable[torch.nn.Parameter], grad_clip: float,
                   nonfinite: str) -> None:
    """One training step on `loss`: refuse a non-finite loss (NonFiniteLoss(nonfinite), nothing
    updated), backward, clip, step, zero the gradients."""
    check_finite(loss, nonfinite)
    loss.backward()
    apply_gradients(opt, params, grad_clip)


# --- seeded orders ------------------------------------------------------------------------------


def epoch_order(seed: int, epoch: int, n: int) -> list[int]:
    """The shuffled order of epoch `epoch`: a pure function of (seed, epoch)."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g).tolist()


def generator(seed: int, stream: int, index: int, device: str = "cpu") -> torch.Generator:
    """A generator for draw `index` of random stream `stream`: a pure function of its arguments,
    so a resumed run draws what an uninterrupted one would."""
    return torch.Generator(device=device).manual_seed(seed * 1_000_003 + stream * 100_000_007 + index)


def stream_indices(seed: int, start: int, count: int, n: int) -> list[int]:
    """Items [start, start + count) of an endless stream of epoch-wise permutations of range(n)."""
    ks = range(start, start + count)
    orders = {e: epoch_order(seed, e, n) for e in {k // n for k in ks}}
    return [orders[k // n][k % n] for k in ks]


# --- dropout ------------------------------------------------------------------------------------


def set_dropout(model: torch.nn.Module, p: float) -> None:
    """Every dropout of a GPT (embeddings, residual branches, attention weights) to `p`."""
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = p
    for blk in getattr(getattr(model, "transformer", None), "h", []):
        blk.attn.dropout = p


# --- the curve file -----------------------------------------------------------------------------


def curve_csv(history: Sequence[dict], columns: Sequence[str]) -> str:
    """A training curve as CSV text: one row per record, `repr` of each value, '' when missing."""
    lines = [",".join(columns)]
    lines += [",".join("" if h.get(k) is None else repr(h[k]) for k in columns) for h in history]
    return "\n".join(lines) + "\n"
