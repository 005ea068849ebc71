"""The RLHF comparison pooled over seeds: every method against SFT, with paired 95% intervals.

    python -m tasks.seeds                   # the report from what flows/seeds.py (make rlhf-seeds) left

Inputs: the pipeline's own evaluation (`evaluate.samples_file`, `evaluate.metrics_file`: the root
seed) and each extra seed's (`<seeds.metrics_dir>/<seed>/evaluate_samples.jsonl`, `evaluate.json`,
written by the `evaluate` stage's code with that seed's policies). Every row of a samples file is
one policy's greedy response to one rl_eval prompt with its oracle score, and the mean oracle
score of the policy's `evaluate.sampled_n` temperature-1 samples for that prompt.

Per method (`seeds.methods`) and seed: the greedy and the sampled oracle score's difference from
SFT with its paired 95% interval over prompts (`model.stats.paired_interval`), and the decisive
win rate (prompts where the greedy responses' scores differ) with its Wilson interval. Pooled:
per prompt the difference averaged over the seeds, then the paired interval over prompts (so
the interval holds the prompts' spread, the mean the seeds' average), and the decisive wins of
every (seed, prompt) together. The verdicts of the InstructGPT claim, each against ceilings
measured in the same run (the pipeline's evaluation):

- `sampled_gain`: PPO-ptx's sampled score >= SFT's + half of (the oracle's best-of-16 of SFT's
  samples − SFT's sampled score), and the pooled interval's lower end above 0;
- `greedy_wins`: decisive win rate >= 0.75 and the greedy difference's interval above 0;
- `recovers_gold`: its sampled gain >= half the gold-reward run's (ppo_gold).

Outputs: `seeds.report_file` (JSON) and `seeds.table_file` (markdown, read by tasks/report.py).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from omegaconf import OmegaConf

from model import stats
from tasks.common import InputError, atomic_write_json, atomic_write_text, markdown_table, plus_minus, read_jsonl
from tasks.config import stage_main
from tasks.schema import SeedsConfig  # noqa: F401  (the section's schema lives in tasks/schema.py)

REFERENCE = "sft"
CLAIMED = "ppo_ptx"  # the method the InstructGPT claim is about
GOLD = "ppo_gold"


def seed_files(cfg) -> dict[int, tuple[Path, Path]]:
    """{seed: (samples file, metrics file)}: the pipeline's run first, then each extra seed's."""
    out = {int(cfg.seed): (Path(cfg.evaluate.samples_file), Path(cfg.evaluate.metrics_file))}
    for s in cfg.seeds.seeds:
        d = Path(cfg.seeds.metrics_dir) / str(s)
        out[int(s)] = (d / "evaluate_samples.jsonl", d / "evaluate.json")
    return out


def read_scores(path: Path) -> dict[str, dict[str, tuple[float, float | None]]]:
    """{policy: {prompt_id: (greedy oracle score, sampled mean oracle score or None)}}."""
    out: dict[str, dict[str, tuple[float, float | None]]] = {}
    for i, r in enumerate(read_jsonl(path), start=1):
        if not {"policy", "prompt_id", "oracle_score"} <= set(r):
            raise InputError(f"{path}: row {i} needs policy, prompt_id and oracle_score")
        out.setdefault(r["policy"], {})[r["prompt_id"]] = (float(r["oracle_score"]), r.get("sampled_oracle_score"))
    return out


def compare(method: dict[str, tuple], ref: dict[str, tuple], ids: list[str]) -> dict:
    """One seed: the method against the reference on the shared prompts `ids`."""
    g, gr = [method[i][0] for i in ids], [ref[i][0] for i in ids]
    wins, losses = sum(a > b for a, b in zip(g, gr)), sum(a < b for a, b in zip(g, gr))
    d, h = stats.paired_interval(g, gr)
    out = {"prompts": len(ids), "greedy": sum(g) / len(g), "greedy_diff": d, "greedy_diff_ci": h,
           "wins": wins, "losses": losses, "decisive_win_rate": wins / (wins + losses) if wins + losses else None}
    if all(method[i][1] is not None and ref[i][1] is not None for i in ids):
        s, sr = [method[i][1] for i in ids], [ref[i][1] for i in ids]
        d, h = stats.paired_interval(s, sr)
        out.update(sampled=sum(s) / len(s), sampled_diff=d, sampled_diff_ci=h)
    return out


def pool(per_seed: dict[int, dict[str, dict[str, tuple]]], method: str, ids: list[str]) -> dict:
    """Every seed together: per prompt the difference from the reference averaged over the seeds."""
    seeds = [s for s, pol in per_seed.items() if method in pol and REFERENCE in pol]
    if not seeds:
        return {}
    out = {"seeds": seeds}
    for key, col in (("greedy", 0), ("sampled", 1)):
        if any(per_seed[s][method][i][col] is None or per_seed[s][REFERENCE][i][col] is None for s in seeds for i in ids):
            continue
        m = [sum(per_seed[s][method][i][col] for s in seeds) / len(seeds) for i in ids]
        r = [sum(per_seed[s][REFERENCE][i][col] for s in seeds) / len(seeds) for i in ids]
        d, h = stats.paired_interval(m, r)
        out.update({key: sum(m) / len(m), f"{key}_sft": sum(r) / len(r), f"{key}_diff": d, f"{key}_diff_ci": h})
    wins = sum(per_seed[s][method][i][0] > per_seed[s][REFERENCE][i][0] for s in seeds for i in ids)
    losses = sum(per_seed[s][method][i][0] < per_seed[s][REFERENCE][i][0] for s in seeds for i in ids)
    out.update(wins=wins, losses=losses, decisive_win_rate=wins / (wins + losses) if wins + losses else None,
               decisive_win_rate_ci=stats.wilson_interval(wins, wins + losses))
    return out


def verdicts(pooled: dict[str, dict], root_metrics: dict) -> dict:
    """The claim's three verdicts for CLAIMED (None where an input is missing)."""
    p, gold = pooled.get(CLAIMED) or {}, pooled.get(GOLD) or {}
    sft_s = (root_metrics.get(REFERENCE) or {}).get("sampled_oracle_score")
    bo16 = (root_metrics.get("oracle_best_of_16") or {}).get("oracle_score")
    out: dict = {"method": CLAIMED, "sft_sampled": sft_s, "oracle_best_of_16": bo16}
    if "sampled_diff" in p and sft_s is not None and bo16 is not None:
        need = 0.5 * (bo16 - sft_s)
        out["sampled_gain"] = {"gain": p["sampled_diff"], "ci": p["sampled_diff_ci"], "needed": need,
                               "met": p["sampled_diff"] >= need and p["sampled_diff"] - p["sampled_diff_ci"] > 0}
    if "greedy_diff" in p and p.get("decisive_win_rate") is not None:
        out["greedy_wins"] = {"decisive_win_rate": p["decisive_win_rate"], "ci": p["decisive_win_rate_ci"],
                              "greedy_diff": p["greedy_diff"], "greedy_diff_ci": p["greedy_diff_ci"],
                              "met": p["decisive_win_rate"] >= 0.75 and p["greedy_diff"] - p["greedy_diff_ci"] > 0}
    if "sampled_diff" in p and "sampled_diff" in gold:
        out["recovers_gold"] = {"gain": p["sampled_diff"], "gold_gain": gold["sampled_diff"],
                                "met": gold["sampled_diff"] > 0 and p["sampled_diff"] >= 0.5 * gold["sampled_diff"]}
    return out


