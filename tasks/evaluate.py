"""evaluate stage: InstructGPT's Figure 1 on the world, judged by the oracle on held-out prompts.

    python -m tasks.evaluate                                  # every policy in evaluate.policies
    python -m tasks.evaluate experiment=smoke                 # tiny CPU run, seconds

Each policy answers every held-out `rl_eval` prompt once by greedy decoding (deterministic) and
`sampled_n` times at temperature 1 (sample j drawn with the generator seeded `seed + j`, all
prompts at once: the policy judged as the distribution RLHF optimises, not only its mode): the
pre-trained model prompted few-shot (`pretrain_few_shot`: up to `few_shot_k` demonstrations of
the same kind first, as in the sft stage), and every checkpoint in `policies` (SFT, PPO, PPO-ptx,
DPO, and any later method), and best-of-n: `best_of_n_from` (SFT) samples n responses per prompt
at temperature 1 (the same seeds, so its first `sampled_n` samples are SFT's sampled ones) and
the reward model keeps its favourite (`best_of_{n}` rows, no training), and the oracle its own
(`oracle_best_of_{n}` rows: the best any reranking of the same samples can reach); best-of-1 is
plain sampling with seed `seed`, and the n's share samples. Per policy:

- `oracle_score` (mean), `perfect_rate` (share scoring 1), the oracle win rate against the
  `reference` policy counted two ways: `win_rate_vs_sft` (ties count half, the paper's
  convention) and `decisive_win_rate_vs_sft` (wins / (wins + losses), ties left out: the world's
  rubric ties many perfect answers, which caps the first as the reference gets better);
- `sampled_oracle_score`, `sampled_perfect_rate`, `sampled_rm_score`: the same over the
  `sampled_n` temperature-1 samples per prompt (for best-of-n rows, which are sampled policies
  already, their one pick per prompt: equal to the unprefixed columns);
- verdicts beyond noise, against the reference on the same prompts (`model.stats`):
  `oracle_score_diff_vs_sft` (greedy; best-of-n: its pick against SFT's greedy answer) and
  `sampled_oracle_score_diff_vs_sft` (per prompt the mean over the samples; best-of-n: its pick
  against SFT's sampled mean), each with `_ci`, the paired 95% half-width 1.96·sd/√n (normal
  approximation); `decisive_win_rate_vs_sft_ci`: the Wilson 95% interval [lo, hi] of the decisive
  win rate over the decisive prompts (None when there are none);
- `rm_score`: the reward model's normalised score of the greedy responses;
- `kl_to_sft`: KL(π‖π_SFT) in nats per response, estimated on the temperature-1 sample 0 of
  each prompt (k1, the mean of Σ log π − log π_SFT over the response tokens, both teacher-forced);
  for best-of-n the analytic log n − (n − 1)/n (`model.rl.best_of_n_kl`), against SFT sampled at
  T = 1 (for the oracle's pick an upper bound: the oracle ties many responses);
- `response_len` (tokens of the greedy response);
- the alignment tax: `pretrain_val_loss` on fixed windows of the pre-training validation split,
  and `prompt_eval_acc` (mean zero-shot accuracy of the GPT-2/3 prompt tasks but the in-context-only ones, reusing
  `tasks.prompting`; per task under `prompt_eval`); best-of-n's are its sampled policy's.

Over-optimisation (Gao, Schulman, Hilton 2022), under the metrics' `overoptimization` key and in
`overopt_file`: with d = √KL, the oracle-score gain of best-of-n (over the mean oracle score of
all of SFT's samples, i.e. best-of-1 in expectation) is fitted by d(α − β d), and that of each RL
run in `curves` (its per-update sampled rollouts, gain over its first row) by d(α − β ln d);
{run: {form, alpha, beta, peak_kl, peak_oracle_gain, max_kl, points, baseline}}.

The alignment tax of PPO-ptx against PPO's (`tax_pairs`: [a, b] pairs), under the metrics'
`alignment_tax` key as `<a>_vs_<b>`: a − b in pre-training loss, paired over the same validation
windows, and in zero-shot prompt-eval accuracy, paired over the same items and stratified by task
(`model.stats.stratified_paired_interval`), each with its 95% half-width (`..._ci`).

Outputs: `metrics_file` ({policy: {...}, "alignment_tax": {...}, "overoptimization": {...}}), `samples_file` (one row per
policy and prompt: prompt_id, policy, response, oracle_score, rm_score of the greedy response or
best-of-n pick, and sampled_oracle_score, the prompt's mean over the samples (best-of-n: its
pick's); anyone can recompute the table's oracle columns and intervals), `table_file` (markdown), `plot_file`
(the over-optimisation curves: RM and oracle score against √KL of the PPO and DPO runs' samples
through training, and of best-of-n by the RM's and by the oracle's pick, the fitted laws dashed),
`overopt_file` (markdown), MLflow metrics and artifacts, and the final policy (`register_policy`)
and the reward model registered in the MLflow registry.
"""

