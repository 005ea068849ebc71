"""ppo stage: InstructGPT step 3 (Ouyang et al. 2022 §3.5, App. C), PPO against the reward model.

    python -m tasks.ppo                                      # conf/ defaults: models/sft + models/rm -> models/ppo
    python -m tasks.ppo ppo.variant=ppo_ptx                  # PPO-ptx -> models/ppo_ptx
    python -m tasks.ppo ppo.variant=ppo_gold                 # the gold-reward run (the oracle as the reward)
    python -m tasks.ppo ppo.resume=true                      # continue a killed run even with other settings (tasks/resume.py)
    python -m tasks.ppo ppo.variant=ppo_ptx ppo.estimator=rloo   # RLOO (+ptx): k samples per prompt, no critic
    python -m tasks.ppo experiment=smoke ppo.updates=4       # tiny CPU run, seconds

What it keeps from the paper, each with its source:
- the policy starts from SFT, dropout off; a frozen copy of SFT is the KL reference; the reward
  model is frozen (§3.5);
- the reward of an episode: the RM's normalised score (`RewardModel.normalized`: demonstrations
  average 0, one unit = the SFT samples' spread) at the response's last token, minus β·KL(π‖π_SFT)
  on every response token (§3.5, eq. 2; per token as in lm-human-preferences); a response that
  never emits EOS loses `no_eos_penalty` (lm-human-preferences replaces its score by −1);
  β fixed (the paper: 0.02) or adapted toward `kl_target` (lm-human-preferences' controller);
  the KL estimator of the penalty is a setting (`kl_estimator`, k1 by default) and recorded;
- rollouts at temperature 1 (App. C); at another `temperature` the logits are divided by it in
  every log-prob PPO and the reference compute, so the sampled and the scored distributions are
  the same. Prompts come from `rl_prompts.jsonl`, never from the reward model's held-out split
  (read from the RM's meta.json: the same `tasks.train_rm.split_of`), and never from `rl_eval`;
- PPO (Schulman et al. 2017): GAE (γ = 1, λ = 0.95), whitened advantages, the clipped surrogate
  (ε = 0.2), a clipped value loss, `ppo_epochs` passes of minibatches over each rollout batch
  (the paper: 1), gradient clipping; the math is `model/rl.py`;
- the value model: the paper's is a separate network initialised from the reward model, trunk
  and head, in the reward's normalised units (`value: rm`; the open reproductions found a
  separate critic best). The default, `value: shared`, is a zero-initialised value head on the
  policy's own trunk (one trunk pass for both, the value loss scaled by `vf_coef` into it):
  measured on 2 CPU cores it trains 1.5x faster per update and gains as much oracle score per
  update as a separate critic (conf/ppo.yaml); `value: sft` is a separate network from the SFT
  trunk with a zero head;
- PPO-ptx (§3.5, eq. 2): `ptx_coef` (γ) × the next-token loss on `ptx_batch_size` windows of the
  pre-training data added on every minibatch; with γ = 0 the pre-training data is never read.

Critic-free estimators, one setting over the same rollout code (as OpenRLHF's advantage
estimator): `estimator: rloo` (Ahmadian et al. 2024) or `grpo` (Shao et al. 2024) samples
episodes/group_size prompts per update, each `group_size` (k) times (rows i·k .. i·k + k − 1 are
one prompt's group); a sequence's reward is R = score − β·Σ KL (the same KL estimator and β as
PPO's), its advantage R minus the mean of the other k − 1 (rloo) or (R − group mean) / group
std (grpo), on every response token; no value model is built, trained or saved (`value`, `vf_coef`,
`value_lr`, `value_clip`, `gamma`, `lam` and `whiten` are PPO's only); the policy loss is the same
clipped surrogate, `ppo_epochs` passes of minibatches, and PPO-ptx the same. `zero_std_share` (the
share of groups whose k scores all tie, as TRL's frac_reward_zero_std: only the KL term then
separates the samples) is logged per update; the math
is `model/rl.py`.

What it drops, and why: the paper's 8× pre-training examples per RL episode (CPU time), the
RL-prompt mixture of customer prompts (the world has one prompt distribution), the 256k
episodes (we have minutes: see conf/ppo.yaml for the measured shape).

`reward: oracle` replaces the RM's score by the world's oracle (`tasks.world.oracle.score`),
normalised by the mean and std of the first rollout batch (the SFT policy's samples): the
gold-reward run, the ceiling the reward model is held against.

Every update logs (MLflow, and the curve CSV a DVC plot reads): the mean RM score and ORACLE
score of the sampled responses, KL to SFT (k1 and k3, nats per response), entropy, clip
fraction, approximate KL, value loss, explained variance, response length, EOS rate, the
pre-training loss, β, and (rloo, grpo) the share of groups with tied rewards; greedy responses
to held-out prompts (the RM's held-out split) are scored every `eval_every` updates; a table of
sampled responses every `samples_every` updates.

Each update is a pure function of (seed, update) and the state: the prompts (an epoch-wise
permutation), the sampling generator, the minibatch order and the pre-training windows are all
derived from them, so `trainer.pt` (both optimizers, β, the reward normalisation, history) and
the weights (policy in model.safetensors, value model in heads.safetensors) are all a resumed
run needs to log the same numbers bit for bit on CPU.

Outputs, named by `variant`: `{models_dir}/{variant}/` (checkpoint), `{metrics_dir}/{variant}.json`
(final metrics), `{metrics_dir}/{variant}_curve.csv` (one row per update).
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from model.checkpoint import load_checkpoint, save_checkpoint
from model.gpt import GPT
from model.load import from_pretrained
from model import rl
from model.checkpoint import CheckpointError
from model.instruct import MIN_NEW_TOKENS, encode_prompt, pad_right, respond
from model.reward import RewardModel
from model.data import step_offsets, window_batch
from model.ppo import PTX, SAMPLE, Batch, Learner, experience, make_batch, optimizers, train_update
from model.tokenizer import Tokenizer
from model.loop import Loop
from model.train import curve_csv, generator, set_dropout, stream_indices
from tasks import tracking
from tasks.common import InputError, atomic_write_json, atomic_write_text, finite_or_none, resolve_device, torch_threads
from tasks.config import stage_main
from tasks.inputs import checkpoint_dir, load_tokens, read_prompts, rm_split, same_tokenizer, strict_tokenizer
from tasks.resume import Resume
from tasks.world.oracle import score as oracle_score
from tasks.schema import PPOConfig  # noqa: F401  (the section's schema lives in tasks/schema.py)

VALUE_PREFIX = "value."  # the value model's tensors in the checkpoint's heads.safetensors



# --- config and inputs -------------------------------------------------------------------------


def resolve_variant(node) -> PPOConfig:
    """The ppo section with its variant's overrides applied (validated against the schema)."""
    variants = node.variants
    if node.variant not in variants:
        raise InputError(f"ppo.variant={node.variant!r} is not in ppo.variants ({', '.join(variants)})")
    try:
        merged = OmegaConf.merge(node, variants[node.variant])
    except OmegaConfBaseException as e:
        raise InputError(f"ppo.variants.{node.variant}: {str(e).splitlines()[0]}") from None
    return OmegaConf.to_object(merged)


