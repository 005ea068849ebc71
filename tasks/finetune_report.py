"""finetune_report stage: merge the per-task fine-tuning metrics into one file and one table.

    python -m tasks.finetune_report                 # after `python -m tasks.finetune` for every task

Reads `<metrics_dir>/<task>.json` for each of `finetune.tasks` (written by tasks/finetune.py),
writes `report_file` = {task: {init: {"lm<λ>": {val_acc, test_acc, ...}}}} (DVC metrics, e.g.
`sentiment.pretrain.lm0.5.test_acc`) and `table_file`: test accuracy (%) of every task and
setting, the mean over tasks, and the pretrain - scratch gap at each λ. `table_rows` gives the
same rows to the Prefect flow for a table artifact.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

from tasks import tracking
from tasks.common import InputError, atomic_write_json, atomic_write_text, read_json
from tasks.config import stage_main
from tasks.contracts import FINETUNE_INITS as INITS
from tasks.schema import FinetuneConfig


def read_metrics(fc: FinetuneConfig) -> dict:
    merged = {}
    for task in fc.tasks:
        path = Path(fc.metrics_dir) / f"{task}.json"
        m = read_json(path, f"run `python -m tasks.finetune finetune.task={task}` first")
        if not isinstance(m.get(task), dict):
            raise InputError(f"{path}: expected {{{task!r}: {{init: {{lm<λ>: metrics}}}}}}")
        merged[task] = m[task]
    return merged


def columns(metrics: dict) -> tuple[list[tuple[str, str]], list[str]]:
    """The (init, lm key) settings present in any task, and the λ keys with both inits."""
    found = {(i, lm) for per in metrics.values() for i, lms in per.items() for lm in lms}
    lms = sorted({lm for _, lm in found}, key=lambda k: -float(k[2:]))
    inits = [i for i in INITS if any(i == f for f, _ in found)] + sorted({i for i, _ in found} - set(INITS))
    settings = [(i, lm) for i in inits for lm in lms if (i, lm) in found]
    gaps = [lm for lm in lms if ("pretrain", lm) in found and ("scratch", lm) in found]
    return settings, gaps


def table_rows(metrics: dict) -> list[dict]:
    """One row per task plus a mean row: test accuracy (%) per setting and the pretrain - scratch gaps."""
    settings, gaps = columns(metrics)

    def acc(task: str, init: str, lm: str) -> float | None:
        m = metrics[task].get(init, {}).get(lm)
        return None if m is None else 100.0 * m["test_acc"]

    rows = []
    for task in metrics:
        row: dict = {"task": task}
        for init, lm in settings:
            row[f"{init} {lm}"] = acc(task, init, lm)
        for lm in gaps:
            p, s = acc(task, "pretrain", lm), acc(task, "scratch", lm)
            row[f"gap {lm}"] = None if p is None or s is None else p - s
        rows.append(row)
    mean: dict = {"task": "mean"}
    for key in rows[0] if rows else []:
        if key != "task":
            vals = [r[key] for r in rows if r[key] is not None]
            mean[key] = sum(vals) / len(vals) if vals else None
    rows.append(mean)
    return [{k: (round(v, 1) if isinstance(v, float) else v) for k, v in r.items()} for r in rows]


def markdown(rows: list[dict]) -> str:
    keys = list(rows[0])
    lines = [
        "Test accuracy (%) after fine-tuning; `lm<λ>` is the auxiliary LM coefficient, gap = pretrain − scratch.",
        "",
        "| " + " | ".join(keys) + " |",
        "|" + "|".join(["---"] + ["---:"] * (len(keys) - 1)) + "|",
    ]
    for r in rows:
        cells = [f"**{r['task']}**" if r["task"] == "mean" else r["task"]]
        cells += ["–" if r[k] is None else f"{r[k]:.1f}" for k in keys[1:]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def run(cfg) -> dict[str, float]:
    fc: FinetuneConfig = OmegaConf.to_object(cfg.finetune)
    with tracking.stage_run(cfg, "finetune_report", sections=["finetune"]):
        metrics = read_metrics(fc)
        rows = table_rows(metrics)
        atomic_write_json(fc.report_file, metrics)
        atomic_write_text(fc.table_file, markdown(rows))
        mean = {f"mean/{k}": v for k, v in rows[-1].items() if k != "task" and v is not None}
        tracking.log_metrics({k.replace(" ", "/"): v for k, v in mean.items()})
        tracking.log_artifact(fc.table_file)
    return mean


if __name__ == "__main__":
    stage_main(run)
