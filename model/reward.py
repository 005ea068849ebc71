"""The reward model of InstructGPT (Ouyang et al. 2022, §3.5): a GPT trunk and a scalar head.

Architecture choices:
- the trunk is a whole `GPT` (its tied LM head used only by the likelihood feature), initialised
  from the SFT policy as in the paper;
- the head is one Linear(C, 1) (with dropout before it) applied to `GPT.hidden_states`; the
  reward of a response is the head's output at the row's LAST REAL token, which in the
  instruction format (`model.instruct`) is the EOS that ends the response. Rows are
  right-padded (`model.instruct.pad_right`), so that position is `lengths - 1` and padding
  after it cannot change it (causal attention never looks right);
- optionally (`lm_scale`, on by default in `train_rm`) the likelihood feature: the reward adds
  lm_scale × the mean log-probability the trunk's own (tied) LM head gives the response's
  tokens (the first, predicted from the prompt's last token, and the EOS included), lm_scale
  learned with the rest. Every response has at least its EOS to score: an empty one is scored by
  how likely an EOS is right after the prompt. (Leaving the first token out, as this once did,
  gave an empty response no token to score and so a log-probability of 0, the best there is: PPO
  found it, and its policy answered every prompt with EOS alone.) Measured on the
  world: the SFT trunk's likelihood alone orders 78% of the differing pairs like the oracle,
  an EOS head trained on the same rankings 55-70%; the rubric's checks (subject words, mood,
  the story's fact) are comparisons of the response with the prompt, which the SFT trunk
  already makes when it predicts the response and an EOS state of a 1M-parameter model does
  not learn from a few thousand comparisons;
- `scores` gives the head's output at every position: the per-token values a PPO value model
  initialised from this one needs (any padding the trunk supports: right, left with
  `attention_mask`, or a 4-D mask with position ids).

Normalisation (what PPO consumes), both numbers stored in the checkpoint's meta.json under
"reward" with how they were measured:
- `bias`: the mean raw score of the SFT demonstrations (labeler-written responses), so that
  demonstrations score 0 on average, as in the paper before RL;
- `std`: the standard deviation of raw scores over responses sampled from the SFT policy (the
  rankings' candidates), the reference policy's spread (lm-human-preferences normalises the
  reward's scale on samples of the reference policy "so the KL coefficient always has the
  same meaning");
- `normalized(ids, lengths, n_prompt) = (forward(...) - bias) / std`: demonstrations average 0
  and one unit is one standard deviation of the SFT policy's rewards. PPO's reward is this.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from model.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from model.gpt import GPT
from model.instruct import pad_right, ranking_loss

HEAD_PREFIX = "reward_head."


@dataclass
class Packed:
    """Prompts each followed by their K responses, right-padded: ids, positions and segments
    (B, T); segment 0 is the prompt, k + 1 response k, -1 padding. last (M, 2): (row, column) of
    every response's last token, row by row in response order."""

    ids: torch.Tensor
    positions: torch.Tensor
    segments: torch.Tensor
    last: torch.Tensor

    def mask(self) -> torch.Tensor:
        """(B, 1, T, T) True = query may attend key: causal, and a response token sees only the
        prompt and its own response; a padding token sees only itself (a fully masked row is NaN)."""
        seg = self.segments
        T = seg.size(1)
        causal = torch.ones(T, T, dtype=torch.bool, device=seg.device).tril()
        q, k = seg[:, :, None], seg[:, None, :]  # (B, T, 1), (B, 1, T)
        allowed = causal & (k >= 0) & (q >= 0) & ((k == 0) | (k == q))
        return (allowed | torch.eye(T, dtype=torch.bool, device=seg.device))[:, None]


def pack(prompts: list[list[int]], responses: list[list[list[int]]], pad_id: int) -> Packed:
    """One row per prompt: the prompt's ids, then each of its responses (ids ending in EOS) with
    positions continuing from the prompt's end, so response k is computed exactly as the
    unpadded row prompt + response k would be. Every position must fit the model's window."""
    rows, pos, seg, last = [], [], [], []
    for b, (p, rs) in enumerate(zip(prompts, responses)):
        ids, ps, ss = list(p), list(range(len(p))), [0] * len(p)
        for k, r in enumerate(rs):
            ids += r
            ps += range(len(p), len(p) + len(r))
            ss += [k + 1] * len(r)
            last.append((b, len(ids) - 1))
        rows.append(ids), pos.append(ps), seg.append(ss)
    T = max(map(len, rows))

    def padded(xs, fill):
        return torch.tensor([x + [fill] * (T - len(x)) for x in xs], dtype=torch.long)

    return Packed(padded(rows, pad_id), padded(pos, 0), padded(seg, -1), torch.tensor(last, dtype=torch.long))


