"""The scaling experiment's report: GPT-3 Figure 1.2 and 3.x on the world.

    python -m tasks.scaling experiment=scaling     # (re)write the report from what flows.scaling left

Reads, for every size of `scaling.sizes`, `<out_dir>/<size>/` (the checkpoint: parameter
counts, and the copy probe of model/induction.py run on it: Olsson et al.'s repeated random
tokens, whether the model can copy from its context at all) and
`<metrics_dir>/<size>/{pretrain,prompt_eval}.json`; writes `scaling.report_file` (markdown) and
`scaling.plot_file` (three panels: mean accuracy against k, one line per size; the few-shot
gain, the largest k minus k=0 on the same items, against non-embedding parameters, one line
per task and the mean; the ICL score of Olsson et al. 2022, late minus early loss on held-out
windows as pre-training measured it, and the copy score, against non-embedding parameters).
A size with no results is an InputError naming its missing file (run `python -m flows.scaling` first).
"""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
from pathlib import Path

from tasks.common import InputError, atomic_write_text, read_json
from tasks.config import stage_main
from tasks.induction import copy_probe, probe_length

EMBEDDINGS = ("transformer.wte.weight", "transformer.wpe.weight")


def param_counts(model) -> tuple[int, int]:
    """(all parameters, non-embedding parameters: without the token and position embeddings)."""
    total = model.num_params()
    emb = sum(p.numel() for n, p in model.named_parameters() if n in EMBEDDINGS)
    return total, total - emb


def collect(cfg) -> list[dict]:
    """One record per size: its shape, parameter counts, pre-training and prompt_eval results."""
    from model.load import from_pretrained

    sc = cfg.scaling
    out = []
    for size in sc.sizes:
        met = Path(sc.metrics_dir) / size.name
        pre = read_json(met / "pretrain.json", "run `python -m flows.scaling` first")
        pe = read_json(met / "prompt_eval.json", "run `python -m flows.scaling` first")
        folder = Path(sc.out_dir) / size.name
        model = from_pretrained(folder)
        total, non_emb = param_counts(model)
        copy = copy_probe(model, folder, sc.copy_probe.length, sc.copy_probe.sequences, cfg.seed)
        (results,) = pe.values()  # {model name: {task: {k<k>: metrics}}}, one model
        out.append({"name": size.name, "n_layer": size.n_layer, "n_embd": size.n_embd, "params": total,
                    "non_embedding": non_emb, "val_loss": pre["val_loss"], "tokens": pre["tokens_seen"], "tasks": results,
                    "icl_score": pre.get("icl_score"), "icl_score_long": pre.get("icl_score_long"),  # None: an older pretrain.json
                    "copy_score": copy.score, "copy_accuracy": copy.accuracy})
    return out


def icl_positions(cfg) -> str:
    """The positions the ICL score compares, as pre-training scaled them to its window."""
    from model.icl import scaled_ranges

    pc = cfg.pretrain
    (e0, e1), (l0, l1) = scaled_ranges(pc.icl.early, pc.icl.late, pc.block_size if pc.block_size > 0 else cfg.model.block_size)
    return f"loss at positions {l0}–{l1 - 1} − {e0}–{e1 - 1}"


def signed(x: float | None) -> str:
    return "–" if x is None else f"{x:+.3f}"


def pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}%"


def shots(records: list[dict]) -> list[int]:
    ks = sorted({int(k[1:]) for r in records for by_k in r["tasks"].values() for k in by_k})
    if len(ks) < 2:
        raise InputError(f"scaling: prompt_eval scored k={ks} only; the few-shot gain needs two values of k")
    return ks


def mean_acc(rec: dict, k: int) -> float:
    accs = [by_k[f"k{k}"]["acc"] for by_k in rec["tasks"].values() if f"k{k}" in by_k]
    return sum(accs) / len(accs)


def fmt_params(n: int) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1e5 else f"{n / 1e3:.0f}K"


