"""GPT-1's fine-tuning verdicts over pre-training seeds: pre-train again with other seeds, fine-tune each.

    make gpt1-seeds                                   # = python -m flows.gpt1_seeds (after make pipeline)
    python -m flows.gpt1_seeds gpt1_seeds.tasks=[entailment]   # any override
    python -m flows.gpt1_seeds experiment=smoke       # tiny, for tests

One pre-training run is not a verdict: between checkpoints of the same corpus mix, the fine-tuned
entailment accuracy moved by 11 points and story cloze by 12, far beyond the test rows' interval.
This flow pre-trains again for every seed of `gpt1_seeds.seeds` (the root `seed` of the run: weight
init and batch order; the same tokenized data, which it never rebuilds), then runs the `finetune`
stage's command on every task of `gpt1_seeds.tasks` from that checkpoint (its grid: from
pre-training and from scratch, the seed's init and data order; the bars zero-shot and word
baseline on the same test rows), and `tasks.gpt1_seeds` pools them with the pipeline's own run
(the root seed) into `report_file` and `table_file`: per task and bar the fine-tuned accuracy minus
the bar's, per seed and pooled, with paired 95% intervals, and the verdicts RESULTS.md states.

A run whose recorded settings (`<metrics_dir>/<seed>/<run>.settings.json`: the resolved sections
its result depends on) equal the current ones is not run again. MLflow: one parent run
`gpt1_seeds`, each run nested under it.
"""

from __future__ import annotations

import flows  # noqa: F401  (environment defaults before Prefect is imported)
from prefect import flow, task
from prefect.futures import wait
from prefect.task_runners import ThreadPoolTaskRunner

from flows.scaling import cli
from flows.seeds import require_up_to_date, run_recorded
from tasks import tracking
from tasks.config import ConfigError, compose

# what a run's result depends on (its own seed is the root `seed` of its overrides)
RESULT_SECTIONS = ("seed", "device", "data", "tokenizer", "model", "pretrain", "finetune", "prompt_eval")


def seed_tasks(cfg) -> list[str]:
    return list(cfg.gpt1_seeds.tasks) or list(cfg.finetune.tasks)


def check(cfg) -> None:
    gs = cfg.gpt1_seeds
    if not gs.seeds or len(set(gs.seeds)) != len(gs.seeds) or int(cfg.seed) in gs.seeds:
        raise ConfigError(f"gpt1_seeds.seeds: {list(gs.seeds)} must be distinct and differ from the pipeline's seed {cfg.seed}")
    unknown = [t for t in seed_tasks(cfg) if t not in cfg.finetune.tasks]
    if unknown:
        raise ConfigError(f"gpt1_seeds.tasks: {', '.join(unknown)} not in finetune.tasks ({', '.join(cfg.finetune.tasks)}): "
                          "the pipeline's own run of a task is the first seed")


def pretrain_overrides(cfg, seed: int) -> list[str]:
    """One seed's pre-training: its own checkpoint folder and metrics, the data the pipeline tokenized."""
    out, met = f"{cfg.gpt1_seeds.out_dir}/{seed}", f"{cfg.gpt1_seeds.metrics_dir}/{seed}"
    return [f"seed={seed}", f"pretrain.out_dir={out}/pretrain", f"pretrain.metrics_file={met}/pretrain.json",
            f"pretrain.curve_file={met}/pretrain_curve.csv", f"pretrain.position_loss_file={met}/pretrain_position_loss.csv",
            "pretrain.progress=false", f"pretrain.threads={cfg.gpt1_seeds.pretrain_threads}"]


def finetune_overrides(cfg, seed: int, task_name: str) -> list[str]:
    """One (seed, task) fine-tuning grid from that seed's checkpoint, written under the seed's folders."""
    out, met = f"{cfg.gpt1_seeds.out_dir}/{seed}", f"{cfg.gpt1_seeds.metrics_dir}/{seed}"
    return [f"seed={seed}", f"finetune.task={task_name}", f"finetune.pretrained_dir={out}/pretrain",
            f"finetune.out_dir={out}/finetune", f"finetune.metrics_dir={met}/finetune", "finetune.progress=false"]


def settings(overrides: list[str]) -> dict:
    from omegaconf import OmegaConf

    cfg = OmegaConf.to_container(compose(overrides), resolve=True)
    return {k: cfg[k] for k in RESULT_SECTIONS}


@task(name="prepare")
def prepare(parent_id: str | None, stages: list[str]) -> None:
    """The seeds use the pipeline's tokenized data and are pooled with its own fine-tuning runs: DVC
    must find those stages up to date."""
    require_up_to_date(parent_id, stages, "`make pipeline`")


@task(name="run", task_run_name="{name}@{seed}")
def run_one(name: str, seed: int, module: str, overrides: list[str], parent_id: str | None, record: str, want: dict) -> dict:
    """One run (pre-training or one task's fine-tuning grid), unless its recorded settings equal `want`."""
    return run_recorded(f"{name}@{seed}", module, overrides, parent_id, record, want)


@task(name="report")
def report(overrides: list[str]) -> dict:
    from tasks import gpt1_seeds as report_stage

    return report_stage.run(compose(overrides))


@flow(name="gpt1_seeds", log_prints=True, task_runner=ThreadPoolTaskRunner(max_workers=8))
def gpt1_seeds(overrides: list[str] | None = None) -> dict:
    """Pre-train for every seed of `gpt1_seeds.seeds`, fine-tune each checkpoint on every task, pool them."""
    overrides = list(overrides or [])
    cfg = compose(overrides)
    check(cfg)
    names = seed_tasks(cfg)
    with tracking.parent_run(cfg, "gpt1_seeds", overrides) as parent_id:
        prepare(parent_id, [f"finetune@{t}" for t in names])
        runs: list = []
        c = cfg.gpt1_seeds.concurrency

        def submit(name: str, seed: int, module: str, ov: list[str], after: list) -> object:
            i = len(runs)
            before = after + ([runs[i - c]] if i >= c else [])
            record = f"{cfg.gpt1_seeds.metrics_dir}/{seed}/{name}.settings.json"
            runs.append(run_one.submit(name, seed, module, overrides + ov, parent_id, record, settings(overrides + ov), wait_for=before))
            return runs[-1]

        pre = {seed: submit("pretrain", seed, "tasks.pretrain", pretrain_overrides(cfg, seed), []) for seed in cfg.gpt1_seeds.seeds}
        for name in names:
            for seed in cfg.gpt1_seeds.seeds:
                submit(f"finetune_{name}", seed, "tasks.finetune", finetune_overrides(cfg, seed, name), [pre[seed]])
        wait(runs)
        ran = [f.result() for f in runs]
        result = report(overrides)
        result["ran"] = [r["run"] for r in ran if r["ran"]]
    return result


def main(argv: list[str] | None = None) -> None:
    cli(lambda a: check(compose(a)), gpt1_seeds, argv)


if __name__ == "__main__":
    main()
