"""GPT: the decoder-only Transformer of GPT-1 (Radford et al. 2018), GPT-2 (2019) and InstructGPT (2022).

Architecture choices:
- token embeddings + learned absolute position embeddings (wte, wpe), dropout on their sum; or,
  with `pos_encoding="rope"` (not GPT's: GPT-NeoX's, Su et al. 2021), no wpe and rotary positions
  applied to each head's queries and keys, so attention scores depend on relative position;
- n_layer blocks of causal multi-head self-attention and a position-wise MLP (4 * n_embd wide,
  GELU with the tanh approximation, i.e. GPT-2's "gelu_new");
- norm_position "pre" (GPT-2): x = x + attn(ln_1(x)); x = x + mlp(ln_2(x)); a final ln_f;
  norm_position "post" (GPT-1): x = ln_1(x + attn(x)); x = ln_2(x + mlp(x)); no final LN;
- the output projection is tied to the token embedding (lm_head.weight is wte.weight);
- GPT-2 init: N(0, 0.02) everywhere, residual projections (c_proj) N(0, 0.02 / sqrt(2 * n_layer)),
  zero biases;
- attention through F.scaled_dot_product_attention (fused kernels, causal flag when unpadded);
- left-padded batches: `attention_mask` hides padded keys and positions count from each row's
  first real token, so a padded row computes exactly what the unpadded sequence would;
- an optional KV cache (`KVCache`) so decoding feeds only the new tokens.

Parameter names follow nanoGPT / Hugging Face GPT-2 so checkpoints map one to one.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn as nn
from torch.nn import functional as F


@dataclass
class GPTConfig:
    vocab_size: int = 50257
    block_size: int = 1024  # context window (tokens)
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    bias: bool = True  # biases in Linear and LayerNorm layers (GPT-2 has them)
    norm_position: str = "pre"  # "pre": GPT-2 (LN before each sublayer + final LN); "post": GPT-1 (LN after residual add, no final LN)
    layer_norm_epsilon: float = 1e-5
    pos_encoding: str = "learned"  # "learned": GPT-1/2's absolute position embeddings (wpe) | "rope": rotary (Su et al. 2021) on q, k
    rope_base: float = 10000.0  # the rotary frequencies' base (pos_encoding "rope")

    def __post_init__(self):
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"GPTConfig.{name} must be a positive integer, got {getattr(self, name)!r}")
        if self.n_embd % self.n_head:
            raise ValueError(f"GPTConfig.n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        if self.norm_position not in ("pre", "post"):
            raise ValueError(f"GPTConfig.norm_position must be 'pre' or 'post', got {self.norm_position!r}")
        if self.pos_encoding not in ("learned", "rope"):
            raise ValueError(f"GPTConfig.pos_encoding must be 'learned' or 'rope', got {self.pos_encoding!r}")
        if self.pos_encoding == "rope" and (self.n_embd // self.n_head) % 2:
            raise ValueError(f"GPTConfig.pos_encoding 'rope' needs an even head size, got {self.n_embd // self.n_head}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"GPTConfig.dropout must be in [0, 1), got {self.dropout!r}")

    @classmethod
    def from_dict(cls, d: dict) -> GPTConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown GPTConfig key(s): {', '.join(unknown)}")
        return cls(**d)

    def to_dict(self) -> dict:
        return asdict(self)


class KVCache:
    """Keys and values of every layer, each preallocated as (B, nh, max_T, hs); `pos` slots are filled.

    Preallocating once keeps the decode loop free of per-step concatenations.
    """

    def __init__(self, config: GPTConfig, batch_size: int, max_T: int, *, device=None, dtype=torch.float32):
        shape = (batch_size, config.n_head, max_T, config.n_embd // config.n_head)
        self.k = [torch.empty(shape, device=device, dtype=dtype) for _ in range(config.n_layer)]
        self.v = [torch.empty(shape, device=device, dtype=dtype) for _ in range(config.n_layer)]
        self.max_T = max_T
        self.pos = 0

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store this step's (B, nh, T, hs) keys/values; return all keys/values so far."""
        T, k_all, v_all = k.size(2), self.k[layer], self.v[layer]
        k_all.narrow(2, self.pos, T).copy_(k)
        v_all.narrow(2, self.pos, T).copy_(v)
        return k_all.narrow(2, 0, self.pos + T), v_all.narrow(2, 0, self.pos + T)  # (B, nh, pos + T, hs)

    def keep(self, rows: torch.Tensor) -> None:
        """Keep only these batch rows (indices into the current batch), in this order."""
        self.k = [k.index_select(0, rows) for k in self.k]
        self.v = [v.index_select(0, rows) for v in self.v]