def markdown(records: list[dict], cfg) -> str:
    ks = shots(records)
    top = ks[-1]
    lines = [
        "| size | layers | width | non-embedding params | params | val loss | ICL score | ICL score, long documents | copy score | copy accuracy | "
        + " | ".join(f"mean acc k={k}" for k in ks) + f" | mean gain k={top} − k={ks[0]} | tasks with gain > its 95% CI |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|" + "---:|" * len(ks) + "---:|---:|",
    ]
    for r in records:
        gains = [by_k[f"k{top}"] for by_k in r["tasks"].values() if "gain" in by_k.get(f"k{top}", {})]
        sig = sum(g["gain"] > g["gain_ci95"] for g in gains)
        mean_gain = sum(g["gain"] for g in gains) / max(1, len(gains))
        lines.append(f"| {r['name']} | {r['n_layer']} | {r['n_embd']} | {fmt_params(r['non_embedding'])} | {fmt_params(r['params'])} | "
                     f"{r['val_loss']:.3f} | {signed(r['icl_score'])} | {signed(r['icl_score_long'])} | "
                     f"{signed(r.get('copy_score'))} | {pct(r.get('copy_accuracy'))} | "
                     + " | ".join(f"{mean_acc(r, k):.3f}" for k in ks)
                     + f" | {mean_gain:+.3f} | {sig}/{len(gains)} |")
    lines += ["", f"Accuracy by task and k; the last column is the paired gain k={top} − k={ks[0]} ± its 95% half-width "
              "(same items, same examples at every size):", ""]
    lines += ["| task | size | " + " | ".join(f"k={k}" for k in ks) + f" | gain k={top} (95% CI) | truncated at k={top} |",
              "|---|---|" + "---:|" * len(ks) + "---:|---:|"]
    tasks = list(dict.fromkeys(t for r in records for t in r["tasks"]))
    for t in tasks:
        for r in records:
            by_k = r["tasks"].get(t)
            if not by_k:
                continue
            cells = [f"{by_k[f'k{k}']['acc']:.3f}" if f"k{k}" in by_k else "–" for k in ks]
            last = by_k.get(f"k{top}", {})
            gain = f"{last['gain']:+.3f} ± {last['gain_ci95']:.3f}" if "gain" in last else "–"
            lines.append(f"| {t} | {r['name']} | " + " | ".join(cells) + f" | {gain} | {last.get('truncated', '–')}/{last.get('n', '–')} |")
    return "\n".join(lines) + "\n"


def plot(records: list[dict]):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ks = shots(records)
    top = ks[-1]
    fig, (a, b, c) = plt.subplots(1, 3, figsize=(15, 3.8))
    for r in records:
        a.plot(ks, [mean_acc(r, k) for k in ks], "o-", label=f"{r['name']} ({fmt_params(r['non_embedding'])})")
    a.set_xticks(ks)
    a.set_xlabel("k (examples in context)")
    a.set_ylabel("mean accuracy over prompt tasks")
    a.set_title("In-context learning by model size")
    a.legend(fontsize=8)
    xs = [r["non_embedding"] for r in records]
    tasks = list(dict.fromkeys(t for r in records for t in r["tasks"]))
    means = []
    for r in records:
        g = [by_k[f"k{top}"]["gain"] for by_k in r["tasks"].values() if "gain" in by_k.get(f"k{top}", {})]
        means.append(sum(g) / max(1, len(g)))
    for t in tasks:
        ys = [r["tasks"].get(t, {}).get(f"k{top}", {}).get("gain") for r in records]
        if all(y is not None for y in ys):
            b.plot(xs, ys, "-", alpha=0.35, linewidth=1, label=t)
    b.plot(xs, means, "ko-", linewidth=2.5, label="mean")
    b.axhline(0, color="grey", linestyle=":", linewidth=1)
    b.set_xscale("log")
    b.set_xlabel("non-embedding parameters")
    b.set_ylabel(f"accuracy k={top} − k={ks[0]}")
    b.set_title("Few-shot gain against parameters")
    b.legend(fontsize=6, ncol=2)
    for key, style, label in (("icl_score", "ko-", "all windows"), ("icl_score_long", "s--", "inside one long document"),
                              ("copy_score", "^:", "repeated random tokens (copy score)")):
        pts = [(r["non_embedding"], r[key]) for r in records if r.get(key) is not None]
        if pts:
            c.plot(*zip(*pts), style, label=label)
    c.axhline(0, color="grey", linestyle=":", linewidth=1)
    c.set_xscale("log")
    c.set_xlabel("non-embedding parameters")
    c.set_ylabel("late − early / 2nd − 1st copy loss (nats/token)")
    c.set_title("ICL score against parameters (lower: more)")
    c.legend(fontsize=8)
    fig.tight_layout()
    return fig