def table(report: dict) -> str:
    rows = []
    for method, p in report["pooled"].items():
        if not p:
            continue
        per = report["per_seed"]
        rows.append({
            "method": method, "seeds": len(p["seeds"]),
            "sampled (T=1)": p.get("sampled"), "sampled − SFT (95%)": plus_minus(p.get("sampled_diff"), p.get("sampled_diff_ci")),
            "greedy": p.get("greedy"), "greedy − SFT (95%)": plus_minus(p.get("greedy_diff"), p.get("greedy_diff_ci")),
            "decisive wins": p.get("decisive_win_rate"),
            "sampled − SFT by seed": " / ".join(plus_minus(per[str(s)][method].get("sampled_diff"), None) or "" for s in p["seeds"]),
        })
    v = report["verdicts"]
    lines = [markdown_table(rows, f"rl_eval, oracle scores; every seed's run from the same SFT policy and reward model; "
                                  f"pooled: per prompt the mean over seeds, paired 95% interval over {report['prompts']} prompts."), ""]
    for key, text in (("sampled_gain", "sampled gain ≥ ½ (oracle best-of-16 of SFT − SFT), interval above 0"),
                      ("greedy_wins", "greedy decisive wins ≥ 75%, greedy interval above 0"),
                      ("recovers_gold", "recovers ≥ ½ of the gold-reward run's sampled gain")):
        if key in v:
            d = v[key]
            detail = ", ".join(f"{k} {x:.3f}" if isinstance(x, float) else f"{k} {x}" for k, x in d.items() if k != "met")
            lines.append(f"- {v['method']}: {text}: **{'met' if d['met'] else 'not met'}** ({detail})")
    return "\n".join(lines) + "\n"


def run(cfg) -> dict:
    sc: SeedsConfig = OmegaConf.to_object(cfg.seeds)
    files = seed_files(cfg)
    per_seed_scores, missing = {}, []
    for seed, (samples, _) in files.items():
        if samples.is_file():
            per_seed_scores[seed] = read_scores(samples)
        else:
            missing.append(str(samples))
    if int(cfg.seed) not in per_seed_scores:
        raise InputError(f"{files[int(cfg.seed)][0]}: the pipeline's evaluation is missing (run make pipeline first)")
    ids = sorted(per_seed_scores[int(cfg.seed)].get(REFERENCE, {}))
    if not ids:
        raise InputError(f"{files[int(cfg.seed)][0]}: no '{REFERENCE}' rows")
    for seed, pol in per_seed_scores.items():
        for name, rows in pol.items():
            if name in (*sc.methods, REFERENCE) and set(rows) != set(ids):
                raise InputError(f"{files[seed][0]}: policy '{name}' answered other prompts than the pipeline's evaluation")
    per_seed = {str(s): {m: compare(pol[m], pol[REFERENCE], ids) for m in sc.methods if m in pol and REFERENCE in pol}
                for s, pol in per_seed_scores.items()}
    pooled = {m: pool(per_seed_scores, m, ids) for m in sc.methods}
    root_metrics = json.loads(files[int(cfg.seed)][1].read_text()) if files[int(cfg.seed)][1].is_file() else {}
    report = {"seeds": list(per_seed_scores), "missing": missing, "prompts": len(ids), "per_seed": per_seed,
              "pooled": pooled, "verdicts": verdicts(pooled, root_metrics)}
    atomic_write_json(sc.report_file, report)
    atomic_write_text(sc.table_file, table(report))
    if missing:
        print(f"seeds: not yet evaluated: {', '.join(missing)} (run make rlhf-seeds)", file=sys.stderr)
    return report


if __name__ == "__main__":
    stage_main(run)
