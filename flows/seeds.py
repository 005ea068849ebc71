"""The RLHF comparison over seeds: the RL methods again with other seeds, each evaluated on rl_eval.

    make rlhf-seeds                                  # = python -m flows.seeds (after make pipeline)
    python -m flows.seeds seeds.seeds=[1338]         # any override
    python -m flows.seeds experiment=smoke           # tiny, for tests

A single RL run decides nothing: the same commit on two machines moved the gold-reward PPO run's
oracle score by 0.04, more than most gaps between methods. This flow trains every method of
`seeds.methods` (PPO variants by name, and `dpo`) once per seed of `seeds.seeds`, from the same
SFT policy and reward model the pipeline made (its `sft` and `train_rm` stages, which DVC must
find up to date: the flow never retrains them), then evaluates each seed's policies with the `evaluate` stage
(`python -m tasks.evaluate` with that seed's policies and outputs: greedy and sampled, the
sampling seeded by the run's seed), and `tasks.seeds` pools them with the pipeline's own run (the root seed) into
`seeds.report_file` and `seeds.table_file`: every method's difference from SFT with its paired
95% interval over prompts, per seed and pooled, and the verdicts RESULTS.md states.

A run whose recorded settings (`<metrics_dir>/<seed>/<method>.settings.json`: the resolved
sections its result depends on, of `ppo` only its own variant) equal the current ones and whose outputs exist is not run again.
MLflow: one parent run `seeds`, each stage's run nested under it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import flows  # noqa: F401  (environment defaults before Prefect is imported)
from prefect import flow, get_run_logger, task
from prefect.futures import wait
from prefect.task_runners import ThreadPoolTaskRunner

from flows.pipeline import StageFailed, run_logged, stage_env
from flows.scaling import cli
from tasks import tracking
from tasks.config import ConfigError, compose

# what a method's result depends on (the upstream stages' settings included: same settings, same SFT and RM)
RESULT_SECTIONS = ("seed", "device", "data", "tokenizer", "model", "pretrain", "sft", "collect_rankings", "train_rm",
                   "ppo", "dpo", "evaluate")


def check_methods(cfg) -> None:
    for m in cfg.seeds.methods:
        if m != "dpo" and m not in cfg.ppo.variants:
            raise ConfigError(f"seeds.methods: '{m}' is neither dpo nor one of ppo.variants ({', '.join(cfg.ppo.variants)})")
    if not cfg.seeds.seeds or len(set(cfg.seeds.seeds)) != len(cfg.seeds.seeds) or int(cfg.seed) in cfg.seeds.seeds:
        raise ConfigError(f"seeds.seeds: {list(cfg.seeds.seeds)} must be distinct and differ from the pipeline's seed {cfg.seed}")


def method_overrides(cfg, method: str, seed: int) -> list[str]:
    """The overrides that make one (method, seed) run write under the seed's folders."""
    out, met = f"{cfg.seeds.out_dir}/{seed}", f"{cfg.seeds.metrics_dir}/{seed}"
    if method == "dpo":
        return [f"dpo.seed={seed}", f"dpo.out_dir={out}/dpo", f"dpo.metrics_file={met}/dpo.json",
                f"dpo.curve_file={met}/dpo_curve.csv", "dpo.progress=false"]
    return [f"ppo.variant={method}", f"ppo.seed={seed}", f"ppo.models_dir={out}", f"ppo.metrics_dir={met}", "ppo.progress=false"]


def settings(overrides: list[str], method: str | None = None) -> dict:
    """The resolved sections a run's result depends on. For one method: a PPO variant's `ppo`
    section is that variant alone (the base with its overrides, no other variant), and DPO's
    has no `ppo` at all, so changing one variant reruns that variant only."""
    from omegaconf import OmegaConf

    cfg = OmegaConf.to_container(compose(overrides), resolve=True)
    out = {k: cfg[k] for k in RESULT_SECTIONS}
    if method == "dpo":
        del out["ppo"]
    elif method is not None:
        ppo = {k: v for k, v in out["ppo"].items() if k != "variants"}
        out["ppo"] = {**ppo, **cfg["ppo"]["variants"][method]}
    return out


def require_up_to_date(parent_id: str | None, stages: list[str], hint: str) -> None:
    """StageFailed unless DVC finds `stages` and everything upstream of them up to date (`dvc
    status`, which reads and never runs, so another run in the workspace is not disturbed)."""
    proc = subprocess.run([sys.executable, "-m", "dvc", "--wait-for-lock", "status", *stages, "--with-deps", "--json"],
                          env=stage_env(parent_id), capture_output=True, text=True)
    stale = json.loads(proc.stdout or "null") if proc.returncode == 0 else None
    if stale is None:
        raise StageFailed(f"dvc status {' '.join(stages)} failed: {(proc.stderr.strip().splitlines() or ['no output'])[-1]}")
    if stale:
        raise StageFailed(f"stages {', '.join(sorted(stale))} are not up to date: run {hint} first")


