"""MLflow tracking for stages: one child run per stage under the pipeline's parent run.

A stage opens ``with stage_run(cfg, "pretrain", sections=["model", "pretrain"]) as run:`` and
logs through MLflow's own API inside it. When the Prefect flow (or any caller) exports
``INSTRUCTFLOW_PARENT_RUN_ID``, the stage's run nests under that parent, even across the
``dvc repro`` subprocess boundary.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from tasks.schema import TrackingConfig  # noqa: F401  (the section's schema lives in tasks/schema.py)

PARENT_ENV = "INSTRUCTFLOW_PARENT_RUN_ID"



def flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}; lists are kept as their string form."""
    out: dict[str, Any] = {}
    if isinstance(d, dict):
        for k, v in d.items():
            out.update(flatten(v, f"{prefix}{k}."))
    else:
        out[prefix[:-1]] = d
    return out


def git_commit() -> str | None:
    try:
        r = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return r.stdout.strip() if r.returncode == 0 else None


def absolute_uri(uri: str) -> str:
    """A relative SQLite store as an absolute one: MLflow caches a store by its URI string, so in one
    process `sqlite:///mlflow.db` would keep pointing at the first working directory's file."""
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/") and uri != prefix + ":memory:":
        return prefix + str(Path(uri[len(prefix):]).resolve())
    return uri


def setup(tcfg: TrackingConfig) -> str:
    """Point MLflow at the configured store and return the experiment id (creating it if needed)."""
    import mlflow

    logging.getLogger("alembic").setLevel(logging.WARNING)
    mlflow.set_tracking_uri(absolute_uri(tcfg.uri))
    exp = mlflow.get_experiment_by_name(tcfg.experiment)
    if exp is not None:
        return exp.experiment_id
    loc = tcfg.artifact_dir
    if tcfg.uri.startswith(("http://", "https://")) and "://" not in loc:
        loc = None  # a tracking server: its own artifact root (proxied: `mlflow server --artifacts-destination`)
    elif "://" not in loc:
        loc = Path(loc).resolve().as_uri()
    try:
        return mlflow.create_experiment(tcfg.experiment, artifact_location=loc)
    except mlflow.exceptions.MlflowException:  # created concurrently by another stage
        return mlflow.get_experiment_by_name(tcfg.experiment).experiment_id


def start_parent_run(cfg: Any, name: str, overrides: list[str]) -> str | None:
    """A parent run `name` for a flow (None when tracking is off): tagged with the overrides and the
    commit, every setting logged as a param so runs compare in the MLflow UI by any of them."""
    if not cfg.tracking.enabled:
        return None
    import json

    import mlflow

    exp_id = setup(cfg.tracking)
    tags = {"instructflow.stage": name, "overrides": json.dumps(overrides)}
    if commit := git_commit():
        tags["git.commit"] = commit
    run_id = mlflow.MlflowClient().create_run(exp_id, run_name=name, tags=tags).info.run_id
    log_run_params(run_id, config_params(cfg))
    return run_id


@contextlib.contextmanager
def parent_run(cfg: Any, name: str, overrides: list[str]):
    """`start_parent_run` for the length of a flow: yields its id (None when tracking is off) and
    marks the run FINISHED, or FAILED when the block raises."""
    run_id = start_parent_run(cfg, name, overrides)
    status = "FAILED"
    try:
        yield run_id
        status = "FINISHED"
    finally:
        if run_id:
            import mlflow

            mlflow.MlflowClient().set_terminated(run_id, status=status)


def config_params(cfg: Any, sections: list[str] | None = None) -> dict[str, str]:
    """The resolved config (or its `sections`) as flat dotted MLflow params (values capped at 6000 chars)."""
    from omegaconf import OmegaConf

    resolved = OmegaConf.to_container(cfg, resolve=True)
    params = {}
    for s in sections if sections is not None else list(resolved):
        params.update(flatten(resolved[s], f"{s}."))
    return {k: str(v)[:6000] for k, v in params.items()}


