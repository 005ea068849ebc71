"""The flow's task graph is DVC's own stage graph of dvc.yaml: the real edges, nothing hand-kept."""

import threading
import time

from conftest import ROOT
from flows.pipeline import Slots, critical_path, stage_graph, stages


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
    """Critical path = stages still behind a stage; with one slot taken, waiting stages get it in
    that order (ties: first come), so SFT is not queued behind the fine-tuning tasks."""
    depth = critical_path(stage_graph(ROOT))
    assert depth["evaluate"] == 1 and depth["finetune_report"] == 1 and depth["finetune@story_cloze"] == 2
    assert depth["sft"] > depth["prompt_eval"] and depth["sft"] > depth["finetune@sentiment"]
    assert depth["data"] == max(depth.values())

    slots = Slots(1, [], "cpu", priority={"finetune@a": 2, "finetune@b": 2, "sft": 6, "prompt_eval": 1})
    got = []

    def take(stage):
        with slots.hold(stage) as slot:
            got.append(stage)
            slot["ok"] = True

    slots._acquire("pretrain")  # the one slot is busy
    threads = []
    for stage in ("finetune@a", "prompt_eval", "finetune@b", "sft"):
        threads.append(threading.Thread(target=take, args=(stage,)))
        threads[-1].start()
        while len(slots.waiting) < len(threads):  # each is queued before the next arrives
            time.sleep(0.01)
    slots._release("pretrain", True)
    for t in threads:
        t.join(10)
    assert got == ["sft", "finetune@a", "finetune@b", "prompt_eval"] and slots.free == 1


def test_a_released_slot_waits_for_the_stage_it_made_ready():
    """candidates -> collect_rankings: when candidates ends, its slot is kept for collect_rankings
    (which arrives a moment later, after Prefect resolves its inputs), not handed to a fine-tuning
    stage already queued; a failed stage keeps nothing."""
    graph = {"sft": [], "candidates": ["sft"], "collect_rankings": ["candidates"], "finetune@a": []}
    for ok, first in ((True, "collect_rankings"), (False, "finetune@a")):
        slots = Slots(1, [], "cpu", graph, priority={"collect_rankings": 4, "finetune@a": 2})
        slots.done.add("sft")
        got = []

        def take(stage):
            with slots.hold(stage) as slot:
                got.append(stage)
                slot["ok"] = True

        slots._acquire("candidates")
        ft = threading.Thread(target=take, args=("finetune@a",))
        ft.start()
        while not slots.waiting:
            time.sleep(0.01)
        slots._release("candidates", ok)
        time.sleep(0.2)  # the fine-tuning stage would have taken the slot by now
        nxt = threading.Thread(target=take, args=("collect_rankings",))
        nxt.start()
        for t in (ft, nxt):
            t.join(10)
        assert got[0] == first and slots.free == 1 and not slots.reserved