from __future__ import annotations

import csv
import math
import random
from collections import defaultdict
from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from model import rl, stats
from model.checkpoint import load_checkpoint
from model.data import window_batch
from model.instruct import (MIN_NEW_TOKENS, encode_example, encode_prompt, encode_response, few_shot_context, pad_right, respond,
                            response_targets)
from model.reward import RewardModel
from tasks import tracking
from tasks.common import (InputError, atomic_write_json, atomic_write_text, finite_or_none, markdown_table, plus_minus, read_jsonl,
                          resolve_device, torch_threads, write_jsonl)
from tasks.config import stage_main
from tasks import prompting as pe
from tasks.inputs import load_tokens, read_demos, strict_tokenizer
from tasks.world.oracle import score as oracle_score
from tasks.world.prompts import IN_CONTEXT_ONLY
from tasks.schema import EvaluateConfig, PromptEvalConfig  # noqa: F401  (the section's schema lives in tasks/schema.py)



@torch.no_grad()
def sequence_logprob(model, contexts: list[list[int]], responses: list[list[int]], pad_id: int, batch_size: int = 64) -> list[float]:
    """Σ log p(response token) per row, teacher-forced after its context."""
    out = []
    for b in range(0, len(contexts), batch_size):
        rows = [c + r for c, r in zip(contexts[b : b + batch_size], responses[b : b + batch_size])]
        ids, lengths = pad_right(rows, pad_id)
        n_prompt = torch.tensor([len(c) for c in contexts[b : b + batch_size]])
        dev = next(model.parameters()).device
        lp = model.token_logprobs(ids.to(dev), response_targets(ids, lengths, n_prompt).to(dev))
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
def pretrain_val_loss(model, data_dir: Path, n: int, seed: int) -> tuple[float, list[float]]:
    """Mean next-token loss on `n` fixed windows of the pre-training validation split, and each
    window's own mean (the items of a paired comparison between policies)."""
    _, _, val = load_tokens(data_dir)
    T = model.config.block_size
    g = torch.Generator().manual_seed(seed + 1)
    offsets = torch.randint(0, len(val) - T - 1, (n,), generator=g)
    total, per_window = 0.0, []
    model.eval()
    for b in range(0, n, 32):
        x, y = window_batch(val, offsets[b : b + 32], T)
        logits, loss = model(x, y)
        total += float(loss) * len(x)
        per_window += F.cross_entropy(logits.flatten(0, 1).float(), y.flatten(), reduction="none").view(len(x), -1).mean(1).tolist()
    return total / n, per_window


