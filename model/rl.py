"""The math of InstructGPT's PPO step (Ouyang et al. 2022 §3.5; Schulman et al. 2017): plain
PyTorch, no I/O, unit-tested against hand-computed values.

Every per-token tensor is (N, R) in RESPONSE layout: column j is the j-th response token of a
row (the EOS included), `mask` (N, R) is True on real response tokens, a prefix of each row
(right padding after it). The functions also accept any other layout whose mask marks the
response tokens (e.g. a full right-padded sequence with the prompt masked), as long as a row's
response tokens are contiguous and nothing after them is real.

- KL estimators per token, for samples from the policy π: k1 = log π − log π_ref (unbiased,
  can go negative by noise) and k3 = (r − 1) − log r with r = π_ref / π (unbiased, never
  negative, lower variance; Schulman, "Approximating KL divergence", 2020);
- `token_rewards`: −β·KL on every response token, the sequence score added at the row's LAST
  real token, nothing on padding (the reward-on-a-pad-token bug of trl#3750 cannot happen);
- `gae`: generalised advantage estimation (Schulman et al. 2016) with γ, λ; the state after a
  row's last token is terminal (value 0);
- `whiten`: masked advantage whitening (mean 0, std 1 over the batch's real tokens);
- `policy_loss`: the clipped surrogate, with the clip fraction and an approximate KL (k3 of
  the sampling policy against the current one);
- `value_loss`: the clipped value loss of PPO2 / lm-human-preferences;
- `entropy`, `explained_variance`: diagnostics;
- `KLController`: fixed β, or lm-human-preferences' adaptive β toward a target KL;
- `dpo_loss`: direct preference optimisation (Rafailov et al. 2023; IPO, Azar et al. 2023) on
  sequence log-probabilities, with its implicit rewards;
- `best_of_n_kl`: the analytic KL of best-of-n sampling, log n − (n − 1)/n (Stiennon et al. 2020);
- critic-free estimators over GROUPS of k samples of one prompt, the rows of a group consecutive
  (rows i·k .. i·k + k − 1 are prompt i's; N = prompts·k): `sequence_rewards` (score − β·Σ KL,
  the KL in the reward as PPO's), `rloo_advantages` (RLOO, Ahmadian et al. 2024),
  `grpo_advantages` (GRPO, Shao et al. 2024), `zero_std_share` (the share of groups whose rewards
  all tie, so their advantages, and their gradient, are 0: TRL's frac_reward_zero_std), and
  `ADVANTAGE_ESTIMATORS`, name -> function, for the stage's one `estimator` setting. A sequence's
  advantage is then broadcast to every response token of its row (`sequence_advantages`).

Means over tokens are taken over all real tokens of the batch together (token-weighted), as in
lm-human-preferences and TRL.
"""

from __future__ import annotations

import torch


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of x over the True entries of mask (all rows together)."""
    m = mask.to(x.dtype)
    return (x * m).sum() / m.sum().clamp(min=1)


def masked_var(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Variance (biased: divided by the count) of x over the True entries of mask."""
    return masked_mean((x - masked_mean(x, mask)) ** 2, mask)


