"""The scaling experiment: GPT-3's in-context learning against model size, on the world.

    make scaling                                   # = python -m flows.scaling
    python -m flows.scaling scaling.max_steps=300  # any override; experiment=scaling is always added
    python -m flows.scaling device=cuda            # minutes on one GPU
    python -m flows.scaling experiment=smoke scaling.max_steps=20   # another experiment instead of `scaling`

The workspace's corpus (the `data` and `tokenize` stages of dvc.yaml, brought up to date first;
params.yaml must hold the same `data` and `tokenizer` settings as this composition) is
pre-trained at every size of `scaling.sizes`, each with the same steps, tokens, schedule and
seed (`experiment=scaling` on top of the default configuration), and each model is scored by
the `prompt_eval` stage's code at every k of `prompt_eval.shots`. `tasks.scaling` then writes
`scaling.report_file` (params, validation loss, the ICL score pre-training measured, accuracy by
task and k, the paired few-shot gain) and `scaling.plot_file` (GPT-3 Figure 1.2: accuracy against
k per size; Figure 3.x: the few-shot gain against parameters; the ICL score against parameters).

Each size is one Prefect task running `python -m tasks.pretrain` and then `python -m
tasks.prompt_eval` with that size's overrides; a size whose recorded settings
(`<metrics_dir>/<size>/settings.json`: the resolved data, tokenizer, model, pretrain and
prompt_eval sections) equal the current ones and whose outputs exist is not run again, so changing one size, or the report, reruns only what changed. MLflow: one parent
run `scaling`, the stage runs nested under it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import flows  # noqa: F401  (environment defaults before Prefect is imported)
from prefect import flow, get_run_logger, task
from prefect.futures import wait
from prefect.task_runners import ThreadPoolTaskRunner

from flows.pipeline import StageFailed, run_logged, stage_env
from tasks import tracking
from tasks.common import InputError
from tasks.config import ConfigError, compose

EXPERIMENT = "experiment=scaling"


def size_overrides(cfg, size) -> list[str]:
    """The overrides that turn the composed config into one size's pre-training and evaluation."""
    sc = cfg.scaling
    out, met = f"{sc.out_dir}/{size.name}", f"{sc.metrics_dir}/{size.name}"
    steps = cfg.pretrain.max_steps if sc.max_steps < 0 else sc.max_steps
    return [
        f"model.name={size.name}", f"model.n_layer={size.n_layer}", f"model.n_head={size.n_head}",
        f"model.n_embd={size.n_embd}", f"pretrain.max_steps={steps}", f"pretrain.out_dir={out}",
        f"pretrain.metrics_file={met}/pretrain.json", f"pretrain.curve_file={met}/pretrain_curve.csv",
        f"pretrain.position_loss_file={met}/pretrain_position_loss.csv",
        f"prompt_eval.model={out}", f"prompt_eval.metrics_file={met}/prompt_eval.json",
        f"prompt_eval.table_file={met}/prompt_eval_table.md", f"prompt_eval.curve_file={met}/prompt_eval_curve.csv",
        f"prompt_eval.plot_file={met}/prompt_eval_curve.png",
    ]


def check_sizes(cfg) -> None:
    names = [s.name for s in cfg.scaling.sizes]
    if len(names) < 2:
        raise ConfigError(f"scaling.sizes: {len(names)} size(s); a scaling curve needs at least 2")
    if len(set(names)) != len(names) or not all(n and "/" not in n for n in names):
        raise ConfigError(f"scaling.sizes: names must be distinct folder names, got {names}")
    for s in cfg.scaling.sizes:
        if s.n_layer < 1 or s.n_head < 1 or s.n_embd % s.n_head:
            raise ConfigError(f"scaling.sizes.{s.name}: n_embd={s.n_embd} must be a multiple of n_head={s.n_head}, n_layer >= 1")


def with_experiment(overrides: list[str]) -> list[str]:
    """`experiment=scaling` first, unless the overrides choose an experiment themselves."""
    overrides = list(overrides or [])
    return overrides if any(o.split("=")[0].lstrip("+") == "experiment" for o in overrides) else [EXPERIMENT, *overrides]


