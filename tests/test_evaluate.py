"""evaluate stage: every policy on held-out prompts, win rates counted two ways, KL to SFT, the
alignment tax, and a samples file from which the table can be recomputed."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import settings

from model.checkpoint import load_checkpoint, save_checkpoint
from model.reward import RewardModel
from tasks import evaluate
from tasks.common import InputError, read_jsonl
from tasks.config import compose

QUICK = ["experiment=smoke", "tracking.enabled=false", "evaluate.max_prompts=8", "evaluate.prompt_eval_items=4",
         "evaluate.val_windows=4", "evaluate.max_new_tokens=8", "evaluate.register_policy="]


def test_win_rates_ties_half_and_decisive():
    assert evaluate.win_rates([1, 0.5, 0.5, 1], [0.5, 0.5, 1, 1]) == (0.5, 0.5)
    assert evaluate.win_rates([1, 1, 1, 0.5], [0.5, 1, 1, 1]) == (0.5, 0.5)
    assert evaluate.win_rates([1, 1, 1, 1], [0.5, 1, 1, 1]) == (0.625, 1.0)
    assert evaluate.win_rates([1, 1], [1, 1]) == (0.5, None)  # no decisive prompt: undefined, not 0


@pytest.fixture
def policies(instruct_workspace) -> Path:
    """models/sft, every other policy of evaluate.policies (ppo, ppo_ptx, ppo_gold, dpo, ...) and
    models/rm from the tiny GPT, and a tokenized validation split."""
    base = load_checkpoint("models/pretrain")
    tok_path = base.tokenizer_path
    shutil.copytree("models/pretrain", "models/sft")
    seeds = {"ppo": 1, "ppo_ptx": 2, "ppo_gold": 4, "dpo": 3}
    others = [(name, path) for name, path in compose(QUICK).evaluate.policies.items() if name != "sft"]
    for i, (name, path) in enumerate(others):
        torch.manual_seed(seeds.get(name, 10 + i))
        gpt = load_checkpoint("models/pretrain").model
        with torch.no_grad():
            for p in gpt.parameters():
                p.add_(0.01 * torch.randn_like(p))
        save_checkpoint(path, gpt, {"stage": "ppo"}, tokenizer_path=tok_path)
    RewardModel(base.model).save("models/rm", {"stage": "train_rm"}, tokenizer_path=tok_path)
    Path("data/tokenized").mkdir(parents=True)
    rng = np.random.default_rng(0)
    rng.integers(5, base.config.vocab_size, 2000).astype(np.uint16).tofile("data/tokenized/val.bin")
    rng.integers(5, base.config.vocab_size, 2000).astype(np.uint16).tofile("data/tokenized/train.bin")
    Path("data/tokenized/meta.json").write_text(json.dumps({"dtype": "uint16", "vocab_size": base.config.vocab_size}))
    return instruct_workspace


def test_evaluate_every_policy(policies):
    cfg = compose([*QUICK, "evaluate.best_of_n=[1,4,16]"])
    metrics = evaluate.run(cfg)
    assert {"sft", "ppo", "ppo_ptx", "ppo_gold", "dpo"} <= set(cfg.evaluate.policies)
    assert list(metrics) == ["pretrain_few_shot", *cfg.evaluate.policies, "best_of_1", "best_of_4", "best_of_16",
                             "oracle_best_of_1", "oracle_best_of_4", "oracle_best_of_16", "alignment_tax", "overoptimization"]
    metrics.pop("overoptimization")
    metrics.pop("alignment_tax")
    for name, m in metrics.items():
        for key in evaluate.TABLE_KEYS:
            assert key in m, (name, key)
        assert 0 <= m["oracle_score"] <= 1 and 0 <= m["perfect_rate"] <= 1 and m["pretrain_val_loss"] > 0
        assert set(m["prompt_eval"]) and 0 <= m["prompt_eval_acc"] <= 1
    sft = metrics["sft"]
    assert sft["kl_to_sft"] == 0.0 and sft["win_rate_vs_sft"] == 0.5 and sft["decisive_win_rate_vs_sft"] is None
    # the samples file holds every policy's response to every prompt: the table recomputes from it
    rows = read_jsonl("metrics/evaluate_samples.jsonl")
    assert len(rows) == len(metrics) * 8
    assert set(rows[0]) == {"prompt_id", "policy", "response", "oracle_score", "rm_score", "sampled_oracle_score"}
    for name, m in metrics.items():
        mine = [r for r in rows if r["policy"] == name]
        assert sum(r["oracle_score"] for r in mine) / 8 == pytest.approx(m["oracle_score"])
        assert sum(r["rm_score"] for r in mine) / 8 == pytest.approx(m["rm_score"])
        assert sum(r["sampled_oracle_score"] for r in mine) / 8 == pytest.approx(m["sampled_oracle_score"])
    assert json.loads(Path("metrics/evaluate.json").read_text())["ppo"]["oracle_score"] == metrics["ppo"]["oracle_score"]
    assert "| ppo_ptx |" in Path("metrics/evaluate_table.md").read_text()
    # best-of-n: the analytic KL, the sampled policy's alignment tax, the RM score never below fewer samples'
    assert metrics["best_of_1"]["kl_to_sft"] == 0.0 and metrics["best_of_16"]["kl_to_sft"] == pytest.approx(math.log(16) - 15 / 16)
    assert metrics["best_of_4"]["pretrain_val_loss"] == sft["pretrain_val_loss"]
    assert metrics["best_of_1"]["rm_score"] <= metrics["best_of_4"]["rm_score"] <= metrics["best_of_16"]["rm_score"]
    assert Path("metrics/overoptimization.png").stat().st_size > 0
    # the alignment tax of each evaluate.tax_pairs pair, paired on the same windows and items
    assert cfg.evaluate.tax_pairs == [["ppo_ptx", "ppo"]]
    tax = json.loads(Path("metrics/evaluate.json").read_text())["alignment_tax"]["ppo_ptx_vs_ppo"]
    assert tax["pretrain_val_loss_diff"] == pytest.approx(metrics["ppo_ptx"]["pretrain_val_loss"] - metrics["ppo"]["pretrain_val_loss"], abs=1e-5)
    assert tax["prompt_eval_acc_diff"] == pytest.approx(metrics["ppo_ptx"]["prompt_eval_acc"] - metrics["ppo"]["prompt_eval_acc"])
    assert tax["pretrain_val_loss_diff_ci"] > 0 and tax["prompt_eval_acc_diff_ci"] >= 0


def test_tax_comparison_hand_example():
    a = {"loss": [1.0, 2.0, 3.0], "hits": {"t": [True, True, False, True]}}
    b = {"loss": [2.0, 3.0, 5.0], "hits": {"t": [False, True, False, False]}}
    out = evaluate.tax_comparison(a, b)
    assert out["pretrain_val_loss_diff"] == pytest.approx(-4 / 3)
    assert out["pretrain_val_loss_diff_ci"] == pytest.approx(1.96 * math.sqrt((1 / 9 + 1 / 9 + 4 / 9) / 2 / 3))
    assert out["prompt_eval_acc_diff"] == pytest.approx(0.5)
    assert "prompt_eval_acc_diff" not in evaluate.tax_comparison({"loss": [1.0, 2.0]}, {"loss": [1.0, 1.0]})


def test_tax_pairs_name_policies(policies):
    with pytest.raises(InputError, match="evaluate.tax_pairs"):
        evaluate.run(compose([*QUICK, "evaluate.tax_pairs=[[ppo_ptx,nope]]"]))


def write_curve(path: str, d: list[float], law, extra: str = "") -> None:
    """A training curve whose oracle score follows `law(d)` over 0.7 at KL = d² (rm_score rising)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    lines = ["update,rm_score,oracle_score,kl" + extra]
    lines += [f"{i},{0.1 * x},{0.7 + law(x)},{x * x}" + ("," if extra else "") for i, x in enumerate(d)]
    Path(path).write_text("\n".join(lines) + "\n")