def grouped(pc: PPOConfig) -> bool:
    """A critic-free estimator: group_size samples per prompt, no value model."""
    return pc.estimator != "ppo"


def check_config(pc: PPOConfig) -> None:
    """What the schema's types cannot say: how the settings fit together."""
    if pc.episodes % pc.minibatch:
        raise InputError(f"ppo.episodes={pc.episodes} must be a multiple of ppo.minibatch={pc.minibatch}")
    if grouped(pc) and (pc.group_size < 2 or pc.episodes % pc.group_size):
        raise InputError(f"ppo.group_size={pc.group_size}: {pc.estimator} needs >= 2 samples per prompt and "
                         f"ppo.episodes={pc.episodes} a multiple of it")


# --- rollouts ---------------------------------------------------------------------------------


class Scorer:
    """The episode's score: the RM's normalised score or the oracle's (normalised on the first
    batch), minus the no-EOS penalty."""

    def __init__(self, pc: PPOConfig, rm: RewardModel | None, norm: list[float] | None):
        self.pc, self.rm, self.norm = pc, rm, norm

    @torch.no_grad()
    def rm_scores(self, ids: torch.Tensor, lengths: torch.Tensor, n_prompt: torch.Tensor) -> torch.Tensor:
        return self.rm.normalized(ids, lengths, n_prompt).float() if self.rm is not None else torch.full((ids.size(0),), float("nan"))

    def __call__(self, batch: Batch) -> torch.Tensor:
        d = batch.data
        d["rm_score"] = self.rm_scores(batch.ids, batch.lengths, batch.pos[:, 0] + 1).to(batch.ids.device)
        d["oracle_score"] = torch.tensor([oracle_score(r, t) for r, t in zip(batch.rows, batch.texts)], device=batch.ids.device)
        if self.pc.reward == "rm":
            score = d["rm_score"]
        else:
            if self.norm is None:  # the first batch: samples of the SFT policy itself
                s = d["oracle_score"]
                self.norm = [s.mean().item(), s.std().item() if s.numel() > 1 and s.std().item() > 1e-6 else 1.0]
            score = (d["oracle_score"] - self.norm[0]) / self.norm[1]
        return score - self.pc.no_eos_penalty * (~batch.eos).float()



