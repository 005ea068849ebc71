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
under the flow's parent run. At most `pipeline.concurrency` stages run at once (0 = the number
of CPU cores; a free slot goes to the waiting stage with the longest chain of stages behind it),
and stages listed in `pipeline.gpu_stages` one at a time when the device is a
GPU. A stage's torch thread count comes from its own config, never from how many stages run
beside it, so a parallel run gives the same numbers as a serial one.
"""

from __future__ import annotations

import contextlib
import graphlib
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import flows  # noqa: F401  (environment defaults before Prefect is imported)
from prefect import flow, get_run_logger, task
from prefect.futures import wait
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from tasks import tracking
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


@task(name="configure")
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


class Slots:
    """How many stages may run at once: `concurrency` in all, GPU-heavy ones one at a time.

    A free slot goes to the waiting stage with the longest path of stages still behind it (ties:
    first come), and the slot a stage gives back is kept for the downstream stage it has just made
    ready when that one comes first (it arrives a moment later, after Prefect resolves its
    inputs); so the InstructGPT chain (sft -> ... -> evaluate) is not kept waiting behind
    fine-tuning stages that only feed finetune_report."""

    def __init__(self, concurrency: int, gpu_stages: list[str], device: str,
                 graph: dict[str, list[str]] | None = None, priority: dict[str, int] | None = None):
        self.free = concurrency if concurrency > 0 else (os.cpu_count() or 1)
        self.upstream = graph or {}
        self.downstream = downstream(self.upstream)
        self.priority = priority if priority is not None else (critical_path(graph) if graph else {})
        self.cond = threading.Condition()
        self.waiting: list[tuple[int, int, str]] = []  # (-priority, arrival, stage)
        self.arrivals = 0
        self.done: set[str] = set()
        self.reserved: set[str] = set()  # stages a released slot is kept for
        self.gpu = threading.BoundedSemaphore(1)
        gpu = device.startswith("cuda") or (device == "auto" and _cuda_available())
        self.gpu_stages = set(gpu_stages) if gpu else set()

    def _my_turn(self, me: tuple[int, int, str]) -> bool:
        if me[2] in self.reserved:
            return True
        others = [w for w in self.waiting if w[2] not in self.reserved]
        return self.free - len(self.reserved) > 0 and min(others) == me

    def _acquire(self, stage: str) -> None:
        with self.cond:
            me = (-self.priority.get(stage, 0), self.arrivals, stage)
            self.arrivals += 1
            self.waiting.append(me)
            self.cond.wait_for(lambda: self._my_turn(me))
            self.waiting.remove(me)
            self.reserved.discard(stage)
            self.free -= 1
            self.cond.notify_all()

    def _release(self, stage: str, ok: bool) -> None:
        with self.cond:
            self.free += 1
            if ok:
                self.done.add(stage)
                ready = [d for d in self.downstream.get(stage, [])
                         if d not in self.done and all(u in self.done for u in self.upstream[d])]
                if ready and self.free - len(self.reserved) > 0:
                    best = max(ready, key=lambda d: self.priority.get(d, 0))
                    queued = [-w[0] for w in self.waiting if w[2] not in self.reserved]
                    if self.priority.get(best, 0) >= max(queued, default=0):
                        self.reserved.add(best)
            self.cond.notify_all()

    @contextlib.contextmanager
    def hold(self, stage: str):
        """Runs the body in a slot; the body sets `ok["ok"] = True` when the stage succeeded."""
        heavy = stage.split("@")[0] in self.gpu_stages
        self._acquire(stage)
        ok = {"ok": False}
        try:
            with self.gpu if heavy else contextlib.nullcontext():
                yield ok
        finally:
            self._release(stage, ok["ok"])


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


_SLOTS: dict[str, Slots] = {}  # per flow run: the task threads share them


@task(name="stage", task_run_name="{stage}")
def run_stage(stage: str, parent_run_id: str | None, slots_key: str = "") -> dict:
    """`dvc repro --single-item <stage>`: runs the stage if its deps, params or code changed."""
    logger = get_run_logger()
    slots = _SLOTS.get(slots_key)
    with slots.hold(stage) if slots else contextlib.nullcontext({}) as slot:
        # stream the stage's output live (progress lines included) into the Prefect log
        proc = subprocess.Popen(
            [sys.executable, "-m", "dvc", "--wait-for-lock", "repro", "--single-item", stage],
            env=stage_env(parent_run_id),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
        )
        lines = []
        for line in proc.stdout:
            line = line.rstrip()
            lines.append(line)
            if line.strip():
                logger.info("%s | %s", stage, line)
        proc.wait()
        slot["ok"] = proc.returncode == 0
    if proc.returncode != 0:
        # the stage's own one-line error, else DVC's
        ours = [ln[len("error: ") :] for ln in lines if ln.startswith("error: ")]
        theirs = [ln[len("ERROR: ") :] for ln in lines if ln.startswith("ERROR: ")]
        detail = (ours or theirs or [ln for ln in lines if ln.strip()] or ["no output"])[-1]
        raise StageFailed(f"stage {stage} failed: {detail}")
    skipped = any("didn't change, skipping" in ln for ln in lines)
    return {"stage": stage, "ran": not skipped}


def ask_people(cfg) -> int:
    """Ask a person, in the Prefect UI, to rank every candidate that has no answer yet.

    Runs in the flow's own body, not a task and not the `dvc repro` subprocess: only a flow pauses;
    each answer is appended to the labels file at once, which is then versioned with `dvc add`.
    """
    from flows.labeling import ask_rankings, server_url
    from tasks.labels import missing, read_candidates, read_labels

    rc = cfg.collect_rankings
    candidates = read_candidates(rc.candidates_file)
    todo = missing(candidates, read_labels(rc.labels_file))
    if todo and server_url() is None:
        raise ConfigError(
            f"collect_rankings.labeler=human: {len(todo)} prompts to rank need a Prefect server a person can reach "
            "(`make serve`, then run the deployment or set PREFECT_API_URL)"
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
    tags = {"instructflow.stage": stage.split("@")[0], "dvc.stage": stage, "dvc.skipped": "true"}
    with mlflow.start_run(experiment_id=exp_id, run_name=f"{stage} (cached)", parent_run_id=parent_run_id, tags=tags):
        if metrics:
            mlflow.log_metrics({tracking.metric_key(k): v for k, v in metrics.items()})


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


def publish_tables(results: dict[str, dict[str, float]], raw: dict[str, dict]) -> None:
    """Prefect table artifacts: each stage's headline metrics, the GPT-1 ablation table and
    the GPT-2/3 accuracy-by-shots table (from the stages' metrics files, `raw`)."""
    from tasks import evaluate, finetune_report, prompt_eval, sft

    summary = [
        {"stage": s, "metric": k, "value": round(v, 4)}
        for s, m in results.items()
        for k, v in m.items()
        if s in ("data", "tokenize", "pretrain") or k == "ran"
    ]
    create_table_artifact(summary, key="stage-metrics", description="Headline metrics of each stage (ran = 0: DVC skipped it)")
    tables = (
        ("finetune_report", finetune_report.table_rows, "finetune-ablations", "GPT-1 fine-tuning test accuracy: tasks × {pretrain, scratch} × λ"),
        ("prompt_eval", prompt_eval.table_rows, "prompt-eval", "Zero/one/few-shot accuracy by task and k, chance beside it"),
        ("sft", lambda m: sft.table_rows(m["oracle_score"]), "sft-oracle",
         "Mean oracle score on held-out rl_eval prompts by kind: pre-trained zero/few-shot vs SFT"),
        ("evaluate", evaluate.table_rows, "instructgpt-comparison",
         "Held-out rl_eval prompts judged by the oracle: win rates vs SFT, RM score, KL, alignment tax"),
    )
    for stage, rows, key, description in tables:
        if raw.get(stage):
            create_table_artifact(rows(raw[stage]), key=key, description=description)


@flow(name="instructflow", log_prints=True)
def instructflow(overrides: list[str] | None = None) -> dict:
    """The whole pipeline on the composed config; returns each stage's metrics."""
    overrides = list(overrides or [])
    if not Path(".dvc").is_dir():
        raise ConfigError(f"{Path.cwd()}: not a DVC repository (run `git init && dvc init` there)")
    cfg = configure(overrides)
    parent_id = tracking.start_parent_run(cfg, "pipeline", overrides)
    status = "FAILED"
    results, raw = {}, {}
    graph = stage_graph()
    key = str(id(cfg))
    _SLOTS[key] = Slots(cfg.pipeline.concurrency, list(cfg.pipeline.gpu_stages), cfg.device, graph)
    order = stages(graph)
    futures = {}
    try:
        for stage in order:
            if stage == "collect_rankings" and cfg.collect_rankings.labeler == "human":
                # a person ranks in the flow's own body (only a flow pauses), once the candidates exist
                for up in graph[stage]:
                    futures[up].result()
                ask_people(cfg)
            futures[stage] = run_stage.submit(stage, parent_id, key, wait_for=[futures[u] for u in graph[stage]])
        wait(list(futures.values()))
        for stage in order:  # the first failure upstream-first: its own one-line error
            state = futures[stage].state
            if state.is_failed() or state.is_crashed():
                futures[stage].result()  # raises the stage's StageFailed
        for stage, fut in futures.items():
            r = fut.result()
            raw[stage] = read_stage_metrics(cfg, stage)
            results[stage] = numeric_leaves(raw[stage])
            if not r["ran"] and parent_id:
                log_cached_stage(cfg, stage, parent_id, results[stage])
            results[stage]["ran"] = float(r["ran"])
        status = "FINISHED"
    finally:
        _SLOTS.pop(key, None)
        if parent_id:
            import mlflow

            client = mlflow.MlflowClient()
            for k, v in dvc_lock_tags().items():
                client.set_tag(parent_id, k, v)
            client.set_terminated(parent_id, status=status)
    publish_tables(results, raw)
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
        ),
        key="where-to-look",
    )
    return results


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        compose(argv)  # fail fast, with one line, before starting Prefect
        results = instructflow(argv)
    except (ConfigError, StageFailed) as e:
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
