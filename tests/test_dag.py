"""The flow's task graph is DVC's own stage graph of dvc.yaml: the real edges, nothing hand-kept."""

import os

from conftest import ROOT
from flows.pipeline import Scheduler, critical_path, stage_graph, stages


def test_graph_is_dvcs_and_the_order_is_topological():
    graph = stage_graph(ROOT)
    assert graph["data"] == [] and graph["tokenize"] == ["data"]
    # the fine-tuning tasks and prompt evaluation wait for pre-training, not for each other
    for t in ("sentiment", "entailment", "paraphrase", "story_cloze"):
        assert "pretrain" in graph[f"finetune@{t}"] and not any(u.startswith("finetune@") for u in graph[f"finetune@{t}"])
    assert "pretrain" in graph["prompt_eval"] and not any(u.startswith("finetune") for u in graph["prompt_eval"])
    # the InstructGPT branch: PPO variants and DPO side by side, evaluate after all of them
    for v in ("ppo@ppo", "ppo@ppo_ptx", "ppo@ppo_gold", "dpo"):
        assert {"sft", "train_rm"} <= set(graph[v]) and not {"ppo@ppo", "dpo"} & set(graph[v]) - {v}
    assert {"sft", "ppo@ppo", "ppo@ppo_ptx", "dpo", "train_rm", "pretrain"} <= set(graph["evaluate"])
    order = stages(graph)
    assert sorted(order) == sorted(graph) and order[0] == "data" and order[-1] == "evaluate"
    assert all(order.index(u) < order.index(s) for s, ups in graph.items() for u in ups)


def test_a_free_slot_goes_to_the_longest_chain_first():
    """Critical path = stages still behind a stage; ready stages get free slots in that order
    (ties: DAG order), so SFT is not queued behind the fine-tuning tasks."""
    graph = stage_graph(ROOT)
    depth = critical_path(graph)
    assert depth["evaluate"] == 1 and depth["finetune_report"] == 1 and depth["finetune@story_cloze"] == 2
    assert depth["sft"] > depth["prompt_eval"] and depth["sft"] > depth["finetune@sentiment"]
    assert depth["data"] == max(depth.values())

    plan = Scheduler(graph, 2)
    assert plan.start() == ["data"] and plan.start() == []  # tokenize waits for data, not for a slot
    for stage in ("data", "tokenize"):
        plan.finish(stage, True)
        plan.start()
    plan.finish("pretrain", True)
    ready = plan.ready()
    assert ready[0] == "sft" and ready.index("sft") < ready.index("prompt_eval")
    assert plan.start() == ready[:2] and plan.running == set(ready[:2])  # two slots, two stages
    assert plan.start() == [] and plan.ready() == ready[2:]  # the rest wait, none is running


def test_gpu_stages_one_at_a_time_and_a_failure_stops_only_its_branch():
    graph = {"sft": [], "rm": ["sft"], "ppo": ["sft", "rm"], "ft@a": [], "ft@b": [], "report": ["ft@a", "ft@b"]}
    plan = Scheduler(graph, 3, gpu_stages=["sft", "ft"])
    first = plan.start()
    assert first[0] == "sft" and "ft@a" not in first and "ft@b" not in first  # one GPU stage at a time
    plan.finish("sft", False)
    assert plan.start() == ["ft@a"]  # the GPU is free again; nothing downstream of sft starts
    plan.finish("ft@a", True)
    assert plan.start() == ["ft@b"]
    plan.finish("ft@b", True)
    assert plan.start() == ["report"]
    plan.finish("report", True)
    assert plan.start() == [] and not plan.running and plan.never_ran() == ["rm", "ppo"]


def test_concurrency_zero_means_the_cpu_count():
    assert Scheduler({"a": []}, 0).slots == (os.cpu_count() or 1)


def test_profile_bounds_a_run_by_its_longest_chain_and_its_core_time():
    """flows.pipeline.profile on a hand run: a → (b, c) → d, one second apart, 2 cores."""
    from flows.pipeline import profile

    graph = {"a": [], "b": ["a"], "c": ["a"], "d": ["b", "c"]}
    runs = {"a": {"start": 100.0, "end": 110.0, "cpu_s": 20.0, "ran": True},
            "b": {"start": 110.0, "end": 140.0, "cpu_s": 30.0, "ran": True},
            "c": {"start": 110.0, "end": 115.0, "cpu_s": 5.0, "ran": True},
            "d": {"start": 140.0, "end": 150.0, "cpu_s": 10.0, "ran": True}}
    p = profile(graph, runs, 99.0, 151.0, 2)
    assert p["critical_path"] == ["a", "b", "d"] and p["critical_path_s"] == 50.0
    assert p["cpu_s"] == 65.0 and p["lower_bound_s"] == 50.0 and p["wall_s"] == 52.0
    assert p["stages"]["b"]["start_s"] == 11.0 and p["stages"]["b"]["cpu_share"] == 30 / 65
    assert profile(graph, runs, 99.0, 151.0, 1)["lower_bound_s"] == 65.0  # one core: the core time binds
