"""In-context learning measured where it is made (Olsson et al. 2022, "In-context learning and
induction heads", §2): the loss at late tokens of a context minus the loss at early tokens,
averaged over held-out contexts. Negative: the model predicts later tokens better, because it
uses the far context in front of them (Olsson compare token 500 with token 50).

Every window starts at a document start of a flat token stream (documents separated by EOS, as
`tasks/tokenize.py` writes val.bin): its input is EOS (the boundary marker a pre-training window
sees) then the document's first T-1 tokens, its targets the document's first T tokens, so the
loss at position t predicts the document's token t from the t tokens before it. A window runs on
past the end of a short document into the next ones, as a pre-training window does; the long
score keeps only windows of documents at least `late[1]` tokens long, masked at the document's
end, so every position it scores sees one document only. Plain PyTorch and NumPy, no I/O.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional as F


@dataclass
class PositionLoss:
    """Mean held-out loss by position in the context, and the ICL scores read from it."""

    curve: np.ndarray  # (T,) mean loss (nats) at each position over `windows` windows
    windows: int
    early: tuple[int, int]  # the position ranges [start, end) of the score
    late: tuple[int, int]
    score: float  # mean of curve[late] - mean of curve[early]
    long_docs: int  # documents of at least late[1] tokens
    curve_long: np.ndarray | None  # (T,) over windows inside one long document (NaN past every such document's end)
    windows_long: int
    score_long: float | None  # None when no document is long enough


def scaled_ranges(early, late, T: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """The ranges [start, end) of positions for windows of T tokens: as given when late ends within T,
    else both scaled by T / late[1] (each keeping at least one position)."""
    if len(early) != 2 or len(late) != 2:
        raise ValueError(f"early={list(early)} and late={list(late)} must each be [start, end)")
    (e0, e1), (l0, l1) = (int(v) for v in early), (int(v) for v in late)
    if not 0 <= e0 < e1 <= l0 < l1:
        raise ValueError(f"early={list(early)} and late={list(late)} must be position ranges [start, end) with early before late")
    f = min(1.0, T / l1)

    def scale(a: int, b: int) -> tuple[int, int]:
        lo = min(int(a * f), T - 1)
        return lo, min(T, max(lo + 1, round(b * f)))

    return scale(e0, e1), scale(l0, l1)


def documents(stream: np.ndarray, eos_id: int) -> tuple[np.ndarray, np.ndarray]:
    """(start, length) of every non-empty document of a stream in which EOS ends each document
    (a last document without its EOS counts too)."""
    n = len(stream)
    ends = np.flatnonzero(np.asarray(stream) == eos_id)
    if not len(ends) or ends[-1] != n - 1:
        ends = np.append(ends, n)  # the unterminated tail
    starts = np.concatenate([[0], ends[:-1] + 1])
    lengths = ends - starts
    keep = lengths > 0
    return starts[keep], lengths[keep]


def _windows(stream: np.ndarray, eos_id: int, starts: np.ndarray, T: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs (EOS, then T-1 tokens from each start) and targets (T tokens from each start; -100 past the stream's end)."""
    x = np.full((len(starts), T), eos_id, dtype=np.int64)
    y = np.full((len(starts), T), -100, dtype=np.int64)
    for i, s in enumerate(starts.tolist()):
        tok = np.asarray(stream[s : s + T], dtype=np.int64)
        x[i, 1 : 1 + min(len(tok), T - 1)] = tok[: T - 1]
        y[i, : len(tok)] = tok
    return torch.from_numpy(x), torch.from_numpy(y)


def _losses(model, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> torch.Tensor:
    """(R, T) next-token loss of every window at every position (0 where no target)."""
    device = next(model.parameters()).device
    out = []
    for i in range(0, len(x), batch_size):
        xb, yb = x[i : i + batch_size].to(device), y[i : i + batch_size].to(device)
        logits = model(xb)  # (B, T, vocab)
        out.append(F.cross_entropy(logits.float().transpose(1, 2), yb, ignore_index=-100, reduction="none").cpu())  # (B, T)
    return torch.cat(out).double()


def _curve(losses: torch.Tensor, mask: torch.Tensor) -> np.ndarray:
    """Mean loss at each position over the windows where `mask` (R, T) holds; NaN where none does."""
    return ((losses * mask).sum(0) / mask.sum(0)).numpy()  # 0/0 = NaN


def _score(curve: np.ndarray, early: tuple[int, int], late: tuple[int, int]) -> float:
    return float(np.mean(curve[late[0] : late[1]]) - np.mean(curve[early[0] : early[1]]))


@torch.no_grad()
def position_loss(model, stream: np.ndarray, eos_id: int, T: int, *, windows: int = 64, early=(20, 40), late=(150, 200),
                  seed: int = 0, batch_size: int = 16, autocast=nullcontext) -> PositionLoss:
    """The ICL score of `model` on held-out `stream` with windows of T tokens.

    `windows` document starts are drawn without replacement by a generator seeded with `seed`
    (all of them when there are fewer) among those whose whole window lies in the stream; the long
    score's `windows` long documents are those of the draw topped up by a second seeded draw (a
    uniform choice still), so a window both scores use runs once. The model runs in eval mode
    (restored after), `batch_size` windows per forward pass, under `autocast()`.
    """
    early, late = scaled_ranges(early, late, T)
    starts, lengths = documents(stream, eos_id)
    rng = np.random.default_rng(seed)
    full = np.flatnonzero(starts + T <= len(stream))
    pick = np.sort(rng.choice(full, size=min(windows, len(full)), replace=False))
    longs = np.flatnonzero(lengths >= late[1])
    drawn = np.intersect1d(pick, longs)  # at most `windows`: a uniform sample of the long documents that fit
    rest = np.setdiff1d(longs, drawn)
    pick_long = np.union1d(drawn, rng.choice(rest, size=min(windows, len(longs)) - len(drawn), replace=False))
    run = np.union1d(pick, pick_long)  # the document indices whose windows run
    was_training = model.training
    model.eval()
    try:
        with autocast():
            x, y = _windows(stream, eos_id, starts[run], T)
            losses = _losses(model, x, y, batch_size)
    finally:
        model.train(was_training)
    curve = _curve(losses, torch.from_numpy(np.isin(run, pick))[:, None] & (y != -100))
    curve_long = None
    if len(pick_long):
        # inside its document only: positions before the document's end
        inside = torch.arange(T)[None, :] < torch.from_numpy(np.where(np.isin(run, pick_long), lengths[run], 0))[:, None]
        curve_long = _curve(losses, inside)
    return PositionLoss(curve=curve, windows=len(pick), early=early, late=late, score=_score(curve, early, late),
                        long_docs=len(longs), curve_long=curve_long, windows_long=len(pick_long),
                        score_long=None if curve_long is None else _score(curve_long, early, late))


def buckets(curve: np.ndarray, n: int) -> list[tuple[int, float]]:
    """(first position, mean loss) of `n` equal ranges of positions (fewer when T < n); NaN for a range no window reaches."""
    width = math.ceil(len(curve) / n)
    out = []
    for a in range(0, len(curve), width):
        part = curve[a : a + width]
        part = part[~np.isnan(part)]
        out.append((a, float(part.mean()) if len(part) else math.nan))
    return out
