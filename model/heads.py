"""Task heads for GPT-1 fine-tuning (Radford et al. 2018, §3.2-3.3), on top of `GPT.hidden_states`.

Every example is V token sequences ("views") that each end in `<|extract|>`, right-padded:
classification and entailment have V = 1, similarity V = 2 (both orders), multiple choice
V = n_choices (one per answer). The head reads the final hidden state at each view's extract
token, h: (B, V, C), and then
- kind "classify": sums the views element-wise (GPT-1 similarity: h(a;b) + h(b;a), so the
  result does not depend on the order; a no-op for V = 1), dropout, Linear(C, K) -> (B, K);
- kind "choice": dropout, Linear(C, 1) on every view -> (B, V) scores, softmax over answers.

Right padding and a causal model: tokens after `<|extract|>` cannot change its hidden state,
so no attention mask is needed and positions count from 0 in every row.

The auxiliary language-modelling loss L1 is computed on the same sequences only when asked
for (`lm=True`), so with lm_coef = 0 the LM head is never run and gets no gradient from it.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torch.nn import functional as F

from model.gpt import GPT

KINDS = ("classify", "choice")


class TaskHead(nn.Module):
    """Dropout + one Linear layer on the extract-token states: K class logits or one score per answer."""

    def __init__(self, n_embd: int, kind: str, n_out: int, dropout: float = 0.1):
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"TaskHead kind must be one of {', '.join(KINDS)}, got {kind!r}")
        if kind == "choice" and n_out != 1:
            raise ValueError(f"a 'choice' head scores each answer with one number (n_out=1), got n_out={n_out}")
        if n_out < 1:
            raise ValueError(f"TaskHead n_out must be positive, got {n_out}")
        self.kind, self.n_out, self.p = kind, n_out, dropout
        self.dropout = nn.Dropout(dropout)
        self.proj = nn.Linear(n_embd, n_out)
        nn.init.normal_(self.proj.weight, std=0.02)  # GPT-2 init, like the body
        nn.init.zeros_(self.proj.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """h: (B, V, C) extract states -> (B, K) logits ("classify") or (B, V) answer scores ("choice")."""
        if self.kind == "classify":
            return self.proj(self.dropout(h.sum(dim=1)))  # (B, K)
        return self.proj(self.dropout(h)).squeeze(-1)  # (B, V)

    def config(self) -> dict:
        return {"kind": self.kind, "n_out": self.n_out, "dropout": self.p, "n_embd": self.proj.in_features}

    def tensors(self, prefix: str = "head.") -> dict[str, torch.Tensor]:
        """The head's weights as a flat dict, for `save_checkpoint(..., extra_tensors=...)`."""
        return {prefix + k: v for k, v in self.state_dict().items()}

    @classmethod
    def from_tensors(cls, config: dict, tensors: dict[str, torch.Tensor], prefix: str = "head.") -> TaskHead:
        head = cls(config["n_embd"], config["kind"], config["n_out"], config["dropout"])
        head.load_state_dict({k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)})
        return head


class TaskModel(nn.Module):
    """A GPT and a TaskHead: (B, V, T) views -> task logits, and optionally the LM loss L1."""

    def __init__(self, gpt: GPT, head: TaskHead):
        super().__init__()
        self.gpt, self.head = gpt, head

    def forward(self, idx: torch.Tensor, lengths: torch.Tensor, *, lm: bool = False):
        """idx: (B, V, T) right-padded token ids; lengths: (B, V) real tokens per view, the last
        being `<|extract|>`. Returns (logits, lm_loss); lm_loss is None unless `lm`.

        lm_loss is the mean next-token cross-entropy over every real token after the first.
        """
        B, V, T = idx.shape
        flat = idx.view(B * V, T)
        n = lengths.view(B * V)
        x, ragged = self.gpt.ragged_hidden_states(flat, n)  # (M, C): the real tokens only, row after row
        ends = n.cumsum(0) - 1  # each row's last token, <|extract|>, in x
        h = x[ends].view(B, V, -1)  # (B, V, C)
        logits = self.head(h)
        if not lm:
            return logits, None
        # every real token but a row's last predicts the next one; the LM head costs (tokens x vocab)
        last = torch.zeros(x.size(0), dtype=torch.bool, device=x.device)
        last[ends] = True
        rows = (~last).nonzero().squeeze(1)
        lm_loss = F.cross_entropy(self.gpt.lm_head(x[rows]), flat[ragged.keep][rows + 1])
        return logits, lm_loss
