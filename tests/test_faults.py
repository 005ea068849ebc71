"""What people do to the pipeline, on real Prefect, DVC and MLflow (smoke-sized, CPU): two runs in
one workspace, a tracking server that is down or dies mid-stage, bad input through the flow, and
what the MLflow UI shows afterwards (experiment kind, the parent run's headline numbers, a moved
workspace). docs/running.md, "What goes wrong, and what happens", names each test here."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from conftest import ROOT, free_port, run_cmd, serve_local_deployment, start, stop, wait_http

pytestmark = pytest.mark.slow

WORKSPACE_FILES = ("params.yaml", "data", "models", "metrics", "mlflow.db", "mlruns", "dvc.lock")


def written(project: Path) -> list[str]:
    """The outputs of a run found in `project` (none before a first run)."""
    return [n for n in WORKSPACE_FILES if (project / n).exists()]


def hold_lock(project: Path) -> subprocess.Popen:
    """A real second process holding the workspace's lock (as a running pipeline does)."""
    proc = subprocess.Popen([sys.executable, "-m", "flows.workspace", str(project)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def bad_corpus(tmp_path: Path) -> Path:
    path = tmp_path / "corpus.jsonl"
    path.write_text('{"text": "a fine document"}\n{"text": "broken\n', encoding="utf-8")
    return path


def test_second_run_is_refused_and_a_killed_holder_never_blocks(project, tmp_path):
    holder = hold_lock(project)
    try:
        t0 = time.time()
        proc = run_cmd([sys.executable, "-m", "flows.pipeline", "experiment=smoke"], cwd=project, check=False)
        took = time.time() - t0
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1, proc.stderr
        assert f"workspace in use by pid {holder.pid} (started " in lines[0] and "python -m flows.workspace" in lines[0], lines[0]
        assert written(project) == []  # nothing written
        assert took < 60, took
    finally:
        holder.send_signal(signal.SIGKILL)  # the holder dies without cleaning up: its lock file stays behind
        holder.wait()
    assert "pid=" in (project / ".instructflow.lock").read_text()
    # the next run is not blocked by the file: it runs the flow (to its first stage, fed a bad corpus here)
    proc = run_cmd([sys.executable, "-m", "flows.pipeline", "experiment=smoke", "data=files", f"data.paths=[{bad_corpus(tmp_path)}]"],
                   cwd=project, check=False)
    assert "workspace in use" not in proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error: ")]  # (Prefect's own log lines beside it)
    assert proc.returncode == 2 and errors == [f"error: stage data failed: {tmp_path / 'corpus.jsonl'}: row 2 is not valid JSON "
                                               "(Invalid control character at)"], proc.stderr[-3000:]
    assert (project / "params.yaml").is_file()


def test_unreachable_tracking_fails_before_any_stage(project):
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    t0 = time.time()
    proc = run_cmd([sys.executable, "-m", "flows.pipeline", "experiment=smoke", f"tracking.uri={uri}"], cwd=project, check=False)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and f"tracking.uri {uri}: MLflow tracking server not reachable" in lines[0], proc.stderr
    assert written(project) == [] and time.time() - t0 < 60
    # a stage run alone checks it at its start, before reading or writing anything
    proc = run_cmd([sys.executable, "-m", "tasks.pretrain", "experiment=smoke", f"tracking.uri={uri}"], cwd=project, check=False)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith(f"error: tracking.uri {uri}: MLflow tracking server"), proc.stderr
    assert written(project) == []


def test_tracking_server_stopped_mid_stage_keeps_outputs(project, tmp_path):
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    mlflow = str(Path(sys.executable).parent / "mlflow")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    server_args = [mlflow, "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
                   "--backend-store-uri", f"sqlite:///{tmp_path}/server.db", "--artifacts-destination", str(tmp_path / "artifacts")]
    server = start(server_args, tmp_path, env, tmp_path / "server.log")
    try:
        wait_http(f"{uri}/health", 180)
        args = ["experiment=smoke", f"tracking.uri={uri}"]
        for stage in ("data", "tokenize"):
            run_cmd([sys.executable, "-m", f"tasks.{stage}", *args], project)
        client = MlflowClient(tracking_uri=uri)
        pre = subprocess.Popen([sys.executable, "-m", "tasks.pretrain", *args, "pretrain.max_steps=400", "pretrain.log_every=2",
                                "pretrain.eval_every=0", "pretrain.ckpt_every=0"],
                               cwd=project, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 300
        while time.time() < deadline and pre.poll() is None:  # training, and its loss reached the server
            exp = client.get_experiment_by_name("instructflow")
            runs = client.search_runs([exp.experiment_id], "tags.`instructflow.stage` = 'pretrain'")
            if runs and client.get_metric_history(runs[0].info.run_id, "train/loss"):
                break
            time.sleep(0.5)
        assert pre.poll() is None, "pre-training ended before the server could be stopped"
        run_id = runs[0].info.run_id
        stop(server)  # the tracking server dies in the middle of pre-training
        out, err = pre.communicate(timeout=600)
    finally:
        stop(server)
    assert pre.returncode == 0, err[-3000:]
    warnings = [ln for ln in err.splitlines() if ln.startswith("warning: ")]
    assert len(warnings) == 1 and f"MLflow tracking at {uri} failed" in warnings[0] and run_id in warnings[0], err[-3000:]
    assert "Traceback" not in err
    # the stage's outputs are all there: the checkpoint, its metrics, the full number of steps
    assert (project / "models/pretrain/model.safetensors").is_file()
    assert json.loads((project / "metrics/pretrain.json").read_text())["step"] == 400
    # the store, back again, says which run is incomplete (and that the earlier stages are complete)
    server = start(server_args, tmp_path, env, tmp_path / "server2.log")
    try:
        wait_http(f"{uri}/health", 180)
        client = MlflowClient(tracking_uri=uri)
        exp = client.get_experiment_by_name("instructflow")
        state = {r.data.tags["instructflow.stage"]: r.data.tags.get("instructflow.tracking") for r in client.search_runs([exp.experiment_id])}
        assert state == {"data": "complete", "tokenize": "complete", "pretrain": "incomplete"}
    finally:
        stop(server)


def _latest_flow_run(api_env: dict | None = None):
    """The latest flow run and its task runs' names, from the Prefect API."""
    import asyncio

    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    async def read():
        async with get_client() as client:
            fr = (await client.read_flow_runs(sort="START_TIME_DESC", limit=1))[0]
            tasks = await client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[fr.id])))
            return fr, sorted(t.name for t in tasks)

    return asyncio.run(read())


