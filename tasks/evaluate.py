"""evaluate stage: InstructGPT's Figure 1 on the world, judged by the oracle on held-out prompts.

    python -m tasks.evaluate                                  # every policy in evaluate.policies
    python -m tasks.evaluate experiment=smoke                 # tiny CPU run, seconds

Each policy answers every held-out `rl_eval` prompt once by greedy decoding (deterministic):
the pre-trained model prompted few-shot (`pretrain_few_shot`: up to `few_shot_k` demonstrations
of the same kind first, as in the sft stage), and every checkpoint in `policies` (SFT, PPO,
PPO-ptx, DPO, and any later method), and best-of-n: `best_of_n_from` (SFT) samples n responses
per prompt at temperature 1 and the reward model keeps its favourite (`best_of_{n}` rows, no
training; sample j is drawn with the generator seeded `seed + j`, so best-of-1 is plain sampling
with that seed, and the n's share samples). Per policy:

- `oracle_score` (mean), `perfect_rate` (share scoring 1), the oracle win rate against the
  `reference` policy counted two ways: `win_rate_vs_sft` (ties count half, the paper's
  convention) and `decisive_win_rate_vs_sft` (wins / (wins + losses), ties left out: the world's
  rubric ties many perfect answers, which caps the first as the reference gets better);
- `rm_score`: the reward model's normalised score of the greedy responses;
- `kl_to_sft`: KL(π‖π_SFT) in nats per response, estimated on one temperature-1 sample per prompt
  (k1, the mean of Σ log π − log π_SFT over the response tokens, both teacher-forced); for
  best-of-n the analytic log n − (n − 1)/n (`model.rl.best_of_n_kl`), against SFT sampled at T = 1;
- `response_len` (tokens of the greedy response);
- the alignment tax: `pretrain_val_loss` on fixed windows of the pre-training validation split,
  and `prompt_eval_acc` (mean zero-shot accuracy of the GPT-2/3 prompt tasks, reusing
  `tasks.prompt_eval`; per task under `prompt_eval`); best-of-n's are its sampled policy's.

Outputs: `metrics_file` ({policy: {...}}), `samples_file` (one row per policy and prompt:
prompt_id, policy, response, oracle_score, rm_score; anyone can recompute the table),
`table_file` (markdown), `plot_file` (the over-optimisation curve, Gao et al. 2022: RM and
oracle score of the PPO and DPO runs' samples against √KL through training, and the best-of-n
points), MLflow metrics and artifacts, and
the final policy (`register_policy`) and the reward model registered in the MLflow registry.
"""

from __future__ import annotations

import csv
import math
import random
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import torch
from omegaconf import OmegaConf

from model import load_checkpoint, rl
from model.instruct import (MIN_NEW_TOKENS, encode_example, encode_prompt, encode_response, pad_right, respond,
                            response_logprobs, response_targets)
from model.reward import RewardModel
from tasks import tracking
from tasks.common import (InputError, atomic_write_json, atomic_write_text, markdown_table, read_jsonl, resolve_device, torch_threads, write_jsonl)
from tasks.config import stage_main
from tasks.sft import few_shot_context, read_demos, strict_tokenizer
from tasks.world.oracle import score as oracle_score
from tasks.schema import EvaluateConfig  # noqa: F401  (the section's schema lives in tasks/schema.py)



@torch.no_grad()
def sequence_logprob(model, contexts: list[list[int]], responses: list[list[int]], pad_id: int, batch_size: int = 64) -> list[float]:
    """Σ log p(response token) per row, teacher-forced after its context."""
    out = []
    for b in range(0, len(contexts), batch_size):
        rows = [c + r for c, r in zip(contexts[b : b + batch_size], responses[b : b + batch_size])]
        ids, lengths = pad_right(rows, pad_id)
        n_prompt = torch.tensor([len(c) for c in contexts[b : b + batch_size]])
        dev = next(model.parameters()).device
        lp = response_logprobs(model(ids.to(dev)), response_targets(ids, lengths, n_prompt).to(dev))
        out += lp.sum(1).tolist()
    return out


