"""MLflow tracking for stages: one child run per stage under the pipeline's parent run.

A stage opens ``with stage_run(cfg, "pretrain", sections=["model", "pretrain"]) as run:`` and
logs through MLflow's own API inside it. When the Prefect flow (or any caller) exports
``INSTRUCTFLOW_PARENT_RUN_ID``, the stage's run nests under that parent, even across the
``dvc repro`` subprocess boundary.

Tracking never costs a stage its outputs. An http(s) store is checked before a run starts
(`check_reachable`: one line naming the URI, before any training). A failure once a stage runs
(the server stopped, the database locked) is one warning line on stderr: the stage goes on
untracked and writes its checkpoint and metrics as usual. Each run is tagged
``instructflow.tracking=incomplete`` when it starts and ``complete`` only when it ended with
everything logged, so a run cut short says so in the MLflow UI whenever the store answers again.

Experiments are created as model-training experiments (``mlflow.experimentKind``, which MLflow 3's
UI reads to open on training runs rather than GenAI traces), and with a SQLite store in the
working directory, with an artifact root relative to it (``mlruns/1``), so a workspace moved or
cloned elsewhere still finds its artifacts (MLflow resolves a relative local artifact path against
the working directory, as it resolves ``sqlite:///mlflow.db``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tasks.common import InputError
from tasks.schema import TrackingConfig  # noqa: F401  (the section's schema lives in tasks/schema.py)

PARENT_ENV = "INSTRUCTFLOW_PARENT_RUN_ID"
STATE_TAG = "instructflow.tracking"  # "incomplete" from a run's start, "complete" once all was logged
KIND_TAG = "mlflow.experimentKind"  # MLflow 3's UI opens an experiment by its kind
KIND = "custom_model_development"  # "Machine learning" (training runs), not "genai_development" (traces)
# MLflow retries a failed HTTP call 7 times with backoff (about 4 minutes); a stage waits that long
# for each call once a server is gone. Ours, unless the environment says otherwise: about 10 s.
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"}


class TrackingUnavailable(InputError):
    """The tracking store cannot be reached before a run starts; one line naming the URI."""


_broken: dict[str, str] = {}  # once tracking failed in this run: {"uri", "error"}; later calls are skipped
_env_before: dict[str, str | None] = {}  # what degrade() changed in os.environ, to put back at the next run's start


def fresh_start() -> None:
    """A new run (a flow's parent run, a stage's run) starts with tracking presumed working: one that
    failed earlier in this process (a test, a notebook calling several stages) is forgotten."""
    _broken.clear()
    for k, v in _env_before.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    _env_before.clear()


def one_line(e: BaseException, limit: int = 240) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"


def check_reachable(tcfg: TrackingConfig, timeout: float = 5.0) -> None:
    """Raise TrackingUnavailable unless the store can be reached: an http(s) server answers at all
    (any HTTP status) within `timeout` s; a SQLite file's folder exists. Other stores: not checked."""
    if not tcfg.enabled:
        return
    import urllib.error
    import urllib.request

    uri = tcfg.uri
    if uri.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout):
                pass
        except urllib.error.HTTPError:
            pass  # it answered
        except (OSError, ValueError) as e:
            reason = getattr(e, "reason", e)
            raise TrackingUnavailable(f"tracking.uri {uri}: MLflow tracking server not reachable ({one_line(reason, 120)}); "
                                      "start it or point tracking.uri elsewhere (tracking.enabled=false runs untracked)") from None
    elif uri.startswith("sqlite:///") and uri != "sqlite:///:memory:":
        folder = Path(absolute_uri(uri)[len("sqlite:///"):]).parent
        if not folder.is_dir():
            raise TrackingUnavailable(f"tracking.uri {uri}: folder {folder} does not exist")


def degrade(what: str, e: BaseException) -> None:
    """Tracking failed mid-stage: say so in one line, end the active runs locally (the stages'
    `mlflow.active_run()` checks then skip their own logging) and skip every later call."""
    import mlflow

    if _broken:
        return
    _broken.update(uri=mlflow.get_tracking_uri(), error=one_line(e))
    run = mlflow.active_run()
    print(f"warning: MLflow tracking at {_broken['uri']} failed ({what}: {_broken['error']}); the stage goes on untracked and "
          f"writes its outputs as usual; its MLflow run {run.info.run_id if run else ''} stays tagged {STATE_TAG}=incomplete",
          file=sys.stderr, flush=True)
    _env_before.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", os.environ.get("MLFLOW_HTTP_REQUEST_MAX_RETRIES"))
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"  # the calls below fail at once
    while mlflow.active_run() is not None:
        with contextlib.suppress(Exception):
            mlflow.end_run("FINISHED")  # pops the run first, then tells the store (which may fail)