def run_recorded(label: str, module: str, overrides: list[str], parent_id: str | None, record: str, want: dict) -> dict:
    """`python -m <module> <overrides>` as run `label`, unless `record` holds settings equal to `want`
    (composed in the flow's thread: Hydra's global state is not for threads); written once it succeeds."""
    rec = Path(record)
    if rec.exists() and json.loads(rec.read_text()) == want:
        get_run_logger().info("%s: settings unchanged: not run again", label)
        return {"run": label, "ran": False}
    rec.unlink(missing_ok=True)  # a half-done run is never taken for a finished one
    run_logged([sys.executable, "-m", module, *overrides], stage_env(parent_id), label)
    rec.parent.mkdir(parents=True, exist_ok=True)
    rec.write_text(json.dumps(want, indent=1, sort_keys=True) + "\n")
    return {"run": label, "ran": True}


@task(name="prepare")
def prepare(parent_id: str | None) -> None:
    """Every seed starts from the pipeline's SFT policy and reward model: DVC must find them up to date."""
    require_up_to_date(parent_id, ["train_rm"], "`make pipeline` (or `dvc repro train_rm`)")


@task(name="method", task_run_name="{method}@{seed}")
def run_method(method: str, seed: int, overrides: list[str], parent_id: str | None, record: str, want: dict) -> dict:
    """One (method, seed) run, unless its recorded settings equal `want`."""
    return run_recorded(f"{method}@{seed}", "tasks.dpo" if method == "dpo" else "tasks.ppo", overrides, parent_id, record, want)


def evaluate_overrides(cfg, seed: int) -> list[str]:
    """The `evaluate` stage on one seed's policies: SFT and the seed's methods (other policies
    left out with an empty path), sampling seeded by the seed; no best-of-n, alignment tax,
    curves or registry (the pipeline's evaluation has them); outputs under the seed's folder."""
    out, met = f"{cfg.seeds.out_dir}/{seed}", f"{cfg.seeds.metrics_dir}/{seed}"
    pol = []
    for name in sorted(set(cfg.evaluate.policies) | set(cfg.seeds.methods)):
        path = f"{out}/{name}" if name in cfg.seeds.methods else (cfg.evaluate.policies[name] if name == cfg.evaluate.reference else "")
        pol.append(f"{'' if name in cfg.evaluate.policies else '+'}evaluate.policies.{name}={path}")
    return [*pol, f"evaluate.seed={seed}", "evaluate.pretrain=", "evaluate.best_of_n=[]", "evaluate.prompt_eval_items=0",
            "evaluate.tax_pairs=[]", "evaluate.curves=[]", "evaluate.register_policy=", f"evaluate.metrics_file={met}/evaluate.json",
            f"evaluate.samples_file={met}/evaluate_samples.jsonl", f"evaluate.table_file={met}/evaluate_table.md",
            f"evaluate.plot_file={met}/overoptimization.png", f"evaluate.overopt_file={met}/overoptimization.md"]


@task(name="evaluate", task_run_name="evaluate@{seed}")
def run_evaluate(seed: int, overrides: list[str], parent_id: str | None) -> None:
    run_logged([sys.executable, "-m", "tasks.evaluate", *overrides], stage_env(parent_id), f"evaluate@{seed}")


@task(name="report")
def report(overrides: list[str]) -> dict:
    from tasks import seeds as report_stage

    return report_stage.run(compose(overrides))


@flow(name="seeds", log_prints=True, task_runner=ThreadPoolTaskRunner(max_workers=8))
def seeds(overrides: list[str] | None = None) -> dict:
    """Train `seeds.methods` for every seed of `seeds.seeds`, evaluate each seed, pool them."""
    overrides = list(overrides or [])
    cfg = compose(overrides)
    check_methods(cfg)
    with tracking.parent_run(cfg, "seeds", overrides) as parent_id:
        prepare(parent_id)
        runs, by_seed = [], {}
        for seed in cfg.seeds.seeds:
            for method in cfg.seeds.methods:
                i = len(runs)
                c = cfg.seeds.concurrency
                before = [runs[i - c]] if c > 0 and i >= c else []
                ov = overrides + method_overrides(cfg, method, seed)
                record = f"{cfg.seeds.metrics_dir}/{seed}/{method}.settings.json"
                runs.append(run_method.submit(method, seed, ov, parent_id, record, settings(ov, method), wait_for=before))
                by_seed.setdefault(seed, []).append(runs[-1])
        evals = [run_evaluate.submit(seed, overrides + evaluate_overrides(cfg, seed), parent_id, wait_for=futs)
                 for seed, futs in by_seed.items()]
        wait(runs + evals)
        ran = [f.result() for f in runs]
        for f in evals:
            f.result()
        result = report(overrides)
        result["ran"] = [r["run"] for r in ran if r["ran"]]
    return result


def main(argv: list[str] | None = None) -> None:
    cli(lambda a: check_methods(compose(a)), seeds, argv)


if __name__ == "__main__":
    main()