@torch.no_grad()
def rm_scores(rm: RewardModel, tok, prompts: list[str], responses: list[str], batch_size: int = 64) -> list[float]:
    """The reward model's normalised score of each (prompt, response) in the instruction format."""
    block = rm.gpt.config.block_size
    out = []
    for b in range(0, len(prompts), batch_size):
        enc, n_prompt = [], []
        for p, r in zip(prompts[b : b + batch_size], responses[b : b + batch_size]):
            e = encode_example(tok, p, r, block)
            if e is None:  # a response longer than the window: its end, with almost no prompt
                resp = encode_response(tok, r)[-(block - 1):]
                e = (encode_prompt(tok, p)[0][-1:] + resp, 1, True)
            enc.append(e[0])
            n_prompt.append(e[1])
        ids, lengths = pad_right(enc, tok.pad_id)
        dev = next(rm.parameters()).device
        out += rm.normalized(ids.to(dev), lengths.to(dev), torch.tensor(n_prompt, device=dev)).float().tolist()
    return out


@torch.no_grad()
def pretrain_val_loss(model, data_dir: Path, n: int, seed: int) -> float:
    """Mean next-token loss on `n` fixed windows of the pre-training validation split."""
    from tasks.pretrain import load_tokens, window_batch

    _, _, val = load_tokens(data_dir)
    T = model.config.block_size
    g = torch.Generator().manual_seed(seed + 1)
    offsets = torch.randint(0, len(val) - T - 1, (n,), generator=g)
    total = 0.0
    model.eval()
    for b in range(0, n, 32):
        x, y = window_batch(val, offsets[b : b + 32], T)
        total += float(model(x, y)[1]) * len(x)
    return total / n


def zero_shot_tax(model, tok, ec: EvaluateConfig, cfg) -> dict[str, float]:
    """Zero-shot accuracy per prompt task (the GPT-2 evaluation, `tasks.prompt_eval`)."""
    from tasks import prompt_eval as pe

    pc: pe.PromptEvalConfig = OmegaConf.to_object(cfg.prompt_eval)
    pc.shots, pc.max_items, pc.too_long = [0], ec.prompt_eval_items, "skip"
    names = pe.check_config(pc)
    tasks = [pe.load_task(Path(pc.data_dir), n, pc.tasks[n]) for n in names]
    results, _ = pe.evaluate(model, tok, tasks, pc)
    return {task: by_k["k0"]["acc"] for task, by_k in results.items()}


def win_rates(scores: list[float], ref: list[float]) -> tuple[float, float | None]:
    """(ties-half win rate, decisive win rate) of `scores` against `ref`, prompt by prompt."""
    wins = sum(a > b for a, b in zip(scores, ref))
    losses = sum(a < b for a, b in zip(scores, ref))
    ties = len(scores) - wins - losses
    return (wins + 0.5 * ties) / max(1, len(scores)), (wins / (wins + losses) if wins + losses else None)


def best_of_n(model, tok, contexts: list[list[int]], score, ns: list[int], ec: EvaluateConfig) -> dict[int, list[dict]]:
    """Best-of-n by the reward model: sample max(ns) responses per prompt at temperature 1 (sample
    j with the generator seeded `ec.seed + j`, all prompts at once) and keep, for each n, the
    highest `score(texts)` among the first n (the first on ties). -> {n: per prompt the kept
    `respond` dict with its "rm_score"}."""
    kept: dict[int, list[dict]] = {}
    best: list[dict] | None = None
    for j in range(max(ns)):
        g = torch.Generator().manual_seed(ec.seed + j)
        sampled = respond(model, tok, contexts, ec.max_new_tokens, temperature=1.0, batch_size=ec.batch_size, generator=g)
        for s, q in zip(sampled, score([s["text"] for s in sampled])):
            s["rm_score"] = q
        best = sampled if best is None else [s if s["rm_score"] > b["rm_score"] else b for s, b in zip(sampled, best)]
        if j + 1 in ns:
            kept[j + 1] = best
    return kept


