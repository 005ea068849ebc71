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
        assert result[f"{name}/icl_score"] == pre["icl_score"] and pre["icl_windows"] > 0  # measured by each size's pretrain
        assert (project / f"metrics/scaling/{name}/pretrain_position_loss.csv").is_file()
        assert result[f"{name}/copy_score"] < 5 and 0 <= result[f"{name}/copy_accuracy"] <= 1  # the copy probe ran on the checkpoint
        sizes[name] = result[f"{name}/non_embedding"]
    # non-embedding parameters: 12 d^2 per layer plus biases and norms
    assert 12 * 16**2 <= sizes["a"] < 12 * 16**2 * 1.3 and 2 * 12 * 32**2 <= sizes["b"] < 2 * 12 * 32**2 * 1.3
    report = (project / "docs/scaling.md").read_text()
    assert "| a | 1 | 16 |" in report and "| b | 2 | 32 |" in report and "gain k=2" in report
    assert "| val loss | ICL score | ICL score, long documents | copy score | copy accuracy |" in report
    assert "31 tokens each" in report  # the copy probe's 50 tokens cut to the smoke window: (64 - 1) // 2
    assert "| val loss | ICL score | ICL score, long documents |" in report and "loss at positions 48–63 − 6–12" in report  # icl 150-200 vs 20-40 scaled to 64 tokens
    assert not (project / "metrics/pretrain_position_loss.csv").exists()  # each size writes its own
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


def test_scaling_table_has_the_icl_score_and_the_goal_reads_it(tmp_path):
    """The table tasks.scaling writes carries each size's ICL score; report.scaling_goal asks the
    few-shot gain to rise and the ICL score to fall with every larger size, both."""
    from tasks.report import scaling_goal
    from tasks.scaling import markdown

    def records(gains, scores):
        return [{"name": f"s{i}", "n_layer": i + 1, "n_embd": 16, "params": 10**6 * (i + 1), "non_embedding": 10**6 * i + 10**5,
                 "val_loss": 2.0, "icl_score": s, "icl_score_long": None,
                 "tasks": {"t": {"k0": {"acc": 0.5}, "k2": {"acc": 0.5 + g, "gain": g, "gain_ci95": 0.1}}}}
                for i, (g, s) in enumerate(zip(gains, scores))]

    doc = tmp_path / "scaling.md"
    doc.write_text(markdown(records([0.01, 0.02, 0.05], [-0.1, -0.2, -0.3]), None))
    assert "| s0 | 1 | 16 | 0.10M | 1.00M | 2.000 | -0.100 | – | – | – |" in doc.read_text()  # no copy probe in these records
    both = scaling_goal(doc)
    assert both.ok is True and both.goal.endswith("the ICL score (late − early loss) falls with every larger size")
    assert both.measured.endswith("; ICL score -0.100 / -0.200 / -0.300 (gain rises: yes; ICL score falls: yes)")
    doc.write_text(markdown(records([0.01, 0.02, 0.05], [-0.1, -0.3, -0.2]), None))
    assert scaling_goal(doc).ok is False and scaling_goal(doc).measured.endswith("(gain rises: yes; ICL score falls: no)")
    doc.write_text(markdown(records([0.05, 0.02, 0.01], [-0.1, -0.2, -0.3]), None))
    assert scaling_goal(doc).ok is False
    doc.write_text(markdown(records([0.01, 0.02, 0.05], [None, -0.2, -0.3]), None))  # a size without the score: the gain alone
    assert scaling_goal(doc).ok is True and "ICL" not in scaling_goal(doc).measured
