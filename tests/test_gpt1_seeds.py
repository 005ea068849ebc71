"""GPT-1's fine-tuning verdicts over pre-training seeds: pooling, intervals and verdicts on hand-made
items files, the flow's overrides, the report's use of a current record, and the flow itself on
the smoke configuration (real DVC, Prefect and MLflow)."""

from __future__ import annotations

import json
import math

import pytest

from flows.gpt1_seeds import check, finetune_overrides, pretrain_overrides
from tasks import gpt1_seeds
from tasks.common import InputError
from tasks.config import ConfigError, compose
from tasks.report import finetune_goals, gpt1_seeds_section, headline, verdicts_gpt1


def items(path, **correct):
    path.parent.mkdir(parents=True, exist_ok=True)
    n = len(next(iter(correct.values())))
    names = {"pretrain_lm05": "pretrain lm0.5", "scratch_lm05": "scratch lm0.5", "baseline": "baseline", "zero_shot": "zero-shot"}
    path.write_text(json.dumps({"n": n, "correct": {names[k]: v for k, v in correct.items()}}))


def settings(tmp_path):
    m = tmp_path / "metrics"
    return m, compose([f"finetune.metrics_dir={m}/finetune", "finetune.tasks=[entailment]", f"gpt1_seeds.metrics_dir={m}/gpt1_seeds",
                       "gpt1_seeds.seeds=[7]", f"gpt1_seeds.report_file={m}/gpt1_seeds.json", f"gpt1_seeds.table_file={m}/gpt1_seeds.md",
                       f"pretrain.metrics_file={m}/pretrain.json"])


def test_pool_and_verdicts_on_hand_items(tmp_path):
    m, cfg = settings(tmp_path)
    with pytest.raises(InputError, match=r"entailment\.items\.json: the pipeline's fine-tuning of entailment is missing"):
        gpt1_seeds.run(cfg)
    # root seed: fine-tuned right on 3 of 4 rows ("-": a row the zero-shot bar could not score)
    items(m / "finetune" / "entailment.items.json", pretrain_lm05="1101", scratch_lm05="1000", baseline="0100", zero_shot="100-")
    rep = gpt1_seeds.run(cfg)
    assert rep["missing"] == [str(m / "gpt1_seeds" / "7" / "finetune" / "entailment.items.json")]
    assert rep["tasks"]["entailment"]["seeds"] == [cfg.seed]
    items(m / "gpt1_seeds" / "7" / "finetune" / "entailment.items.json", pretrain_lm05="1111", scratch_lm05="0100", baseline="0100",
          zero_shot="0011")
    rep = gpt1_seeds.run(cfg)
    t = rep["tasks"]["entailment"]
    assert rep["seeds"] == [cfg.seed, 7] and t["seeds"] == [cfg.seed, 7] and rep["missing"] == []
    p = t["pooled"]["scratch"]
    d = [(1 + 1) / 2 - (1 + 0) / 2, (1 + 1) / 2 - (0 + 1) / 2, (0 + 1) / 2 - 0, (1 + 1) / 2 - 0]  # per row: mean over seeds
    mean = sum(d) / 4
    sd = math.sqrt(sum((x - mean) ** 2 for x in d) / 3)
    assert p["diff"] == pytest.approx(mean) and p["ci95"] == pytest.approx(1.96 * sd / 2) and p["n"] == 4
    assert p["finetuned"] == pytest.approx(7 / 8) and p["acc"] == pytest.approx(2 / 8) and p["ok"] is (mean > 1.96 * sd / 2)
    assert t["pooled"]["zero-shot"]["n"] == 3  # the row a seed could not score is left out of every seed
    assert t["per_seed"]["7"]["scratch"]["diff"] == pytest.approx(0.75)
    assert t["ok"] is all(b["ok"] for b in t["pooled"].values())
    table = (m / "gpt1_seeds.md").read_text()
    assert "| entailment | scratch | 2 | 87.5 | 25.0 |" in table and " / +75.0 ± " in table
    # another number of test rows in one seed: not the same test split
    items(m / "gpt1_seeds" / "7" / "finetune" / "entailment.items.json", pretrain_lm05="11", scratch_lm05="01", baseline="01", zero_shot="00")
    with pytest.raises(InputError, match=r"(zero-shot|baseline|scratch): the seeds scored different numbers of test rows \(\[2, 4\]\)"):
        gpt1_seeds.run(cfg)