def guarded(what: str, fn, *args, **kwargs):
    """fn(*args, **kwargs), unless tracking already failed in this process; a failure degrades."""
    if _broken:
        return None
    try:
        return fn(*args, **kwargs)
    except Exception as e:  # any failure to log is a tracking failure: the stage's work goes on
        degrade(what, e)
        return None


def tracking_failed() -> dict[str, str]:
    """{"uri", "error"} once tracking failed in this process, else {}."""
    return dict(_broken)



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
    if tcfg.uri.startswith(("http://", "https://")):
        for k, v in HTTP_DEFAULTS.items():
            os.environ.setdefault(k, v)
    mlflow.set_tracking_uri(absolute_uri(tcfg.uri))
    exp = mlflow.get_experiment_by_name(tcfg.experiment)
    if exp is not None:
        if KIND_TAG not in exp.tags:  # made before the kind was set (a person's choice in the UI is kept)
            mlflow.MlflowClient().set_experiment_tag(exp.experiment_id, KIND_TAG, KIND)
        return exp.experiment_id
    loc = tcfg.artifact_dir
    if tcfg.uri.startswith(("http://", "https://")) and "://" not in loc:
        loc = None  # a tracking server: its own artifact root (proxied: `mlflow server --artifacts-destination`)
    elif "://" not in loc:
        loc = Path(loc).resolve().as_uri()
    try:
        exp_id = mlflow.create_experiment(tcfg.experiment, artifact_location=loc, tags={KIND_TAG: KIND})
    except mlflow.exceptions.MlflowException:  # created concurrently by another stage
        return mlflow.get_experiment_by_name(tcfg.experiment).experiment_id
    relative_artifact_root(tcfg, exp_id)
    return exp_id


def relative_artifact_root(tcfg: TrackingConfig, exp_id: str) -> None:
    """With a SQLite store in the working directory and a plain artifact folder inside it, record the
    new experiment's artifact root relative (`mlruns/1`): MLflow turns a relative location into an
    absolute one when it creates the experiment, so a moved workspace would point at the old place.
    Runs and logged models take their locations from this root; MLflow resolves a relative local
    path against the working directory, where `sqlite:///mlflow.db` is found too."""
    import sqlite3

    if not tcfg.uri.startswith("sqlite:///") or "://" in tcfg.artifact_dir:
        return
    db = Path(absolute_uri(tcfg.uri)[len("sqlite:///"):])
    root, cwd = Path(tcfg.artifact_dir).resolve(), Path.cwd().resolve()
    if db.parent.resolve() != cwd or not root.is_relative_to(cwd):
        return  # elsewhere: an absolute root, as MLflow records it
    rel = f"{root.relative_to(cwd).as_posix()}/{exp_id}"
    with contextlib.closing(sqlite3.connect(db, timeout=60)) as con, con:
        con.execute("UPDATE experiments SET artifact_location = ? WHERE experiment_id = ?", (rel, int(exp_id)))


def start_parent_run(cfg: Any, name: str, overrides: list[str]) -> str | None:
    """A parent run `name` for a flow (None when tracking is off): tagged with the overrides and the
    commit, every setting logged as a param so runs compare in the MLflow UI by any of them."""
    fresh_start()
    if not cfg.tracking.enabled:
        return None
    import json

    import mlflow

    exp_id = setup(cfg.tracking)
    tags = {"instructflow.stage": name, "overrides": json.dumps(overrides), STATE_TAG: "incomplete"}
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
            finish_parent_run(run_id, status)


