"""The scaling experiment: several sizes pre-trained on one corpus, each scored by prompt_eval,
one report and plot. Real Prefect (test harness), real DVC (the corpus), real MLflow."""

import json
import sys

import pytest
from mlflow.tracking import MlflowClient

from conftest import run_cmd

pytestmark = pytest.mark.slow

SIZES = "scaling.sizes=[{name:a,n_layer:1,n_head:1,n_embd:16},{name:b,n_layer:2,n_head:2,n_embd:32}]"
SMALL = ["experiment=smoke", SIZES, "scaling.max_steps=6", "prompt_eval.max_items=6",
         "prompt_eval.select=[sentiment,antonym]", "prompt_eval.shots=[0,2]"]


def test_scaling_flow_trains_each_size_and_reports(project, prefect_harness):
    from flows.scaling import scaling

    result = scaling(SMALL)
    assert sorted(result["ran"]) == ["a", "b"]
    sizes = {}
    for name in ("a", "b"):
        pre = json.loads((project / f"metrics/scaling/{name}/pretrain.json").read_text())
        pe = json.loads((project / f"metrics/scaling/{name}/prompt_eval.json").read_text())
        assert pre["step"] == 6
        (by_task,) = pe.values()
        assert set(by_task) == {"sentiment", "antonym"} and set(by_task["sentiment"]) == {"k0", "k2"}
        assert "gain" in by_task["sentiment"]["k2"]
        sizes[name] = result[f"{name}/non_embedding"]
    # non-embedding parameters: 12 d^2 per layer plus biases and norms
    assert 12 * 16**2 <= sizes["a"] < 12 * 16**2 * 1.3 and 2 * 12 * 32**2 <= sizes["b"] < 2 * 12 * 32**2 * 1.3
    report = (project / "docs/scaling.md").read_text()
    assert "| a | 1 | 16 |" in report and "| b | 2 | 32 |" in report and "gain k=2" in report
    assert (project / "docs/scaling.png").stat().st_size > 5000
    # the corpus came through DVC, unchanged by the experiment
    status = run_cmd([sys.executable, "-m", "dvc", "status", "tokenize"], cwd=project)
    assert "changed" not in status.stdout

    client = MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")  # absolute: MLflow caches stores by URI
    exp = client.get_experiment_by_name("instructflow")
    (parent,) = client.search_runs([exp.experiment_id], "tags.`instructflow.stage` = 'scaling'")
    assert parent.info.status == "FINISHED"
    children = client.search_runs([exp.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    stages = sorted(r.data.tags["instructflow.stage"] for r in children)  # the corpus, then each size's two stages
    assert stages == ["data", "pretrain", "pretrain", "prompt_eval", "prompt_eval", "tokenize"]

    # unchanged settings: nothing retrained; one size changed: only it
    again = scaling(SMALL)
    assert again["ran"] == [] and again["a/val_loss"] == result["a/val_loss"]
    changed = [o.replace("n_embd:32", "n_embd:48").replace("n_head:2", "n_head:3") for o in SMALL]
    assert scaling(changed)["ran"] == ["b"]


def test_scaling_bad_sizes_one_line(project):
    r = run_cmd([sys.executable, "-m", "flows.scaling", "experiment=smoke",
                 "scaling.sizes=[{name:a,n_layer:1,n_head:3,n_embd:16},{name:b}]"], cwd=project, check=False)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == ["error: scaling.sizes.a: n_embd=16 must be a multiple of n_head=3, n_layer >= 1"]