def zero_shot_tax(model, tok, ec: EvaluateConfig, cfg) -> tuple[dict[str, float], dict[str, list[bool]]]:
    """Zero-shot accuracy per prompt task (the GPT-2 evaluation, `tasks.prompting`), and per task
    whether each scored item was right (in item order: the same items for every policy)."""
    pc: PromptEvalConfig = OmegaConf.to_object(cfg.prompt_eval)
    pc.shots, pc.max_items, pc.too_long = [0], ec.prompt_eval_items, "skip"
    # tasks only examples can teach sit at chance zero-shot by design: they measure no tax
    names = [n for n in pe.check_config(pc) if n not in IN_CONTEXT_ONLY]
    acc, hits = {}, {}
    for name in names:
        task = pe.load_task(Path(pc.data_dir), name, pc.tasks[name])
        m, _, h = pe.evaluate_task(model, tok, task, 0, pc)
        if m is not None:  # no query of the task fits the window: left out, as prompt_eval does
            acc[name], hits[name] = m["acc"], [h[i] for i in sorted(h)]
    if not acc:
        raise InputError("evaluate: every prompt-eval task was skipped, no query fits the model's window")
    return acc, hits


def tax_comparison(a: dict, b: dict) -> dict[str, float | None]:
    """Policy a's alignment tax against policy b's, paired on the same items: the pre-training loss
    difference a − b over the fixed validation windows, and the zero-shot prompt-eval accuracy
    difference a − b (the macro-average over tasks, stratified by task), each with its 95%
    half-width. a has the smaller tax beyond noise where loss_diff + its half-width < 0, or
    acc_diff − its half-width > 0. `a`/`b`: {"loss": [per window], "hits": {task: [bool]}}."""
    out: dict[str, float | None] = {}
    d, half = stats.paired_interval(a["loss"], b["loss"])
    out["pretrain_val_loss_diff"], out["pretrain_val_loss_diff_ci"] = d, finite_or_none(half)
    if a.get("hits") and b.get("hits"):
        d, half = stats.stratified_paired_interval({t: [float(x) for x in v] for t, v in a["hits"].items()},
                                                   {t: [float(x) for x in v] for t, v in b["hits"].items()})
        out["prompt_eval_acc_diff"], out["prompt_eval_acc_diff_ci"] = d, finite_or_none(half)
    return out


def win_rates(scores: list[float], ref: list[float]) -> tuple[float, float | None]:
    """(ties-half win rate, decisive win rate) of `scores` against `ref`, prompt by prompt."""
    wins = sum(a > b for a, b in zip(scores, ref))
    losses = sum(a < b for a, b in zip(scores, ref))
    ties = len(scores) - wins - losses
    return (wins + 0.5 * ties) / max(1, len(scores)), (wins / (wins + losses) if wins + losses else None)


def sample_n(model, tok, contexts: list[list[int]], k: int, ec: EvaluateConfig, score=None, drawn: list[list[dict]] = ()) -> list[list[dict]]:
    """k responses per prompt at temperature 1: draw j with the generator seeded `ec.seed + j`, all
    prompts at once (`drawn`: draws 0.. already made this way, reused). With `score` (texts ->
    scores, called once per draw that lacks them) each response gets its "rm_score".
    -> draws[j][prompt], `respond` dicts."""
    draws = list(drawn[:k])
    for j in range(len(draws), k):
        g = torch.Generator().manual_seed(ec.seed + j)
        draws.append(respond(model, tok, contexts, ec.max_new_tokens, temperature=1.0, batch_size=ec.batch_size, generator=g))
    if score is not None:
        for d in draws:
            if d and "rm_score" not in d[0]:
                for s, q in zip(d, score([s["text"] for s in d])):
                    s["rm_score"] = q
    return draws


def pick_best(draws: list[list[dict]], key: str, ns: list[int]) -> dict[int, list[dict]]:
    """Best-of-n by `key`: for each n, per prompt the draw with the highest `key` among draws
    0..n-1 (the first on ties). -> {n: per prompt the kept dict}."""
    kept: dict[int, list[dict]] = {}
    best: list[dict] | None = None
    for j, sampled in enumerate(draws[: max(ns)]):
        best = sampled if best is None else [s if s[key] > b[key] else b for s, b in zip(sampled, best)]
        if j + 1 in ns:
            kept[j + 1] = best
    return kept


