"""Copying from the context, measured on sequences no corpus holds (Olsson et al. 2022, "In-context
learning and induction heads", §3: the loss on a repeated sequence of random tokens).

Each probe sequence is EOS, then `length` tokens drawn uniformly from the ordinary vocabulary
(never a special token), then the same `length` tokens again. The first copy cannot be predicted
(its loss is about ln(vocabulary) for any model); the second can, exactly, by a model that finds
the earlier occurrence of the current token and copies what followed it (an induction head).
`score` is the mean loss on the second copy minus that on the first, in nats (negative: the model
copies; about 0: it does not), and `accuracy` the share of the second copy's tokens it predicts
exactly (argmax), against 1/vocabulary for a model that does not copy. Plain PyTorch, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn import functional as F


@dataclass
class RepeatLoss:
    loss_first: float  # mean loss (nats) on the first copy's tokens 2..length (the first token has no context)
    loss_second: float  # mean loss on the second copy's tokens
    score: float  # loss_second - loss_first: negative = the model copies from its context
    accuracy: float  # share of the second copy's tokens predicted exactly (argmax)
    sequences: int
    length: int


@torch.no_grad()
def repeat_loss(model, eos_id: int, low: int, high: int, *, length: int = 50, sequences: int = 32, seed: int = 0,
                batch_size: int = 16) -> RepeatLoss:
    """The repeated-random-tokens probe of `model` (a GPT: logits = model(ids)). Tokens are drawn
    from ids [low, high) by a generator seeded with `seed`; the model runs in eval mode (restored after)."""
    if length < 2 or sequences < 1:
        raise ValueError(f"length={length} must be >= 2 and sequences={sequences} >= 1")
    if not 0 <= low < high:
        raise ValueError(f"token range [{low}, {high}) is empty")
    window = getattr(getattr(model, "config", None), "block_size", None)
    if window is not None and 2 * length + 1 > window:
        raise ValueError(f"2 x length + 1 = {2 * length + 1} tokens exceed the model's window of {window}")
    g = torch.Generator().manual_seed(seed)
    seq = torch.randint(low, high, (sequences, length), generator=g)
    ids = torch.cat([torch.full((sequences, 1), eos_id), seq, seq], dim=1)  # (N, 2L+1)
    x, y = ids[:, :-1], ids[:, 1:]  # y[:, :L] is the first copy, y[:, L:] the second
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    losses, hits = [], []
    try:
        for i in range(0, sequences, batch_size):
            logits = model(x[i : i + batch_size].to(device)).float().cpu()
            yb = y[i : i + batch_size]
            losses.append(F.cross_entropy(logits.transpose(1, 2), yb, reduction="none").double())
            hits.append((logits.argmax(-1) == yb)[:, length:])
    finally:
        model.train(was_training)
    loss = torch.cat(losses)
    first, second = loss[:, 1:length].mean().item(), loss[:, length:].mean().item()
    return RepeatLoss(loss_first=first, loss_second=second, score=second - first,
                      accuracy=torch.cat(hits).double().mean().item(), sequences=sequences, length=length)


@torch.no_grad()
def repeat_loss_of(model, eos_id: int, sequences: list[list[int]]) -> RepeatLoss:
    """The same probe on given token sequences (of any lengths >= 2, e.g. the encodings of random
    words): each is run as EOS, the sequence, the sequence again; the losses and hits of all
    sequences' tokens are pooled. `length` is the mean sequence length."""
    if not sequences or min(map(len, sequences)) < 2:
        raise ValueError("repeat_loss_of needs sequences of at least 2 tokens")
    window = getattr(getattr(model, "config", None), "block_size", None)
    longest = max(map(len, sequences))
    if window is not None and 2 * longest + 1 > window:
        raise ValueError(f"2 x {longest} + 1 tokens exceed the model's window of {window}")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    first, second, hits = [], [], []
    try:
        for s in sequences:
            ids = torch.tensor([eos_id, *s, *s])
            logits = model(ids[None, :-1].to(device)).float().cpu()[0]
            loss = F.cross_entropy(logits, ids[1:], reduction="none").double()
            L = len(s)
            first.append(loss[1:L])
            second.append(loss[L:])
            hits.append(logits[L:].argmax(-1) == ids[1 + L :])
    finally:
        model.train(was_training)
    f, s2 = torch.cat(first).mean().item(), torch.cat(second).mean().item()
    return RepeatLoss(loss_first=f, loss_second=s2, score=s2 - f, accuracy=torch.cat(hits).double().mean().item(),
                      sequences=len(sequences), length=round(sum(map(len, sequences)) / len(sequences)))


def train_copying(model, eos_id: int, low: int, high: int, *, steps: int, batch_size: int = 32, min_length: int = 10,
                  max_length: int = 60, lr: float = 1e-3, seed: int = 0, probe_every: int = 0, probe_length: int = 50) -> list[dict]:
    """Train `model` on the probe's own task: EOS, `L` random tokens from [low, high), the same `L`
    again (L drawn per step from [min_length, max_length]), next-token loss on every position;
    AdamW without decay at a constant `lr`, data seeded by `seed`. A curriculum for the copying
    circuit the corpus alone does not grow (docs/prompting.md). Every `probe_every` steps (and at
    the end) the probe at `probe_length` is recorded: [{step, loss, copy_score, copy_accuracy}]."""
    if steps < 1 or not 2 <= min_length <= max_length or batch_size < 1:
        raise ValueError(f"steps={steps}, batch_size={batch_size}, lengths [{min_length}, {max_length}]: need 1, 1 and 2 <= min <= max")
    window = getattr(getattr(model, "config", None), "block_size", None)
    if window is not None and 2 * max(max_length, probe_length) + 1 > window:
        raise ValueError(f"2 x {max(max_length, probe_length)} + 1 tokens exceed the model's window of {window}")
    device = next(model.parameters()).device
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.98), weight_decay=0.0)
    g = torch.Generator().manual_seed(seed)
    log = []
    model.train()
    for step in range(1, steps + 1):
        L = int(torch.randint(min_length, max_length + 1, (), generator=g))
        seq = torch.randint(low, high, (batch_size, L), generator=g)
        ids = torch.cat([torch.full((batch_size, 1), eos_id), seq, seq], dim=1).to(device)
        _, loss = model(ids[:, :-1], ids[:, 1:])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step == steps or (probe_every and step % probe_every == 0):
            r = repeat_loss(model, eos_id, low, high, length=probe_length, sequences=16, seed=seed + 1)
            log.append({"step": step, "loss": loss.item(), "copy_score": r.score, "copy_accuracy": r.accuracy})
    return log
