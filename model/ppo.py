"""InstructGPT's PPO as an algorithm (Ouyang et al. 2022 §3.5; Schulman et al. 2017), and the
critic-free estimators beside it (RLOO, GRPO): rollout batches, experience (log-probs, KL, values,
advantages), the minibatch step and one update. Plain PyTorch; the per-token math is `model.rl`.

`pc` is the ppo stage's settings (`tasks/schema.py` PPOConfig, read by attribute): temperature,
kl_estimator, estimator, group_size, value, gamma, lam, whiten, clip, value_clip, vf_coef,
ptx_coef, grad_clip, episodes, minibatch, ppo_epochs, seed, lr, value_lr. `ptx` is anything with
`batch(index) -> (x, y)`: pre-training windows for PPO-ptx.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from model import rl
from model.gpt import GPT
from model.instruct import pad_right, response_logprobs, response_targets
from model.reward import RewardModel
from model.train import apply_gradients, check_finite, generator

# random streams: each random draw of an update is a pure function of (seed, stream, index)
SAMPLE, MINIBATCH, PTX = 1, 2, 3


# --- rollouts ----------------------------------------------------------------------------------


@dataclass
class Batch:
    """Episodes as right-padded rows (prompt + response) and response-layout (N, R) tensors:
    column j is response token j; `pos` is the position in `ids` whose output predicts it."""

    rows: list[dict]
    texts: list[str]
    ids: torch.Tensor  # (N, T) right-padded prompt + response
    lengths: torch.Tensor  # (N,) real tokens per row
    pos: torch.Tensor  # (N, R)
    targets: torch.Tensor  # (N, R) response token ids, -100 on padding
    eos: torch.Tensor  # (N,) bool: the response ended in EOS
    data: dict[str, torch.Tensor] = field(default_factory=dict)  # scores, log-probs, values, advantages...

    @property
    def mask(self) -> torch.Tensor:
        return self.targets != -100

    def select(self, idx: torch.Tensor) -> Batch:
        """The rows idx, cut to their longest row and response (less padding to compute)."""
        T = int(self.lengths[idx].max())
        R = int(self.mask[idx].sum(1).max())
        sub = Batch([self.rows[i] for i in idx.tolist()], [self.texts[i] for i in idx.tolist()], self.ids[idx, :T],
                    self.lengths[idx], self.pos[idx, :R].clamp(max=T - 1), self.targets[idx, :R], self.eos[idx])
        sub.data = {k: v[idx, :R] if v.dim() == 2 else v[idx] for k, v in self.data.items()}
        return sub


def make_batch(rows: list[dict], prompts: list[list[int]], responses: list[dict], pad_id: int, device: str) -> Batch:
    ids, lengths = pad_right([p + r["tokens"] for p, r in zip(prompts, responses)], pad_id)
    n_prompt = torch.tensor([len(p) for p in prompts])
    T, R = ids.size(1), max(len(r["tokens"]) for r in responses)
    pos = (n_prompt[:, None] - 1 + torch.arange(R)[None, :]).clamp(max=T - 1)  # (N, R)
    targets = response_targets(ids, lengths, n_prompt).gather(1, pos)  # -100 past each response
    eos = torch.tensor([r["eos"] for r in responses])
    return Batch(rows, [r["text"] for r in responses], ids.to(device), lengths.to(device), pos.to(device),
                 targets.to(device), eos.to(device))


def policy_forward(policy: GPT, batch: Batch, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits (N, R, V) at the sampling temperature, trunk states (N, R, C)) at the response positions."""
    h = policy.hidden_states(batch.ids)  # (N, T, C)
    h = h.gather(1, batch.pos[..., None].expand(-1, -1, h.size(-1)))  # (N, R, C)
    return policy.lm_head(h) / temperature, h


def value_forward(critic: RewardModel, batch: Batch, h_policy: torch.Tensor | None) -> torch.Tensor:
    """V (N, R) in normalised reward units: the critic's head on its own trunk, or on the policy's
    states h_policy when the trunk is shared."""
    raw = critic.head(h_policy).squeeze(-1) if h_policy is not None else critic.scores(batch.ids).gather(1, batch.pos)
    return (raw - critic.bias) / critic.std


@torch.no_grad()
def experience(batch: Batch, policy: GPT, ref: GPT, critic: RewardModel | None, score: torch.Tensor, pc, beta: float) -> dict:
    """Fill the batch with old log-probs, reference log-probs, values, advantages and returns
    for the episodes' scores (N,); -> the rollout's statistics. critic None (rloo, grpo): one
    advantage per sequence from its group (pc.group_size consecutive rows), no values or returns."""
    mask, d = batch.mask, batch.data
    logits, h = policy_forward(policy, batch, pc.temperature)
    d["old_logprobs"] = response_logprobs(logits, batch.targets)
    d["ref_logprobs"] = response_logprobs(policy_forward(ref, batch, pc.temperature)[0], batch.targets)
    k1 = rl.kl_k1(d["old_logprobs"], d["ref_logprobs"], mask)
    k3 = rl.kl_k3(d["old_logprobs"], d["ref_logprobs"], mask)
    kl = k1 if pc.kl_estimator == "k1" else k3
    n = mask.sum(1).float()
    if critic is None:
        reward = rl.sequence_rewards(score, kl, mask, beta)
        d["advantages"] = rl.sequence_advantages(rl.ADVANTAGE_ESTIMATORS[pc.estimator](reward, pc.group_size), mask)
        return {
            "score": score.mean().item(), "kl": k1.sum(1).mean().item(), "kl_k3": k3.sum(1).mean().item(),
            "non_score_reward": (-beta * kl.sum(1)).mean().item(), "reward": reward.mean().item(),
            "entropy": rl.entropy(logits, mask).item(), "response_len": n.mean().item(), "eos_rate": batch.eos.float().mean().item(),
            "explained_var": None, "zero_std_share": rl.zero_std_share(score, pc.group_size),
        }
    d["old_values"] = value_forward(critic, batch, h if pc.value == "shared" else None) * mask
    rewards = rl.token_rewards(score, kl, mask, beta)
    adv, d["returns"] = rl.gae(rewards, d["old_values"], mask, pc.gamma, pc.lam)
    d["advantages"] = rl.whiten(adv, mask) if pc.whiten else adv
    return {
        "score": score.mean().item(), "kl": k1.sum(1).mean().item(), "kl_k3": k3.sum(1).mean().item(),
        "non_score_reward": (-beta * kl.sum(1)).mean().item(), "reward": rewards.sum(1).mean().item(),
        "entropy": rl.entropy(logits, mask).item(), "response_len": n.mean().item(), "eos_rate": batch.eos.float().mean().item(),
        "explained_var": _finite(rl.explained_variance(d["old_values"], d["returns"], mask)),
        "zero_std_share": None,  # one sample per prompt: no groups
    }


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None  # JSON and the curve file have no nan


