"""GPT-1's fine-tuning verdicts pooled over pre-training seeds, with paired 95% intervals.

    python -m tasks.gpt1_seeds              # the report from what flows/gpt1_seeds.py (make gpt1-seeds) left

Inputs, per task of `gpt1_seeds.tasks` ([] = `finetune.tasks`): the pipeline's own fine-tuning
(`<finetune.metrics_dir>/<task>.items.json`: the root seed) and each extra seed's
(`<gpt1_seeds.metrics_dir>/<seed>/finetune/<task>.items.json`, written by the `finetune` stage's
code from that seed's pre-training). An items file holds, per test row, whether each setting
("pretrain lm0.5", "scratch lm0.5") and each bar ("zero-shot", "baseline") got it right; the test
rows are the same in every seed.

Per task, bar and seed: the fine-tuned model (from pre-training, λ = 0.5) minus the bar on the rows
both scored, with its paired 95% half-width 1.96·sd(dᵢ)/√n (as `tasks.finetune_report.versus`).
Pooled: per test row the right/wrong of each averaged over the seeds, then the paired interval
over rows (the interval holds the rows' spread, the mean the seeds' average), as tasks/seeds.py
pools the RLHF seeds. A bar is cleared when the pooled difference exceeds its half-width, or when
both are at `CEILING` or above; a task is met when every bar is cleared (the rule of a single run,
tasks/report.py). Each seed's pre-training metrics (validation loss, ICL score) are listed beside.

Outputs: `gpt1_seeds.report_file` (JSON; `root_items` holds a digest of each task's pipeline items
file, so the report can tell a record of other fine-tuning runs) and `gpt1_seeds.table_file`.
"""

from __future__ import annotations

import sys
from pathlib import Path

from omegaconf import OmegaConf

from model import stats
from tasks.common import InputError, atomic_write_json, atomic_write_text, digest, markdown_table, read_json
from tasks.config import stage_main
from tasks.contracts import BARS, FINETUNED, bar_cleared
from tasks.schema import GPT1SeedsConfig  # noqa: F401  (the section's schema lives in tasks/schema.py)


def task_names(cfg) -> list[str]:
    return list(cfg.gpt1_seeds.tasks) or list(cfg.finetune.tasks)


def items_files(cfg, task: str) -> dict[int, Path]:
    """{seed: items file}: the pipeline's run first, then each extra seed's."""
    out = {int(cfg.seed): Path(cfg.finetune.metrics_dir) / f"{task}.items.json"}
    for s in cfg.gpt1_seeds.seeds:
        out[int(s)] = Path(cfg.gpt1_seeds.metrics_dir) / str(s) / "finetune" / f"{task}.items.json"
    return out


def pretrain_files(cfg) -> dict[int, Path]:
    out = {int(cfg.seed): Path(cfg.pretrain.metrics_file)}
    for s in cfg.gpt1_seeds.seeds:
        out[int(s)] = Path(cfg.gpt1_seeds.metrics_dir) / str(s) / "pretrain.json"
    return out


def read_items(path: Path) -> dict[str, str]:
    items = read_json(path, "run `make gpt1-seeds` (or `make pipeline` for the root seed)")
    correct = items.get("correct")
    if not isinstance(correct, dict) or any(not isinstance(v, str) or len(v) != items.get("n") or set(v) - set("01-")
                                            for v in correct.values()):
        raise InputError(f"{path}: expected {{'n': N, 'correct': {{name: one 0/1/- per test row, N of them}}}}")
    return correct


def pool(per_seed: dict[int, dict[str, str]], bar: str) -> dict | None:
    """The fine-tuned model against one bar over every seed that ran both: per row the mean over seeds."""
    seeds = [s for s, c in per_seed.items() if FINETUNED in c and BARS[bar] in c]
    if not seeds:
        return None
    n = {len(per_seed[s][FINETUNED]) for s in seeds} | {len(per_seed[s][BARS[bar]]) for s in seeds}
    if len(n) != 1:
        raise InputError(f"{bar}: the seeds scored different numbers of test rows ({sorted(n)}): not the same test split")
    rows = [i for i in range(n.pop()) if all("-" not in (per_seed[s][FINETUNED][i], per_seed[s][BARS[bar]][i]) for s in seeds)]
    if len(rows) < 2:
        return None
    mine = [sum(int(per_seed[s][FINETUNED][i]) for s in seeds) / len(seeds) for i in rows]
    other = [sum(int(per_seed[s][BARS[bar]][i]) for s in seeds) / len(seeds) for i in rows]
    diff, ci95 = stats.paired_interval(mine, other)
    acc = sum(other) / len(other)
    return {"seeds": seeds, "acc": acc, "finetuned": sum(mine) / len(mine), "diff": diff, "ci95": ci95, "n": len(rows),
            "ok": bar_cleared(diff, ci95, acc)}


