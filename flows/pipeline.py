"""The `instructflow` Prefect flow: the DAG of stages, each run through `dvc repro`.

    python -m flows.pipeline                           # the default configuration (what `make pipeline` runs)
    python -m flows.pipeline experiment=smoke          # whole DAG, tiny, on CPU
    python -m flows.pipeline pipeline.concurrency=1    # one stage at a time
    prefect deployment run 'instructflow/local' -p overrides='["experiment=smoke"]' --watch

The flow composes `conf/` with the overrides and writes `params.yaml`; then it reads DVC's own
stage graph of `dvc.yaml` (no second, hand-kept list) and submits one Prefect task per stage,
each waiting for its upstream stages only, so independent stages (the fine-tuning tasks,
prompt evaluation, the InstructGPT branch; PPO variants and DPO) run at the same time and the
Prefect UI shows the real edges. Each task calls `dvc --wait-for-lock repro --single-item
<stage>`: DVC alone decides what is up to date (so Prefect caches nothing), records `dvc.lock`
(`--wait-for-lock` makes concurrent runs in one workspace queue on DVC's short lock phases
instead of failing), and runs the stage's `python -m tasks.<stage>`, whose MLflow run nests
under the flow's parent run. The flow submits a stage when its upstream stages succeeded and
one of `pipeline.concurrency` slots is free (0 = the number of CPU cores; the ready stage with
the longest chain of stages behind it first; stages listed in `pipeline.gpu_stages` one at a
time when the device is a GPU), so a task run in the UI is a stage that runs. A stage's torch thread count comes from its own config, never from how many stages run
beside it, so a parallel run gives the same numbers as a serial one.
"""

from __future__ import annotations

import graphlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import flows  # noqa: F401  (environment defaults before Prefect is imported)
from prefect import flow, get_run_logger, task
from prefect.futures import as_completed
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from flows.workspace import workspace_lock
from tasks import tracking
from tasks.common import InputError, atomic_write_json
from tasks.config import ConfigError, compose, write_params

def stage_graph(root: str | os.PathLike = ".") -> dict[str, list[str]]:
    """{stage: its upstream stages} from DVC's graph of dvc.yaml, as `dvc dag` sees it (params.yaml
    must exist: `foreach` stages expand over it, e.g. finetune@sentiment). Data sources tracked
    by `.dvc` files (labels/human.jsonl.dvc) are not stages to run and are left out."""
    from dvc.repo import Repo
    from dvc.stage import PipelineStage

    with Repo(os.fspath(root)) as repo:
        g = repo.index.graph
        return {s.addressing: sorted(u.addressing for u in g.successors(s) if isinstance(u, PipelineStage))
                for s in g.nodes if isinstance(s, PipelineStage)}


def stages(graph: dict[str, list[str]]) -> list[str]:
    """The stages in a topological order (upstream first; ties by name, so the order is stable)."""
    ts = graphlib.TopologicalSorter(graph)
    ts.prepare()
    order = []
    while ts.is_active():
        ready = sorted(ts.get_ready())
        order += ready
        ts.done(*ready)
    return order


class StageFailed(RuntimeError):
    """A stage exited non-zero; the message is the stage's own one-line error."""


def stage_metrics_file(cfg, stage: str) -> Path | None:
    """Where a stage leaves the metrics summarised in the flow's table."""
    if stage.startswith("finetune@"):
        return Path(cfg.finetune.metrics_dir) / f"{stage.split('@', 1)[1]}.json"
    if stage.startswith("ppo@"):
        return Path(cfg.ppo.metrics_dir) / f"{stage.split('@', 1)[1]}.json"
    return {
        "data": Path(cfg.data.out_dir) / "stats.json",
        "tokenize": Path(cfg.tokenizer.out_dir) / "meta.json",
        "pretrain": Path(cfg.pretrain.metrics_file),
        "finetune_report": Path(cfg.finetune.report_file),
        "prompt_eval": Path(cfg.prompt_eval.metrics_file),
        "sft": Path(cfg.sft.metrics_file),
        "candidates": Path(cfg.collect_rankings.candidates_metrics),
        "collect_rankings": Path(cfg.collect_rankings.metrics_file),
        "train_rm": Path(cfg.train_rm.metrics_file),
        "dpo": Path(cfg.dpo.metrics_file),
        "evaluate": Path(cfg.evaluate.metrics_file),
    }.get(stage)