def fit_law(d: list[float], gain: list[float], form: str, baseline: float) -> dict:
    """One over-optimisation law fitted to (d = √KL, oracle-score gain) points: {form, alpha,
    beta, peak_kl (d*², None where β <= 0 or the fit is underdetermined), peak_oracle_gain,
    max_kl (the largest KL measured: a peak beyond it is an extrapolation), points (d > 0),
    baseline (the oracle score the gain is over)}."""
    out = {"form": form, "alpha": None, "beta": None, "peak_kl": None, "peak_oracle_gain": None,
           "max_kl": max((x * x for x in d), default=0.0), "points": sum(x > 0 for x in d), "baseline": baseline}
    try:
        a, b = (stats.fit_best_of_n if form == "best_of_n" else stats.fit_rl)(d, gain)
    except ValueError:
        return out
    top = stats.peak(a, b, form)
    out.update(alpha=a, beta=b)
    if top is not None and math.isfinite(top * top):
        out.update(peak_kl=top * top, peak_oracle_gain=stats.curve(a, b, form, top))
    return out


def overoptimization(bon: dict[str, list[tuple[float, float, float]]], bon_baseline: float, curves: dict[str, list[dict]]) -> dict:
    """The laws of Gao et al. (2022) on our runs: best-of-n (each `bon` run: (KL, RM score, oracle
    score) per n, gain over `bon_baseline`) by d(α − β d); each RL curve (rows with kl and
    oracle_score, gain over its first row's oracle score) by d(α − β ln d). -> {run: fit_law}."""
    out = {}
    for name, pts in bon.items():
        out[name] = fit_law([math.sqrt(max(0.0, k)) for k, _, _ in pts], [o - bon_baseline for _, _, o in pts], "best_of_n", bon_baseline)
    for name, rows in curves.items():
        rows = [r for r in rows if r.get("oracle_score") not in (None, "")]
        if rows:
            base = float(rows[0]["oracle_score"])
            out[name] = fit_law([math.sqrt(max(0.0, float(r["kl"]))) for r in rows], [float(r["oracle_score"]) - base for r in rows], "rl", base)
    return out


