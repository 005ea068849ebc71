"""dpo stage: direct preference optimisation (Rafailov et al. 2023) on the rankings, beside PPO.

    python -m tasks.dpo                                   # conf/ defaults: models/sft + rankings -> models/dpo
    python -m tasks.dpo dpo.loss=ipo                      # the IPO loss (Azar et al. 2023)
    python -m tasks.dpo dpo.pairs=best_vs_rest            # the top response against each other one
    python -m tasks.dpo dpo.resume=true                   # continue a killed run even with other settings (tasks/resume.py)

The policy starts from SFT; a frozen copy of SFT (`reference`, same tokenizer) is the reference,
its log-probabilities computed once, before training, for every response of the training pairs
and cached. Each ranking of K responses gives its C(K,2) ordered (chosen, rejected) pairs
(`pairs: all`, the reward model's data exactly) or K − 1 pairs of the best response against
each other one (`pairs: best_vs_rest`); a pair of two identical responses carries no preference
and is dropped (counted). Prompts are split as the reward model split them
(`tasks.train_rm.split_of` with the RM's recorded split, or train_rm's config when there is no
RM): DPO trains on the RM's training prompts only, and its implicit reward is scored on the RM's
held-out prompts against the labels and the noiseless oracle, the numbers the RM reports.

Loss (`model.rl.dpo_loss`): sigmoid (DPO; β = 0.1, TRL's default) on log-probabilities summed
over the response tokens (and EOS) only, or IPO on their per-token means. Logged every
`log_every` steps: loss, implicit-reward accuracy and margin, chosen and rejected rewards and
the policy's chosen and rejected log-probabilities (both often fall together: DPO widens the
gap, it does not promise to raise the chosen response's likelihood). Every `eval_every` steps on
held-out prompts (the RM's held-out split of `prompts_file`, never `rl_eval`): one sample per
prompt at temperature 1 — its KL to the reference (k1, nats per response), reward-model score
and oracle score, the over-optimisation curve's point — and the greedy responses' oracle score.

Batches are a pure function of (seed, epoch, step) and `trainer.pt` keeps the optimizer and
history, so a killed run started again logs the same numbers on CPU (tasks/resume.py).

Outputs: `out_dir` (checkpoint), `metrics_file`, `curve_file` (one row per logged step).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import OmegaConf

from model import rl
from model.checkpoint import load_checkpoint, save_checkpoint
from model.gpt import GPT
from model.load import from_pretrained
from model.instruct import MIN_NEW_TOKENS, encode_example, encode_prompt, pad_right, respond, response_logprobs, response_targets
from model.reward import RewardModel
from model.tokenizer import Tokenizer
from model.loop import Loop
from model.train import curve_csv, epoch_order, generator, optimizer_step, set_dropout, set_lr, warmup_cosine
from tasks import tracking
from tasks.common import InputError, atomic_write_json, atomic_write_text, resolve_device, torch_threads
from tasks.config import stage_main
from tasks.inputs import checkpoint_dir, read_prompts, read_rankings, rm_split, same_tokenizer, split_of, strict_tokenizer
from tasks.resume import Resume
from tasks.world.oracle import score as oracle_score
from tasks.schema import DPOConfig  # noqa: F401  (the section's schema lives in tasks/schema.py)




# --- input -------------------------------------------------------------------------------------


def ranked_pairs(ranking: list[int], how: str) -> list[tuple[int, int]]:
    """(chosen, rejected) response indices of one ranking (best first)."""
    if how == "best_vs_rest":
        return [(ranking[0], j) for j in ranking[1:]]
    return [(ranking[a], ranking[b]) for a in range(len(ranking)) for b in range(a + 1, len(ranking))]


@dataclass
class Pair:
    id: str
    chosen: tuple[list[int], int]  # (prompt + response + EOS ids, n_prompt)
    rejected: tuple[list[int], int]
    instruction: dict | None  # the rl_prompts row (the oracle's meta); None if unknown
    responses: tuple[str, str]


def build_pairs(df, path: Path, tok: Tokenizer, block: int, how: str, instructions: dict[str, dict]) -> tuple[list[Pair], dict]:
    """Every ranking's pairs, encoded; pairs of identical responses or ones too long are dropped."""
    out, identical, too_long = [], 0, 0
    for row in df.itertuples(index=False):
        enc = [encode_example(tok, row.prompt, r, block) for r in row.responses]
        for c, r in ranked_pairs([int(i) for i in row.ranking], how):
            if row.responses[c].strip() == row.responses[r].strip():
                identical += 1
            elif enc[c] is None or enc[r] is None:
                too_long += 1
            else:
                out.append(Pair(row.id, enc[c][:2], enc[r][:2], instructions.get(row.id), (row.responses[c], row.responses[r])))
    return out, {"identical_pairs": identical, "too_long_pairs": too_long}