def numeric_leaves(d: dict) -> dict[str, float]:
    return {
        k: float(v)
        for k, v in tracking.flatten(d).items()
        if isinstance(v, (int, float)) and not isinstance(v, bool)
    }


def stage_env(parent_run_id: str | None) -> dict[str, str]:
    env = dict(os.environ)
    # `python` in dvc.yaml must be this interpreter (the project's virtual environment)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["DVC_NO_ANALYTICS"] = "1"
    if parent_run_id:
        env[tracking.PARENT_ENV] = parent_run_id
    return env


@task(name="configure", task_run_name="configure")
def configure(overrides: list[str]):
    """Compose conf/ with the overrides, validate, write params.yaml for DVC; return the config."""
    cfg = compose(overrides)
    write_params(cfg)
    return cfg


def downstream(graph: dict[str, list[str]]) -> dict[str, list[str]]:
    """{stage: the stages that wait for it}: `graph` ({stage: its upstream stages}) turned around."""
    below: dict[str, list[str]] = {s: [] for s in graph}
    for s, ups in graph.items():
        for u in ups:
            below[u].append(s)
    return below


def critical_path(graph: dict[str, list[str]]) -> dict[str, int]:
    """{stage: the number of stages on its longest path to the end of the DAG, itself included}."""
    below = downstream(graph)
    depth: dict[str, int] = {}
    for s in reversed(stages(graph)):
        depth[s] = 1 + max((depth[d] for d in below[s]), default=0)
    return depth


class Scheduler:
    """Which stages start when, decided in the flow itself: a stage is submitted once its upstream
    stages succeeded and a slot is free (`concurrency` in all, 0 = the number of CPU cores; the
    stages in `gpu_stages` one at a time), the one with the longest path of stages still behind it
    first (ties: DAG order). So a Prefect task run exists only while its stage runs: the UI's
    timeline shows what runs, and the flow's log says which ready stages wait for a slot."""

    def __init__(self, graph: dict[str, list[str]], concurrency: int, gpu_stages=(), priority: dict[str, int] | None = None):
        self.graph = graph
        self.slots = concurrency if concurrency > 0 else (os.cpu_count() or 1)
        self.gpu_stages = set(gpu_stages)
        self.priority = priority if priority is not None else critical_path(graph)
        self.order = {s: i for i, s in enumerate(stages(graph))}
        self.running: set[str] = set()
        self.done: set[str] = set()
        self.failed: set[str] = set()

    def _heavy(self, stage: str) -> bool:
        return stage.split("@")[0] in self.gpu_stages

    def ready(self) -> list[str]:
        """Stages not started whose upstream stages all succeeded, in the order they get slots."""
        started = self.running | self.done | self.failed
        ready = [s for s in self.graph if s not in started and all(u in self.done for u in self.graph[s])]
        return sorted(ready, key=lambda s: (-self.priority.get(s, 0), self.order.get(s, 0)))

    def start(self) -> list[str]:
        """The stages to submit now (they count as running from here)."""
        picked = []
        for stage in self.ready():
            if len(self.running) >= self.slots:
                break
            if self._heavy(stage) and any(self._heavy(r) for r in self.running):
                continue
            self.running.add(stage)
            picked.append(stage)
        return picked

    def finish(self, stage: str, ok: bool) -> None:
        self.running.discard(stage)
        (self.done if ok else self.failed).add(stage)

    def never_ran(self) -> list[str]:
        """Stages left out because a stage upstream of them failed."""
        return [s for s in self.order if s not in self.running | self.done | self.failed]


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def run_logged(cmd: list[str], env: dict, label: str, what: str | None = None, usage: dict | None = None) -> list[str]:
    """Runs `cmd`, streaming each output line (progress lines included) into the Prefect log as
    `label | line` while it runs; its lines, or StageFailed with its own one-line error (else
    DVC's, else its last line) when it fails. `usage` gets its start and end (epoch seconds) and
    the CPU seconds of its process tree."""
    logger = get_run_logger()
    t0 = time.time()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
    lines = []
    for line in proc.stdout:
        line = line.rstrip()
        lines.append(line)
        if line.startswith("warning: "):
            logger.warning("%s | %s", label, line)
        elif line.strip():
            logger.info("%s | %s", label, line)
    _, status, rusage = os.wait4(proc.pid, 0)  # the process tree's CPU time (its children, waited for, included)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if usage is not None:
        usage.update(start=t0, end=time.time(), cpu_s=rusage.ru_utime + rusage.ru_stime)
    if proc.returncode != 0:
        ours = [ln[len("error: ") :] for ln in lines if ln.startswith("error: ")]
        theirs = [ln[len("ERROR: ") :] for ln in lines if ln.startswith("ERROR: ")]
        detail = (ours or theirs or [ln for ln in lines if ln.strip()] or ["no output"])[-1]
        raise StageFailed(f"{what or label} failed: {detail}")
    return lines