def test_sampled_columns_intervals_oracle_best_of_n_and_overoptimization(policies):
    d = [0.0, 0.5, 1.0, 1.5, 2.0, 2.5]
    write_curve("metrics/ppo/ppo_curve.csv", d, lambda x: 0.0 if x == 0 else x * (0.2 - 0.1 * math.log(x)))
    # a DPO-like curve: training rows without kl (skipped), sample rows with it
    Path("metrics").mkdir(exist_ok=True)
    Path("metrics/dpo_curve.csv").write_text("step,loss,kl,rm_score,oracle_score\n0,,0.0,0.1,0.8\n5,0.69,,,\n10,,1.0,0.2,0.85\n"
                                             "15,0.6,,,\n20,,4.0,0.3,0.83\n")
    metrics = evaluate.run(compose([*QUICK, "evaluate.sampled_n=3", "evaluate.prompt_eval_items=0"]))
    ns = [1, 2, 4, 8, 16, 32, 64]
    assert [k for k in metrics if k.startswith("best_of_")] == [f"best_of_{n}" for n in ns]
    assert [k for k in metrics if k.startswith("oracle_best_of_")] == [f"oracle_best_of_{n}" for n in ns]
    for name, m in metrics.items():
        if name in ("overoptimization", "alignment_tax"):
            continue
        for key in ("sampled_oracle_score", "sampled_perfect_rate", "sampled_rm_score", "oracle_score_diff_vs_sft",
                    "oracle_score_diff_vs_sft_ci", "sampled_oracle_score_diff_vs_sft", "sampled_oracle_score_diff_vs_sft_ci",
                    "decisive_win_rate_vs_sft_ci"):
            assert key in m, (name, key)
        assert 0 <= m["sampled_oracle_score"] <= 1 and m["oracle_score_diff_vs_sft_ci"] >= 0
        assert m["oracle_score_diff_vs_sft"] == pytest.approx(m["oracle_score"] - metrics["sft"]["oracle_score"])
        ci = m["decisive_win_rate_vs_sft_ci"]
        assert (ci is None) == (m["decisive_win_rate_vs_sft"] is None)
        if ci is not None:
            assert 0 <= ci[0] <= m["decisive_win_rate_vs_sft"] <= ci[1] <= 1
    sft = metrics["sft"]
    assert sft["sampled_n"] == 3 and sft["oracle_score_diff_vs_sft"] == 0.0 and sft["sampled_oracle_score_diff_vs_sft"] == 0.0
    # best-of-1 is SFT's sample 0: SFT's sampled mean over its 3 samples is an average of best-of-1..3 draws
    assert metrics["best_of_1"]["oracle_score"] == metrics["oracle_best_of_1"]["oracle_score"]
    prev = -1.0
    for n in ns:
        rm_pick, oracle_pick = metrics[f"best_of_{n}"], metrics[f"oracle_best_of_{n}"]
        assert oracle_pick["oracle_score"] >= rm_pick["oracle_score"]  # the headroom of reranking
        assert oracle_pick["oracle_score"] >= prev  # more samples never lower the oracle's pick
        prev = oracle_pick["oracle_score"]
        assert oracle_pick["kl_to_sft"] == rm_pick["kl_to_sft"] == pytest.approx(math.log(n) - (n - 1) / n)
        assert rm_pick["sampled_oracle_score"] == rm_pick["oracle_score"]
    # over-optimisation: the laws fitted, the synthetic PPO curve's recovered, DPO's sample rows used
    over = metrics["overoptimization"]
    assert {"best_of_n", "oracle_best_of_n", "ppo", "dpo"} <= set(over)
    for name, r in over.items():
        assert set(r) >= {"alpha", "beta", "peak_kl", "peak_oracle_gain", "form"}
    assert over["best_of_n"]["form"] == "best_of_n" and over["ppo"]["form"] == "rl"
    assert over["ppo"]["alpha"] == pytest.approx(0.2) and over["ppo"]["beta"] == pytest.approx(0.1)
    assert over["ppo"]["peak_kl"] == pytest.approx(math.exp(2 * (0.2 / 0.1 - 1)))
    assert over["dpo"]["points"] == 2 and over["dpo"]["alpha"] is not None
    assert json.loads(Path("metrics/evaluate.json").read_text())["overoptimization"]["ppo"]["form"] == "rl"
    md = Path("metrics/overoptimization.md").read_text()
    assert "| ppo | rl |" in md and "| 64 |" in md
    table = Path("metrics/evaluate_table.md").read_text()
    assert "| oracle_best_of_64 |" in table and "sampled_oracle_score" in table and " ± " in table
    assert len(evaluate.table_rows(metrics)) == len(metrics) - 2  # the overoptimization and alignment_tax entries are no rows