class RewardModel(nn.Module):
    """r(x, y): GPT trunk -> dropout -> Linear(C, 1) at the response's last token (EOS)."""

    def __init__(self, gpt: GPT, dropout: float = 0.0, bias: float = 0.0, std: float = 1.0, lm_scale: float | None = None):
        super().__init__()
        self.gpt = gpt
        self.p = dropout
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(gpt.config.n_embd, 1)
        nn.init.normal_(self.head.weight, std=1 / (gpt.config.n_embd + 1) ** 0.5)  # lm-human-preferences
        nn.init.zeros_(self.head.bias)
        self.bias, self.std = float(bias), float(std)
        # the likelihood feature: + lm_scale * the mean log-probability the trunk's own LM head gives
        # the response's tokens (all but the first; EOS included). None = the plain EOS head.
        self.lm_scale = None if lm_scale is None else nn.Parameter(torch.tensor(float(lm_scale)))

    def _lm_feature(self, h: torch.Tensor, ids: torch.Tensor, rows: torch.Tensor, keep: torch.Tensor,
                    first: torch.Tensor | None = None) -> torch.Tensor:
        """Mean log p(ids[r, t + 1]) over the positions t with keep[m, t], for each m with row rows[m],
        and, where `first` (M, 2) is given, log p(first[m, 1]) at position first[m, 0] of that row
        too (a packed response's first token, predicted from the prompt's last position, which in
        a packed row is followed by the first response only). h: (B, T, C) trunk states; keep: (M, T - 1) bool."""
        logp = torch.log_softmax(self.gpt.lm_head(h[:, :-1]).float(), dim=-1)  # (B, T-1, vocab)
        lp = logp.gather(-1, ids[:, 1:, None]).squeeze(-1)[rows]  # (M, T-1) log p of each next token
        total, count = (lp * keep).sum(1), keep.sum(1)
        if first is not None:
            total, count = total + logp[rows, first[:, 0], first[:, 1]], count + 1
        return total / count.clamp(min=1)

    def scores(self, ids: torch.Tensor, **trunk_kwargs) -> torch.Tensor:
        """Raw head output at every position (N, T); `trunk_kwargs` go to `GPT.hidden_states`."""
        h = self.gpt.hidden_states(ids, **trunk_kwargs)  # (N, T, C)
        return self.head(self.dropout(h)).squeeze(-1)  # (N, T)

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor, n_prompt: torch.Tensor | None = None) -> torch.Tensor:
        """Raw rewards (N,) of right-padded rows ids (N, T) with `lengths` real tokens each,
        read at each row's last real token (ids[i, lengths[i] - 1], the EOS). With the likelihood
        feature, `n_prompt` (N,) says where each response starts."""
        h = self.gpt.hidden_states(ids)  # (N, T, C)
        rows = torch.arange(ids.size(0), device=ids.device)
        r = self.head(self.dropout(h[rows, lengths - 1])).squeeze(-1)  # (N,)
        if self.lm_scale is None:
            return r
        if n_prompt is None:
            raise ValueError("this reward model reads the response's likelihood: pass n_prompt")
        t = torch.arange(ids.size(1) - 1, device=ids.device)[None, :]
        keep = (t >= n_prompt[:, None].to(ids.device) - 1) & (t < lengths[:, None] - 1)  # t + 1 in the response
        return r + self.lm_scale * self._lm_feature(h, ids, rows, keep)

    def forward_packed(self, packed: Packed) -> torch.Tensor:
        """Raw rewards (M,) of the responses of `pack` rows, in packing order: each row holds a
        prompt once and its responses after it, each response seeing only the prompt and itself."""
        h = self.gpt.hidden_states(packed.ids, attention_mask=packed.mask(), position_ids=packed.positions)  # (B, T, C)
        r = self.head(self.dropout(h[packed.last[:, 0], packed.last[:, 1]])).squeeze(-1)  # (M,)
        if self.lm_scale is None:
            return r
        rows = packed.last[:, 0]
        seg = packed.segments[rows]  # (M, T) the segments of each response's row
        k = seg.gather(1, packed.last[:, 1:2])  # (M, 1) the response's own segment
        keep = (seg[:, :-1] == k) & (seg[:, 1:] == k)  # t and t + 1 in the response
        start = (seg == k).float().argmax(1)  # (M,) the response's first column
        prompt_end = (seg == 0).sum(1) - 1  # (M,) the prompt's last column, which predicts a first response token
        first = torch.stack([prompt_end, packed.ids[rows, start]], 1)
        return r + self.lm_scale * self._lm_feature(h, packed.ids, rows, keep, first)

    def normalized(self, ids: torch.Tensor, lengths: torch.Tensor, n_prompt: torch.Tensor | None = None) -> torch.Tensor:
        """(raw - bias) / std: SFT demonstrations average 0, the SFT policy's spread is 1."""
        return (self(ids, lengths, n_prompt) - self.bias) / self.std

    def head_tensors(self) -> dict[str, torch.Tensor]:
        out = {HEAD_PREFIX + k: v for k, v in self.head.state_dict().items()}
        if self.lm_scale is not None:
            out[HEAD_PREFIX + "lm_scale"] = self.lm_scale.detach().reshape(1)
        return out

    def save(self, path, meta: dict, *, tokenizer_path=None, trainer_state: dict | None = None) -> Path:
        """A checkpoint folder: the trunk as any GPT checkpoint, the head in heads.safetensors,
        meta["reward"] = {bias, std, dropout, ...meta.get("reward")} (how they were measured)."""
        meta = {**meta, "reward": {**meta.get("reward", {}), "bias": self.bias, "std": self.std, "dropout": self.p}}
        return save_checkpoint(
            path, self.gpt, meta, tokenizer_path=tokenizer_path, trainer_state=trainer_state, extra_tensors=self.head_tensors()
        )

    @classmethod
    def load(cls, path, *, device="cpu", dropout: float | None = None) -> RewardModel:
        """Read a folder written by `save` (bias and std from meta.json). `.meta` holds the meta."""
        ckpt = load_checkpoint(path, device=device)
        rm_meta = ckpt.meta.get("reward")
        head = {k[len(HEAD_PREFIX) :]: v for k, v in ckpt.extra_tensors.items() if k.startswith(HEAD_PREFIX)}
        if not isinstance(rm_meta, dict) or not {"bias", "std"} <= set(rm_meta) or set(head) - {"lm_scale"} != {"weight", "bias"}:
            raise CheckpointError(f"checkpoint {path}: not a reward model (meta.json 'reward' or the head tensors missing)")
        lm_scale = head.pop("lm_scale", None)
        model = cls(ckpt.model, rm_meta.get("dropout", 0.0) if dropout is None else dropout, rm_meta["bias"], rm_meta["std"],
                    None if lm_scale is None else float(lm_scale.reshape(()).item()))
        model.head.load_state_dict(head)
        model.meta = ckpt.meta
        return model.to(device)


