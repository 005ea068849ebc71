"""The RLHF comparison over seeds: pooling, intervals and verdicts on hand-made evaluations, and
the flow's overrides (the evaluate stage on one seed's policies)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from flows.seeds import check_methods, evaluate_overrides, method_overrides, settings
from tasks import seeds
from tasks.common import InputError, write_jsonl
from tasks.config import ConfigError, compose


def rows(policy: str, greedy: list[float], sampled: list[float]) -> list[dict]:
    return [{"prompt_id": f"p{i}", "policy": policy, "response": "x y.", "oracle_score": g, "sampled_oracle_score": s}
            for i, (g, s) in enumerate(zip(greedy, sampled))]


def test_pool_and_verdicts_on_hand_numbers(tmp_path):
    cfg = compose([f"evaluate.samples_file={tmp_path}/root.jsonl", f"evaluate.metrics_file={tmp_path}/root.json",
                   f"seeds.metrics_dir={tmp_path}/seeds", "seeds.seeds=[7]", "seeds.methods=[ppo_ptx,ppo_gold]",
                   f"seeds.report_file={tmp_path}/r.json", f"seeds.table_file={tmp_path}/r.md"])
    sft_g, sft_s = [0.5, 0.5, 1.0, 0.5], [0.4, 0.5, 0.6, 0.5]
    write_jsonl(tmp_path / "root.jsonl", rows("sft", sft_g, sft_s) + rows("ppo_ptx", [1.0, 1.0, 1.0, 0.0], [0.6, 0.7, 0.8, 0.5])
                + rows("ppo_gold", [1.0, 1.0, 1.0, 1.0], [0.7, 0.7, 0.8, 0.7]))
    (tmp_path / "root.json").write_text(json.dumps({"sft": {"sampled_oracle_score": 0.5}, "oracle_best_of_16": {"oracle_score": 0.8}}))
    write_jsonl(tmp_path / "seeds" / "7" / "evaluate_samples.jsonl", rows("sft", sft_g, sft_s)
                + rows("ppo_ptx", [1.0, 1.0, 1.0, 1.0], [0.8, 0.7, 0.8, 0.7]) + rows("ppo_gold", [1.0, 1.0, 1.0, 1.0], [0.9, 0.9, 0.8, 0.9]))
    rep = seeds.run(cfg)
    assert rep["seeds"] == [cfg.seed, 7] and rep["prompts"] == 4 and rep["missing"] == []
    one = rep["per_seed"][str(cfg.seed)]["ppo_ptx"]
    assert (one["wins"], one["losses"]) == (2, 1) and one["decisive_win_rate"] == pytest.approx(2 / 3)
    assert one["sampled_diff"] == pytest.approx(0.15)
    p = rep["pooled"]["ppo_ptx"]
    d = [(0.7 - 0.4), (0.7 - 0.5), (0.8 - 0.6), (0.6 - 0.5)]  # per prompt: the mean over the two seeds minus SFT
    mean = sum(d) / 4
    sd = math.sqrt(sum((x - mean) ** 2 for x in d) / 3)
    assert p["sampled_diff"] == pytest.approx(mean) and p["sampled_diff_ci"] == pytest.approx(1.96 * sd / 2)
    assert (p["wins"], p["losses"]) == (5, 1)
    v = rep["verdicts"]
    assert v["sampled_gain"]["needed"] == pytest.approx(0.15) and v["sampled_gain"]["met"] is True
    assert v["greedy_wins"]["decisive_win_rate"] == pytest.approx(5 / 6)
    assert v["recovers_gold"]["gold_gain"] == pytest.approx(rep["pooled"]["ppo_gold"]["sampled_diff"])
    assert "ppo_ptx" in Path(tmp_path / "r.md").read_text() and json.loads((tmp_path / "r.json").read_text())["prompts"] == 4


def test_a_missing_seed_is_reported_and_other_prompts_refused(tmp_path):
    cfg = compose([f"evaluate.samples_file={tmp_path}/root.jsonl", f"evaluate.metrics_file={tmp_path}/none.json",
                   f"seeds.metrics_dir={tmp_path}/seeds", "seeds.seeds=[7]", "seeds.methods=[ppo_ptx]",
                   f"seeds.report_file={tmp_path}/r.json", f"seeds.table_file={tmp_path}/r.md"])
    with pytest.raises(InputError, match="the pipeline's evaluation is missing"):
        seeds.run(cfg)
    write_jsonl(tmp_path / "root.jsonl", rows("sft", [1, 0], [1, 0]) + rows("ppo_ptx", [1, 1], [1, 1]))
    rep = seeds.run(cfg)
    assert rep["missing"] and rep["pooled"]["ppo_ptx"]["seeds"] == [cfg.seed] and "sampled_gain" not in rep["verdicts"]
    write_jsonl(tmp_path / "seeds" / "7" / "evaluate_samples.jsonl", rows("sft", [1], [1]) + rows("ppo_ptx", [1], [1]))
    with pytest.raises(InputError, match=r"evaluate_samples\.jsonl: policy 'sft' answered other prompts"):
        seeds.run(cfg)


def test_flow_overrides_write_under_the_seed_and_evaluate_only_its_policies():
    cfg = compose(["seeds.methods=[ppo_ptx,dpo]"])
    assert "ppo.seed=5" in method_overrides(cfg, "ppo_ptx", 5) and "ppo.models_dir=models/seeds/5" in method_overrides(cfg, "ppo_ptx", 5)
    assert "dpo.out_dir=models/seeds/5/dpo" in method_overrides(cfg, "dpo", 5)
    ev = compose(evaluate_overrides(cfg, 5))
    assert {k: v for k, v in ev.evaluate.policies.items() if v} == {"sft": "models/sft", "ppo_ptx": "models/seeds/5/ppo_ptx",
                                                                     "dpo": "models/seeds/5/dpo"}
    assert ev.evaluate.seed == 5 and list(ev.evaluate.best_of_n) == [] and ev.evaluate.samples_file.startswith("metrics/seeds/5/")
    with pytest.raises(ConfigError, match="seeds.methods: 'nope' is neither dpo nor one of ppo.variants"):
        check_methods(compose(["seeds.methods=[nope]"]))
    with pytest.raises(ConfigError, match="must be distinct and differ from the pipeline's seed"):
        check_methods(compose(["seeds.seeds=[1337]"]))


def test_a_run_is_keyed_by_its_own_variant_only():
    """Changing one PPO variant's overrides reruns that variant alone; DPO reads no PPO setting."""
    base, gold = [], ["ppo.variants.ppo_gold.beta=0.3"]
    assert settings(base, "ppo_gold") != settings(gold, "ppo_gold")
    assert settings(gold, "ppo_gold")["ppo"]["beta"] == 0.3 and "variants" not in settings(gold, "ppo_gold")["ppo"]
    assert settings(base, "ppo_ptx") == settings(gold, "ppo_ptx") and settings(base, "dpo") == settings(gold, "dpo")
    assert settings(base, "ppo_ptx")["ppo"]["ptx_coef"] == compose([]).ppo.variants.ppo_ptx.ptx_coef
    assert "ppo" not in settings(base, "dpo") and settings(["ppo.lr=1e-5"], "ppo_ptx") != settings(base, "ppo_ptx")