def log_run_params(run_id: str, params: dict[str, str]) -> None:
    """Params onto an existing run (e.g. the pipeline's parent), in MLflow's batches of 100."""
    import mlflow
    from mlflow.entities import Param

    client = mlflow.MlflowClient()
    items = [Param(k, v) for k, v in params.items()]
    for i in range(0, len(items), 100):
        client.log_batch(run_id, params=items[i : i + 100])


@contextlib.contextmanager
def stage_run(cfg: Any, stage: str, sections: list[str], run_name: str | None = None) -> Iterator[Any]:
    """Open the MLflow run of one stage; yields the ActiveRun, or None when tracking is off.

    Logs the `sections` of the resolved config as flattened dotted params, the whole resolved
    config as `config.yaml`, and tags stage, git commit and parent.
    """
    from omegaconf import OmegaConf

    tcfg: TrackingConfig = cfg.tracking
    if not tcfg.enabled:
        yield None
        return
    import mlflow

    exp_id = setup(tcfg)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    params = config_params(cfg, sections)
    tags = {"instructflow.stage": stage}
    if commit := git_commit():
        tags["git.commit"] = commit
    parent = os.environ.get(PARENT_ENV) or None
    with mlflow.start_run(
        experiment_id=exp_id, run_name=run_name or stage, parent_run_id=parent, tags=tags
    ) as run:
        # MLflow caps a param value at 6000 chars; long lists are summarised by the config artifact
        mlflow.log_params(params)
        mlflow.log_dict(resolved, "config.yaml")
        yield run


def metric_key(name: str) -> str:
    """A metric name MLflow accepts: characters other than letters, digits, _ - . space : / become '_'
    (e.g. the candidates' source "sft T=0.8")."""
    return re.sub(r"[^\w\-. :/]", "_", name)


def log_metrics(metrics: dict[str, float], step: int | None = None) -> None:
    """Log to the active run, if any (stages call this unconditionally)."""
    import mlflow

    if mlflow.active_run() is not None:
        mlflow.log_metrics({metric_key(k): float(v) for k, v in metrics.items()}, step=step)


def log_artifacts(path: str | os.PathLike, artifact_path: str | None = None) -> None:
    import mlflow

    if mlflow.active_run() is not None:
        mlflow.log_artifacts(str(path), artifact_path=artifact_path)


def log_artifact(path: str | os.PathLike, artifact_path: str | None = None) -> None:
    import mlflow

    if mlflow.active_run() is not None:
        mlflow.log_artifact(str(path), artifact_path=artifact_path)


def log_checkpoint(path: str | os.PathLike, artifact_path: str = "checkpoint") -> None:
    """Upload a checkpoint folder's weights, config, meta and tokenizer (not the optimizer state)
    as run artifacts, and as an MLflow logged model named after the folder (the experiment's
    Models tab lists every stage's checkpoint of every run, linked to its run)."""
    import shutil
    import tempfile

    import mlflow

    run = mlflow.active_run()
    if run is None:
        return
    files = [f for f in sorted(Path(path).iterdir()) if f.is_file() and f.name != "trainer.pt"]
    for f in files:
        mlflow.log_artifact(str(f), artifact_path=artifact_path)
    model = mlflow.initialize_logged_model(name=Path(path).name, source_run_id=run.info.run_id, model_type="instructflow-checkpoint",
                                           experiment_id=run.info.experiment_id, tags={"instructflow.stage": run.data.tags.get("instructflow.stage", "")})
    with tempfile.TemporaryDirectory() as tmp:
        for f in files:
            shutil.copy2(f, tmp)
        mlflow.MlflowClient().log_model_artifacts(model.model_id, tmp)
    mlflow.finalize_logged_model(model.model_id, "READY")


def log_figure(fig: Any, name: str) -> None:
    import mlflow

    if mlflow.active_run() is not None:
        mlflow.log_figure(fig, name)