def test_the_report_judges_by_a_current_record_and_flags_a_stale_one(tmp_path):
    m, cfg = settings(tmp_path)
    (m / "finetune.json").parent.mkdir(parents=True, exist_ok=True)
    one = {"acc": 0.5, "diff": 0.02, "ci95": 0.05, "n": 400}
    (m / "finetune.json").write_text(json.dumps({"entailment": {"pretrain": {"lm0.5": {"test_acc": 0.52}},
                                                                "vs": {"zero-shot": one, "baseline": one, "scratch": one}}}))
    root = m / "finetune" / "entailment.items.json"
    items(root, pretrain_lm05="1" * 300 + "0" * 100, scratch_lm05="1" * 100 + "0" * 300, baseline="0" * 400, zero_shot="0" * 400)
    assert finetune_goals(m)["entailment"]["seeds"] == 1 and finetune_goals(m)["entailment"]["ok"] is False
    assert gpt1_seeds_section(m).startswith("_not run")
    items(m / "gpt1_seeds" / "7" / "finetune" / "entailment.items.json", pretrain_lm05="1" * 400, scratch_lm05="0" * 400,
          baseline="0" * 400, zero_shot="0" * 400)
    gpt1_seeds.run(cfg)
    g = finetune_goals(m)["entailment"]
    assert g["seeds"] == 2 and g["ok"] is True and g["acc"] == pytest.approx(0.875)
    assert "| entailment | 2 | 87.5 |" in verdicts_gpt1(m)
    claim = [line for line in headline(m, tmp_path / "none.md").splitlines() if "Pre-training helps" in line][0]
    assert "(2 pre-training seeds pooled)" in claim and claim.endswith("| met |")
    # the pipeline fine-tuned again (other items): the record is stale, the single run is the verdict again
    items(root, pretrain_lm05="1" * 299 + "0" * 101, scratch_lm05="1" * 100 + "0" * 300, baseline="0" * 400, zero_shot="0" * 400)
    assert finetune_goals(m)["entailment"]["seeds"] == 1
    assert gpt1_seeds_section(m).startswith("**Stale**") and "make gpt1-seeds` is stale" in verdicts_gpt1(m)


def test_flow_overrides_write_under_the_seed():
    cfg = compose([])
    pre = compose(pretrain_overrides(cfg, 5))
    assert pre.seed == 5 and pre.pretrain.out_dir == "models/gpt1_seeds/5/pretrain" and pre.pretrain.threads == 1
    assert pre.pretrain.metrics_file == "metrics/gpt1_seeds/5/pretrain.json" and pre.tokenizer.out_dir == cfg.tokenizer.out_dir
    ft = compose(finetune_overrides(cfg, 5, "entailment"))
    assert ft.finetune.seed == 5 and ft.finetune.pretrained_dir == "models/gpt1_seeds/5/pretrain"
    assert ft.finetune.metrics_dir == "metrics/gpt1_seeds/5/finetune" and ft.finetune.task == "entailment"
    with pytest.raises(ConfigError, match="must be distinct and differ from the pipeline's seed"):
        check(compose([f"gpt1_seeds.seeds=[{cfg.seed}]"]))
    with pytest.raises(ConfigError, match="gpt1_seeds.tasks: nope not in finetune.tasks"):
        check(compose(["gpt1_seeds.tasks=[nope]"]))


@pytest.mark.slow
def test_gpt1_seeds_flow_pretrains_and_fine_tunes_each_seed_and_pools(project, prefect_harness):
    """Real DVC, Prefect and MLflow on the smoke configuration: refused before the pipeline fine-tuned,
    then one seed pre-trained and fine-tuned once and pooled; unchanged: not run again."""
    import subprocess
    import sys

    from conftest import run_cmd
    from flows.gpt1_seeds import gpt1_seeds as flow
    from flows.pipeline import StageFailed

    small = ["experiment=smoke", "gpt1_seeds.seeds=[7]", "gpt1_seeds.tasks=[sentiment]"]
    run_cmd([sys.executable, "-m", "tasks.config", "experiment=smoke"], cwd=project)
    with pytest.raises(StageFailed, match="not up to date: run `make pipeline`"):
        flow(small)
    run_cmd([sys.executable, "-m", "dvc", "repro", "finetune@sentiment"], cwd=project)
    result = flow(small)
    assert sorted(result["ran"]) == ["finetune_sentiment@7", "pretrain@7"]
    root = compose(small).seed
    rep = json.loads((project / "metrics/gpt1_seeds.json").read_text())
    assert rep["seeds"] == [root, 7] and rep["tasks"]["sentiment"]["seeds"] == [root, 7] and rep["missing"] == []
    assert rep["pretrain"]["7"]["step"] == compose(small).pretrain.max_steps
    assert (project / "models/gpt1_seeds/7/pretrain/model.safetensors").is_file()
    mine = json.loads((project / "metrics/gpt1_seeds/7/finetune/sentiment.items.json").read_text())["correct"]
    theirs = json.loads((project / "metrics/finetune/sentiment.items.json").read_text())["correct"]
    assert mine["baseline"] == theirs["baseline"] and mine["pretrain lm0.5"] != theirs["pretrain lm0.5"]  # same rows, another model
    assert "| sentiment | scratch | 2 |" in (project / "metrics/gpt1_seeds.md").read_text()
    assert flow(small)["ran"] == []  # settings unchanged: nothing run again
    status = subprocess.run([sys.executable, "-m", "dvc", "status", "finetune@sentiment", "--with-deps", "--json"], cwd=project, capture_output=True, text=True)
    assert status.returncode == 0 and json.loads(status.stdout or "{}") == {}  # the flow wrote nothing DVC tracks