def test_bad_input_through_the_flow_fails_the_run_with_the_stage_reason(project, tmp_path, prefect_harness):
    from flows.pipeline import StageFailed, instructflow

    corpus = bad_corpus(tmp_path)
    with pytest.raises(StageFailed, match=r"stage data failed: .*corpus\.jsonl: row 2 is not valid JSON"):
        instructflow(["experiment=smoke", "data=files", f"data.paths=[{corpus}]"])
    fr, tasks = _latest_flow_run()
    assert fr.state.is_failed()
    msg = fr.state.message
    assert "\n" not in msg and "Traceback" not in msg
    assert msg.endswith(f"StageFailed: stage data failed: {corpus}: row 2 is not valid JSON (Invalid control character at)"), msg
    assert tasks == ["configure", "data"]  # nothing downstream ran
    assert not (project / "data/tokenized").exists()
    # the parent MLflow run says FAILED; no stage after data has a run
    client = MlflowClient(tracking_uri=f"sqlite:///{Path('mlflow.db').resolve()}")  # absolute: MLflow caches a store by its URI string
    exp = client.get_experiment_by_name("instructflow")
    runs = client.search_runs([exp.experiment_id])
    assert {r.data.tags["instructflow.stage"]: r.info.status for r in runs} == {"pipeline": "FAILED", "data": "FAILED"}