@task(name="stage", task_run_name="{stage}")
def run_stage(stage: str, parent_run_id: str | None) -> dict:
    """`dvc repro --single-item <stage>`: runs the stage if its deps, params or code changed."""
    usage: dict = {}
    lines = run_logged([sys.executable, "-m", "dvc", "--wait-for-lock", "repro", "--single-item", stage],
                       stage_env(parent_run_id), stage, f"stage {stage}", usage)
    skipped = any("didn't change, skipping" in ln for ln in lines)
    untracked = any(ln.startswith("warning: MLflow tracking") for ln in lines)
    return {"stage": stage, "ran": not skipped, "tracking_incomplete": untracked, **usage}


def profile(graph: dict[str, list[str]], runs: dict[str, dict], t0: float, t1: float, cores: int) -> dict:
    """Where one run's time went: each stage's wall and CPU seconds (its process tree), its share of
    all CPU time, and the two-sided bound the DAG allows on `cores`: no schedule beats the longest
    chain of stages (by wall time) nor the total CPU time spread over every core."""
    finish: dict[str, float] = {}  # the longest chain ending with each stage
    via: dict[str, str | None] = {}
    for s in graphlib.TopologicalSorter(graph).static_order():
        up = max(graph[s], key=lambda u: finish[u], default=None)
        finish[s] = runs[s]["end"] - runs[s]["start"] + (finish[up] if up else 0.0)
        via[s] = up
    last = max(finish, key=finish.get)
    chain = [last]
    while via[chain[-1]]:
        chain.append(via[chain[-1]])
    cpu = sum(r["cpu_s"] for r in runs.values())
    stages = {s: {"start_s": runs[s]["start"] - t0, "wall_s": runs[s]["end"] - runs[s]["start"], "cpu_s": runs[s]["cpu_s"],
                  "cpu_share": runs[s]["cpu_s"] / cpu if cpu else 0.0, "ran": bool(runs[s]["ran"])} for s in graph}
    return {"wall_s": t1 - t0, "cpu_s": cpu, "cores": cores, "critical_path": chain[::-1], "critical_path_s": finish[last],
            "lower_bound_s": max(finish[last], cpu / cores), "stages": stages}


def ask_people(cfg) -> int:
    """Ask a person to rank every candidate that has no answer yet: in the Prefect UI (labeler
    `human`) or on the ranking page (`web`, flows/ranking_page.py, served until every candidate is
    answered; its URL is logged and linked as an artifact).

    Runs in the flow's own body, not a task and not the `dvc repro` subprocess: only a flow pauses;
    each answer is appended to the labels file at once, which is then versioned with `dvc add`.
    """
    from tasks.labels import missing, read_candidates, read_labels

    rc = cfg.collect_rankings
    candidates = read_candidates(rc.candidates_file)
    todo = missing(candidates, read_labels(rc.labels_file))
    if rc.labeler == "web":
        from prefect.artifacts import create_link_artifact

        from flows.ranking_page import serve

        def link(url: str) -> None:
            create_link_artifact(url, link_text=f"rank {len(todo)} prompts", key="ranking-page",
                                 description="The ranking page: answers go to " + rc.labels_file)

        written = serve(rc.candidates_file, rc.labels_file, host=rc.web_host, port=rc.web_port,
                        timeout_s=rc.human_timeout_s, logger=get_run_logger(), on_url=link)
    else:
        from flows.labeling import ask_rankings, server_url

        if todo and server_url() is None:
            raise ConfigError(
                f"collect_rankings.labeler=human: {len(todo)} prompts to rank need a Prefect server a person can reach "
                "(`make serve`, then run the deployment or set PREFECT_API_URL), or use collect_rankings.labeler=web"
            )
        written = ask_rankings(candidates, rc.labels_file, timeout_s=rc.human_timeout_s, logger=get_run_logger())
    if Path(rc.labels_file).is_file():
        subprocess.run([sys.executable, "-m", "dvc", "add", "-q", rc.labels_file], env=stage_env(None), check=True)
    return written