# --- log-probabilities ---------------------------------------------------------------------------


def pair_logprobs(model: GPT, pairs: list[Pair], pad_id: int, device: str, mean: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(chosen, rejected) (B,) response log-probabilities (summed over response tokens, or their
    mean per token with `mean`): both sides in one forward pass; prompt tokens carry no gradient."""
    rows = [p.chosen for p in pairs] + [p.rejected for p in pairs]
    ids, lengths = pad_right([r[0] for r in rows], pad_id)
    targets = response_targets(ids, lengths, torch.tensor([r[1] for r in rows])).to(device)
    ids = ids.to(device)
    lp = response_logprobs(model(ids), targets) if torch.is_grad_enabled() else model.token_logprobs(ids, targets)
    total = lp.sum(1)
    if mean:
        total = total / (targets != -100).sum(1).clamp(min=1)
    return total[: len(pairs)], total[len(pairs) :]


@torch.no_grad()
def reference_logprobs(ref: GPT, pairs: list[Pair], pad_id: int, device: str, mean: bool, batch_size: int = 64) -> torch.Tensor:
    """(N, 2) reference log-probabilities of every pair's chosen and rejected response, once."""
    out = []
    for b in range(0, len(pairs), batch_size):
        c, r = pair_logprobs(ref, pairs[b : b + batch_size], pad_id, device, mean)
        out.append(torch.stack([c, r], 1).float().cpu())
    return torch.cat(out) if out else torch.zeros(0, 2)


@torch.no_grad()
def heldout_metrics(model: GPT, pairs: list[Pair], ref_lp: torch.Tensor, dc: DPOConfig, pad_id: int, device: str) -> dict:
    """The implicit reward on held-out pairs: agreement with the labels and with the noiseless
    oracle (pairs whose oracle scores differ), the RM's held-out numbers."""
    if not pairs:
        return {}
    model.eval()
    lp = reference_logprobs(model, pairs, pad_id, device, dc.loss == "ipo")  # the same batched pass, for the policy
    loss, st = rl.dpo_loss(lp[:, 0], lp[:, 1], ref_lp[:, 0], ref_lp[:, 1], dc.beta, dc.loss)
    margin = st["chosen_reward"] - st["rejected_reward"]
    right, decisive = 0, 0
    for p, m in zip(pairs, margin.tolist()):
        if p.instruction is None:
            continue
        a, b = (oracle_score(p.instruction, y) for y in p.responses)
        if a != b:
            decisive += 1
            right += (m > 0) == (a > b)
    return {"loss": loss.item(), "pairs": len(pairs), "label_acc": st["reward_acc"].item(),
            "oracle_acc": right / decisive if decisive else None, "oracle_pairs": decisive}


@torch.no_grad()
def evaluate_samples(model: GPT, ref: GPT, tok: Tokenizer, rows: list[dict], prompts: list[list[int]], rm: RewardModel | None,
                     dc: DPOConfig, step: int, device: str) -> dict:
    """One temperature-1 sample per held-out prompt (KL to the reference, RM and oracle score:
    the over-optimisation point) and the greedy responses' oracle score."""
    model.eval()
    g = generator(dc.seed, 4, step, device)
    sampled = respond(model, tok, prompts, dc.max_new_tokens, temperature=1.0, generator=g)
    ids, lengths = pad_right([p + s["tokens"] for p, s in zip(prompts, sampled)], tok.pad_id)
    n_prompt = torch.tensor([len(p) for p in prompts])
    targets = response_targets(ids, lengths, n_prompt).to(device)
    ids, lengths, n_prompt = ids.to(device), lengths.to(device), n_prompt.to(device)
    kl = (model.token_logprobs(ids, targets) - ref.token_logprobs(ids, targets)).sum(1)
    greedy = respond(model, tok, prompts, dc.max_new_tokens, temperature=0.0)
    out = {"kl": kl.mean().item(),
           "oracle_score": sum(oracle_score(r, s["text"]) for r, s in zip(rows, sampled)) / len(rows),
           "response_len": sum(len(s["tokens"]) for s in sampled) / len(rows),
           "eos_rate": sum(s["eos"] for s in sampled) / len(rows),
           "eval_oracle_score": sum(oracle_score(r, s["text"]) for r, s in zip(rows, greedy)) / len(rows)}
    if rm is not None:
        out["rm_score"] = rm.normalized(ids, lengths, n_prompt).float().mean().item()
    return out


CURVE = ("step", "epoch", "lr", "loss", "reward_acc", "reward_margin", "chosen_reward", "rejected_reward", "chosen_logp",
         "rejected_logp", "kl", "rm_score", "oracle_score", "response_len", "eos_rate", "eval_oracle_score")


# --- the stage ---------------------------------------------------------------------------------------


def train(cfg, dc: DPOConfig, device: str) -> dict:
    policy_dir = checkpoint_dir(dc.policy, "policy", "sft")
    ref_dir = checkpoint_dir(dc.reference, "reference", "sft")
    if not same_tokenizer(ref_dir / "tokenizer.json", policy_dir / "tokenizer.json"):
        raise InputError(f"{ref_dir}/tokenizer.json differs from the policy's {policy_dir}/tokenizer.json (DPO compares their log-probabilities token by token)")
    tok = strict_tokenizer(policy_dir)
    rm = None
    if dc.reward_model:
        rm_dir = checkpoint_dir(dc.reward_model, "reward model", "train_rm")
        if not same_tokenizer(rm_dir / "tokenizer.json", policy_dir / "tokenizer.json"):
            raise InputError(f"{rm_dir}/tokenizer.json differs from the policy's {policy_dir}/tokenizer.json")
        rm = RewardModel.load(rm_dir, device=device, dropout=0.0).float().eval().requires_grad_(False)
    split = rm_split(rm.meta if rm is not None else None, OmegaConf.to_container(cfg.train_rm))
    path = Path(dc.rankings_file)
    df = read_rankings(path)
    instruction_rows, held_rows = read_prompts(dc.prompts_file, split)
    instructions = {r["id"]: r for r in instruction_rows + held_rows}

    out_dir = Path(dc.out_dir)
    res = Resume(cfg, "dpo", sections=["seed", "dpo"], out_dir=out_dir,
                 inputs=[policy_dir, ref_dir, path, dc.prompts_file] + ([rm_dir] if rm is not None else []))
    resume_from = res.start()
    resume = resume_from is not None
    start = load_checkpoint(resume_from or policy_dir, device=device, load_trainer=resume)
    policy = start.model.float()
    ref = from_pretrained(ref_dir).to(device).float().eval().requires_grad_(False)
    for m in (policy, ref):
        set_dropout(m, 0.0)
    block = policy.config.block_size
    which = [split_of(i, split["seed"], split["heldout"], split["val"]) for i in df["id"]]
    train_df, held_df = df[[w == "train" for w in which]], df[[w == "heldout" for w in which]]
    if train_df.empty:
        raise InputError(f"{path}: no rankings in the reward model's training split")
    pairs, counts = build_pairs(train_df, path, tok, block, dc.pairs, instructions)
    held_pairs, held_counts = build_pairs(held_df, path, tok, block, "all", instructions)
    if not pairs:
        raise InputError(f"{path}: no usable preference pair (every pair identical or too long)")
    mean = dc.loss == "ipo"
    t0 = time.perf_counter()
    ref_lp = reference_logprobs(ref, pairs, tok.pad_id, device, mean)
    held_ref = reference_logprobs(ref, held_pairs, tok.pad_id, device, mean)
    ref_seconds = time.perf_counter() - t0

    room = block - max(dc.max_new_tokens, MIN_NEW_TOKENS)
    eval_rows = held_rows[: max(dc.eval_prompts, 0)]
    eval_ids = [encode_prompt(tok, r["prompt"], room)[0] for r in eval_rows]
    steps_per_epoch = math.ceil(len(pairs) / dc.batch_size)
    total = dc.epochs * steps_per_epoch
    opt = policy.configure_optimizers(dc.weight_decay, dc.lr, (0.9, 0.95), "cuda" if device.startswith("cuda") else "cpu")
    loop = Loop("dpo", total, eval_every=dc.eval_every, log_every=dc.log_every, ckpt_every=dc.ckpt_every,
                progress=dc.progress, state=start.trainer_state if resume else None)
    history, evals = loop.history, list(start.trainer_state["evals"]) if resume else []
    if resume:
        opt.load_state_dict(start.trainer_state["optimizer"])

    def save(final: bool = False) -> None:
        meta = {**res.meta(), "stage": "dpo", "step": loop.step, "reference": str(ref_dir), "loss": dc.loss, "beta": dc.beta, "pairs": dc.pairs,
                "last": history[-1] if history else None, "format": "prompt\\nAnswer: response<|endoftext|>",
                "config": OmegaConf.to_container(cfg, resolve=True)}
        state = {"optimizer": opt.state_dict(), **loop.state(), "evals": evals}
        save_checkpoint(out_dir if final else res.folder, policy, meta, tokenizer_path=policy_dir / "tokenizer.json", trainer_state=state)
        if final:
            res.finish()

    def run_eval() -> dict:
        if not eval_rows:
            return {}
        e = evaluate_samples(policy, ref, tok, eval_rows, eval_ids, rm, dc, loop.step, device)
        evals.append({"step": loop.step, **e})
        tracking.log_metrics({f"eval/{k}": v for k, v in e.items()}, step=loop.step)
        return e

    if loop.step == 0 and not evals:
        history.append({"step": 0, "epoch": 0, **run_eval()})
    acc: dict[str, float] = {}
    while loop.running():
        epoch, i = divmod(loop.step, steps_per_epoch)
        order = epoch_order(dc.seed, epoch, len(pairs))
        idx = order[i * dc.batch_size : (i + 1) * dc.batch_size]
        lr = warmup_cosine(loop.step, total, dc.warmup_steps, dc.lr, dc.min_lr)
        set_lr(opt, lr)
        policy.train()
        chosen, rejected = pair_logprobs(policy, [pairs[j] for j in idx], tok.pad_id, device, mean)
        r = ref_lp[idx].to(device)
        loss, st = rl.dpo_loss(chosen, rejected, r[:, 0], r[:, 1], dc.beta, dc.loss)
        optimizer_step(loss, opt, policy.parameters(), dc.grad_clip,
                       f"dpo: non-finite loss at step {loop.step + 1}; last good checkpoint kept in {res.folder}")
        loop.advance()
        now = {"loss": loss.item(), "reward_acc": st["reward_acc"].item(), "reward_margin": st["reward_margin"].item(),
               "chosen_reward": st["chosen_reward"].mean().item(), "rejected_reward": st["rejected_reward"].mean().item(),
               "chosen_logp": chosen.mean().item(), "rejected_logp": rejected.mean().item()}
        for k, v in now.items():
            acc[k] = acc.get(k, 0.0) + v
        acc["n"] = acc.get("n", 0) + 1
        if loop.logging():
            n = acc.pop("n")
            rec = {"step": loop.step, "epoch": epoch + 1, "lr": lr, **{k: v / n for k, v in acc.items()}}
            acc = {}
            if loop.evaluating():
                rec.update(run_eval())
            history.append(rec)
            tracking.log_metrics({f"dpo/{k}": v for k, v in rec.items() if k != "step"}, step=loop.step)
            ev = f" | kl {rec['kl']:.2f} oracle {rec['oracle_score']:.3f} greedy {rec['eval_oracle_score']:.3f}" if "kl" in rec else ""
            loop.say(f"loss {rec['loss']:.4f} acc {rec['reward_acc']:.3f} margin {rec['reward_margin']:.3f} "
                     f"logp w {rec['chosen_logp']:.2f} l {rec['rejected_logp']:.2f}{ev}")
        if loop.checkpointing():
            save()
    save(final=True)
    first = next((h for h in history if "chosen_logp" in h), None)
    metrics = {
        "loss": dc.loss, "beta": dc.beta, "pairs_from": dc.pairs, "steps": loop.step, "epochs": dc.epochs,
        "data": {"train_prompts": len(train_df), "heldout_prompts": len(held_df), "train_pairs": len(pairs),
                 "heldout_pairs": len(held_pairs), **counts, **{f"heldout_{k}": v for k, v in held_counts.items()}},
        "final": history[-1] if history else None,
        "logp_change": {"chosen": history[-1]["chosen_logp"] - first["chosen_logp"],
                        "rejected": history[-1]["rejected_logp"] - first["rejected_logp"]} if first and first is not history[-1] else None,
        "eval": {"before": evals[0] if evals else None, "after": evals[-1] if evals else None},
        "heldout": heldout_metrics(policy, held_pairs, held_ref, dc, tok.pad_id, device),
        "seconds": {"reference_logprobs": ref_seconds, "train": loop.seconds()},
    }
    atomic_write_json(dc.metrics_file, metrics)
    atomic_write_text(dc.curve_file, curve_csv(history, CURVE))
    return metrics


def run(cfg) -> dict:
    dc: DPOConfig = OmegaConf.to_object(cfg.dpo)
    device = resolve_device(cfg.device)
    with torch_threads(dc.threads):
        with tracking.stage_run(cfg, "dpo", sections=["dpo", "seed"]):
            metrics = train(cfg, dc, device)
            tracking.log_metrics({f"final/{k}": v for k, v in tracking.flatten(metrics).items()
                                  if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)})
            if cfg.tracking.log_checkpoints:
                tracking.log_checkpoint(dc.out_dir)
    return metrics


if __name__ == "__main__":
    stage_main(run)