def plot_overoptimization(curves: dict[str, list[dict]], points: dict[str, tuple[float, float, float]] | None = None):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for name, rows in curves.items():
        x = [math.sqrt(max(0.0, float(r["kl"]))) for r in rows]
        axes[0].plot(x, [float(r["rm_score"]) for r in rows], "o-", ms=3, label=name)
        axes[1].plot(x, [float(r["oracle_score"]) for r in rows], "o-", ms=3, label=name)
    if points:  # best-of-n: (KL, RM score, oracle score) per n, on the evaluation prompts
        x = [math.sqrt(max(0.0, k)) for k, _, _ in points.values()]
        axes[0].plot(x, [p[1] for p in points.values()], "s--", ms=5, label="best-of-n (eval prompts)")
        axes[1].plot(x, [p[2] for p in points.values()], "s--", ms=5, label="best-of-n (eval prompts)")
        for (name, p), xi in zip(points.items(), x):
            axes[1].annotate(name.removeprefix("best_of_"), (xi, p[2]), fontsize=7)
    axes[0].set_ylabel("reward-model score (normalised)")
    axes[1].set_ylabel("oracle score (ground truth)")
    for ax in axes:
        ax.set_xlabel("√KL(π‖π_SFT) (√nats)")
        ax.legend()
    fig.suptitle("Samples through training (PPO, DPO) and best-of-n: proxy reward vs ground truth")
    fig.tight_layout()
    return fig