def test_mlflow_ui_kind_headline_and_moved_workspace(tmp_path, monkeypatch):
    """(a) the experiment opens on training runs; (b) the parent run carries the claims' numbers;
    (c) a workspace moved with `mv` still reads its artifacts."""
    import mlflow

    from flows.pipeline import headline_metrics, numeric_leaves, read_stage_metrics, stage_graph, stages
    from tasks import tracking
    from tasks.config import compose

    ws = tmp_path / "ws"
    ws.mkdir()
    monkeypatch.chdir(ws)
    cfg = compose(["experiment=smoke"])
    parent = tracking.start_parent_run(cfg, "pipeline", ["experiment=smoke"])
    monkeypatch.setenv(tracking.PARENT_ENV, parent)
    Path("note.txt").write_text("kept after mv\n")
    with tracking.stage_run(cfg, "data", sections=["seed"]) as run:
        tracking.log_artifact("note.txt", "notes")
        tracking.log_metrics({"x": 1.0})
    child = run.info.run_id
    # (b) the headline numbers of the committed metrics/ (what `make pipeline` wrote), on the parent
    monkeypatch.chdir(ROOT)
    full = compose([])
    results = {s: numeric_leaves(read_stage_metrics(full, s)) for s in stages(stage_graph(ROOT))}
    headline = headline_metrics(results)
    monkeypatch.chdir(ws)
    ft = json.loads((ROOT / "metrics/finetune.json").read_text())
    assert headline["headline/gpt1.finetuned_minus_scratch"] == pytest.approx(sum(t["vs"]["scratch"]["diff"] for t in ft.values()) / len(ft))
    assert headline["headline/sft.oracle_score"] == json.loads((ROOT / "metrics/sft.json").read_text())["oracle_score"]["sft"]["mean"]
    assert {"headline/gpt2.zero_shot_above_chance", "headline/rm.oracle_acc", "headline/ppo_ptx.decisive_win_rate_vs_sft"} <= set(headline)
    assert tracking.finish_parent_run(parent, "FINISHED", metrics=headline)

    client = MlflowClient(tracking_uri=f"sqlite:///{Path('mlflow.db').resolve()}")  # absolute: MLflow caches a store by its URI string
    exp = client.get_experiment_by_name("instructflow")
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"  # (a)
    top = client.get_run(parent)
    assert top.data.metrics["headline/sft.oracle_score"] == headline["headline/sft.oracle_score"]  # (b)
    assert top.data.tags["instructflow.tracking"] == "complete" and top.info.status == "FINISHED"
    assert client.get_run(child).data.tags["instructflow.tracking"] == "complete"
    assert exp.artifact_location == f"mlruns/{exp.experiment_id}"  # (c) relative, resolved where the store is

    # (c) `mv` the workspace: MLflow finds the run's artifacts in their new place
    moved = tmp_path / "elsewhere" / "ws2"
    moved.parent.mkdir()
    monkeypatch.chdir(tmp_path)
    shutil.move(ws, moved)
    monkeypatch.chdir(moved)
    mlflow.set_tracking_uri(tracking.absolute_uri("sqlite:///mlflow.db"))
    client = MlflowClient(tracking_uri=tracking.absolute_uri("sqlite:///mlflow.db"))
    assert [a.path for a in client.list_artifacts(child, "notes")] == ["notes/note.txt"]
    got = client.download_artifacts(child, "notes/note.txt", str(tmp_path / "down"))
    assert Path(got).read_text() == "kept after mv\n"
    # and a new run in the moved workspace writes into it
    monkeypatch.delenv(tracking.PARENT_ENV)
    with tracking.stage_run(cfg, "tokenize", sections=["seed"]):
        tracking.log_artifact(moved / "mlflow.db", "db")
    assert list((moved / "mlruns").rglob("db/mlflow.db")) and not ws.exists()