def overopt_markdown(fits: dict, bon: dict[str, list[tuple[int, float, float, float]]]) -> str:
    """The fitted laws and the best-of-n points as markdown (`overopt_file`)."""
    def f(x, fmt="{:.3f}"):
        return "–" if x is None else fmt.format(x)

    lines = ["Over-optimisation (Gao, Schulman, Hilton 2022): oracle-score gain against d = √KL(π‖π_SFT), fitted by least "
             "squares: best-of-n R(d) = d(α − β d), RL R(d) = d(α − β ln d); peak KL = d*² where R turns down (– when β ≤ 0: no "
             "turn-down within the fit; a peak past the largest KL measured is an extrapolation). best_of_n: the reward model's "
             "pick of n SFT samples at T = 1 on the rl_eval prompts; oracle_best_of_n: the oracle's pick of the same samples "
             "(the headroom of reranking); both over the mean oracle score of all the samples, KL = log n − (n − 1)/n. RL runs: "
             "their per-update sampled rollouts (training prompts), gain over the first row, KL estimated on those samples.", "",
             "| run | form | points | α | β | max KL measured | peak KL | peak oracle gain | baseline oracle |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, r in fits.items():
        lines.append(f"| {name} | {r['form']} | {r['points']} | {f(r['alpha'], '{:.4f}')} | {f(r['beta'], '{:.4f}')} | {f(r['max_kl'], '{:.2f}')} | "
                     f"{f(r['peak_kl'], '{:.2f}')} | {f(r['peak_oracle_gain'])} | {f(r['baseline'])} |")
    if bon:
        names = list(bon)
        lines += ["", "Best-of-n on the rl_eval prompts: mean RM score and oracle score of each pick.", "",
                  "| n | KL | " + " | ".join(f"{n}: RM | {n}: oracle" for n in names) + " |",
                  "|---:|---:|" + "---:|---:|" * len(names)]
        for i, (n, kl, _, _) in enumerate(bon[names[0]]):
            lines.append(f"| {n} | {kl:.3f} | " + " | ".join(f"{bon[k][i][2]:.3f} | {bon[k][i][3]:.3f}" for k in names) + " |")
    return "\n".join(lines) + "\n"


def plot_overoptimization(curves: dict[str, list[dict]], points: dict[str, list[tuple[float, float, float]]] | None = None,
                          fits: dict | None = None):
    """RM score (left) and oracle score (right) against √KL: every RL curve (samples through
    training), best-of-n `points` ({label: [(KL, RM score, oracle score)] per n}), and on the
    right the fitted laws (`fits`, as `overoptimization` gives them) dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    colors = {}
    for name, rows in curves.items():
        x = [math.sqrt(max(0.0, float(r["kl"]))) for r in rows]
        line, = axes[0].plot(x, [float(r["rm_score"]) for r in rows], "o-", ms=3, alpha=0.7, label=name)
        colors[name] = line.get_color()
        pts = [(xi, float(r["oracle_score"])) for xi, r in zip(x, rows) if r.get("oracle_score") not in (None, "")]
        axes[1].plot([p[0] for p in pts], [p[1] for p in pts], "o-", ms=3, alpha=0.7, color=colors[name], label=name)
    for label, pts in (points or {}).items():
        x = [math.sqrt(max(0.0, k)) for k, _, _ in pts]
        line, = axes[0].plot(x, [p[1] for p in pts], "s-", ms=5, label=label)
        colors[label] = line.get_color()
        axes[1].plot(x, [p[2] for p in pts], "s-", ms=5, color=colors[label], label=label)
    for name, r in (fits or {}).items():
        if r["alpha"] is None:
            continue
        top = math.sqrt(max(r["max_kl"], r["peak_kl"] or 0.0, 1e-6))
        top = min(top, 1.5 * math.sqrt(max(r["max_kl"], 1e-6)))  # not far past the data
        xs = [top * i / 60 for i in range(61)]
        axes[1].plot(xs, [r["baseline"] + stats.curve(r["alpha"], r["beta"], r["form"], x) for x in xs], "--", lw=1,
                     color=colors.get(name, "gray"))
    axes[0].set_ylabel("reward-model score (normalised)")
    axes[1].set_ylabel("oracle score (ground truth); fitted laws dashed")
    for ax in axes:
        ax.set_xlabel("√KL(π‖π_SFT) (√nats)")
        ax.legend(fontsize=7)
    fig.suptitle("Over-optimisation: proxy reward vs ground truth (RL: samples through training; best-of-n: rl_eval prompts)")
    fig.tight_layout()
    return fig


def read_curve(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return [r for r in csv.DictReader(f) if r.get("kl") not in (None, "") and r.get("rm_score") not in (None, "")]


TABLE_KEYS = ("oracle_score", "perfect_rate", "win_rate_vs_sft", "decisive_win_rate_vs_sft", "rm_score", "kl_to_sft",
              "response_len", "pretrain_val_loss", "prompt_eval_acc")
SAMPLED_KEYS = ("sampled_oracle_score", "sampled_perfect_rate", "sampled_rm_score")
INTERVAL_KEYS = ("oracle_score_diff_vs_sft", "sampled_oracle_score_diff_vs_sft")




def table_rows(metrics: dict) -> list[dict]:
    """One row per policy (entries of `metrics` that are not policies, such as `overoptimization`,
    are left out): the greedy columns, the sampled ones, and the intervals as "diff ± half-width"
    and "[lo, hi]" strings."""
    rows = []
    for name, m in metrics.items():
        if not isinstance(m, dict) or "oracle_score" not in m:
            continue
        row = {"policy": name, **{k: m.get(k) for k in TABLE_KEYS[:2]},
               "oracle_diff_vs_sft (95%)": plus_minus(m.get("oracle_score_diff_vs_sft"), m.get("oracle_score_diff_vs_sft_ci")),
               **{k: m.get(k) for k in TABLE_KEYS[2:4]}}
        ci = m.get("decisive_win_rate_vs_sft_ci")
        row["decisive 95% (Wilson)"] = None if ci is None else f"[{ci[0]:.3f}, {ci[1]:.3f}]"
        row.update({k: m.get(k) for k in SAMPLED_KEYS})
        row["sampled_diff_vs_sft (95%)"] = plus_minus(m.get("sampled_oracle_score_diff_vs_sft"), m.get("sampled_oracle_score_diff_vs_sft_ci"))
        row.update({k: m.get(k) for k in TABLE_KEYS[4:]})
        rows.append(row)
    return rows


def best_of_n_points(metrics: dict) -> dict[str, list[tuple[int, float, float, float]]]:
    """{"best_of_n": [(n, KL, RM score, oracle score)] by n, "oracle_best_of_n": ...} from the
    metrics' `best_of_{n}` and `oracle_best_of_{n}` rows."""
    out: dict[str, list] = {}
    for name, m in metrics.items():
        judge, _, k = name.rpartition("_")
        if judge in ("best_of", "oracle_best_of") and k.isdigit():
            out.setdefault(f"{judge}_n", []).append((int(k), m["kl_to_sft"], m["rm_score"], m["oracle_score"]))
    return {j: sorted(p) for j, p in out.items()}


def score_rows(rows: list[dict], picks: list[dict]) -> list[float]:
    return [oracle_score(r, p["text"]) for r, p in zip(rows, picks)]


def evaluate(cfg, ec: EvaluateConfig, device: str) -> tuple[dict, list[dict], dict[str, list[dict]]]:
    rows = read_jsonl(ec.prompts_file)
    rows = rows[: ec.max_prompts] if ec.max_prompts >= 0 else rows
    for pair in ec.tax_pairs:
        if len(pair) != 2 or any(p not in ec.policies for p in pair):
            raise InputError(f"evaluate.tax_pairs: {list(pair)} must name two of evaluate.policies ({', '.join(ec.policies)})")
    ec.policies = {name: path for name, path in ec.policies.items() if path}  # an empty path leaves a policy out
    # a pair with a policy left out is not measured
    ec.tax_pairs = [list(pair) for pair in ec.tax_pairs if all(p in ec.policies for p in pair)]
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
    n = len(rows)
    metrics, samples, scores = {}, [], {}
    sampled_means: dict[str, list[float]] = {}  # per prompt the mean oracle score over the T = 1 samples
    drawn: dict[str, list[list[dict]]] = {}
    tax_items: dict[str, dict] = {}  # per policy the alignment tax's items: window losses, prompt-eval hits
    for name, model in models.items():
        greedy = respond(model, tok, contexts[name], ec.max_new_tokens, temperature=0.0, batch_size=ec.batch_size)
        texts = [g["text"] for g in greedy]
        scores[name] = score_rows(rows, greedy)
        rms = rm_scores(rm, tok, prompts, texts)
        # T = 1 samples, draw j seeded seed + j; draw 0 also estimates the KL
        draws = sample_n(model, tok, contexts[name], max(1, ec.sampled_n), ec)
        sampled = draws[0]
        # the contexts as `respond` fed them (cut from the left to leave room for the response)
        room = model.config.block_size - MIN_NEW_TOKENS
        ctx, ref_ctx = [c[-room:] for c in contexts[name]], [c[-room:] for c in plain]
        lp = sequence_logprob(model, ctx, [s["tokens"] for s in sampled], tok.pad_id)
        lp_ref = lp if name == ec.reference else sequence_logprob(reference, ref_ctx, [s["tokens"] for s in sampled], tok.pad_id)
        m = {
            "oracle_score": sum(scores[name]) / n,
            "perfect_rate": sum(s == 1.0 for s in scores[name]) / n,
            "rm_score": sum(rms) / n,
            "kl_to_sft": sum(a - b for a, b in zip(lp, lp_ref)) / n,
            "response_len": sum(len(x["tokens"]) for x in greedy) / n,
            "eos_rate": sum(x["eos"] for x in greedy) / n,
        }
        if ec.sampled_n:
            for d in draws:
                for r, s, q in zip(rows, d, rm_scores(rm, tok, prompts, [s["text"] for s in d])):
                    s["oracle_score"], s["rm_score"] = oracle_score(r, s["text"]), q
            every = [s for d in draws for s in d]
            sampled_means[name] = [sum(d[i]["oracle_score"] for d in draws) / len(draws) for i in range(n)]
            m.update(sampled_n=len(draws), sampled_oracle_score=sum(s["oracle_score"] for s in every) / len(every),
                     sampled_perfect_rate=sum(s["oracle_score"] == 1.0 for s in every) / len(every),
                     sampled_rm_score=sum(s["rm_score"] for s in every) / len(every),
                     sampled_response_len=sum(len(s["tokens"]) for s in every) / len(every))
            drawn[name] = draws
        tax_items[name] = {}
        m["pretrain_val_loss"], tax_items[name]["loss"] = pretrain_val_loss(model, Path(ec.pretrain_data), ec.val_windows, ec.seed)
        if ec.prompt_eval_items:
            m["prompt_eval"], tax_items[name]["hits"] = zero_shot_tax(model, tok, ec, cfg)
            m["prompt_eval_acc"] = sum(m["prompt_eval"].values()) / len(m["prompt_eval"])
        metrics[name] = m
        samples += [{"prompt_id": r["id"], "policy": name, "response": t, "oracle_score": s, "rm_score": q,
                     **({"sampled_oracle_score": sampled_means[name][i]} if name in sampled_means else {})}
                    for i, (r, t, s, q) in enumerate(zip(rows, texts, scores[name], rms))]
    bon_baseline = 0.0
    if ec.best_of_n:
        src = ec.best_of_n_from
        ns = sorted(set(ec.best_of_n))
        # the source policy's sampled draws are these draws' first ones (same contexts, seeds and batches): reused
        draws = sample_n(models[src], tok, contexts[src], max(ns), ec, lambda texts: rm_scores(rm, tok, prompts, texts), drawn.get(src, ()))
        for d in draws:
            if d and "oracle_score" not in d[0]:
                for r, s in zip(rows, d):
                    s["oracle_score"] = oracle_score(r, s["text"])
        for judge, key in (("best_of", "rm_score"), ("oracle_best_of", "oracle_score")):
            for k, chosen in pick_best(draws, key, ns).items():
                name = f"{judge}_{k}"
                scores[name] = [c["oracle_score"] for c in chosen]
                sampled_means[name] = scores[name]  # a sampled policy: its one pick per prompt
                metrics[name] = {
                    "oracle_score": sum(scores[name]) / n,
                    "perfect_rate": sum(s == 1.0 for s in scores[name]) / n,
                    "rm_score": sum(c["rm_score"] for c in chosen) / n,
                    "kl_to_sft": rl.best_of_n_kl(k),  # analytic, against the sampled policy at T = 1
                    "response_len": sum(len(c["tokens"]) for c in chosen) / n,
                    "eos_rate": sum(c["eos"] for c in chosen) / n,
                    **({"sampled_n": 1} if ec.sampled_n else {}),
                    **{k2: metrics[src][k2] for k2 in ("pretrain_val_loss", "prompt_eval_acc", "prompt_eval") if k2 in metrics[src]},
                }
                if ec.sampled_n:
                    metrics[name].update(sampled_oracle_score=metrics[name]["oracle_score"], sampled_perfect_rate=metrics[name]["perfect_rate"],
                                         sampled_rm_score=metrics[name]["rm_score"], sampled_response_len=metrics[name]["response_len"])
                samples += [{"prompt_id": r["id"], "policy": name, "response": c["text"], "oracle_score": s, "rm_score": c["rm_score"],
                             **({"sampled_oracle_score": s} if ec.sampled_n else {})}
                            for r, s, c in zip(rows, scores[name], chosen)]
        every = [s["oracle_score"] for d in draws for s in d]
        bon_baseline = sum(every) / len(every)  # best-of-1 in expectation, on all the samples
    ref = ec.reference
    for name, m in metrics.items():
        m["win_rate_vs_sft"], m["decisive_win_rate_vs_sft"] = win_rates(scores[name], scores[ref])
        diff, half = stats.paired_interval(scores[name], scores[ref])
        m["oracle_score_diff_vs_sft"], m["oracle_score_diff_vs_sft_ci"] = diff, finite_or_none(half)
        if name in sampled_means and ref in sampled_means:
            diff, half = stats.paired_interval(sampled_means[name], sampled_means[ref])
            m["sampled_oracle_score_diff_vs_sft"], m["sampled_oracle_score_diff_vs_sft_ci"] = diff, finite_or_none(half)
        wins = sum(a > b for a, b in zip(scores[name], scores[ref]))
        losses = sum(a < b for a, b in zip(scores[name], scores[ref]))
        ci = stats.wilson_interval(wins, wins + losses)
        m["decisive_win_rate_vs_sft_ci"] = None if ci is None else list(ci)
    for a, b in ec.tax_pairs:
        metrics.setdefault("alignment_tax", {})[f"{a}_vs_{b}"] = tax_comparison(tax_items[a], tax_items[b])
    curves = {Path(p).stem.removesuffix("_curve"): read_curve(Path(p)) for p in ec.curves if Path(p).is_file()}
    bon_points = best_of_n_points(metrics)
    if bon_points or curves:
        bon = {k: [(kl, r, o) for _, kl, r, o in pts] for k, pts in bon_points.items()}
        metrics["overoptimization"] = overoptimization(bon, bon_baseline, curves)
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
                table_rows(metrics), "Held-out rl_eval prompts, judged by the oracle (ground truth). Unprefixed columns: one greedy response "
                "per prompt; best-of-n rows (sampled by construction): the reward model's (best_of_n) or the oracle's (oracle_best_of_n) "
                f"pick of n SFT samples at T = 1, whose KL is analytic (log n − (n − 1)/n; an upper bound for the oracle's pick). sampled_*: "
                f"{ec.sampled_n} samples per prompt at T = 1 (best-of-n: its pick). Against SFT on the same prompts: win rates and "
                "oracle_diff_vs_sft against SFT's greedy response, sampled_diff_vs_sft against SFT's per-prompt mean over its samples, "
                "± the paired 95% half-width (1.96·sd/√n); the decisive win rate's 95% interval is Wilson's over the decisive prompts."))
            fits = metrics.get("overoptimization", {})
            points = best_of_n_points(metrics)
            atomic_write_text(ec.overopt_file, overopt_markdown(fits, points))
            atomic_write_json(ec.metrics_file, metrics)
            if curves or points:
                fig = plot_overoptimization(curves, {k: [(kl, r, o) for _, kl, r, o in p] for k, p in points.items()}, fits)
                Path(ec.plot_file).parent.mkdir(parents=True, exist_ok=True)
                fig.savefig(ec.plot_file, dpi=120)
                tracking.log_figure(fig, "overoptimization.png")
            for name, m in metrics.items():
                tracking.log_metrics({f"{name}/{k}": v for k, v in m.items() if isinstance(v, (int, float)) and v is not None})
            for pair, r in metrics.get("alignment_tax", {}).items():
                tracking.log_metrics({f"alignment_tax/{pair}/{k}": v for k, v in r.items() if v is not None})
            for name, r in fits.items():
                tracking.log_metrics({f"overoptimization/{name}/{k}": v for k, v in r.items() if isinstance(v, (int, float)) and v is not None})
            tracking.log_artifact(ec.table_file)
            tracking.log_artifact(ec.samples_file)
            tracking.log_artifact(ec.overopt_file)
            register(ec)
    return metrics


if __name__ == "__main__":
    stage_main(run)
