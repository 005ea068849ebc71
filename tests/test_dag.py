"""The flow's task graph is DVC's own stage graph of dvc.yaml: the real edges, nothing hand-kept."""

from conftest import ROOT
from flows.pipeline import stage_graph, stages


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