def test_best_of_1_is_plain_sampling_with_the_same_seed(policies):
    model = load_checkpoint("models/sft").model.eval()
    tok = evaluate.strict_tokenizer(Path("models/sft"))
    ec = settings("evaluate", max_new_tokens=8, seed=7)
    contexts = [evaluate.encode_prompt(tok, r["prompt"])[0] for r in read_jsonl("data/raw/instructions/rl_eval.jsonl")[:6]]
    calls = []

    def score(texts):  # a reward that prefers longer texts; counts the samples it is asked to score
        calls.append(len(texts))
        return [float(len(t)) for t in texts]

    kept = evaluate.pick_best(evaluate.sample_n(model, tok, contexts, 3, ec, score), "rm_score", [1, 3])
    plain = evaluate.respond(model, tok, contexts, 8, temperature=1.0, generator=torch.Generator().manual_seed(7))
    assert [k["text"] for k in kept[1]] == [p["text"] for p in plain]
    assert calls == [6, 6, 6]  # 3 samples per prompt, shared by n = 1 and n = 3
    assert all(len(b["text"]) >= len(a["text"]) for a, b in zip(kept[1], kept[3]))


def test_missing_policy_and_foreign_reward_model(policies):
    shutil.rmtree("models/ppo")
    with pytest.raises(InputError, match="models/ppo: checkpoint folder of policy 'ppo' not found"):
        evaluate.run(compose(QUICK))
    assert not Path("metrics/evaluate.json").exists()
    shutil.copytree("models/sft", "models/ppo")
    tok = json.loads(Path("models/rm/tokenizer.json").read_text())
    tok["model"]["vocab"]["zzz-foreign"] = len(tok["model"]["vocab"]) + 100
    Path("models/rm/tokenizer.json").write_text(json.dumps(tok))
    with pytest.raises(InputError, match="models/rm: the reward model's tokenizer differs"):
        evaluate.run(compose(QUICK))
    assert not Path("metrics/evaluate.json").exists()