def read_stage_metrics(cfg, stage: str) -> dict:
    path = stage_metrics_file(cfg, stage)
    return json.loads(path.read_text()) if path and path.is_file() else {}


def log_cached_stage(cfg, stage: str, parent_run_id: str, metrics: dict[str, float]) -> None:
    """DVC skipped the stage: record a child run with its current metrics, tagged as cached."""
    import mlflow

    exp_id = tracking.setup(cfg.tracking)
    tags = {"instructflow.stage": stage.split("@")[0], "dvc.stage": stage, "dvc.skipped": "true", tracking.STATE_TAG: "complete"}
    with mlflow.start_run(experiment_id=exp_id, run_name=f"{stage} (cached)", parent_run_id=parent_run_id, tags=tags):
        if metrics:
            mlflow.log_metrics({tracking.metric_key(k): v for k, v in metrics.items()})


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def headline_metrics(results: dict[str, dict[str, float]]) -> dict[str, float]:
    """The papers' claims as one number each, for the parent run (so pipelines compare at the top
    level of the MLflow UI), from the metrics the stages wrote (`results`: {stage: flat metrics}):
    GPT-1 fine-tuned minus each bar (mean over tasks, paired on the same test rows), GPT-2 zero-shot
    accuracy above chance, GPT-3 few-shot gain at the largest k (means over prompt tasks), SFT's
    oracle score, the reward model's held-out and oracle accuracy, PPO-ptx against SFT. A claim
    whose stage did not run is left out. RESULTS.md judges the same files (`tasks.report`)."""
    out: dict[str, float | None] = {}
    ft = results.get("finetune_report", {})
    for bar in ("scratch", "baseline", "zero-shot"):
        out[f"headline/gpt1.finetuned_minus_{bar.replace('-', '_')}"] = _mean([v for k, v in ft.items() if k.endswith(f".vs.{bar}.diff")])
    pe = {k.removeprefix("pretrain."): v for k, v in results.get("prompt_eval", {}).items() if k.startswith("pretrain.")}
    out["headline/gpt2.zero_shot_above_chance"] = _mean([v - pe[k[: -len("acc")] + "chance"] for k, v in pe.items()
                                                          if k.endswith(".k0.acc") and k[: -len("acc")] + "chance" in pe])
    ks = [int(k.split(".")[-2][1:]) for k in pe if k.endswith(".gain")]
    if ks:
        out[f"headline/gpt3.few_shot_gain_k{max(ks)}"] = _mean([v for k, v in pe.items() if k.endswith(f".k{max(ks)}.gain")])
    pre = results.get("pretrain", {})
    out["headline/pretrain.val_loss"] = pre.get("val_loss")
    out["headline/pretrain.icl_score"] = pre.get("icl_score")
    out["headline/sft.oracle_score"] = results.get("sft", {}).get("oracle_score.sft.mean")
    rm = results.get("train_rm", {})
    out["headline/rm.heldout_pairwise_acc"] = rm.get("heldout.pairwise_acc")
    out["headline/rm.oracle_acc"] = rm.get("heldout.oracle_acc")
    ev = results.get("evaluate", {})
    for key in ("sampled_oracle_score_diff_vs_sft", "decisive_win_rate_vs_sft", "kl_to_sft"):
        out[f"headline/ppo_ptx.{key}"] = ev.get(f"ppo_ptx.{key}")
    return {k: v for k, v in out.items() if v is not None}