class PtxData:
    """Pre-training windows of train.bin for PPO-ptx, a pure function of (seed, minibatch index)."""

    def __init__(self, pc: PPOConfig, block_size: int, policy_tok: Path, device: str):
        folder = Path(pc.pretrain_data)
        meta, self.train, _ = load_tokens(folder)
        if (folder / "tokenizer.json").is_file() and not same_tokenizer(folder / "tokenizer.json", policy_tok):
            raise InputError(f"{folder}/tokenizer.json differs from the policy's {policy_tok}")
        self.T = pc.ptx_block if pc.ptx_block > 0 else block_size
        if self.T > block_size or len(self.train) <= self.T + 1:
            raise InputError(f"{folder}/train.bin: need windows of {self.T} tokens within the policy's {block_size}")
        self.n, self.seed, self.device = pc.ptx_batch_size, pc.seed, device

    def batch(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        offsets = step_offsets(self.seed * 7 + PTX, index, self.n, len(self.train) - self.T - 1)
        x, y = window_batch(self.train, offsets, self.T)
        return x.to(self.device), y.to(self.device)


# --- models and state --------------------------------------------------------------------------


def build_critic(pc: PPOConfig, policy: GPT, rm_dir: Path | None, sft: Path, device: str) -> RewardModel:
    if pc.value == "rm":
        critic = RewardModel.load(rm_dir, device=device, dropout=0.0)
    else:
        critic = RewardModel(policy if pc.value == "shared" else from_pretrained(sft).to(device))
        torch.nn.init.zeros_(critic.head.weight)  # lm-human-preferences: the value head starts at 0
    set_dropout(critic, 0.0)
    return critic.float().to(device)


def critic_tensors(critic: RewardModel, shared: bool) -> dict[str, torch.Tensor]:
    sd = critic.head.state_dict() if shared else {k: v for k, v in critic.state_dict().items() if k != "gpt.lm_head.weight"}
    return {VALUE_PREFIX + ("head." if shared else "") + k: v for k, v in sd.items()}


def load_critic_tensors(critic: RewardModel, tensors: dict[str, torch.Tensor], shared: bool, where: Path) -> None:
    sd = {k[len(VALUE_PREFIX) :]: v for k, v in tensors.items() if k.startswith(VALUE_PREFIX)}
    target = critic if not shared else torch.nn.ModuleDict({"head": critic.head})
    missing, unexpected = target.load_state_dict(sd, strict=False)
    if [k for k in missing if k != "gpt.lm_head.weight"] or unexpected:
        raise CheckpointError(f"checkpoint {where}: heads.safetensors does not hold this value model (value={'shared' if shared else 'separate'})")


# --- evaluation and logging ------------------------------------------------------------------------


@torch.no_grad()
def evaluate(policy: GPT, tok: Tokenizer, rows: list[dict], prompts: list[list[int]], scorer: Scorer, pc: PPOConfig, device: str) -> dict:
    """Greedy responses to held-out prompts: mean oracle score, RM score, EOS rate, length."""
    out = respond(policy, tok, prompts, pc.max_new_tokens, temperature=0.0, batch_size=64)
    ids, lengths = pad_right([p + r["tokens"] for p, r in zip(prompts, out)], tok.pad_id)
    n_prompt = torch.tensor([len(p) for p in prompts], device=device)
    rm = scorer.rm_scores(ids.to(device), lengths.to(device), n_prompt).mean().item()
    return {"oracle_score": sum(oracle_score(r, o["text"]) for r, o in zip(rows, out)) / len(rows),
            "rm_score": finite_or_none(rm), "eos_rate": sum(o["eos"] for o in out) / len(out),
            "response_len": sum(len(o["tokens"]) for o in out) / len(out)}


CURVE = ("update", "episodes", "beta", "rm_score", "oracle_score", "score", "kl", "kl_k3", "non_score_reward", "reward",
         "entropy", "response_len", "eos_rate", "explained_var", "policy_loss", "value_loss", "clip_frac", "approx_kl",
         "vf_clip_frac", "ptx_loss", "zero_std_share", "eval_oracle_score", "eval_rm_score", "eval_eos_rate", "eval_response_len")


def log_samples(batch: Batch, update: int, n: int) -> None:
    import mlflow

    if mlflow.active_run() is None or n <= 0:
        return
    d = batch.data
    rows = [{"update": update, "id": batch.rows[i]["id"], "prompt": batch.rows[i]["prompt"], "response": batch.texts[i],
             "eos": bool(batch.eos[i]), "rm_score": float(d["rm_score"][i]), "oracle_score": float(d["oracle_score"][i])}
            for i in range(min(n, len(batch.rows)))]
    import pandas as pd

    mlflow.log_table(pd.DataFrame(rows), artifact_file=f"samples/update_{update:04d}.json")


# --- the stage ---------------------------------------------------------------------------------------


def train(cfg, pc: PPOConfig, device: str) -> dict:
    check_config(pc)
    sft = checkpoint_dir(pc.policy, "SFT policy", "sft")
    sft_tok = sft / "tokenizer.json"
    tok = strict_tokenizer(sft)
    critic_free = grouped(pc)
    needs_rm = pc.reward == "rm" or (pc.value == "rm" and not critic_free)
    rm_dir = Path(pc.reward_model)
    if needs_rm:
        checkpoint_dir(pc.reward_model, "reward model", "train_rm")
    use_rm = (rm_dir / "model.safetensors").is_file()
    if use_rm and not ((rm_dir / "tokenizer.json").is_file() and same_tokenizer(rm_dir / "tokenizer.json", sft_tok)):
        raise InputError(f"{rm_dir}/tokenizer.json differs from the policy's {sft_tok} (train the reward model from this SFT)")
    rm = RewardModel.load(rm_dir, device=device, dropout=0.0).float() if use_rm else None
    split = rm_split(rm.meta if rm is not None else None, OmegaConf.to_container(cfg.train_rm))
    train_rows, held_rows = read_prompts(pc.prompts_file, split)
    out_dir = Path(pc.models_dir) / pc.variant
    metrics_dir = Path(pc.metrics_dir)
    ref = from_pretrained(sft).to(device).float().eval()
    ref.requires_grad_(False)
    block = ref.config.block_size
    if pc.max_new_tokens > block - 8:
        raise InputError(f"ppo.max_new_tokens={pc.max_new_tokens} leaves no room for a prompt in the {block}-token window")
    ptx = PtxData(pc, block, sft_tok, device) if pc.ptx_coef > 0 else None
    if rm is not None:
        rm.eval().requires_grad_(False)

    res = Resume(cfg, f"ppo[{pc.variant}]", sections=["seed", "ppo"], out_dir=out_dir, setting=pc.resume,
                 inputs=[sft, pc.prompts_file] + ([rm_dir] if use_rm else []) + ([pc.pretrain_data] if pc.ptx_coef > 0 else []))
    resume_from = res.start()
    resume = resume_from is not None
    start = load_checkpoint(resume_from or sft, device=device, load_trainer=resume)
    if resume and start.trainer_state.get("estimator", "ppo") != pc.estimator:
        raise InputError(f"{resume_from}: trained with ppo.estimator={start.trainer_state.get('estimator', 'ppo')}, "
                         f"cannot resume it with ppo.estimator={pc.estimator}")
    policy = start.model.float()
    set_dropout(policy, 0.0)
    critic = None if critic_free else build_critic(pc, policy, rm_dir if use_rm else None, sft, device)
    if resume and critic is not None:
        load_critic_tensors(critic, start.extra_tensors, pc.value == "shared", out_dir)
    policy_opt, value_opt = optimizers(policy, critic, pc, device)
    learner = Learner(policy, critic, policy_opt, value_opt, pc.value == "shared")
    kl_ctl = rl.KLController(pc.beta, pc.kl_target, pc.kl_horizon)
    loop = Loop(f"ppo[{pc.variant}]", pc.updates, eval_every=pc.eval_every, ckpt_every=pc.ckpt_every, progress=pc.progress,
                unit="update", step_key="update", state=start.trainer_state if resume else None)
    history, norm, evals = loop.history, None, []
    if resume:
        st = start.trainer_state
        policy_opt.load_state_dict(st["policy_opt"])
        if value_opt is not None:
            value_opt.load_state_dict(st["value_opt"])
        evals = list(st["evals"])
        kl_ctl.beta, norm = float(st["beta"]), st["reward_norm"]
    scorer = Scorer(pc, rm, norm)

    room = block - max(pc.max_new_tokens, MIN_NEW_TOKENS)  # respond() cuts nothing shorter
    enc = [encode_prompt(tok, r["prompt"], room) for r in train_rows]
    prompt_ids = [e[0] for e in enc]
    eval_rows = held_rows[: max(pc.eval_prompts, 0)]
    eval_ids = [encode_prompt(tok, r["prompt"], room)[0] for r in eval_rows]
    counts = {"train_prompts": len(train_rows), "heldout_prompts": len(held_rows), "eval_prompts": len(eval_rows),
              "prompts_cut": sum(e[1] for e in enc)}

    def save(final: bool = False) -> None:
        meta = {**res.meta(), "stage": "ppo", "variant": pc.variant, "update": loop.step, "reference": str(sft), "reward_model": str(rm_dir) if use_rm else None,
                "reward": pc.reward, "value": None if critic_free else pc.value, "estimator": pc.estimator,
                "group_size": pc.group_size if critic_free else 1, "kl_estimator": pc.kl_estimator, "beta": kl_ctl.beta,
                "reward_norm": scorer.norm, "ptx_coef": pc.ptx_coef, "last": history[-1] if history else None,
                "format": "prompt\\nAnswer: response<|endoftext|>", "config": OmegaConf.to_container(cfg, resolve=True)}
        state = {"policy_opt": policy_opt.state_dict(), "value_opt": value_opt.state_dict() if value_opt is not None else None,
                 **loop.state(), "evals": evals, "beta": kl_ctl.beta, "reward_norm": scorer.norm,
                 "estimator": pc.estimator}
        save_checkpoint(out_dir if final else res.folder, policy, meta, tokenizer_path=sft_tok, trainer_state=state,
                        extra_tensors=critic_tensors(critic, learner.shared) if critic is not None else None)
        if final:
            res.finish()

    def run_eval() -> dict:
        if not eval_rows:
            return {}
        e = {"update": loop.step, **evaluate(policy, tok, eval_rows, eval_ids, scorer, pc, device)}
        evals.append(e)
        tracking.log_metrics({f"eval/{k}": v for k, v in e.items() if k != "update" and v is not None}, step=loop.step)
        return e

    if loop.step == 0 and not evals:
        run_eval()
    timing = {"rollout_s": 0.0, "score_s": 0.0, "train_s": 0.0}
    timed = 0
    while loop.running():
        update, t0 = loop.step, time.perf_counter()
        if critic_free:  # episodes / k prompts, each k times in a row: rows i·k .. i·k + k − 1 are one group
            k = pc.group_size
            idx = [i for i in stream_indices(pc.seed, update * (pc.episodes // k), pc.episodes // k, len(train_rows)) for _ in range(k)]
        else:
            idx = stream_indices(pc.seed, update * pc.episodes, pc.episodes, len(train_rows))
        rows = [train_rows[i] for i in idx]
        prompts = [prompt_ids[i] for i in idx]
        out = respond(policy, tok, prompts, pc.max_new_tokens, temperature=pc.temperature, batch_size=pc.episodes,
                      generator=generator(pc.seed, SAMPLE, update, device))
        batch = make_batch(rows, prompts, out, tok.pad_id, device)
        t1 = time.perf_counter()
        policy.eval()
        if critic is not None:
            critic.eval()
        score = scorer(batch)
        beta = kl_ctl.beta
        rec = {"update": update + 1, "episodes": (update + 1) * pc.episodes, "beta": beta,
               "rm_score": finite_or_none(batch.data["rm_score"].mean().item()),
               "oracle_score": batch.data["oracle_score"].mean().item(),
               **experience(batch, policy, ref, critic, score, pc, beta)}
        t2 = time.perf_counter()
        rec.update(train_update(learner, batch, pc, update, ptx))
        t3 = time.perf_counter()
        kl_ctl.update(rec["kl"], pc.episodes)
        loop.advance()
        timing["rollout_s"] += t1 - t0
        timing["score_s"] += t2 - t1
        timing["train_s"] += t3 - t2
        timed += 1
        if loop.evaluating():
            e = run_eval()
            rec.update({f"eval_{k}": v for k, v in e.items() if k != "update"})
        history.append(rec)
        tracking.log_metrics({f"ppo/{k}": v for k, v in rec.items() if k != "update" and v is not None and math.isfinite(v)}
                             | {"time/rollout_s": t1 - t0, "time/score_s": t2 - t1, "time/train_s": t3 - t2}, step=loop.step)
        if pc.samples_every and loop.step % pc.samples_every == 0:
            log_samples(batch, loop.step, pc.n_samples)
        ev = f" | eval oracle {rec['eval_oracle_score']:.3f}" if "eval_oracle_score" in rec else ""
        rm_s = "-" if rec["rm_score"] is None else f"{rec['rm_score']:.3f}"
        loop.say(f"rm {rm_s} oracle {rec['oracle_score']:.3f} kl {rec['kl']:.3f} ent {rec['entropy']:.3f} "
                 f"clip {rec['clip_frac']:.3f} len {rec['response_len']:.1f}{ev}", timing=f"{t1 - t0:.1f}+{t2 - t1:.1f}+{t3 - t2:.1f} s")
        if loop.checkpointing():
            save()
    save(final=True)

    tail = history[-max(1, len(history) // 10):] if history else []
    metrics = {
        "variant": pc.variant, "reward": pc.reward, "value": None if critic_free else pc.value, "estimator": pc.estimator,
        "group_size": pc.group_size if critic_free else 1, "kl_estimator": pc.kl_estimator,
        "ptx_coef": pc.ptx_coef, "updates": loop.step, "episodes": loop.step * pc.episodes, "beta": kl_ctl.beta,
        "reward_norm": scorer.norm, "prompts": counts,
        "final": {k: sum(h[k] for h in tail) / len(tail) for k in CURVE[2:CURVE.index("eval_oracle_score")]
                  if tail and all(h.get(k) is not None for h in tail)},
        "eval": {"before": evals[0] if evals else None, "after": evals[-1] if evals else None},
        "seconds_per_update": {k: v / timed for k, v in timing.items()} if timed else None,
    }
    atomic_write_json(metrics_dir / f"{pc.variant}.json", metrics)
    atomic_write_text(metrics_dir / f"{pc.variant}_curve.csv", curve_csv(history, CURVE))
    return metrics


def run(cfg) -> dict:
    pc = resolve_variant(cfg.ppo)
    device = resolve_device(cfg.device)
    with torch_threads(pc.threads):
        with tracking.stage_run(cfg, "ppo", sections=["ppo", "seed"], run_name=pc.variant):
            t0 = time.perf_counter()
            metrics = train(cfg, pc, device)
            metrics["seconds"] = time.perf_counter() - t0
            atomic_write_json(Path(pc.metrics_dir) / f"{pc.variant}.json", metrics)
            tracking.log_metrics({f"final/{k}": v for k, v in tracking.flatten(metrics).items()
                                  if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)})
            if cfg.tracking.log_checkpoints:
                tracking.log_checkpoint(Path(pc.models_dir) / pc.variant)
    return metrics


if __name__ == "__main__":
    stage_main(run)