def test_served_deployment_bad_input_fails_with_one_line_state(project, tmp_path):
    """`prefect deployment run` of the served deployment: a bad config value, a corrupt data file, a
    workspace already in use and a tracking server that is down each end the flow run Failed, its
    state message the one-line reason, with no stage run downstream of the fault."""
    import urllib.request

    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = dict(os.environ)
    env.update(PATH=f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}", PREFECT_HOME=str(tmp_path / "prefect-server"),
               PREFECT_API_URL=api, PREFECT_UI_API_URL=api, PREFECT_RUNNER_POLL_FREQUENCY="2")
    prefect = str(Path(sys.executable).parent / "prefect")

    def post(path: str, body: dict) -> list:
        req = urllib.request.Request(f"{api}{path}", json.dumps(body).encode(), {"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as r:
            return json.loads(r.read())

    def run_deployment(*overrides: str) -> tuple[dict, list[str]]:
        """Run it to its end; -> (the flow run's state, its task runs' names)."""
        proc = run_cmd([prefect, "deployment", "run", "instructflow/local", "-p", f"overrides={json.dumps(['experiment=smoke', *overrides])}",
                        "--watch", "--watch-timeout", "400"], project, env=env, check=False, timeout=460)
        import re

        assert proc.returncode != 0, proc.stdout[-2000:]
        found = re.search(r"UUID: ([0-9a-f-]{36})", proc.stdout)
        assert found, proc.stdout[-2000:] + proc.stderr[-2000:]
        run_id = found.group(1)
        fr = post("/flow_runs/filter", {"flow_runs": {"id": {"any_": [run_id]}}})[0]
        assert fr["state"]["type"] == "FAILED", proc.stdout[-2000:] + proc.stderr[-2000:]
        tasks = post("/task_runs/filter", {"flow_runs": {"id": {"any_": [fr["id"]]}}})
        return fr["state"], sorted(t["name"] for t in tasks)

    server, served = serve_local_deployment(project, env, port, tmp_path)
    try:
        state, tasks = run_deployment("pretrain.lr=fast")  # a bad config value
        assert state["type"] == "FAILED" and "\n" not in state["message"], state
        assert state["message"].endswith("ConfigError: pretrain.lr: Value 'fast' of type 'str' could not be converted to Float"), state
        assert tasks == [] and written(project) == []

        corpus = bad_corpus(tmp_path)  # a corrupt data file: the first stage fails, nothing after it runs
        # quoted: Prefect's CLI prints the parameters as rich markup, and `[/tmp/...]` reads as a closing tag
        state, tasks = run_deployment("data=files", f"data.paths=['{corpus}']")
        assert state["type"] == "FAILED" and "\n" not in state["message"], state
        assert state["message"].endswith(f"StageFailed: stage data failed: {corpus}: row 2 is not valid JSON (Invalid control character at)")
        assert tasks == ["configure", "data"] and not (project / "data/tokenized").exists()

        holder = hold_lock(project)  # the workspace is in use
        try:
            state, tasks = run_deployment()
        finally:
            holder.send_signal(signal.SIGKILL)
            holder.wait()
        assert state["type"] == "FAILED" and "\n" not in state["message"], state
        assert f"WorkspaceBusy: {project}: workspace in use by pid {holder.pid} (started " in state["message"] and tasks == [], state

        uri = f"http://127.0.0.1:{free_port()}"  # the tracking server is down
        state, tasks = run_deployment(f"tracking.uri={uri}")
        assert state["type"] == "FAILED" and "\n" not in state["message"], state
        assert f"TrackingUnavailable: tracking.uri {uri}: MLflow tracking server not reachable" in state["message"] and tasks == [], state
    finally:
        stop(served)
        stop(server)


def test_every_server_the_project_starts_binds_loopback_unless_told():
    """The servers a user starts through the project: the Prefect UI (`make serve`), the MLflow UI
    (`make mlflow-ui`) and the ranking page (`make rank`, and the flow when labeler=web) listen on
    127.0.0.1 by default; another address only when a setting or flag names it."""
    import re

    from tasks.config import compose

    recipes = [ln for ln in (ROOT / "Makefile").read_text().splitlines() if ln.startswith("\t")]
    servers = [ln for ln in recipes if re.search(r"server start|mlflow (ui|server)|flows\.ranking_page", ln)]
    assert len(servers) >= 3, servers
    for ln in servers:
        if "flows.ranking_page" in ln:
            assert "--host" not in ln, ln  # the page's own default, checked below
        else:
            assert "--host 127.0.0.1" in ln, ln
    assert compose([]).collect_rankings.web_host == "127.0.0.1"
    from flows import ranking_page

    src = Path(ranking_page.__file__).read_text()
    assert re.search(r'add_argument\("--host", default="127\.0\.0\.1"', src)