def read_curve(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return [r for r in csv.DictReader(f) if r.get("kl") not in (None, "") and r.get("rm_score") not in (None, "")]


TABLE_KEYS = ("oracle_score", "perfect_rate", "win_rate_vs_sft", "decisive_win_rate_vs_sft", "rm_score", "kl_to_sft",
              "response_len", "pretrain_val_loss", "prompt_eval_acc")


def table_rows(metrics: dict) -> list[dict]:
    return [{"policy": name, **{k: m.get(k) for k in TABLE_KEYS}} for name, m in metrics.items()]


def evaluate(cfg, ec: EvaluateConfig, device: str) -> tuple[dict, list[dict], dict[str, list[dict]]]:
    rows = read_jsonl(ec.prompts_file)
    rows = rows[: ec.max_prompts] if ec.max_prompts >= 0 else rows
    if ec.reference not in ec.policies:
        raise InputError(f"evaluate.reference={ec.reference!r} is not one of evaluate.policies ({', '.join(ec.policies)})")
    if ec.best_of_n and (ec.best_of_n_from not in ec.policies or min(ec.best_of_n) < 1):
        raise InputError(f"evaluate.best_of_n={list(ec.best_of_n)} needs n >= 1 and best_of_n_from={ec.best_of_n_from!r} one of evaluate.policies")
    for name, path in ec.policies.items():
        if not Path(path).is_dir():
            raise InputError(f"{path}: checkpoint folder of policy '{name}' not found")
    ref_dir = Path(ec.policies[ec.reference])
    tok = strict_tokenizer(ref_dir)
    rm = RewardModel.load(ec.reward_model, device=device).eval()
    if Path(ec.reward_model, "tokenizer.json").read_text() != (ref_dir / "tokenizer.json").read_text():
        raise InputError(f"{ec.reward_model}: the reward model's tokenizer differs from {ref_dir}'s")
    reference = load_checkpoint(ref_dir, device=device).model.eval()
    prompts = [r["prompt"] for r in rows]
    plain = [encode_prompt(tok, p)[0] for p in prompts]
    contexts: dict[str, list[list[int]]] = {}
    models = {}
    if ec.pretrain:
        pool = defaultdict(list)
        for d in read_demos(Path(ec.demos_file)):
            pool[d["kind"]].append(d)
        models["pretrain_few_shot"] = load_checkpoint(ec.pretrain, device=device).model.eval()
        budget = models["pretrain_few_shot"].config.block_size - min(ec.max_new_tokens, 24)
        rng = random.Random(ec.seed)
        contexts["pretrain_few_shot"] = [few_shot_context(tok, r["prompt"], r["kind"], pool, ec.few_shot_k, budget, rng)[0] for r in rows]
    for name, path in ec.policies.items():
        models[name] = reference if name == ec.reference else load_checkpoint(path, device=device).model.eval()
        contexts[name] = plain
    metrics, samples, scores = {}, [], {}
    for name, model in models.items():
        greedy = respond(model, tok, contexts[name], ec.max_new_tokens, temperature=0.0, batch_size=ec.batch_size)
        texts = [g["text"] for g in greedy]
        scores[name] = [oracle_score(r, t) for r, t in zip(rows, texts)]
        rms = rm_scores(rm, tok, prompts, texts)
        g = torch.Generator().manual_seed(ec.seed)
        sampled = respond(model, tok, contexts[name], ec.max_new_tokens, temperature=1.0, batch_size=ec.batch_size, generator=g)
        # the contexts as `respond` fed them (cut from the left to leave room for the response)
        room = model.config.block_size - MIN_NEW_TOKENS
        ctx, ref_ctx = [c[-room:] for c in contexts[name]], [c[-room:] for c in plain]
        lp = sequence_logprob(model, ctx, [s["tokens"] for s in sampled], tok.pad_id)
        lp_ref = lp if name == ec.reference else sequence_logprob(reference, ref_ctx, [s["tokens"] for s in sampled], tok.pad_id)
        m = {
            "oracle_score": sum(scores[name]) / len(rows),
            "perfect_rate": sum(s == 1.0 for s in scores[name]) / len(rows),
            "rm_score": sum(rms) / len(rows),
            "kl_to_sft": sum(a - b for a, b in zip(lp, lp_ref)) / len(rows),
            "response_len": sum(len(x["tokens"]) for x in greedy) / len(rows),
            "eos_rate": sum(x["eos"] for x in greedy) / len(rows),
            "pretrain_val_loss": pretrain_val_loss(model, Path(ec.pretrain_data), ec.val_windows, ec.seed),
        }
        if ec.prompt_eval_items:
            m["prompt_eval"] = zero_shot_tax(model, tok, ec, cfg)
            m["prompt_eval_acc"] = sum(m["prompt_eval"].values()) / len(m["prompt_eval"])
        metrics[name] = m
        samples += [{"prompt_id": r["id"], "policy": name, "response": t, "oracle_score": s, "rm_score": q}
                    for r, t, s, q in zip(rows, texts, scores[name], rms)]
    if ec.best_of_n:
        src = ec.best_of_n_from
        kept = best_of_n(models[src], tok, contexts[src], lambda texts: rm_scores(rm, tok, prompts, texts), sorted(set(ec.best_of_n)), ec)
        for n, chosen in kept.items():
            name = f"best_of_{n}"
            texts = [c["text"] for c in chosen]
            scores[name] = [oracle_score(r, t) for r, t in zip(rows, texts)]
            metrics[name] = {
                "oracle_score": sum(scores[name]) / len(rows),
                "perfect_rate": sum(s == 1.0 for s in scores[name]) / len(rows),
                "rm_score": sum(c["rm_score"] for c in chosen) / len(rows),
                "kl_to_sft": rl.best_of_n_kl(n),  # analytic, against the sampled policy at T = 1
                "response_len": sum(len(c["tokens"]) for c in chosen) / len(rows),
                "eos_rate": sum(c["eos"] for c in chosen) / len(rows),
                **{k: metrics[src][k] for k in ("pretrain_val_loss", "prompt_eval_acc", "prompt_eval") if k in metrics[src]},
            }
            samples += [{"prompt_id": r["id"], "policy": name, "response": t, "oracle_score": s, "rm_score": c["rm_score"]}
                        for r, t, s, c in zip(rows, texts, scores[name], chosen)]
    for name, m in metrics.items():
        m["win_rate_vs_sft"], m["decisive_win_rate_vs_sft"] = win_rates(scores[name], scores[ec.reference])
    curves = {Path(p).stem.removesuffix("_curve"): read_curve(Path(p)) for p in ec.curves if Path(p).is_file()}
    return metrics, samples, curves


def register(ec: EvaluateConfig) -> None:
    """The final policy and the reward model in MLflow's model registry, as pyfunc models that
    carry their checkpoint folder and `model/`: `mlflow.pyfunc.load_model("models:/instructflow-ppo_ptx/1")
    .predict(pd.DataFrame({"prompt": [...]}))` answers (greedy); the reward model's `.predict` takes
    `prompt` and `response` columns and returns normalised scores."""
    import mlflow

    if mlflow.active_run() is None or not ec.register_policy or ec.register_policy not in ec.policies:
        return

    class Checkpoint(mlflow.pyfunc.PythonModel):
        def __init__(self, kind: str):
            self.kind = kind

        def load_context(self, context):
            from model.tokenizer import Tokenizer

            folder = context.artifacts["checkpoint"]
            self.tok = Tokenizer.load(Path(folder) / "tokenizer.json")
            self.model = (RewardModel.load(folder) if self.kind == "reward" else load_checkpoint(folder).model).eval()

        def predict(self, context, model_input, params=None):
            prompts = list(model_input["prompt"])
            if self.kind == "reward":
                return rm_scores(self.model, self.tok, prompts, list(model_input["response"]))
            return [r["text"] for r in respond(self.model, self.tok, prompts, ec.max_new_tokens, temperature=0.0)]

    root = Path(__file__).resolve().parent.parent
    for name, path, kind in ((f"instructflow-{ec.register_policy}", ec.policies[ec.register_policy], "policy"),
                             ("instructflow-reward-model", ec.reward_model, "reward")):
        info = mlflow.pyfunc.log_model(name=kind, python_model=Checkpoint(kind), artifacts={"checkpoint": str(path)},
                                       code_paths=[str(root / "model"), str(root / "tasks")],
                                       pip_requirements=["torch", "tokenizers", "safetensors", "omegaconf"])
        mlflow.register_model(info.model_uri, name)


def run(cfg) -> dict:
    ec: EvaluateConfig = OmegaConf.to_object(cfg.evaluate)
    device = resolve_device(cfg.device)
    with torch_threads(ec.threads):
        with tracking.stage_run(cfg, "evaluate", sections=["evaluate", "seed"]):
            metrics, samples, curves = evaluate(cfg, ec, device)
            write_jsonl(ec.samples_file, samples)
            atomic_write_text(ec.table_file, markdown_table(
                table_rows(metrics), "Held-out rl_eval prompts, greedy responses (best-of-n: the RM's favourite of n samples at T = 1); "
                "oracle = ground truth, win rates against SFT's greedy response; best-of-n's KL is analytic."))
            atomic_write_json(ec.metrics_file, metrics)
            points = {n: (m["kl_to_sft"], m["rm_score"], m["oracle_score"]) for n, m in metrics.items() if n.startswith("best_of_")}
            if curves or points:
                fig = plot_overoptimization(curves, points)
                Path(ec.plot_file).parent.mkdir(parents=True, exist_ok=True)
                fig.savefig(ec.plot_file, dpi=120)
                tracking.log_figure(fig, "overoptimization.png")
            for name, m in metrics.items():
                tracking.log_metrics({f"{name}/{k}": v for k, v in m.items() if isinstance(v, (int, float)) and v is not None})
            tracking.log_artifact(ec.table_file)
            tracking.log_artifact(ec.samples_file)
            register(ec)
    return metrics


if __name__ == "__main__":
    stage_main(run)
