"""Choice scoring: log p(choice | context) for many items, each context run once into a KV cache
that all of its choices continue from (plain PyTorch, no I/O)."""

from __future__ import annotations

import torch
from torch.nn import functional as F

from model.gpt import GPT, KVCache


def pack_items(contexts: list[list[int]], choices: list[list[list[int]]], batch_size: int) -> list[list[int]]:
    """Item indices in batches of at most `batch_size` choice rows (an item is never split).

    Longest first, so neighbours pad little.
    """
    order = sorted(range(len(contexts)), key=lambda i: -(len(contexts[i]) + sum(map(len, choices[i]))))
    batches, cur, rows = [], [], 0
    for i in order:
        if cur and rows + len(choices[i]) > batch_size:
            batches.append(cur)
            cur, rows = [], 0
        cur.append(i)
        rows += len(choices[i])
    return batches + [cur] if cur else batches


@torch.inference_mode()
def score_choices(model: GPT, contexts: list[list[int]], choices: list[list[list[int]]], batch_size: int) -> list[list[float]]:
    """log p(choice | context) summed over the choice's tokens, for every choice j of every item i.

    The context is computed once per item, not once per choice: the items' contexts run as one
    left-padded batch into a KV cache; then each item's choices (without their last token) run
    side by side in one row after its context, with an attention mask that lets every choice
    token see the context and the earlier tokens of its own choice only, at the positions it
    would have right after the context. Nothing is copied per choice. Only the positions that
    predict a choice token go through lm_head, so a 50k vocabulary costs little memory.
    """
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    out = [[0.0] * len(c) for c in choices]
    for items in pack_items(contexts, choices, batch_size):
        ctxs = [contexts[i] for i in items]
        B, P = len(items), max(map(len, ctxs))
        x = torch.zeros((B, P), dtype=torch.long)  # pad id 0: masked out
        mask = torch.zeros((B, P), dtype=torch.bool)
        for b, c in enumerate(ctxs):
            x[b, P - len(c) :], mask[b, P - len(c) :] = torch.tensor(c), True
        # second pass layout: row b holds choice 0[:-1], choice 1[:-1], ... of item b
        starts = [[0] * len(choices[i]) for i in items]  # where each choice's tokens begin in its row
        S = 0
        for b, i in enumerate(items):
            o = 0
            for j, c in enumerate(choices[i]):
                starts[b][j], o = o, o + len(c) - 1
            S = max(S, o)
        cache = KVCache(model.config, B, P + S, device=device, dtype=dtype)
        padded = not bool(mask.all())
        h = model.hidden_states(x.to(device), attention_mask=mask.to(device) if padded else None, kv_cache=cache)[:, -1:]
        if S > 0:
            y = torch.zeros((B, S), dtype=torch.long)
            pos = torch.zeros((B, S), dtype=torch.long)
            seg = torch.full((B, S), -1, dtype=torch.long)  # which choice each column belongs to; -1 = padding
            for b, i in enumerate(items):
                n = len(ctxs[b])
                for j, c in enumerate(choices[i]):
                    o, m = starts[b][j], len(c) - 1
                    y[b, o : o + m] = torch.tensor(c[:-1])
                    pos[b, o : o + m] = torch.arange(n, n + m)
                    seg[b, o : o + m] = j
            causal = torch.ones((S, S), dtype=torch.bool).tril()
            own = (seg[:, :, None] == seg[:, None, :]) & causal  # (B, S, S): same choice, not later
            allowed = torch.cat([mask[:, None, :].expand(B, S, P), own], 2)[:, None]  # (B, 1, S, P + S)
            h2 = model.hidden_states(y.to(device), attention_mask=allowed.to(device), position_ids=pos.to(device), kv_cache=cache)
            h = torch.cat([h, h2], 1)  # (B, 1 + S, C): column 0 predicts every choice's first token
        rows, cols, tgt, which = [], [], [], []  # per choice token: row and column of h predicting it, its choice
        n_choices = 0
        for b, i in enumerate(items):
            for j, c in enumerate(choices[i]):
                rows += [b] * len(c)
                cols += [0] + [1 + starts[b][j] + t for t in range(len(c) - 1)]
                tgt += c
                which += [n_choices] * len(c)
                n_choices += 1
        states = h[torch.tensor(rows, device=device), torch.tensor(cols, device=device)]  # (N, C)
        logp = F.log_softmax(model.lm_head(states).float(), dim=-1)
        logp = logp.gather(1, torch.tensor(tgt, device=device)[:, None]).squeeze(1)  # (N,)
        sums = torch.zeros(n_choices, device=device).index_add_(0, torch.tensor(which, device=device), logp)
        sums = iter(sums.tolist())
        for i in items:
            out[i] = [next(sums) for _ in choices[i]]
    return out