@pytest.mark.slow
def test_seeds_flow_trains_each_method_per_seed_and_pools(project, prefect_harness):
    """Real DVC, Prefect and MLflow on the smoke configuration: refused before the pipeline made SFT
    and the RM, then each (method, seed) trained once, evaluated and pooled; unchanged: not rerun."""
    import subprocess
    import sys

    from conftest import run_cmd
    from flows.pipeline import StageFailed
    from flows.seeds import seeds as seeds_flow

    small = ["experiment=smoke", "seeds.seeds=[7]", "seeds.methods=[ppo_ptx,dpo]"]
    run_cmd([sys.executable, "-m", "tasks.config", "experiment=smoke"], cwd=project)
    with pytest.raises(StageFailed, match="not up to date: run `make pipeline`"):
        seeds_flow(small)
    run_cmd([sys.executable, "-m", "dvc", "repro", "evaluate"], cwd=project)
    result = seeds_flow(small)
    assert sorted(result["ran"]) == ["dpo@7", "ppo_ptx@7"]
    root = compose(small).seed
    rep = json.loads((project / "metrics/rlhf_seeds.json").read_text())
    assert rep["seeds"] == [root, 7] and rep["pooled"]["ppo_ptx"]["seeds"] == [root, 7] and rep["missing"] == []
    assert (project / "models/seeds/7/ppo_ptx/model.safetensors").is_file() and (project / "models/seeds/7/dpo").is_dir()
    ev = json.loads((project / "metrics/seeds/7/evaluate.json").read_text())
    assert set(ev) >= {"sft", "ppo_ptx", "dpo"} and "ppo" not in ev and "best_of_1" not in ev
    assert "ppo_ptx" in (project / "metrics/rlhf_seeds.md").read_text()
    assert seeds_flow(small)["ran"] == []  # settings unchanged: nothing retrained
    status = subprocess.run([sys.executable, "-m", "dvc", "status", "evaluate", "--with-deps"], cwd=project,
                            capture_output=True, text=True)
    assert status.returncode == 0 and "changed" not in status.stdout  # the flow wrote nothing DVC tracks
