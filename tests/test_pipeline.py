"""The orchestrated pipeline: Prefect runs the stages through DVC, MLflow records them.

Real Prefect (test harness), real MLflow (SQLite in the scratch project), real DVC (a temp
git repo): the three must agree on what ran.
"""

import sys

import pytest
from mlflow.tracking import MlflowClient

from conftest import run_cmd

pytestmark = pytest.mark.slow


def dvc(project, *args, check=True):
    return run_cmd([sys.executable, "-m", "dvc", *args], cwd=project, check=check)


def test_flow_runs_stages_tracks_and_agrees_with_dvc(project, prefect_harness):
    from flows.pipeline import instructflow, stages
    from tasks.config import compose

    results = instructflow(["experiment=smoke"])
    assert list(results) == stages(compose(["experiment=smoke"]))
    assert all(r["ran"] == 1.0 for r in results.values())
    assert results["pretrain"]["val_loss"] < results["pretrain"]["train_loss"] + 1.0

    client = MlflowClient(tracking_uri="sqlite:///mlflow.db")
    exp = client.get_experiment_by_name("instructflow")
    parents = client.search_runs([exp.experiment_id], "tags.`instructflow.stage` = 'pipeline'")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    parent = parents[0]
    children = client.search_runs([exp.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    by_stage = {c.data.tags["instructflow.stage"]: c for c in children}
    assert set(by_stage) >= {"data", "tokenize", "pretrain", "finetune", "finetune_report", "prompt_eval",
                             "sft", "candidates", "collect_rankings", "train_rm"}
    assert 0.0 <= results["sft"]["oracle_score.sft.mean"] <= 1.0 and results["candidates"]["prompts"] == 16
    assert results["train_rm"]["heldout.pairwise_acc"] >= 0.0
    # the reward model's run names the rankings it was trained on (an MLflow dataset input)
    assert by_stage["train_rm"].inputs.dataset_inputs
    # the final policy and the reward model are registered models that answer and score
    import mlflow.pyfunc
    import pandas as pd

    registered = {m.name for m in client.search_registered_models()}
    assert {"instructflow-ppo_ptx", "instructflow-reward-model"} <= registered
    policy = mlflow.pyfunc.load_model("models:/instructflow-ppo_ptx/1")
    assert isinstance(policy.predict(pd.DataFrame({"prompt": ["Describe the red ball in under 10 words."]}))[0], str)
    pre = by_stage["pretrain"]
    assert pre.data.params["pretrain.max_steps"] == "30" and "model.n_layer" in pre.data.params
    assert "final/val_loss" in pre.data.metrics
    assert len(client.get_metric_history(pre.info.run_id, "train/loss")) >= 5
    assert any(a.path == "checkpoint" for a in client.list_artifacts(pre.info.run_id))
    assert any(k.startswith("dvc.pretrain.") for k in parent.data.tags)  # lineage from dvc.lock

    # DVC recorded what Prefect ran: nothing is stale, and a repro runs nothing
    assert "up to date" in dvc(project, "status").stdout
    repro = dvc(project, "repro")
    assert "Running stage" not in repro.stdout

    # a second flow run: DVC skips every stage, MLflow still gets a (cached) child per stage
    again = instructflow(["experiment=smoke"])
    assert all(r["ran"] == 0.0 for r in again.values())
    parents = client.search_runs([exp.experiment_id], "tags.`instructflow.stage` = 'pipeline'", order_by=["start_time DESC"])
    children = client.search_runs([exp.experiment_id], f"tags.`mlflow.parentRunId` = '{parents[0].info.run_id}'")
    assert sorted(c.data.tags["dvc.stage"] for c in children) == sorted(again)
    assert all(c.data.tags.get("dvc.skipped") == "true" for c in children)

    # settings that cannot change a result (threads, progress) leave every stage up to date;
    # a fine-tuning hyper-parameter makes the finetune stages stale, and nothing upstream
    run_cmd([sys.executable, "-m", "tasks.config", "experiment=smoke", "finetune.threads=2", "finetune.progress=false"], cwd=project)
    assert "up to date" in dvc(project, "status").stdout
    run_cmd([sys.executable, "-m", "tasks.config", "experiment=smoke", "finetune.lr=0.001"], cwd=project)
    status = dvc(project, "status").stdout
    assert "finetune@sentiment:" in status and "pretrain:" not in status and "prompt_eval:" not in status

    # a pretrain param change makes pretrain (not its inputs) stale, and reruns it alone
    run_cmd([sys.executable, "-m", "tasks.config", "experiment=smoke", "pretrain.lr=0.002"], cwd=project)
    status = dvc(project, "status").stdout
    assert "pretrain:" in status and "tokenize:" not in status and "data:" not in status
    repro = dvc(project, "repro", "pretrain").stdout
    assert "Running stage 'pretrain'" in repro
    assert "Running stage 'tokenize'" not in repro and "Running stage 'data'" not in repro


def test_flow_bad_override_fails_fast_with_one_line(project):
    proc = run_cmd([sys.executable, "-m", "flows.pipeline", "experiment=smoke", "pretrain.lr=fast"], cwd=project, check=False)
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1 and "pretrain.lr" in proc.stderr
