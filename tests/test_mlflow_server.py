"""MLflow as a team uses it: stages log to a real `mlflow server` (SQL backend, its own artifact
root, on a free 127.0.0.1 port) when `tracking.uri` names it; nothing lands in the local store."""

import os
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from conftest import free_port, run_cmd, start, stop, wait_http

pytestmark = pytest.mark.slow


def test_stages_log_to_a_real_tracking_server(project, tmp_path):
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    mlflow = str(Path(sys.executable).parent / "mlflow")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    server = start([mlflow, "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
                    "--backend-store-uri", f"sqlite:///{tmp_path}/server.db", "--artifacts-destination", str(tmp_path / "artifacts")],
                   tmp_path, env, tmp_path / "server.log")
    try:
        wait_http(f"{uri}/health", 180)
        args = ["experiment=smoke", f"tracking.uri={uri}", "pretrain.max_steps=10"]
        for stage in ("data", "tokenize", "pretrain"):
            run_cmd([sys.executable, "-m", f"tasks.{stage}", *args], project)
        client = MlflowClient(tracking_uri=uri)
        exp = client.get_experiment_by_name("instructflow")
        assert exp.artifact_location.startswith("mlflow-artifacts:")  # the server's root, not a local folder
        runs = {r.data.tags["instructflow.stage"]: r for r in client.search_runs([exp.experiment_id])}
        assert set(runs) == {"data", "tokenize", "pretrain"}
        pre = runs["pretrain"]
        assert pre.data.params["pretrain.max_steps"] == "10" and "final/val_loss" in pre.data.metrics
        assert len(client.get_metric_history(pre.info.run_id, "train/loss")) >= 1
        local = client.download_artifacts(pre.info.run_id, "checkpoint", str(tmp_path / "down"))
        assert (Path(local) / "model.safetensors").is_file()
        assert any((tmp_path / "artifacts").rglob("model.safetensors"))  # stored under the server's root
        assert not (project / "mlflow.db").exists() and not (project / "mlruns").exists()
    finally:
        stop(server)
