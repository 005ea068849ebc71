"""The instruction format and the math the InstructGPT stages share (plain PyTorch, no I/O).

The format, defined here and nowhere else (SFT, rankings, reward model, PPO, DPO and
`model.sample` all use it)::

    {prompt}\\nAnswer: {response}<|endoftext|>

`"\\nAnswer:"` is the separator (the corpus's own question/answer cue, so a pre-trained model
prompted zero-shot gets a fair chance); the response is encoded on its own with a leading space
and always ends in EOS, so a fine-tuned model learns to stop. Prompt and response are encoded
separately and concatenated, so the token boundary at "Answer:" is the same in training and in
generation.

Prompts longer than the window: the prompt is cut from the LEFT (its end, which holds the
question, stays) so that prompt + response + EOS fit `block_size`; `encode_example` says
whether it cut. A response that alone does not fit (with at least `MIN_PROMPT_TOKENS` of
prompt) is refused (None): callers count and skip it.

Shared math (unit-tested against hand-computed values):
- `ranking_loss`: InstructGPT's reward-model loss over all C(K,2) pairs of each ranking;
- `response_logprobs`: per-token log p(token) of the response tokens of right-padded rows.
"""

from __future__ import annotations

import random

import torch
from torch.nn import functional as F

SEPARATOR = "\nAnswer:"
MIN_PROMPT_TOKENS = 8  # the least of a prompt kept when cutting it to fit the window


def format_prompt(prompt: str) -> str:
    """The text a policy is conditioned on; its continuation is the response."""
    return prompt.strip() + SEPARATOR


def encode_prompt(tok, prompt: str, max_tokens: int | None = None) -> tuple[list[int], bool]:
    """Token ids of `format_prompt(prompt)`, left-cut to `max_tokens`. -> (ids, was_cut)."""
    ids = tok.encode(format_prompt(prompt))
    if max_tokens is not None and len(ids) > max_tokens:
        return ids[len(ids) - max_tokens :], True
    return ids, False


def encode_response(tok, response: str) -> list[int]:
    """Token ids of a response as the model produces it: leading space, text, EOS."""
    return tok.encode(" " + response.strip()) + [tok.eos_id]


def decode_response(tok, ids: list[int]) -> str:
    """Text of generated response tokens (EOS and anything after it dropped)."""
    eos = tok.eos_id
    if eos in ids:
        ids = ids[: ids.index(eos)]
    return tok.decode(ids).strip()


def encode_example(tok, prompt: str, response: str, block_size: int) -> tuple[list[int], int, bool] | None:
    """(ids, n_prompt, was_cut) of prompt + response + EOS within `block_size`, or None if the
    response cannot fit. ids[:n_prompt] is the prompt; the rest is the response and EOS."""
    resp = encode_response(tok, response)
    room = block_size - len(resp)
    if room < MIN_PROMPT_TOKENS:
        return None
    p, cut = encode_prompt(tok, prompt, room)
    return p + resp, len(p), cut