def dvc_lock_tags() -> dict[str, str]:
    """Lineage: the md5 of every stage output recorded in dvc.lock."""
    import yaml

    lock = Path("dvc.lock")
    if not lock.is_file():
        return {}
    data = yaml.safe_load(lock.read_text()) or {}
    tags = {}
    for name, st in (data.get("stages") or {}).items():
        for out in st.get("outs", []):
            # MLflow tag keys allow no '@' (foreach stages are named stage@item)
            tags[f"dvc.{name.replace('@', ':')}.{out['path']}"] = str(out.get("md5", ""))
    return tags


def publish_tables(cfg, results: dict[str, dict[str, float]]) -> None:
    """Prefect artifacts on the flow run: each stage's headline metrics, and the tables the stages
    wrote (GPT-1 ablations, GPT-2/3 accuracy by k, SFT by kind, the InstructGPT comparison) as
    they are, so the UI shows the same rounding and order as the files."""
    summary = [
        {"stage": s, "metric": k, "value": round(v, 4)}
        for s, m in results.items()
        for k, v in m.items()
        if s in ("data", "tokenize", "pretrain") or k == "ran"
    ]
    create_table_artifact(summary, key="stage-metrics", description="Headline metrics of each stage (ran = 0: DVC skipped it)")
    tables = (
        (cfg.finetune.table_file, "finetune-ablations", "GPT-1 fine-tuning test accuracy: tasks × {pretrain, scratch} × λ"),
        (cfg.prompt_eval.table_file, "prompt-eval", "Zero/one/few-shot accuracy by task and k, chance beside it"),
        (cfg.sft.table_file, "sft-oracle", "Mean oracle score on held-out rl_eval prompts by kind: pre-trained zero/few-shot vs SFT"),
        (cfg.evaluate.table_file, "instructgpt-comparison",
         "Held-out rl_eval prompts judged by the oracle: win rates vs SFT, RM score, KL, alignment tax"),
    )
    for path, key, description in tables:
        if Path(path).is_file():
            create_markdown_artifact(Path(path).read_text(encoding="utf-8"), key=key, description=description)


def _flow_run_name() -> str:
    from prefect.runtime import flow_run

    return f"Prefect flow run {flow_run.name} ({flow_run.id})" if flow_run.id else "a Prefect flow run"


@flow(name="instructflow", log_prints=True)
def instructflow(overrides: list[str] | None = None) -> dict:
    """The whole pipeline on the composed config; returns each stage's metrics.

    One run per workspace at a time (`flows.workspace`): a second is refused at once, naming the first."""
    overrides = list(overrides or [])
    if not Path(".dvc").is_dir():
        raise ConfigError(f"{Path.cwd()}: not a DVC repository (run `git init && dvc init` there)")
    from flows.workspace import command_line

    with workspace_lock(what=f"{_flow_run_name()}: {command_line()}"):
        tracking.check_reachable(compose(overrides).tracking)  # before params.yaml is written, before any stage
        return _run_pipeline(overrides)