def finish_parent_run(run_id: str, status: str, tags: dict[str, str] | None = None, metrics: dict[str, float] | None = None,
                      complete: bool = True, warn=None) -> bool:
    """End a flow's parent run: its `tags` and `metrics`, STATE_TAG complete when `complete` and
    FINISHED, the status. A store that fails is one warning (through `warn`, else stderr), never an
    exception: the flow's work is done. -> whether all of it was recorded."""
    import time

    import mlflow
    from mlflow.entities import Metric, RunTag

    client = mlflow.MlflowClient()
    tags = dict(tags or {})
    if complete and status == "FINISHED":
        tags[STATE_TAG] = "complete"
    now = int(time.time() * 1000)
    try:
        items = [RunTag(k, v) for k, v in tags.items()]
        for i in range(0, len(items), 100):
            client.log_batch(run_id, tags=items[i : i + 100])
        if metrics:
            client.log_batch(run_id, metrics=[Metric(metric_key(k), float(v), now, 0) for k, v in metrics.items()])
        client.set_terminated(run_id, status=status)
        return True
    except Exception as e:
        msg = (f"MLflow tracking at {mlflow.get_tracking_uri()} failed at the end of parent run {run_id} ({one_line(e)}); "
               f"the run stays tagged {STATE_TAG}=incomplete")
        (warn or (lambda m: print(f"warning: {m}", file=sys.stderr, flush=True)))(msg)
        return False


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
    config as `config.yaml`, and tags stage, git commit and parent. The store is checked first
    (TrackingUnavailable: one line naming the URI, before any work); once the run is open, a
    tracking failure degrades to one warning line (see `degrade`) and the stage goes on.
    """
    fresh_start()
    from omegaconf import OmegaConf

    tcfg: TrackingConfig = cfg.tracking
    if not tcfg.enabled:
        yield None
        return
    import mlflow

    check_reachable(tcfg)
    try:
        exp_id = setup(tcfg)
        tags = {"instructflow.stage": stage, STATE_TAG: "incomplete"}
        if commit := git_commit():
            tags["git.commit"] = commit
        parent = os.environ.get(PARENT_ENV) or None
        run = mlflow.start_run(experiment_id=exp_id, run_name=run_name or stage, parent_run_id=parent, tags=tags)
    except Exception as e:
        raise TrackingUnavailable(f"tracking.uri {tcfg.uri}: could not start the stage's MLflow run ({one_line(e, 160)})") from None
    resolved = OmegaConf.to_container(cfg, resolve=True)
    # MLflow caps a param value at 6000 chars; long lists are summarised by the config artifact
    guarded("params", mlflow.log_params, config_params(cfg, sections))
    guarded("config.yaml", mlflow.log_dict, resolved, "config.yaml")
    try:
        yield run
    except BaseException as e:
        if not _broken and mlflow.active_run() is not None:
            with contextlib.suppress(Exception):
                mlflow.end_run("FAILED")
        if isinstance(e, mlflow.exceptions.MlflowException):  # the stage's own MLflow call failed: one line, not a traceback
            raise TrackingUnavailable(f"tracking.uri {tcfg.uri}: MLflow failed mid-stage ({one_line(e, 160)}); outputs written "
                                      "before it are kept, the stage is not recorded by DVC: run it again") from e
        raise
    if not _broken:
        guarded("the end of the run", mlflow.set_tag, STATE_TAG, "complete")
        guarded("the end of the run", mlflow.end_run, "FINISHED")


def metric_key(name: str) -> str:
    """A metric name MLflow accepts: characters other than letters, digits, _ - . space : / become '_'
    (e.g. the candidates' source "sft T=0.8")."""
    return re.sub(r"[^\w\-. :/]", "_", name)


def log_metrics(metrics: dict[str, float], step: int | None = None) -> None:
    """Log to the active run, if any (stages call this unconditionally)."""
    import mlflow

    if mlflow.active_run() is not None:
        guarded("metrics", mlflow.log_metrics, {metric_key(k): float(v) for k, v in metrics.items()}, step=step)


def log_artifacts(path: str | os.PathLike, artifact_path: str | None = None) -> None:
    import mlflow

    if mlflow.active_run() is not None:
        guarded(f"artifacts {path}", mlflow.log_artifacts, str(path), artifact_path=artifact_path)


def log_artifact(path: str | os.PathLike, artifact_path: str | None = None) -> None:
    import mlflow

    if mlflow.active_run() is not None:
        guarded(f"artifact {path}", mlflow.log_artifact, str(path), artifact_path=artifact_path)


def log_checkpoint(path: str | os.PathLike, artifact_path: str = "checkpoint") -> None:
    guarded(f"checkpoint {path}", _log_checkpoint, path, artifact_path)


def _log_checkpoint(path: str | os.PathLike, artifact_path: str = "checkpoint") -> None:
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
        guarded(f"figure {name}", mlflow.log_figure, fig, name)