def pad_right(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids (N, T) right-padded with pad_id, lengths (N,)). Causal attention never looks right,
    so right-padded rows need no attention mask; a row's last real token is lengths - 1."""
    T = max(len(r) for r in rows)
    ids = torch.full((len(rows), T), pad_id, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
    return ids, torch.tensor([len(r) for r in rows], dtype=torch.long)


def response_targets(ids: torch.Tensor, lengths: torch.Tensor, n_prompt: torch.Tensor) -> torch.Tensor:
    """Next-token targets (N, T) for right-padded rows with only the response (and EOS) scored.

    targets[i, t] = ids[i, t + 1] when token t + 1 is a response token, else -100 (ignored):
    prompt tokens and padding carry no loss.
    """
    N, T = ids.shape
    targets = torch.full_like(ids, -100)
    targets[:, :-1] = ids[:, 1:]
    pos = torch.arange(T, device=ids.device)[None, :] + 1  # position of the predicted token
    keep = (pos >= n_prompt[:, None]) & (pos < lengths[:, None])
    return targets.masked_fill(~keep, -100)


def response_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log p(target) per position (N, T) from logits (N, T, V); 0 where targets is -100.

    Summing over a row gives the response's log-probability (DPO); per token it is what PPO's
    ratio and KL penalty need.
    """
    mask = targets != -100
    lp = torch.log_softmax(logits.float(), dim=-1).gather(-1, targets.clamp(min=0)[..., None]).squeeze(-1)
    return lp * mask


def ranking_loss(rewards: torch.Tensor, rankings: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """InstructGPT's reward-model loss: for each prompt, -1/C(K,2) * sum over its pairs of
    log sigmoid(r_winner - r_loser); the mean over prompts.

    rewards: (B, K) one scalar per response (each response forwarded once);
    rankings: (B, K) long, indices into the K responses, best first.
    Returns (loss, {"acc": share of pairs ordered right, "margin": mean r_w - r_l}).
    """
    B, K = rewards.shape
    ordered = rewards.gather(1, rankings)  # (B, K) rewards best first
    w, l = torch.triu_indices(K, K, offset=1, device=rewards.device)  # all pairs i < j: i ranked above j
    diff = ordered[:, w] - ordered[:, l]  # (B, C(K,2)) r_winner - r_loser
    loss = -F.logsigmoid(diff).mean()
    return loss, {"acc": (diff > 0).float().mean().detach(), "margin": diff.mean().detach()}


MIN_NEW_TOKENS = 16  # a prompt is cut so that at least this many response tokens fit the window


def respond(
    model,
    tok,
    prompts: list[list[int]] | list[str],
    max_new_tokens: int,
    *,
    temperature: float = 0.0,
    top_p: float = 1.0,
    batch_size: int = 64,
    generator: torch.Generator | None = None,
) -> list[dict]:
    """Responses to `prompts` (text, formatted here; or ready token ids such as a few-shot
    context) by batched KV-cache sampling; greedy at temperature 0.

    Prompts are batched by length, so a batch's new-token budget is min(max_new_tokens,
    block_size - its longest prompt); a prompt longer than block_size - MIN_NEW_TOKENS is cut
    from the left. -> per prompt, in order: {"text", "tokens" (incl. EOS), "logprobs", "eos", "cut"}.
    """
    from model.generate import generate

    block = model.config.block_size
    ids, cut = [], []
    for p in prompts:
        row = encode_prompt(tok, p)[0] if isinstance(p, str) else list(p)
        cut.append(len(row) > block - MIN_NEW_TOKENS)
        ids.append(row[-(block - MIN_NEW_TOKENS) :] if cut[-1] else row)
    order = sorted(range(len(ids)), key=lambda i: (len(ids[i]), i))
    out: list[dict] = [{} for _ in ids]
    for b in range(0, len(order), batch_size):
        idx = order[b : b + batch_size]
        longest = max(len(ids[i]) for i in idx)
        g = generate(
            model,
            [ids[i] for i in idx],
            min(max_new_tokens, block - longest),
            temperature=temperature,
            top_p=top_p,
            eos_id=tok.eos_id,
            pad_id=tok.pad_id,
            generator=generator,
        )
        for j, i in enumerate(idx):
            t = g.tokens[j]
            out[i] = {"text": decode_response(tok, t), "tokens": t, "logprobs": g.logprobs[j],
                      "eos": bool(t) and t[-1] == tok.eos_id, "cut": cut[i]}
    return out


def few_shot_context(tok, prompt: str, kind: str, pool: dict[str, list[dict]], k: int, budget: int,
                     rng: random.Random) -> tuple[list[int], int]:
    """Up to k demonstrations of `kind` (each ending in EOS) then the prompt, within `budget` tokens."""
    query = encode_prompt(tok, prompt)[0]
    shots, n = [], 0
    for d in rng.sample(pool.get(kind, []), min(len(pool.get(kind, [])), 4 * k)):
        if n == k:
            break
        demo = encode_prompt(tok, d["prompt"])[0] + encode_response(tok, d["response"])
        if sum(map(len, shots)) + len(demo) + len(query) <= budget:
            shots.append(demo)
            n += 1
    return [t for s in shots for t in s] + query, n
