"""finetune_report stage: merge the per-task fine-tuning metrics into one file and one table.

    python -m tasks.finetune_report                 # after `python -m tasks.finetune` for every task

Reads `<metrics_dir>/<task>.json` and `<metrics_dir>/<task>.items.json` for each of
`finetune.tasks` (written by tasks/finetune.py), writes `report_file` =
{task: {init: {"lm<λ>": {val_acc, test_acc, ...}}, "vs": {bar: {acc, diff, ci95, n}}}} (DVC
metrics, e.g. `sentiment.pretrain.lm0.5.test_acc`, `sentiment.vs.scratch.diff`) and `table_file`:
test accuracy (%) of every task and setting, the mean over tasks, the pretrain - scratch gap at
each λ, and GPT-1's comparison on the same test rows: the fine-tuned model (pretrain, λ = 0.5)
against each bar it must clear (zero-shot prompting, the word baseline, scratch at λ = 0.5), the
paired difference d = mean(right_i - bar_i) and its 95% half-width 1.96·sd(d_i)/√n
(`model.stats.paired_interval`) over the n rows both scored. `table_rows` gives the same rows to
the Prefect flow for a table artifact.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

from model.stats import paired_interval
from tasks import tracking
from tasks.common import InputError, atomic_write_json, atomic_write_text, read_json
from tasks.config import stage_main
from tasks.contracts import BARS, FINETUNED
from tasks.contracts import FINETUNE_INITS as INITS
from tasks.schema import FinetuneConfig


def read_metrics(fc: FinetuneConfig) -> dict:
    merged = {}
    for task in fc.tasks:
        path = Path(fc.metrics_dir) / f"{task}.json"
        m = read_json(path, f"run `python -m tasks.finetune finetune.task={task}` first")
        if not isinstance(m.get(task), dict):
            raise InputError(f"{path}: expected {{{task!r}: {{init: {{lm<λ>: metrics}}}}}}")
        merged[task] = dict(m[task])
        items_path = path.with_suffix(".items.json")
        items = read_json(items_path, f"run `python -m tasks.finetune finetune.task={task}` again")
        if not isinstance(items.get("correct"), dict) or any(len(v) != items.get("n") for v in items["correct"].values()):
            raise InputError(f"{items_path}: expected {{'n': N, 'correct': {{name: one 0/1/- per test row, N of them}}}}")
        if vs := versus(items["correct"]):
            merged[task]["vs"] = vs
    return merged


def versus(correct: dict[str, str]) -> dict[str, dict]:
    """The fine-tuned model against each bar on the test rows both scored: {bar: {acc (the bar's),
    diff (fine-tuned - bar), ci95 (its paired 95% half-width), n}}; bars not run are left out."""
    mine = correct.get(FINETUNED)
    out = {}
    for bar, key in BARS.items():
        other = correct.get(key)
        if mine is None or other is None:
            continue
        pairs = [(int(a), int(b)) for a, b in zip(mine, other) if "-" not in (a, b)]
        if len(pairs) < 2:  # no spread to estimate
            continue
        a, b = [p[0] for p in pairs], [p[1] for p in pairs]
        diff, ci95 = paired_interval(a, b)
        out[bar] = {"acc": sum(b) / len(b), "diff": diff, "ci95": ci95, "n": len(pairs)}
    return out


def columns(metrics: dict) -> tuple[list[tuple[str, str]], list[str]]:
    """The (init, lm key) settings present in any task, and the λ keys with both inits."""
    found = {(i, lm) for per in metrics.values() for i, lms in per.items() if i != "vs" for lm in lms}
    lms = sorted({lm for _, lm in found}, key=lambda k: -float(k[2:]))
    inits = [i for i in INITS if any(i == f for f, _ in found)] + sorted({i for i, _ in found} - set(INITS))
    settings = [(i, lm) for i in inits for lm in lms if (i, lm) in found]
    gaps = [lm for lm in lms if ("pretrain", lm) in found and ("scratch", lm) in found]
    return settings, gaps


def table_rows(metrics: dict) -> list[dict]:
    """One row per task plus a mean row: test accuracy (%) per setting, the pretrain - scratch gaps,
    the bars' accuracy (%) on the same rows and "+d ± h" (points) of the fine-tuned model over each bar."""
    settings, gaps = columns(metrics)
    bars = [b for b in BARS if any(b in per.get("vs", {}) for per in metrics.values())]

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
        vs = metrics[task].get("vs", {})
        for bar in bars:
            if bar != "scratch":  # its accuracy is a column already
                row[bar] = 100.0 * vs[bar]["acc"] if bar in vs else None
        for bar in bars:
            row[f"vs {bar}"] = f"{100 * vs[bar]['diff']:+.1f} ± {100 * vs[bar]['ci95']:.1f}" if bar in vs else None
        rows.append(row)
    mean: dict = {"task": "mean"}
    for key in rows[0] if rows else []:
        if key != "task":
            vals = [r[key] for r in rows if r[key] is not None]
            mean[key] = sum(vals) / len(vals) if vals and not key.startswith("vs ") else None  # no interval for a mean
    rows.append(mean)
    return [{k: (round(v, 1) if isinstance(v, float) else v) for k, v in r.items()} for r in rows]


def markdown(rows: list[dict]) -> str:
    keys = list(rows[0])
    lines = [
        "Test accuracy (%) after fine-tuning; `lm<λ>` is the auxiliary LM coefficient, gap = pretrain − scratch. "
        "zero-shot: the pre-trained model prompted with the task's prompt_eval template (k=0), baseline: the word "
        "baseline (bag of words, or word overlap for story cloze), both on the same test rows. vs <bar>: fine-tuned "
        "(pretrain lm0.5) − bar on those rows, points, ± the paired 95% half-width 1.96·sd(dᵢ)/√n.",
        "",
        "| " + " | ".join(keys) + " |",
        "|" + "|".join(["---"] + ["---:"] * (len(keys) - 1)) + "|",
    ]
    for r in rows:
        cells = [f"**{r['task']}**" if r["task"] == "mean" else r["task"]]
        cells += ["–" if r[k] is None else r[k] if isinstance(r[k], str) else f"{r[k]:.1f}" for k in keys[1:]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def run(cfg) -> dict[str, float]:
    fc: FinetuneConfig = OmegaConf.to_object(cfg.finetune)
    with tracking.stage_run(cfg, "finetune_report", sections=["finetune"]):
        metrics = read_metrics(fc)
        rows = table_rows(metrics)
        atomic_write_json(fc.report_file, metrics)
        atomic_write_text(fc.table_file, markdown(rows))
        mean = {f"mean/{k}": v for k, v in rows[-1].items() if isinstance(v, float)}
        tracking.log_metrics({k.replace(" ", "/"): v for k, v in mean.items()})
        tracking.log_artifact(fc.table_file)
    return mean


if __name__ == "__main__":
    stage_main(run)
