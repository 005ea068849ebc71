"""A pipeline killed in the middle of a stage, then the same command again (real Prefect, DVC, MLflow).

The flow and every process under it (DVC, the stage) get SIGKILL while pre-training, SFT, the
reward model and PPO are half done, one after the other; each rerun of the same command continues
the killed stage from its last checkpoint by itself (resume=auto), nothing left behind blocks it,
and the last run finishes with `dvc status` clean and the weights of an uninterrupted run.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import run_cmd

pytestmark = pytest.mark.slow

# the smoke pipeline with the four stages long enough to be caught half done
ARGS = ["experiment=smoke", "pretrain.max_steps=200", "pretrain.ckpt_every=10", "pretrain.eval_every=100",
        "sft.epochs=12", "sft.ckpt_every=4", "train_rm.epochs=6", "train_rm.ckpt_every=2",
        "ppo.updates=16", "ppo.ckpt_every=1"]
# the stage, the unfinished run it leaves (tasks/resume.py), the output compared with an uninterrupted run
KILLS = [("pretrain", ".resume/models/pretrain", "models/pretrain/model.safetensors"),
         ("sft", ".resume/models/sft", "models/sft/model.safetensors"),
         ("train_rm", ".resume/models/rm", "models/rm/heads.safetensors"),
         ("ppo@ppo_ptx", ".resume/models/ppo_ptx", "models/ppo_ptx/model.safetensors")]


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def run_until(project: Path, unfinished: Path, log: Path, timeout: float = 600) -> None:
    """Start the pipeline in its own session; SIGKILL the whole session once `unfinished` holds a checkpoint."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "flows.pipeline", *ARGS], cwd=project, env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.time() + timeout
        try:
            while not (unfinished / "trainer.pt").is_file():
                assert proc.poll() is None, f"the pipeline ended before {unfinished} held a checkpoint:\n{log.read_text()[-3000:]}"
                assert time.time() < deadline, f"no checkpoint in {unfinished} after {timeout} s"
                time.sleep(0.05)
        finally:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_killed_mid_stage_then_run_again_continues_and_ends_clean(project):
    logs = []
    for i, (stage, unfinished, _) in enumerate(KILLS):
        log = project / f"run{i}.log"
        run_until(project, project / unfinished, log)
        logs.append(log.read_text())
        if i:  # this run continued the stage the previous run was killed in
            prev_stage, prev_unfinished, _ = KILLS[i - 1]
            assert f"resuming the unfinished run in {prev_unfinished}" in logs[-1], logs[-1][-3000:]
    final = run_cmd([sys.executable, "-m", "flows.pipeline", *ARGS], cwd=project, timeout=900)
    said = final.stdout + final.stderr
    assert f"resuming the unfinished run in {KILLS[-1][1]}" in said, said[-3000:]
    assert "starting fresh" not in "".join(logs) + said  # nothing changed between the runs: every killed stage continued
    status = run_cmd([sys.executable, "-m", "dvc", "status"], cwd=project).stdout
    assert "Data and pipelines are up to date" in status, status
    assert not (project / ".resume").exists()  # every unfinished run finished
    left = [p.name for p in (project / "models").glob(".*") if ".tmp-" in p.name or ".old-" in p.name]
    assert left == []  # no temp folder of a killed save left beside the outputs

    # DVC rewrites dvc.lock and its rwlock in place: a kill in the middle leaves them cut short.
    # The next run sets the broken dvc.lock aside and DVC's run cache restores every stage.
    lock = project / "dvc.lock"
    lock.write_text(lock.read_text()[:100])  # cut inside the first stage: not a lock file DVC can read
    (project / ".dvc/tmp/rwlock").write_text('{"read": {"dvc.yaml')
    again = run_cmd([sys.executable, "-m", "flows.pipeline", *ARGS], cwd=project, timeout=900)
    said = again.stdout + again.stderr
    assert "workspace: dvc.lock was cut short by a killed run" in said and "rwlock was cut short" in said, said[-3000:]
    assert "resuming" not in said and "Running stage 'pretrain'" not in said  # restored, not trained again
    status = run_cmd([sys.executable, "-m", "dvc", "status"], cwd=project).stdout
    assert "Data and pipelines are up to date" in status, status

    # the same stages run again from scratch, never stopped: the same weights
    for stage, _, output in KILLS:
        resumed = sha(project / output)
        run_cmd([sys.executable, "-m", "dvc", "repro", "--force", "--single-item", stage], cwd=project, timeout=600)
        assert sha(project / output) == resumed, f"{stage}: resumed weights differ from an uninterrupted run"
