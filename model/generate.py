"""Batched autoregressive sampling from a GPT: left-padded prompts, KV cache, temperature / top-k / top-p, EOS.

Prompts of different lengths are LEFT-padded so every row's next token sits in the same column;
the attention mask hides the padding and positions count from each row's first real token, so a
row samples exactly what it would alone. Each sampled token's log-probability is taken under the
unmodified model distribution (temperature 1, no truncation): what PPO's ratio needs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn import functional as F

from model.gpt import GPT, KVCache


@dataclass
class GenerateOutput:
    tokens: list[list[int]]  # new tokens per row, up to and including EOS
    logprobs: list[list[float]]  # log p(token) under the model at temperature 1, aligned with `tokens`
    sequences: torch.Tensor  # (B, T_prompt_padded + n_steps) long: left-padded prompts, new tokens, pad_id after EOS
    attention_mask: torch.Tensor  # (B, T_prompt_padded + n_steps) long: 1 = real prompt or generated token, 0 = padding


def _pick(logits: torch.Tensor, temperature: float, top_k: int, top_p: float, generator,
          rows: torch.Tensor | None = None, batch: int | None = None) -> torch.Tensor:
    """Next token (R,) from logits (R, vocab) of the running `rows` of a batch of `batch` rows (None:
    all of them): argmax at temperature 0, else a sample of the truncated distribution.

    The sample is torch.multinomial's own draw (argmax of p / q with q ~ Exp(1); equal to it bit for bit,
    tested), made for the whole batch the loop began with and read at the running rows: a row's sample does
    not depend on which other rows have already stopped and left the batch.
    """
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits / temperature
    if top_k:
        kth = torch.topk(logits, min(top_k, logits.size(-1)), dim=-1).values[:, -1:]  # (R, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = F.softmax(sorted_logits, dim=-1)
        # drop a token when the more likely ones already reach top_p (the most likely always stays)
        drop = probs.cumsum(dim=-1) - probs >= top_p
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    probs = F.softmax(logits, dim=-1)
    if rows is None:  # every row of the batch is running
        return torch.multinomial(probs, 1, generator=generator).squeeze(1)
    q = probs.new_empty((batch, probs.size(-1))).exponential_(1, generator=generator)
    return (probs / q[rows]).argmax(dim=-1)


@torch.no_grad()
def generate(
    model: GPT,
    prompts: list[list[int]],
    max_new_tokens: int,
    *,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    eos_id: int | None = None,
    pad_id: int = 0,
    use_cache: bool = True,
    compact: bool = True,
    generator: torch.Generator | None = None,
) -> GenerateOutput:
    """Continue each prompt by up to `max_new_tokens` tokens.

    temperature 0 is greedy; top_k 0 and top_p 1.0 disable those filters. A row stops at `eos_id`
    (later columns hold `pad_id`); the loop ends when every row has stopped. `use_cache=False`
    recomputes the whole context every step (the reference the cache is tested against);
    `compact=False` keeps stopped rows in the batch to the end (the reference compaction is tested
    against: the same tokens; log-probabilities equal up to the last bits).
    The model runs in eval mode (no dropout) and is put back in its previous mode afterwards.
    """
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("generate needs at least one prompt, and every prompt needs at least one token")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if temperature < 0 or top_k < 0 or not 0.0 < top_p <= 1.0:
        raise ValueError(f"need temperature >= 0, top_k >= 0, 0 < top_p <= 1; got {temperature}, {top_k}, {top_p}")
    lens = [len(p) for p in prompts]
    P = max(lens)
    total = P + max_new_tokens
    if total > model.config.block_size:
        raise ValueError(
            f"longest prompt ({P} tokens) + max_new_tokens ({max_new_tokens}) = {total} exceeds "
            f"the model's block_size of {model.config.block_size}"
        )

    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():  # leaner than no_grad; what is returned is copied out of it below
            seq, logprobs, n = _decode(
                model, prompts, max_new_tokens, temperature, top_k, top_p, eos_id, pad_id, use_cache, compact, generator
            )
    finally:
        model.train(was_training)

    sequences = seq[:, : P + n].clone()  # (B, P + n) ordinary tensors: PPO runs autograd over these
    attention_mask = torch.ones_like(sequences)
    tokens, token_logprobs = [], []
    for i, (p, row, lp) in enumerate(zip(prompts, seq[:, P : P + n].tolist(), logprobs.tolist())):
        stop = row.index(eos_id) + 1 if eos_id is not None and eos_id in row else n
        tokens.append(row[:stop])
        token_logprobs.append(lp[:stop])
        attention_mask[i, : P - len(p)] = 0  # left padding
        attention_mask[i, P + stop :] = 0  # after EOS
    return GenerateOutput(tokens, token_logprobs, sequences, attention_mask)


def _decode(model, prompts, max_new_tokens, temperature, top_k, top_p, eos_id, pad_id, use_cache, compact, generator):
    """The sampling loop: (sequences (B, P + max_new) with n filled new columns, logprobs (B, n), n).

    Rows that have stopped leave the running batch (with their KV cache rows) once they are a quarter
    of it, so a batch costs what its rows generate, not B times its longest response. At least
    `MIN_ROWS` rows keep running: with fewer, CPU matrix products take another path whose last bits
    differ; from MIN_ROWS up, on the pipeline's model and this project's CPU, a row's numbers did not
    depend on the batch (where they do, only the last bits move; tested against `compact=False`).
    Compaction needs the cache (`use_cache`).
    """
    lens = [len(p) for p in prompts]
    B, P = len(prompts), max(lens)
    total = P + max_new_tokens
    device = next(model.parameters()).device
    seq = torch.full((B, total), pad_id, dtype=torch.long)
    mask = torch.ones((B, total), dtype=torch.bool)  # new columns count as real: a finished row's pads affect only it
    for i, p in enumerate(prompts):
        seq[i, P - len(p) : P] = torch.tensor(p, dtype=torch.long)
        mask[i, : P - len(p)] = False
    seq, mask = seq.to(device), mask.to(device)
    padded = min(lens) < P  # equal lengths need no mask at all: SDPA's causal kernel suffices
    position = torch.tensor(lens, device=device)[:, None]  # (B, 1) position of each row's first new token
    rows = torch.arange(B, device=device)  # the running batch's rows, as indices into the B prompts
    live = torch.ones(B, dtype=torch.bool, device=device)  # per running row: has not stopped
    logprobs = torch.zeros((B, max_new_tokens), device=device)

    cache = KVCache(model.config, B, total, device=device, dtype=next(model.parameters()).dtype) if use_cache else None
    logits = model(seq[:, :P], attention_mask=mask[:, :P] if padded else None, kv_cache=cache)[:, -1]  # (B, vocab)
    n = 0
    while True:
        tok = _pick(logits, temperature, top_k, top_p, generator, rows, B)  # (R,)
        logprobs[rows, n] = F.log_softmax(logits.float(), dim=-1).gather(1, tok[:, None]).squeeze(1)
        if eos_id is not None:
            tok = tok.masked_fill(~live, pad_id)
        seq[rows, P + n] = tok
        n += 1
        if eos_id is not None:
            live &= tok != eos_id
            if not bool(live.any()):
                break
        if n == max_new_tokens:
            break
        if use_cache and compact:
            rows, live, tok = _compact(rows, live, tok, cache)
        m = mask[rows, : P + n] if padded else None
        if use_cache:  # feed only the new token; padded rows need their own positions
            pos = position[rows] + (n - 1) if padded else None
            logits = model(tok[:, None], attention_mask=m, position_ids=pos, kv_cache=cache)[:, -1]
        else:
            logits = model(seq[:, : P + n], attention_mask=m)[:, -1]
    return seq, logprobs[:, :n], n


MIN_ROWS = 4  # the fewest rows a compacted decode batch keeps (see _decode)


def _compact(rows, live, tok, cache):
    """Drop stopped rows from the running batch (and `cache`, in place) once they are a quarter of it,
    keeping MIN_ROWS. -> the running rows, their live flags and last tokens."""
    R, stopped = rows.numel(), int((~live).sum())
    if stopped == 0 or stopped * 4 < R or R <= MIN_ROWS:
        return rows, live, tok
    order = torch.argsort((~live).to(torch.int8), stable=True)  # running rows first, each group in batch order
    keep = order[: max(R - stopped, MIN_ROWS)].sort().values
    cache.keep(keep)
    return rows[keep], live[keep], tok[keep]