def points(v: dict | None) -> str:
    """"+4.5 ± 2.1": a difference and its 95% half-width in points; "–" when not run."""
    return "–" if v is None else f"{100 * v['diff']:+.1f} ± {100 * v['ci95']:.1f}"


def table(report: dict) -> str:
    rows = []
    for task, t in report["tasks"].items():
        for bar, p in t["pooled"].items():
            if p is None:
                continue
            rows.append({
                "task": task, "bar": bar, "seeds": len(p["seeds"]), "fine-tuned %": 100 * p["finetuned"], "bar %": 100 * p["acc"],
                "fine-tuned − bar, pooled (95%)": points(p),
                "by seed": " / ".join(points(t["per_seed"][str(s)].get(bar)) for s in p["seeds"]),
                "cleared": "yes" if p["ok"] else "**no**",
            })
    lines = [markdown_table(rows, "Test rows shared by every seed; points (%). Pooled: per row the mean over seeds of right (1) or "
                                  "wrong (0), then the paired 95% half-width over rows; by seed: the same for each seed alone, "
                                  f"in the order {', '.join(map(str, report['seeds']))}.", digits=1) if rows else "_no seed ran_\n"]
    pre = [{"seed": s, "val loss": m.get("val_loss"), "ICL score": m.get("icl_score"), "ICL score, long documents": m.get("icl_score_long")}
           for s, m in ((int(s), m) for s, m in report["pretrain"].items()) if m]
    if pre:
        lines.append(markdown_table(pre, "Each seed's pre-training (`metrics/pretrain.json` for the pipeline's seed):"))
    verdicts = [f"- {task}: **{'met' if t['ok'] else 'not met'}** over {len(t['seeds'])} seeds"
                for task, t in report["tasks"].items() if t["ok"] is not None]
    if verdicts:
        lines.append("\n".join(verdicts) + "\n")
    return "\n".join(lines)


def run(cfg) -> dict:
    gs: GPT1SeedsConfig = OmegaConf.to_object(cfg.gpt1_seeds)
    root = int(cfg.seed)
    tasks, missing, root_items = {}, [], {}
    for task in task_names(cfg):
        files = items_files(cfg, task)
        if not files[root].is_file():
            raise InputError(f"{files[root]}: the pipeline's fine-tuning of {task} is missing (run make pipeline first)")
        root_items[task] = digest(files[root])
        per_seed = {}
        for seed, path in files.items():
            if path.is_file():
                per_seed[seed] = read_items(path)
            else:
                missing.append(str(path))
        pooled = {bar: pool(per_seed, bar) for bar in BARS}
        judged = [p for p in pooled.values() if p is not None]
        ok = (all(p["ok"] for p in judged) and pooled["baseline"] is not None and pooled["scratch"] is not None) if judged else None
        tasks[task] = {"seeds": list(per_seed), "per_seed": {str(s): {bar: p for bar in BARS if (p := pool({s: c}, bar))}
                                                             for s, c in per_seed.items()},
                       "pooled": pooled, "ok": ok}
    pretrain = {str(s): (read_json(p) if p.is_file() else None) for s, p in pretrain_files(cfg).items()}
    report = {"seeds": [root, *map(int, gs.seeds)], "root_seed": root, "root_items": root_items, "missing": missing,
              "tasks": tasks, "pretrain": pretrain}
    atomic_write_json(gs.report_file, report)
    atomic_write_text(gs.table_file, table(report))
    if missing:
        print(f"gpt1_seeds: not yet fine-tuned: {', '.join(missing)} (run make gpt1-seeds)", file=sys.stderr)
    return report


if __name__ == "__main__":
    stage_main(run)