def whiten(x: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """(x − mean) / std over the masked entries; 0 on padding."""
    return (x - masked_mean(x, mask)) * torch.rsqrt(masked_var(x, mask) + eps) * mask


def kl_k1(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """log π − log π_ref per token (0 on padding)."""
    return (logprobs - ref_logprobs) * mask


def kl_k3(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(r − 1) − log r with r = π_ref / π, per token (0 on padding); >= 0."""
    log_r = ref_logprobs - logprobs
    return (torch.expm1(log_r) - log_r) * mask


KL_ESTIMATORS = {"k1": kl_k1, "k3": kl_k3}


def last_index(mask: torch.Tensor) -> torch.Tensor:
    """(N,) column of each row's last True entry (every row needs one)."""
    return mask.long().cumsum(1).argmax(1)  # the cumulative count first reaches its maximum there


def token_rewards(score: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor, beta: float) -> torch.Tensor:
    """Per-token rewards (N, R): −β·kl on every response token, plus `score` (N,) at each row's
    last real token; exactly 0 on padding."""
    rewards = -beta * kl * mask
    rows = torch.arange(score.size(0), device=score.device)
    rewards[rows, last_index(mask)] += score.to(rewards.dtype)
    return rewards


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Advantages and returns (N, R) by GAE; 0 on padding.

    δ_t = r_t + γ·V_{t+1} − V_t with V = 0 after a row's last token;
    A_t = δ_t + γλ·A_{t+1}; returns = A + V (the value targets, TD(λ)).
    """
    m = mask.to(values.dtype)
    R = rewards.size(1)
    adv = torch.zeros_like(values)
    next_adv = torch.zeros_like(values[:, 0])
    for t in reversed(range(R)):
        m_next = m[:, t + 1] if t + 1 < R else torch.zeros_like(next_adv)
        v_next = values[:, t + 1] * m_next if t + 1 < R else torch.zeros_like(next_adv)
        delta = rewards[:, t] + gamma * v_next - values[:, t]
        next_adv = delta + gamma * lam * m_next * next_adv
        adv[:, t] = next_adv
    adv = adv * m
    return adv, (adv + values) * m


def policy_loss(
    logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, clip: float
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO's clipped surrogate, as a loss: mean over tokens of max(−A·ρ, −A·clip(ρ, 1 ± ε)),
    ρ = π/π_old. -> (loss, {clip_frac: share of tokens where the clip binds, approx_kl: mean k3
    of π_old against π})."""
    log_ratio = logprobs - old_logprobs
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1.0 - clip, 1.0 + clip)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    with torch.no_grad():
        stats = {"clip_frac": masked_mean((clipped > unclipped).float(), mask),
                 "approx_kl": masked_mean(torch.expm1(log_ratio) - log_ratio, mask)}
    return loss, stats


def value_loss(
    values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor, clip: float
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """0.5 · mean over tokens of max((V − G)², (V_clipped − G)²), V_clipped = V_old + clip(V − V_old, ±ε).
    -> (loss, {vf_clip_frac})."""
    clipped_values = old_values + (values - old_values).clamp(-clip, clip)
    unclipped = (values - returns) ** 2
    clipped = (clipped_values - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(unclipped, clipped), mask)
    with torch.no_grad():
        stats = {"vf_clip_frac": masked_mean((clipped > unclipped).float(), mask)}
    return loss, stats


def entropy(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean entropy (nats) of the distributions `logits` (N, R, V) over the masked tokens."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return masked_mean(-(logp.exp() * logp).sum(-1), mask)


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> float:
    """1 − Var(G − V) / Var(G) over the masked tokens: 1 is a perfect critic, 0 a constant one."""
    var = masked_var(returns, mask)
    return float(1.0 - masked_var(returns - values, mask) / var) if var > 0 else float("nan")


class KLController:
    """β of the KL penalty: fixed (target 0), or adaptive (lm-human-preferences):
    err = clip(KL / target − 1, ±0.2); β ← β·(1 + err·n / horizon) after n episodes at mean KL."""

    def __init__(self, beta: float, target: float = 0.0, horizon: float = 10_000):
        self.beta, self.target, self.horizon = float(beta), float(target), float(horizon)

    def update(self, kl: float, n: int) -> float:
        """Adapt β to the measured mean KL (nats per response) of n episodes; returns β."""
        if self.target > 0:
            err = min(max(kl / self.target - 1.0, -0.2), 0.2)
            self.beta *= 1.0 + err * n / self.horizon
        return self.beta


DPO_LOSSES = ("sigmoid", "ipo")


def dpo_loss(
    chosen: torch.Tensor, rejected: torch.Tensor, ref_chosen: torch.Tensor, ref_rejected: torch.Tensor,
    beta: float, loss_type: str = "sigmoid",
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """DPO's loss over a batch of preference pairs: log-probabilities (B,) of the chosen and the
    rejected response under the policy and the frozen reference.

    h = (log π(y_w) − log π_ref(y_w)) − (log π(y_l) − log π_ref(y_l));
    sigmoid (DPO): −log σ(β·h), mean over pairs;  ipo (IPO): (h − 1/(2β))², mean over pairs
    (IPO is meant for log-probabilities averaged over tokens: the caller passes those).
    The implicit rewards are β·(log π − log π_ref) of each response.
    -> (loss, {chosen_reward, rejected_reward (B,), reward_acc: share with chosen > rejected,
    reward_margin: mean chosen − rejected}).
    """
    if loss_type not in DPO_LOSSES:
        raise ValueError(f"loss_type={loss_type!r}: expected one of {', '.join(DPO_LOSSES)}")
    h = (chosen - ref_chosen) - (rejected - ref_rejected)
    if loss_type == "sigmoid":
        loss = -torch.nn.functional.logsigmoid(beta * h).mean()
    else:
        loss = ((h - 1.0 / (2.0 * beta)) ** 2).mean()
    with torch.no_grad():
        rc, rr = beta * (chosen - ref_chosen), beta * (rejected - ref_rejected)
        stats = {"chosen_reward": rc, "rejected_reward": rr, "reward_acc": (rc > rr).float().mean(),
                 "reward_margin": (rc - rr).mean()}
    return loss, stats


def best_of_n_kl(n: int) -> float:
    """KL(π_best-of-n ‖ π) = log n − (n − 1)/n nats, for a continuous reward without ties."""
    import math

    return math.log(n) - (n - 1) / n


# --- critic-free estimators: a baseline from the other samples of the same prompt ---------------


def groups(x: torch.Tensor, k: int) -> torch.Tensor:
    """(N,) -> (N / k, k): row i·k + j is sample j of group i. k >= 2, N a multiple of k."""
    if k < 2 or x.dim() != 1 or x.numel() % k:
        raise ValueError(f"group size k={k}: need k >= 2 and a 1-D tensor of a multiple of k values (got shape {tuple(x.shape)})")
    return x.view(-1, k)


def tied_groups(rewards: torch.Tensor, k: int) -> torch.Tensor:
    """(N / k,) bool: the group's k rewards are all exactly equal."""
    g = groups(rewards, k)
    return g.amax(1) == g.amin(1)


def sequence_rewards(score: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor, beta: float) -> torch.Tensor:
    """(N,) R = score − β·Σ_t KL_t over each row's response tokens: the sum over a row of
    `token_rewards` (PPO's reward), as one number per sequence."""
    return score.to(kl.dtype) - beta * (kl * mask).sum(1)


def rloo_advantages(rewards: torch.Tensor, k: int) -> torch.Tensor:
    """RLOO (Ahmadian et al. 2024): A_i = R_i − mean of the OTHER k − 1 rewards of i's group
    (= k/(k − 1)·(R_i − group mean)); an unbiased REINFORCE baseline without a critic.
    `rewards` (N,) in groups of k consecutive rows; a group whose rewards all tie gets exactly 0."""
    g = groups(rewards, k)
    adv = g - (g.sum(1, keepdim=True) - g) / (k - 1)
    return torch.where(tied_groups(rewards, k)[:, None], torch.zeros_like(adv), adv).reshape(-1)


def grpo_advantages(rewards: torch.Tensor, k: int, eps: float = 1e-6) -> torch.Tensor:
    """GRPO (Shao et al. 2024, outcome supervision): A_i = (R_i − group mean) / (group std + eps),
    the std UNBIASED (divided by k − 1), as the GRPO paper's and TRL's (`Tensor.std`).
    `rewards` (N,) in groups of k consecutive rows; a group whose rewards all tie gets exactly 0."""
    g = groups(rewards, k)
    adv = (g - g.mean(1, keepdim=True)) / (g.std(1, keepdim=True) + eps)
    return torch.where(tied_groups(rewards, k)[:, None], torch.zeros_like(adv), adv).reshape(-1)


def zero_std_share(rewards: torch.Tensor, k: int) -> float:
    """Share of the groups of k whose rewards all tie: their advantages are 0 under RLOO and GRPO,
    so they give the policy no gradient (TRL's frac_reward_zero_std)."""
    return tied_groups(rewards, k).float().mean().item()


def sequence_advantages(adv: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """A sequence's advantage (N,) on every response token of its row (N, R); 0 on padding."""
    return adv[:, None] * mask


ADVANTAGE_ESTIMATORS = {"rloo": rloo_advantages, "grpo": grpo_advantages}