def attention_mask_for(
    attention_mask: torch.Tensor | None, T: int, past: int, device
) -> tuple[torch.Tensor | None, bool]:
    """(attn_mask, is_causal) for SDPA: queries are the T new tokens, keys the past + T tokens.

    attn_mask is bool, True = may attend. Without padding we avoid building any mask. A 4-D
    attention_mask (B, 1, T, past + T) is already that mask and is used as given.
    """
    if attention_mask is not None and attention_mask.dim() == 4:
        return attention_mask.bool(), False
    if attention_mask is None and (past == 0 or T == 1):
        return None, past == 0 and T > 1  # plain causal, or one new token that may see every cached key
    if attention_mask is not None and T == 1:
        return attention_mask.bool()[:, None, None, :], False  # (B, 1, 1, past + 1): only padded keys hidden
    i = torch.arange(past, past + T, device=device)[:, None]  # query positions
    j = torch.arange(past + T, device=device)[None, :]  # key positions
    allowed = j <= i  # (T, past + T) causal
    if attention_mask is None:
        return allowed, False
    allowed = allowed & attention_mask.bool()[:, None, :]  # (B, T, past + T) hide padded keys
    allowed = allowed | (j == i)  # a padding query still sees itself: an all-masked row would be NaN
    return allowed[:, None], False  # (B, 1, T, past + T)


class Ragged:
    """Right-padded rows (N, T) held as their M real tokens side by side, row after row: the
    per-token layers (projections, MLP, LayerNorms) run on M tokens instead of N x T, and attention
    scatters them back into (N, T) with zeros in the padding, which no real token attends to
    (attention is causal and the padding is on the right)."""

    def __init__(self, lengths: torch.Tensor, T: int):
        self.N, self.T = lengths.numel(), T
        self.keep = torch.arange(T, device=lengths.device)[None, :] < lengths[:, None]  # (N, T)
        self.index = self.keep.flatten().nonzero().squeeze(1)  # (M,) flat positions of the real tokens

    def pad(self, x: torch.Tensor) -> torch.Tensor:
        """(M, D) -> (N, T, D), zeros at the padding."""
        return x.new_zeros(self.N * self.T, x.size(-1)).index_copy_(0, self.index, x).view(self.N, self.T, -1)

    def unpad(self, x: torch.Tensor) -> torch.Tensor:
        """(N, T, D) -> (M, D)."""
        return x.reshape(self.N * self.T, -1).index_select(0, self.index)


def rope_tables(position_ids: torch.Tensor, head_size: int, base: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of the rotary angles position x base^(-2i/head_size), as (1 or B, 1, T, head_size)
    for q and k of shape (B, nh, T, head_size); `position_ids` (T,) or (B, T)."""
    inv_freq = base ** (-torch.arange(0, head_size, 2, device=position_ids.device, dtype=torch.float32) / head_size)
    angles = position_ids.float()[..., None] * inv_freq  # (..., T, hs/2)
    angles = torch.cat([angles, angles], dim=-1)
    if angles.dim() == 2:
        angles = angles[None]
    return angles.cos()[:, None], angles.sin()[:, None]


def apply_rope(x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Rotate each pair (x_i, x_{i + hs/2}) of the last dimension by its angle (GPT-NeoX's layout)."""
    cos, sin = rope
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos.to(x.dtype) + torch.cat([-x2, x1], dim=-1) * sin.to(x.dtype)


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig, layer_idx: int):
        super().__init__()
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)  # q, k, v for all heads at once
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.n_head = config.n_head
        self.dropout = config.dropout
        self.layer_idx = layer_idx

    def forward(self, x, attn_mask=None, is_causal=True, kv_cache: KVCache | None = None, ragged: Ragged | None = None, rope=None):
        qkv = self.c_attn(x)  # (B, T, 3C), or (M, 3C) with `ragged`
        if ragged is not None:
            qkv = ragged.pad(qkv)
        B, T, C = qkv.size(0), qkv.size(1), qkv.size(2) // 3
        qkv = qkv.view(B, T, 3, self.n_head, C // self.n_head)  # (B, T, 3, nh, hs)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # 3 x (B, nh, T, hs)
        if rope is not None:  # rotary positions: the cache holds rotated keys
            q, k = apply_rope(q, rope), apply_rope(k, rope)
        if kv_cache is not None:
            k, v = kv_cache.update(self.layer_idx, k, v)  # (B, nh, past + T, hs)
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, dropout_p=self.dropout if self.training else 0.0, is_causal=is_causal
        )  # (B, nh, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, T, C) heads side by side
        if ragged is not None:
            y = ragged.unpad(y)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        # tanh approximation: what GPT-2 was trained with (HF "gelu_new"), in one fused kernel
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x), approximate="tanh")))


