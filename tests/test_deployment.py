"""The README's deployment paths on a Prefect server on 127.0.0.1: the served deployment
`instructflow/local` driving the smoke pipeline, then `prefect.yaml`'s `instructflow/pool`
deployed with `prefect deploy` to a process work pool and run by `prefect worker start`."""

import os
import sys
from pathlib import Path

import pytest

from conftest import free_port, run_cmd, serve_local_deployment, start, stop

pytestmark = pytest.mark.slow


def test_served_deployment_runs_smoke_pipeline(project, tmp_path):
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = dict(os.environ)
    env.update(
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}",
        PREFECT_HOME=str(tmp_path / "prefect-server"),
        PREFECT_API_URL=api,
        PREFECT_UI_API_URL=api,
        PREFECT_RUNNER_POLL_FREQUENCY="2",
    )
    prefect = str(Path(sys.executable).parent / "prefect")

    def run_smoke(deployment: str, log: Path) -> None:
        """`prefect deployment run <deployment> --watch` on the smoke experiment: it must complete."""
        proc = run_cmd([prefect, "deployment", "run", deployment, "-p", 'overrides=["experiment=smoke"]', "--watch", "--watch-timeout", "900"],
                       project, env=env, check=False, timeout=960)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:] + log.read_text()[-3000:]
        assert "Completed" in proc.stdout + proc.stderr

    server, served = serve_local_deployment(project, env, port, tmp_path)
    worker = None
    try:
        run_smoke("instructflow/local", tmp_path / "serve.log")
        assert (project / "models/pretrain/model.safetensors").is_file()
        stop(served)

        # the work-pool path: prefect.yaml, a process pool, a worker (DVC has every stage cached now)
        run_cmd([prefect, "work-pool", "create", "instructflow-process", "--type", "process"], project, env=env)
        run_cmd([prefect, "--no-prompt", "deploy", "--all"], project, env={**env, "PWD": str(project)})
        worker = start([prefect, "worker", "start", "--pool", "instructflow-process"], project, env, tmp_path / "worker.log")
        run_smoke("instructflow/pool", tmp_path / "worker.log")
    finally:
        for p in (served, worker):
            if p is not None:
                stop(p)
        stop(server)