# --- the PPO update ----------------------------------------------------------------------------


@dataclass
class Learner:
    """What the update trains: the policy, the value model (or head) and their optimizers
    (critic and value_opt None for the critic-free estimators)."""

    policy: GPT
    critic: RewardModel | None
    policy_opt: torch.optim.Optimizer
    value_opt: torch.optim.Optimizer | None
    shared: bool

    def value_params(self) -> list[torch.nn.Parameter]:
        if self.critic is None:
            return []
        return list(self.critic.head.parameters()) if self.shared else list(self.critic.parameters())


def ppo_step(learner: Learner, mb: Batch, pc, ptx: tuple[torch.Tensor, torch.Tensor] | None) -> dict[str, float]:
    """One gradient step on a minibatch: clipped surrogate + vf_coef · clipped value loss (no value
    loss without a critic) (+ ptx_coef · next-token loss on the pre-training windows `ptx`)."""
    mask, d = mb.mask, mb.data
    critic = learner.critic
    learner.policy.train()
    if critic is not None:
        critic.train()
    logits, h = policy_forward(learner.policy, mb, pc.temperature)
    logprobs = response_logprobs(logits, mb.targets)
    pg_loss, pg = rl.policy_loss(logprobs, d["old_logprobs"], d["advantages"], mask, pc.clip)
    if critic is not None:
        values = value_forward(critic, mb, h if learner.shared else None)
        vf_loss, vf = rl.value_loss(values, d["old_values"], d["returns"], mask, pc.value_clip)
        loss = pg_loss + pc.vf_coef * vf_loss
        stats = {"policy_loss": pg_loss.item(), "value_loss": vf_loss.item(), "clip_frac": pg["clip_frac"].item(),
                 "approx_kl": pg["approx_kl"].item(), "vf_clip_frac": vf["vf_clip_frac"].item()}
    else:
        loss = pg_loss
        stats = {"policy_loss": pg_loss.item(), "clip_frac": pg["clip_frac"].item(), "approx_kl": pg["approx_kl"].item()}
    if ptx is not None:
        _, ptx_loss = learner.policy(ptx[0], ptx[1])
        loss = loss + pc.ptx_coef * ptx_loss
        stats["ptx_loss"] = ptx_loss.item()
    check_finite(loss, f"ppo: non-finite loss ({loss.item()}); lower ppo.lr")
    loss.backward()
    apply_gradients(learner.policy_opt, learner.policy.parameters(), pc.grad_clip)
    if learner.value_opt is not None:
        apply_gradients(learner.value_opt, learner.value_params(), pc.grad_clip)
    return stats


def train_update(learner: Learner, batch: Batch, pc, update: int, ptx) -> dict[str, float]:
    """ppo_epochs passes of shuffled minibatches over one rollout batch; mean statistics."""
    n_mb = pc.episodes // pc.minibatch
    sums: dict[str, float] = {}
    for epoch in range(pc.ppo_epochs):
        order = torch.randperm(pc.episodes, generator=generator(pc.seed, MINIBATCH, update * pc.ppo_epochs + epoch))
        for m in range(n_mb):
            idx = order[m * pc.minibatch : (m + 1) * pc.minibatch]
            windows = ptx.batch((update * pc.ppo_epochs + epoch) * n_mb + m) if ptx is not None else None
            for k, v in ppo_step(learner, batch.select(idx.to(batch.ids.device)), pc, windows).items():
                sums[k] = sums.get(k, 0.0) + v
    return {k: v / (pc.ppo_epochs * n_mb) for k, v in sums.items()}


def optimizers(policy: GPT, critic: RewardModel | None, pc, device: str) -> tuple[torch.optim.Optimizer, torch.optim.Optimizer | None]:
    dev = "cuda" if device.startswith("cuda") else "cpu"
    policy_opt = policy.configure_optimizers(0.0, pc.lr, (0.9, 0.95), dev)
    if critic is None:
        value_opt = None
    elif pc.value == "shared":
        value_opt = torch.optim.AdamW(critic.head.parameters(), lr=pc.value_lr, betas=(0.9, 0.95), weight_decay=0.0)
    else:
        value_opt = critic.gpt.configure_optimizers(0.0, pc.value_lr, (0.9, 0.95), dev)
        value_opt.add_param_group({"params": list(critic.head.parameters()), "weight_decay": 0.0})
    return policy_opt, value_opt


