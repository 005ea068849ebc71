"""The orchestrated pipeline: Prefect runs the stages through DVC, MLflow records them.

Real Prefect (test harness), real MLflow (SQLite in the scratch project), real DVC (a temp
git repo): the three must agree on what ran.
"""

import json
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from conftest import run_cmd
from tasks.config import compose

pytestmark = pytest.mark.slow


def dvc(project, *args, check=True):
    return run_cmd([sys.executable, "-m", "dvc", *args], cwd=project, check=check)


def test_flow_runs_stages_tracks_and_agrees_with_dvc(project, prefect_harness):
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    from flows.pipeline import instructflow, stage_graph, stages

    # three stages at once (DVC's lock phases must queue, not fail), fewer than the six that are
    # ready after pre-training: the rest wait in the flow, not as Running task runs
    results = instructflow(["experiment=smoke", "pipeline.concurrency=3"])
    graph = stage_graph(project)
    assert list(results) == stages(graph)
    assert all(r["ran"] == 1.0 for r in results.values())
    # the stages ran as a DAG: each started after its upstream stages ended, and independent
    # ones overlapped (the four fine-tuning tasks and prompt evaluation wait only for pretrain)
    import asyncio

    async def task_runs():
        async with get_client() as client:
            flow_runs = await client.read_flow_runs(sort="START_TIME_DESC", limit=1)
            return await client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_runs[0].id])))

    runs = {t.name: t for t in asyncio.run(task_runs()) if t.name in graph}
    spans = {name: (t.start_time, t.end_time) for name, t in runs.items()}
    assert set(spans) == set(graph)
    # the edges the Prefect UI draws: each task run's wait_for inputs are exactly its upstream stages
    names = {t.id: name for name, t in runs.items()}
    for stage, ups in graph.items():
        assert {names.get(r.id) for r in runs[stage].task_inputs.get("wait_for", [])} == set(ups), stage
    for stage, ups in graph.items():
        assert all(spans[u][1] <= spans[stage][0] for u in ups), stage
    # what the UI's timeline shows is what ran: never more than three task runs Running at once
    starts = sorted(a for a, _ in spans.values())
    assert max(sum(a <= t < b for a, b in spans.values()) for t in starts) <= 3
    late = ["finetune@sentiment", "finetune@entailment", "finetune@paraphrase", "finetune@story_cloze", "prompt_eval"]
    assert any(spans[a][0] < spans[b][1] and spans[b][0] < spans[a][1] for a in late for b in late if a != b)
    assert results["pretrain"]["val_loss"] < results["pretrain"]["train_loss"] + 1.0
    # the profile of a run of every stage: each stage's wall and CPU time as Prefect saw them run
    prof = json.loads((project / "metrics/pipeline_profile.json").read_text())
    assert set(prof["stages"]) == set(graph) and all(s["ran"] and s["cpu_s"] > 0 for s in prof["stages"].values())
    for name, (a, b) in spans.items():
        assert abs(prof["stages"][name]["wall_s"] - (b - a).total_seconds()) < 3.0, name
    assert prof["critical_path"][0] == "data" and prof["critical_path"][-1] in graph
    assert prof["lower_bound_s"] <= prof["wall_s"] and 0.999 < sum(s["cpu_share"] for s in prof["stages"].values()) < 1.001

    client = MlflowClient(tracking_uri=f"sqlite:///{Path('mlflow.db').resolve()}")  # absolute: MLflow caches a store by its URI string
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
    assert parent.data.params["pretrain.max_steps"] == "30" and parent.data.params["ppo.beta"] == str(compose(["experiment=smoke"]).ppo.beta)  # the parent has them too
    assert "final/val_loss" in pre.data.metrics
    assert len(client.get_metric_history(pre.info.run_id, "train/loss")) >= 5
    assert any(a.path == "checkpoint" for a in client.list_artifacts(pre.info.run_id))
    logged = {m.name for m in client.search_logged_models(experiment_ids=[exp.experiment_id])}
    assert {"pretrain", "sft", "rm", "ppo_ptx", "dpo"} <= logged  # checkpoints as MLflow logged models
    assert any(k.startswith("dvc.pretrain.") for k in parent.data.tags)  # lineage from dvc.lock
    # what a person finds in the MLflow UI: training runs (not GenAI traces), the claims' numbers on the
    # parent run beside the children's, every run's logging complete
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    assert parent.data.metrics["headline/pretrain.val_loss"] == results["pretrain"]["val_loss"]
    assert {"headline/sft.oracle_score", "headline/rm.heldout_pairwise_acc", "headline/gpt1.finetuned_minus_scratch"} <= set(parent.data.metrics)
    assert {r.data.tags.get("instructflow.tracking") for r in [parent, *children]} == {"complete"}

    # DVC recorded what Prefect ran: nothing is stale, and a repro runs nothing
    assert "up to date" in dvc(project, "status").stdout
    repro = dvc(project, "repro")
    assert "Running stage" not in repro.stdout

    # a stage run alone gives bit-identical numbers to the same stage run beside others
    # (thread counts come from each stage's config, never from what runs at once)
    def numbers(path: str) -> dict:
        return {k: v for k, v in json.loads(Path(path).read_text()).items() if "second" not in k and "time" not in k}

    parallel = {p: numbers(p) for p in ("metrics/finetune/sentiment.json", "metrics/finetune/paraphrase.json")}
    dvc(project, "repro", "--single-item", "-f", "finetune@sentiment")
    dvc(project, "repro", "--single-item", "-f", "finetune@paraphrase")
    assert {p: numbers(p) for p in parallel} == parallel

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

    # DVC experiments: `dvc exp run -S` composes conf/ with Hydra itself and gets the params ours
    # gives (nothing else turns stale); two experiments compare with `dvc metrics/plots diff`
    run_cmd([sys.executable, "-m", "tasks.config", "experiment=smoke"], cwd=project)
    dvc(project, "repro", "pretrain")
    run_cmd(["git", "add", "-A"], project)
    run_cmd(["git", "commit", "-qm", "smoke results"], project)
    base = dvc(project, "exp", "run", "-n", "base", "-S", "experiment=smoke").stdout
    assert "Running stage" not in base, base
    fewer = dvc(project, "exp", "run", "-n", "fewer-items", "-S", "experiment=smoke", "-S", "prompt_eval.max_items=10").stdout
    assert "Running stage 'prompt_eval'" in fewer and "Running stage 'pretrain'" not in fewer, fewer
    show = dvc(project, "exp", "show", "--csv").stdout
    assert "base" in show and "fewer-items" in show
    diff = dvc(project, "metrics", "diff", "base", "fewer-items", "--json").stdout
    assert "metrics/prompt_eval.json" in json.loads(diff)
    dvc(project, "plots", "diff", "base", "fewer-items", "-o", "plots_diff")
    assert (project / "plots_diff/index.html").is_file()


def test_flow_bad_override_fails_fast_with_one_line(project):
    proc = run_cmd([sys.executable, "-m", "flows.pipeline", "experiment=smoke", "pretrain.lr=fast"], cwd=project, check=False)
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1 and "pretrain.lr" in proc.stderr