def _run_pipeline(overrides: list[str]) -> dict:
    t_start = time.time()
    cfg = configure(overrides)
    parent_id = tracking.start_parent_run(cfg, "pipeline", overrides)
    status = "FAILED"
    results = {}
    untracked: list[str] = []
    graph = stage_graph()
    gpu = cfg.device.startswith("cuda") or (cfg.device == "auto" and _cuda_available())
    plan = Scheduler(graph, cfg.pipeline.concurrency, cfg.pipeline.gpu_stages if gpu else ())
    futures: dict = {}
    logger = get_run_logger()
    try:
        said = None
        while True:
            for stage in plan.start():
                if stage == "collect_rankings" and cfg.collect_rankings.labeler in ("human", "web"):
                    ask_people(cfg)  # a person ranks in the flow's own body (only a flow pauses)
                # wait_for: the upstream runs, done by now, so the UI draws the DAG's edges
                futures[stage] = run_stage.submit(stage, parent_id, wait_for=[futures[u] for u in graph[stage]])
            waiting = plan.ready()
            if waiting and waiting != said:
                logger.info("waiting for a slot: %s (running: %s)", ", ".join(waiting), ", ".join(sorted(plan.running)))
            said = waiting
            if not plan.running:
                break
            fut = next(as_completed([futures[s] for s in plan.running]))
            fut.wait()  # records the final state on the future (else `state` asks the API, which may lag)
            plan.finish(next(s for s in plan.running if futures[s] is fut), fut.state.is_completed())
        if plan.never_ran():
            logger.error("not run, a stage upstream failed: %s", ", ".join(plan.never_ran()))
        for stage in plan.order:  # the first failure upstream-first: its own one-line error
            if stage in plan.failed:
                futures[stage].result()  # raises the stage's StageFailed
        if plan.failed or plan.never_ran():  # never reached unless a state and its result disagree
            raise StageFailed(f"stages failed: {', '.join(sorted(plan.failed))}; not run: {', '.join(plan.never_ran())}")
        for stage in plan.order:  # DAG order, whatever order they ran in
            r = futures[stage].result()
            results[stage] = numeric_leaves(read_stage_metrics(cfg, stage))
            if r.get("tracking_incomplete"):
                untracked.append(stage)
            if not r["ran"] and parent_id:
                if tracking.guarded(f"the cached run of {stage}", log_cached_stage, cfg, stage, parent_id, results[stage]) is None \
                        and tracking.tracking_failed():
                    untracked.append(stage)
            results[stage]["ran"] = float(r["ran"])
        status = "FINISHED"
        runs = {s: futures[s].result() for s in plan.order}
        if all(r["ran"] for r in runs.values()):  # a profile of the whole DAG, not of what DVC skipped
            atomic_write_json(cfg.pipeline.profile_file, {**profile(graph, runs, t_start, time.time(), os.cpu_count() or 1),
                                                           "overrides": overrides})
    finally:
        if parent_id:
            if untracked:
                logger.warning("MLflow tracking incomplete for: %s (their outputs are written; their runs are tagged %s=incomplete)",
                               ", ".join(untracked), tracking.STATE_TAG)
            headline = headline_metrics(results) if status == "FINISHED" else {}
            tracking.finish_parent_run(parent_id, status, tags=dvc_lock_tags(), metrics=headline,
                                       complete=not untracked and not tracking.tracking_failed(), warn=logger.warning)
    publish_tables(cfg, results)
    create_markdown_artifact(
        "\n".join(
            [
                "## Where to look",
                f"- MLflow: `mlflow ui --backend-store-uri {cfg.tracking.uri}` (parent run `{parent_id}`)",
                "- DVC: `dvc status`, `dvc metrics show`, `dvc plots show`",
                "- Outputs: "
                + ", ".join(
                    f"`{p}`"
                    for p in (cfg.data.out_dir, cfg.tokenizer.out_dir, cfg.pretrain.out_dir, cfg.finetune.out_dir, cfg.sft.out_dir,
                              cfg.collect_rankings.out_file, cfg.train_rm.out_dir)
                ),
                f"- Tables: `{cfg.finetune.table_file}`, `{cfg.prompt_eval.table_file}`, `{cfg.sft.table_file}`, `{cfg.evaluate.table_file}`",
            ]
            + ([f"- MLflow tracking incomplete for: {', '.join(untracked)}"] if untracked else [])
        ),
        key="where-to-look",
    )
    return results


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        with workspace_lock():  # refused at once, naming the run that holds the workspace
            cfg = compose(argv)  # fail fast, with one line, before starting Prefect
            tracking.check_reachable(cfg.tracking)
            results = instructflow(argv)
    except (InputError, StageFailed) as e:  # ConfigError, WorkspaceBusy, TrackingUnavailable are InputErrors
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    print(json.dumps(results, indent=2, sort_keys=True))
    print(
        "\nWhere to look:\n"
        "  MLflow UI:  .venv/bin/mlflow ui --backend-store-uri sqlite:///mlflow.db   (http://127.0.0.1:5000)\n"
        "  Prefect UI: make serve   (http://127.0.0.1:4200), then `prefect deployment run 'instructflow/local'`\n"
        "  DVC:        .venv/bin/dvc metrics show; .venv/bin/dvc plots show"
    )


if __name__ == "__main__":
    main()
