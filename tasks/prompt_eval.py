"""prompt_eval stage: GPT-2 / GPT-3 zero-, one- and few-shot evaluation of any checkpoint, no gradients.

    python -m tasks.prompt_eval                                    # models/pretrain on conf/ defaults
    python -m tasks.prompt_eval prompt_eval.model=sft prompt_eval.shots=[0,1,4,8]
    python -m tasks.prompt_eval prompt_eval.model=/path/to/hf-gpt2 # a Hugging Face GPT-2 folder
    python -m tasks.prompt_eval experiment=smoke prompt_eval.too_long=skip prompt_eval.max_items=20  # seconds

Each task under `prompt_eval.data_dir/<task>/` is written as text by its template in
conf/prompt_eval.yaml: an optional instruction, k solved examples from the train split, then the
query. The model sees only that text: no special tokens, no new tokens, no weight updates.

- choice tasks: each choice is scored by the summed log-probability of its tokens after the
  context (`acc`), and by that sum divided by the choice's length in characters (`acc_norm`, as
  lm-evaluation-harness does). Batches of whole items; each context runs once into a KV cache
  that all of the item's choices continue from.
- generate tasks: greedy decoding (KV cache, left-padded batches) of up to `max_new_tokens`, cut
  at the first stop sequence, scored by exact match with the answer after `normalize_answer`
  (`acc`); words every answer shares ("It is") belong in the template, not the target.
- `verbalizer` maps an answer to the words that stand for it (yes -> "In other words:"), so a
  task can be asked in the shape the pre-training text uses (GPT-2's zero-shot recipe).
- examples: drawn per test item from the train split by an RNG seeded with (seed, task, item);
  train rows whose query text equals the item's are never drawn. The k examples are the first k
  of one draw, so the 1-shot example is also the first of the 4-shot ones (a smoother k curve).
- long contexts: when context + continuation exceed the model's window, whole examples are
  dropped, oldest (leftmost) first, then the instruction; such an item counts as `truncated`.
  If the query and its continuation alone do not fit, that is an InputError, or with
  `too_long=skip` the item is left out at every k and counted as `skipped`.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

from model.gpt import GPT
from model.load import from_pretrained
from model.tokenizer import Tokenizer, TokenizerError
from tasks import tracking
from tasks.common import InputError, atomic_write_json, atomic_write_text, resolve_device, torch_threads
from tasks.config import stage_main
from tasks.prompting import check_config, evaluate, load_task
from tasks.schema import PromptTemplate, PromptEvalConfig  # noqa: F401  (the section's schema lives in tasks/schema.py)

def load_model(pc: PromptEvalConfig, device: str) -> tuple[str, GPT, Tokenizer]:
    """(result name, model in eval mode on `device`, tokenizer) for `prompt_eval.model`."""
    if pc.model in pc.checkpoints:
        name, folder = pc.model, Path(pc.checkpoints[pc.model])
        if not folder.is_dir():
            raise InputError(f"{folder}: checkpoint folder not found (run the {name} stage first)")
    else:
        folder = Path(pc.model)
        name = folder.name
        if not folder.is_dir():
            raise InputError(
                f"prompt_eval.model={pc.model}: neither a checkpoint name ({', '.join(pc.checkpoints)}) nor a folder"
            )
    model = from_pretrained(folder, dropout=0.0).to(device).float().eval()
    tok_path = Path(pc.tokenizer_path) if pc.tokenizer_path else folder / "tokenizer.json"
    if not tok_path.is_file():
        raise InputError(f"{tok_path}: tokenizer not found (set prompt_eval.tokenizer_path)")
    try:  # an HF GPT-2 tokenizer lacks our fine-tuning specials; prompts never use them anyway
        tok = Tokenizer.load(tok_path, add_missing_specials=True)
    except TokenizerError as e:
        raise InputError(str(e)) from None
    return name, model, tok


def table_rows(metrics: dict) -> list[dict]:
    """One row per (model, task, k) of a metrics file: what the flow publishes as a table artifact."""
    rows = []
    for model, tasks in metrics.items():
        for task, by_k in tasks.items():
            for key in sorted(by_k, key=lambda s: int(s[1:])):
                m = by_k[key]
                rows.append(
                    {
                        "model": model,
                        "task": task,
                        "k": int(key[1:]),
                        "acc": round(m["acc"], 4),
                        "acc_norm": round(m["acc_norm"], 4) if "acc_norm" in m else None,
                        "chance": round(m["chance"], 4),
                        "n": m["n"],
                        "skipped": m.get("skipped", 0),
                        "truncated": m.get("truncated", 0),
                        "mean_shots": round(m.get("mean_shots", int(key[1:])), 2),
                        "gain": round(m["gain"], 4) if "gain" in m else None,
                        "gain_ci95": round(m["gain_ci95"], 4) if "gain" in m else None,
                    }
                )
    return rows


def markdown_table(metrics: dict) -> str:
    """Accuracy by task (rows) and k (columns), acc_norm in brackets for choice tasks, chance beside."""
    rows = table_rows(metrics)
    ks = sorted({r["k"] for r in rows})
    top = ks[-1] if len(ks) > 1 else None  # the paired gain of the largest k over the smallest
    lines = [
        "| model | task | n | chance | " + " | ".join(f"k={k}" for k in ks)
        + (f" | k={top} − k={ks[0]} (95% CI) |" if top is not None else " |"),
        "|---|---|---:|---:|" + "---:|" * (len(ks) + (top is not None)),
    ]
    notes = []
    for model, tasks in metrics.items():
        for task in tasks:
            mine = {r["k"]: r for r in rows if r["model"] == model and r["task"] == task}
            cells = []
            for k in ks:
                r = mine.get(k)
                cells.append("–" if r is None else f"{r['acc']:.3f}" + ("" if r["acc_norm"] is None else f" ({r['acc_norm']:.3f})"))
                if r is not None and r["skipped"] and k == ks[0]:
                    notes.append(f"{model} {task}: {r['skipped']} test items skipped, their query alone overflows the window")
                if r is not None and r["truncated"]:
                    notes.append(
                        f"{model} {task} k={k}: {r['truncated']}/{r['n']} contexts truncated "
                        f"({r['mean_shots']:.2f} examples kept on average)"
                    )
            if top is not None:
                r = mine.get(top)
                cells.append("–" if r is None or r["gain"] is None else f"{r['gain']:+.3f} ± {r['gain_ci95']:.3f}")
            first = next(iter(mine.values()))
            lines.append(f"| {model} | {task} | {first['n']} | {first['chance']:.3f} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("acc (acc_norm: log-likelihood per character) for choice tasks; exact match for generate tasks. "
                 "The last column: the same items' accuracy at the largest k minus the smallest, ± the 95% "
                 "half-width of the paired difference (above 0 beyond noise when the gain exceeds it).")
    lines += [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


def write_curve(path: str | Path, metrics: dict) -> None:
    lines = ["model,task,k,acc,chance"] + [
        f"{r['model']},{r['task']},{r['k']},{r['acc']},{r['chance']}" for r in table_rows(metrics)
    ]
    atomic_write_text(path, "\n".join(lines) + "\n")


def plot_curve(metrics: dict):
    """Accuracy against k, one panel per task (GPT-3 Fig. 1.2's shape); chance dotted."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = table_rows(metrics)
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    cols = min(4, len(tasks))
    nrows = (len(tasks) + cols - 1) // cols
    fig, axes = plt.subplots(nrows, cols, figsize=(3.2 * cols, 2.6 * nrows), squeeze=False, sharey=True)
    for ax, task in zip(axes.flat, tasks):
        for model in metrics:
            mine = [r for r in rows if r["task"] == task and r["model"] == model]
            ks = [r["k"] for r in mine]
            line = ax.plot(ks, [r["acc"] for r in mine], "o-", label=model)[0]
            if mine and mine[0]["acc_norm"] is not None:
                ax.plot(ks, [r["acc_norm"] for r in mine], "s--", color=line.get_color(), alpha=0.5, label=f"{model} (norm)")
            ax.axhline(mine[0]["chance"], color="grey", linestyle=":", linewidth=1)
            ax.set_xticks(ks)
        ax.set_title(task, fontsize=10)
        ax.set_xlabel("k (examples in context)")
        ax.set_ylim(0, 1)
    for ax in axes.flat[len(tasks) :]:
        ax.axis("off")
    axes[0, 0].set_ylabel("accuracy")
    axes[0, 0].legend(fontsize=7)
    fig.tight_layout()
    return fig


def run(cfg) -> dict[str, float]:
    pc: PromptEvalConfig = OmegaConf.to_object(cfg.prompt_eval)
    names = check_config(pc)
    name, model, tok = load_model(pc, resolve_device(cfg.device))
    tasks = [load_task(Path(pc.data_dir), n, pc.tasks[n]) for n in names]
    for task in tasks:  # fail before any scoring, not after an hour of it
        if max(pc.shots) > len(task.train):
            raise InputError(f"prompt_eval.shots: k={max(pc.shots)} exceeds the {len(task.train)} rows of {task.name}/train.jsonl")
    with torch_threads(pc.threads), tracking.stage_run(cfg, "prompt_eval", sections=["prompt_eval", "seed"], run_name=f"prompt_eval {name}") as run_:
        results, samples = evaluate(model, tok, tasks, pc)
        metrics = {name: results}
        atomic_write_json(pc.metrics_file, metrics)
        atomic_write_text(pc.table_file, markdown_table(metrics))
        write_curve(pc.curve_file, metrics)
        fig = plot_curve(metrics)
        Path(pc.plot_file).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(pc.plot_file, dpi=120)
        tracking.log_figure(fig, "prompt_eval_curve.png")
        import matplotlib.pyplot as plt

        plt.close(fig)
        flat = {}
        for task, by_k in results.items():
            for key, m in by_k.items():
                flat |= {f"prompt_eval/{task}/{key}/{s}": m[s] for s in ("acc", "acc_norm", "truncated", "skipped") if s in m}
        for key in {f"k{k}" for k in pc.shots}:
            flat[f"prompt_eval/mean/{key}/acc"] = sum(by_k[key]["acc"] for by_k in results.values()) / len(results)
        if run_ is not None:
            import mlflow

            mlflow.set_tag("instructflow.model", name)
            tracking.log_metrics(flat)
            for task, by_k in results.items():  # acc against step = k: MLflow's own chart draws the k curve
                for k in sorted(pc.shots):
                    tracking.log_metrics({f"prompt_eval/{task}/acc_by_k": by_k[f"k{k}"]["acc"]}, step=k)
            tracking.log_artifact(pc.table_file)
            tracking.log_artifact(pc.curve_file)
            mlflow.log_dict(samples, "prompt_eval_samples.json")
    return flat


if __name__ == "__main__":
    stage_main(run)
