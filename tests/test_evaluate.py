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

from model import load_checkpoint, save_checkpoint
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
    """models/{sft,ppo,ppo_ptx,ppo_gold,dpo,rm} from the tiny GPT, and a tokenized validation split."""
    base = load_checkpoint("models/pretrain")
    tok_path = base.tokenizer_path
    shutil.copytree("models/pretrain", "models/sft")
    for name, seed in (("ppo", 1), ("ppo_ptx", 2), ("ppo_gold", 4), ("dpo", 3)):
        torch.manual_seed(seed)
        gpt = load_checkpoint("models/pretrain").model
        with torch.no_grad():
            for p in gpt.parameters():
                p.add_(0.01 * torch.randn_like(p))
        save_checkpoint(f"models/{name}", gpt, {"stage": "ppo"}, tokenizer_path=tok_path)
    RewardModel(base.model).save("models/rm", {"stage": "train_rm"}, tokenizer_path=tok_path)
    Path("data/tokenized").mkdir(parents=True)
    rng = np.random.default_rng(0)
    rng.integers(5, base.config.vocab_size, 2000).astype(np.uint16).tofile("data/tokenized/val.bin")
    rng.integers(5, base.config.vocab_size, 2000).astype(np.uint16).tofile("data/tokenized/train.bin")
    Path("data/tokenized/meta.json").write_text(json.dumps({"dtype": "uint16", "vocab_size": base.config.vocab_size}))
    return instruct_workspace


def test_evaluate_every_policy(policies):
    metrics = evaluate.run(compose(QUICK))
    assert list(metrics) == ["pretrain_few_shot", "sft", "ppo", "ppo_ptx", "ppo_gold", "dpo", "best_of_1", "best_of_4", "best_of_16"]
    for name, m in metrics.items():
        for key in evaluate.TABLE_KEYS:
            assert key in m, (name, key)
        assert 0 <= m["oracle_score"] <= 1 and 0 <= m["perfect_rate"] <= 1 and m["pretrain_val_loss"] > 0
        assert set(m["prompt_eval"]) and 0 <= m["prompt_eval_acc"] <= 1
    sft = metrics["sft"]
    assert sft["kl_to_sft"] == 0.0 and sft["win_rate_vs_sft"] == 0.5 and sft["decisive_win_rate_vs_sft"] is None
    # the samples file holds every policy's response to every prompt: the table recomputes from it
    rows = read_jsonl("metrics/evaluate_samples.jsonl")
    assert len(rows) == 9 * 8 and set(rows[0]) == {"prompt_id", "policy", "response", "oracle_score", "rm_score"}
    for name, m in metrics.items():
        mine = [r for r in rows if r["policy"] == name]
        assert sum(r["oracle_score"] for r in mine) / 8 == pytest.approx(m["oracle_score"])
        assert sum(r["rm_score"] for r in mine) / 8 == pytest.approx(m["rm_score"])
    assert json.loads(Path("metrics/evaluate.json").read_text())["ppo"]["oracle_score"] == metrics["ppo"]["oracle_score"]
    assert "| ppo_ptx |" in Path("metrics/evaluate_table.md").read_text()
    # best-of-n: the analytic KL, the sampled policy's alignment tax, the RM score never below fewer samples'
    assert metrics["best_of_1"]["kl_to_sft"] == 0.0 and metrics["best_of_16"]["kl_to_sft"] == pytest.approx(math.log(16) - 15 / 16)
    assert metrics["best_of_4"]["pretrain_val_loss"] == sft["pretrain_val_loss"]
    assert metrics["best_of_1"]["rm_score"] <= metrics["best_of_4"]["rm_score"] <= metrics["best_of_16"]["rm_score"]
    assert Path("metrics/overoptimization.png").stat().st_size > 0


def test_best_of_1_is_plain_sampling_with_the_same_seed(policies):
    model = load_checkpoint("models/sft").model.eval()
    tok = evaluate.strict_tokenizer(Path("models/sft"))
    ec = evaluate.EvaluateConfig(max_new_tokens=8, seed=7)
    contexts = [evaluate.encode_prompt(tok, r["prompt"])[0] for r in read_jsonl("data/raw/instructions/rl_eval.jsonl")[:6]]
    calls = []

    def score(texts):  # a reward that prefers longer texts; counts the samples it is asked to score
        calls.append(len(texts))
        return [float(len(t)) for t in texts]

    kept = evaluate.best_of_n(model, tok, contexts, score, [1, 3], ec)
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