def stamp(cfg) -> str:
    import torch

    r = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    commit = r.stdout.strip() if r.returncode == 0 else "?"
    device = cfg.device
    return (f"Generated by `python -m tasks.scaling` at commit {commit} on {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; "
            f"machine: {platform.machine()} {os.cpu_count()} cores, torch {torch.__version__}, device {device}.")


def run(cfg) -> dict[str, float]:
    sc = cfg.scaling
    records = collect(cfg)
    ks = shots(records)
    steps = cfg.pretrain.max_steps if sc.max_steps < 0 else sc.max_steps
    head = [
        "# Scaling: in-context learning against model size",
        "",
        stamp(cfg),
        "",
        f"Produced by `make scaling` (`python -m flows.scaling`): every size pre-trained on the default corpus for {steps} "
        f"steps of {cfg.pretrain.batch_size} × {cfg.model.block_size} tokens (the same data, order and schedule), then "
        f"scored by prompt_eval at k = {', '.join(map(str, ks))} on {cfg.prompt_eval.max_items} items per task. "
        f"The ICL score (Olsson et al. 2022) is pre-training's {icl_positions(cfg)} on {cfg.pretrain.icl.windows} held-out windows "
        "that start at document starts (negative: later tokens are predicted better, from the context before them); "
        "long documents: windows inside one document long enough to reach the late positions (– when there is none). "
        f"Copy score (Olsson et al.'s induction test): the loss on the second copy of {cfg.scaling.copy_probe.sequences} sequences of "
        f"random tokens repeated twice, minus that on the first copy (nats; {probe_length(cfg.scaling.copy_probe.length, cfg.model.block_size)} tokens each, "
        "drawn from the vocabulary without the special tokens); negative: the model copies from its context. Copy "
        "accuracy: the second copy's tokens predicted exactly (a model that copies nothing: about 1 / vocabulary).",
        "",
        f"![accuracy against k, few-shot gain and ICL score against parameters]({Path(sc.plot_file).name})",
        "",
        "",
    ]
    atomic_write_text(sc.report_file, "\n".join(head) + markdown(records, cfg))
    fig = plot(records)
    Path(sc.plot_file).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(sc.plot_file).with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=120)
    os.replace(tmp, sc.plot_file)
    import matplotlib.pyplot as plt

    plt.close(fig)
    top = ks[-1]
    out = {}
    for r in records:
        out[f"{r['name']}/non_embedding"] = float(r["non_embedding"])
        out[f"{r['name']}/val_loss"] = r["val_loss"]
        for k in ks:
            out[f"{r['name']}/mean_acc_k{k}"] = mean_acc(r, k)
        out[f"{r['name']}/mean_gain_k{top}"] = mean_acc(r, top) - mean_acc(r, ks[0])
        if r["icl_score"] is not None:
            out[f"{r['name']}/icl_score"] = r["icl_score"]
        out[f"{r['name']}/copy_score"] = r["copy_score"]
        out[f"{r['name']}/copy_accuracy"] = r["copy_accuracy"]
    return out


if __name__ == "__main__":
    stage_main(run)