class Block(nn.Module):
    def __init__(self, config: GPTConfig, layer_idx: int):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon, bias=config.bias)
        self.attn = CausalSelfAttention(config, layer_idx)
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon, bias=config.bias)
        self.mlp = MLP(config)
        self.pre_norm = config.norm_position == "pre"

    def forward(self, x, attn_mask=None, is_causal=True, kv_cache=None, ragged: Ragged | None = None, rope=None):
        if self.pre_norm:  # GPT-2: the residual stream itself is never normalised
            x = x + self.attn(self.ln_1(x), attn_mask, is_causal, kv_cache, ragged, rope)
            return x + self.mlp(self.ln_2(x))
        x = self.ln_1(x + self.attn(x, attn_mask, is_causal, kv_cache, ragged, rope))  # GPT-1: normalise after each add
        return self.ln_2(x + self.mlp(x))


class GPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.rope = config.pos_encoding == "rope"
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(config.vocab_size, config.n_embd),
                **({} if self.rope else {"wpe": nn.Embedding(config.block_size, config.n_embd)}),
                drop=nn.Dropout(config.dropout),
                h=nn.ModuleList([Block(config, i) for i in range(config.n_layer)]),
                # post-LN blocks already end in a LayerNorm, so GPT-1 has no final one
                ln_f=nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon, bias=config.bias)
                if config.norm_position == "pre"
                else nn.Identity(),
            )
        )
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.transformer.wte.weight = self.lm_head.weight  # weight tying (Press & Wolf 2017)

        self.apply(self._init_weights)
        # GPT-2: scale residual projections by 1/sqrt(N), N = 2 residual adds per layer
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module):
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_params(self) -> int:
        """Number of parameters, the tied embedding counted once."""
        return sum(p.numel() for p in self.parameters())

    def hidden_states(self, idx, *, attention_mask=None, position_ids=None, kv_cache: KVCache | None = None):
        """Final hidden states (B, T, C), after ln_f for pre-LN. Heads (LM, classifier, reward, value) read these.

        idx: (B, T) token ids, the new tokens only when `kv_cache` holds earlier ones.
        attention_mask: (B, past + T) of 1 = real token, 0 = (left) padding; padded keys are never attended.
            Right padding needs none (causal attention never looks right) and keeps the fast causal kernel.
            Or (B, 1, T, past + T) of True = query t may attend key s: any pattern (e.g. several
            continuations of one cached context side by side, each seeing only itself), with
            explicit position_ids; the row may then be longer than block_size, its positions not.
        position_ids: (B, T) or (T,); by default counted from each row's first real token.
        """
        B, T = idx.size()
        past = kv_cache.pos if kv_cache is not None else 0
        tree = attention_mask is not None and attention_mask.dim() == 4
        if tree:
            if position_ids is None:
                raise ValueError("a 4-D attention_mask needs explicit position_ids")
            if attention_mask.shape != (B, 1, T, past + T):
                raise ValueError(f"attention_mask has shape {tuple(attention_mask.shape)}, expected {(B, 1, T, past + T)}")
            if T and int(position_ids.max()) >= self.config.block_size:
                raise ValueError(f"position {int(position_ids.max())} exceeds the model's block_size of {self.config.block_size}")
        elif past + T > self.config.block_size:
            raise ValueError(
                f"sequence of {past + T} tokens exceeds the model's block_size of {self.config.block_size}"
            )
        elif attention_mask is not None and attention_mask.shape != (B, past + T):
            raise ValueError(f"attention_mask has shape {tuple(attention_mask.shape)}, expected {(B, past + T)}")
        if kv_cache is not None and past + T > kv_cache.max_T:
            raise ValueError(f"KV cache holds {kv_cache.max_T} tokens, {past + T} needed")
        if position_ids is None:
            if attention_mask is None:
                position_ids = torch.arange(past, past + T, device=idx.device)  # (T,)
            else:  # left padding: the first real token is position 0
                position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)[:, past:]  # (B, T)
        x, rope = self.embed(idx, position_ids), self.rope_for(position_ids)  # (B, T, C)
        attn_mask, is_causal = attention_mask_for(attention_mask, T, past, idx.device)
        for block in self.transformer.h:
            x = block(x, attn_mask, is_causal, kv_cache, None, rope)
        if kv_cache is not None:
            kv_cache.pos += T
        return self.transformer.ln_f(x)

    def ragged_hidden_states(self, idx: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, Ragged]:
        """hidden_states(idx) at the real tokens of right-padded rows only: (M, C), row 0's tokens
        first, and their layout. The padding costs no per-token work (fine-tuning batches of short
        rows are 15-30% padding). The same values as hidden_states(idx)[ragged.keep], up to the
        last bits where a matrix product's blocking depends on its row count."""
        N, T = idx.size()
        if T > self.config.block_size:
            raise ValueError(f"sequence of {T} tokens exceeds the model's block_size of {self.config.block_size}")
        r = Ragged(lengths, T)
        pos = torch.arange(T, device=idx.device)
        # rotary positions enter in attention, where the rows are padded back to (N, T)
        x, rope = self.embed(idx[r.keep], pos.expand(N, T)[r.keep]), self.rope_for(pos)  # (M, C)
        for block in self.transformer.h:
            x = block(x, None, True, None, r, rope)
        return self.transformer.ln_f(x), r

    def embed(self, idx: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        """The blocks' input: the token embedding, plus the position embedding when positions are
        learned (rotary ones enter in attention instead), after dropout."""
        x = self.transformer.wte(idx)
        return self.transformer.drop(x if self.rope else x + self.transformer.wpe(position_ids))

    def rope_for(self, position_ids: torch.Tensor):
        """The rotary tables of `position_ids` for attention; None with learned positions."""
        if not self.rope:
            return None
        return rope_tables(position_ids, self.config.n_embd // self.config.n_head, self.config.rope_base)

    def forward(self, idx, targets=None, *, attention_mask=None, position_ids=None, kv_cache: KVCache | None = None):
        """Logits (B, T, vocab); with `targets` (B, T) also the mean cross-entropy, as (logits, loss).

        targets[b, t] is the token that should follow idx[b, t] (already shifted); -100 is ignored.
        """
        x = self.hidden_states(idx, attention_mask=attention_mask, position_ids=position_ids, kv_cache=kv_cache)
        logits = self.lm_head(x)  # (B, T, vocab)
        if targets is None:
            return logits
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-100)
        return logits, loss

    def token_logprobs(self, idx, targets):
        """log p(targets[b, t] | idx[b, :t+1]) (B, T) in fp32, 0 where targets is -100: the values
        of log_softmax(forward(idx)) at the targets, bit for bit, with the (tokens x vocab) head and
        its softmax only at the positions that have a target (a response's, not its prompt's or the
        padding's). Its backward sums the head's gradient over fewer rows, so a training step on it
        differs from one on forward() in the last bits; the stages use it where nothing is trained."""
        x = self.hidden_states(idx)
        keep = targets != -100
        lp = torch.log_softmax(self.lm_head(x[keep]).float(), dim=-1).gather(-1, targets[keep][:, None]).squeeze(-1)
        return torch.zeros(targets.shape, dtype=lp.dtype, device=lp.device).masked_scatter(keep, lp)

    def configure_optimizers(self, weight_decay: float, lr: float, betas: tuple[float, float], device_type: str):
        """AdamW; weight decay only on matmul weights (not biases, LayerNorms or the wte/wpe embeddings)."""
        embeddings = {id(m.weight) for name, m in self.transformer.items() if name in ("wte", "wpe")}
        params = [p for p in self.parameters() if p.requires_grad]
        decay = [p for p in params if p.dim() >= 2 and id(p) not in embeddings]
        no_decay = [p for p in params if p.dim() < 2 or id(p) in embeddings]
        groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        fused = device_type == "cuda" and "fused" in inspect.signature(torch.optim.AdamW).parameters
        return torch.optim.AdamW(groups, lr=lr, betas=betas, **({"fused": True} if fused else {}))