# --- the K-way loss over ranked prompts (InstructGPT §3.5) --------------------------------------
# An item is one ranked prompt: `rows` (prompt + response + EOS per response), `n_prompt` (the
# prompt's length in each row), `prompt_ids` (the prompt once, for packed rows) and `order` (the
# labeler's ranking over rows, best first); tasks/train_rm.py's Item.


def forward_items(model: RewardModel, items, pad_id: int, device: str, packed: bool = False) -> list[torch.Tensor]:
    """Raw rewards of every response of `items` -> one (K,) tensor per item. Each response is
    forwarded once: one row per response, or with `packed` one row per prompt holding the
    prompt once and its K responses (`model.reward.pack`)."""
    if packed:
        p = pack([it.prompt_ids for it in items], [[r[n:] for r, n in zip(it.rows, it.n_prompt)] for it in items], pad_id)
        p.ids, p.positions, p.segments, p.last = (x.to(device) for x in (p.ids, p.positions, p.segments, p.last))
        r = model.forward_packed(p)
    else:
        ids, lengths = pad_right([row for it in items for row in it.rows], pad_id)
        n_prompt = torch.tensor([n for it in items for n in it.n_prompt])
        r = model(ids.to(device), lengths.to(device), n_prompt.to(device))
    return list(r.split([len(it.rows) for it in items]))


def items_loss(rewards: list[torch.Tensor], items) -> tuple[torch.Tensor, float, int]:
    """The K-way loss averaged over prompts (prompts of equal K batched through `ranking_loss`).
    -> (loss, pairs ordered right, pairs)."""
    by_k = defaultdict(list)
    for i, it in enumerate(items):
        by_k[len(it.rows)].append(i)
    loss, right, pairs = 0.0, 0.0, 0
    for k, idx in by_k.items():
        r = torch.stack([rewards[i] for i in idx])  # (B_k, K)
        order = torch.tensor([items[i].order for i in idx], device=r.device)  # (B_k, K)
        lk, stats = ranking_loss(r, order)
        n_pairs = len(idx) * k * (k - 1) // 2
        loss = loss + lk * len(idx)
        right += stats["acc"].item() * n_pairs
        pairs += n_pairs
    return loss / len(items), right, pairs


@torch.no_grad()
def score_items(model: RewardModel, items, pad_id: int, device: str, batch_size: int) -> list[list[float]]:
    """Raw rewards of every response, eval mode, prompts batched by length (less padding)."""
    model.eval()
    out: list[list[float]] = [[] for _ in items]
    # packed rows compute exactly the unpacked ones when no response needed a shorter prompt
    same = [all(n == len(it.prompt_ids) for n in it.n_prompt) for it in items]
    for packed in (True, False):
        order = sorted((i for i in range(len(items)) if same[i] == packed), key=lambda i: max(map(len, items[i].rows)))
        for s in range(0, len(order), batch_size):
            ids = order[s : s + batch_size]
            for i, r in zip(ids, forward_items(model, [items[i] for i in ids], pad_id, device, packed)):
                out[i] = r.float().cpu().tolist()
    return out