@task(name="prepare")
def prepare(cfg, overrides: list[str], parent_id: str | None) -> None:
    """The corpus and tokenizer through DVC (usually up to date): the same ones every size reads."""
    from omegaconf import OmegaConf

    from tasks.config import PARAMS_FILE, load_params, write_params

    if not Path(PARAMS_FILE).exists():
        write_params(compose([o for o in overrides if o != EXPERIMENT]))
    params = load_params(PARAMS_FILE)
    for section in ("data", "tokenizer"):
        if OmegaConf.to_container(params[section]) != OmegaConf.to_container(cfg[section]):
            raise ConfigError(f"{PARAMS_FILE}: its {section} settings differ from this run's; the sizes would not read the "
                              f"corpus DVC builds (write it with `python -m tasks.config` and the same overrides)")
    run_logged([sys.executable, "-m", "dvc", "--wait-for-lock", "repro", "tokenize"], stage_env(parent_id), "dvc repro tokenize")


RESULT_SECTIONS = ("seed", "device", "data", "tokenizer", "model", "pretrain", "prompt_eval")


def size_settings(overrides: list[str]) -> dict:
    """What one size's results depend on: the resolved config sections its two stages read."""
    from omegaconf import OmegaConf

    cfg = OmegaConf.to_container(compose(overrides), resolve=True)
    return {k: cfg[k] for k in RESULT_SECTIONS}


@task(name="size", task_run_name="{name}")
def run_size(name: str, overrides: list[str], parent_id: str | None, metrics_dir: str) -> dict:
    """Pre-train one size and score it with prompt_eval, unless its settings are unchanged."""
    met = Path(metrics_dir)
    record = met / "settings.json"
    outputs = [met / "pretrain.json", met / "prompt_eval.json"]
    settings = size_settings(overrides)
    if record.exists() and json.loads(record.read_text()) == settings and all(p.exists() for p in outputs):
        get_run_logger().info("%s: settings unchanged, outputs present: not run again", name)
        return {"size": name, "ran": False}
    record.unlink(missing_ok=True)  # a half-done size is never taken for a finished one
    env = stage_env(parent_id)
    run_logged([sys.executable, "-m", "tasks.pretrain", *overrides], env, f"{name} pretrain")
    run_logged([sys.executable, "-m", "tasks.prompt_eval", *overrides], env, f"{name} prompt_eval")
    met.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps(settings, indent=1, sort_keys=True) + "\n")
    return {"size": name, "ran": True}


@task(name="report")
def report(overrides: list[str]) -> dict:
    from tasks import scaling as report_stage

    return report_stage.run(compose(overrides))


@flow(name="scaling", log_prints=True, task_runner=ThreadPoolTaskRunner(max_workers=8))
def scaling(overrides: list[str] | None = None) -> dict:
    """Pre-train every size of `scaling.sizes`, evaluate each with prompt_eval, write the report."""
    overrides = with_experiment(overrides)
    cfg = compose(overrides)
    check_sizes(cfg)
    with tracking.parent_run(cfg, "scaling", overrides) as parent_id:
        prepare(cfg, overrides, parent_id)
        # `concurrency` sizes at a time: each waits for the one `concurrency` places before it
        futures = []
        for i, size in enumerate(cfg.scaling.sizes):
            before = [futures[i - cfg.scaling.concurrency]] if cfg.scaling.concurrency > 0 and i >= cfg.scaling.concurrency else []
            futures.append(run_size.submit(size.name, overrides + size_overrides(cfg, size), parent_id,
                                           f"{cfg.scaling.metrics_dir}/{size.name}", wait_for=before))
        wait(futures)
        ran = [f.result() for f in futures]
        result = report(overrides)
        result["ran"] = [r["size"] for r in ran if r["ran"]]
    return result


def cli(check, run, argv: list[str] | None) -> None:
    """A flow's command line: `check(argv)` first (fails fast, before Prefect starts), then the flow;
    a bad setting or a failed stage is one line on stderr and exit status 2; the result as JSON."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        check(argv)
        result = run(argv)
    except (ConfigError, StageFailed, InputError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    print(json.dumps(result, indent=2, sort_keys=True))


def main(argv: list[str] | None = None) -> None:
    cli(lambda a: check_sizes(compose(with_experiment(a))), scaling, argv)


if __name__ == "__main__":
    main()
