"""dpo stage: the loss against its formula, log 2 and zero implicit rewards when the policy is
the reference, no gradient through prompt tokens, the RM's split respected, kill-and-resume,
and bad input (K < 2, a reference with another tokenizer). Seconds each."""

from __future__ import annotations

import json
import math
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from torch.nn import functional as F

from conftest import edit_params, make_sft_and_rm, run_and_kill
from model import rl
from model.gpt import GPT, GPTConfig
from tasks import dpo
from tasks.common import read_jsonl
from tasks.config import compose, write_params
from tasks.inputs import split_of
from tasks.world import oracle
from tasks.world.instructions import sample_responses

QUICK = ["experiment=smoke", "tracking.enabled=false", "dpo.progress=false", "dpo.pairs=all", "dpo.batch_size=4", "dpo.eval_prompts=4",
         "dpo.max_new_tokens=8", "dpo.eval_every=4", "dpo.log_every=2", "dpo.ckpt_every=2"]


def test_dpo_loss_equals_the_formula_on_a_hand_made_batch():
    c, r = torch.tensor([-3.0, -5.0]), torch.tensor([-4.0, -2.0])
    rc, rr = torch.tensor([-3.5, -4.0]), torch.tensor([-3.0, -3.0])
    loss, st = rl.dpo_loss(c, r, rc, rr, beta=0.1)
    # h = (c - rc) - (r - rr): pair 0: 0.5 - (-1) = 1.5; pair 1: -1 - 1 = -2
    expected = (-math.log(1 / (1 + math.exp(-0.15))) - math.log(1 / (1 + math.exp(0.2)))) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert st["chosen_reward"].tolist() == pytest.approx([0.05, -0.1])
    assert st["rejected_reward"].tolist() == pytest.approx([-0.1, 0.1])
    assert st["reward_acc"].item() == 0.5 and st["reward_margin"].item() == pytest.approx((0.15 - 0.2) / 2)
    ipo, _ = rl.dpo_loss(c, r, rc, rr, beta=0.1, loss_type="ipo")
    assert ipo.item() == pytest.approx(((1.5 - 5) ** 2 + (-2 - 5) ** 2) / 2)
    with pytest.raises(ValueError, match="loss_type"):
        rl.dpo_loss(c, r, rc, rr, 0.1, "hinge")


def test_best_of_n_kl_formula():
    assert rl.best_of_n_kl(1) == 0.0
    assert rl.best_of_n_kl(4) == pytest.approx(math.log(4) - 0.75)
    assert rl.best_of_n_kl(16) == pytest.approx(math.log(16) - 15 / 16)


def tiny_pairs() -> tuple[GPT, list[dpo.Pair]]:
    torch.manual_seed(0)
    gpt = GPT(GPTConfig(vocab_size=40, block_size=24, n_layer=2, n_head=2, n_embd=16))
    rows = [([5, 6, 7, 8, 9, 0], 3), ([5, 6, 7, 10, 0], 3), ([11, 12, 13, 14, 15, 16, 0], 5), ([11, 12, 13, 14, 15, 17, 18, 19, 0], 5)]
    pairs = [dpo.Pair("a", rows[0], rows[1], None, ("x", "y")), dpo.Pair("b", rows[2], rows[3], None, ("z", "w"))]
    return gpt, pairs


def test_policy_equal_to_the_reference_gives_log_2_and_zero_rewards():
    gpt, pairs = tiny_pairs()
    ref = GPT(gpt.config)
    ref.load_state_dict(gpt.state_dict())
    ref_lp = dpo.reference_logprobs(ref, pairs, pad_id=1, device="cpu", mean=False)
    c, r = dpo.pair_logprobs(gpt, pairs, pad_id=1, device="cpu", mean=False)
    loss, st = rl.dpo_loss(c, r, ref_lp[:, 0], ref_lp[:, 1], beta=0.1)
    assert loss.item() == pytest.approx(math.log(2), abs=1e-6)
    assert st["chosen_reward"].abs().max().item() < 1e-6 and st["rejected_reward"].abs().max().item() < 1e-6


def test_prompt_tokens_carry_no_gradient():
    gpt, pairs = tiny_pairs()
    logits = torch.randn(4, 9, 40, requires_grad=True)  # the 4 rows padded to 9 tokens
    c, r = dpo.pair_logprobs(lambda ids: logits[:, : ids.size(1)], pairs, pad_id=1, device="cpu", mean=False)
    loss, _ = rl.dpo_loss(c, r, torch.zeros(2), torch.zeros(2), beta=0.1)
    loss.backward()
    for row, (ids, n_prompt) in enumerate([p.chosen for p in pairs] + [p.rejected for p in pairs]):
        g = logits.grad[row].abs().sum(-1)
        # the output at position t predicts token t + 1: prompt tokens are predicted at t < n_prompt - 1
        assert (g[: n_prompt - 1] == 0).all() and (g[len(ids) - 1 :] == 0).all(), row
        assert (g[n_prompt - 1 : len(ids) - 1] > 0).all(), row
    # and the sum over the response tokens is the log-probability, by hand
    lp = F.log_softmax(logits.detach()[0], -1)
    ids, n = pairs[0].chosen
    assert c[0].item() == pytest.approx(sum(lp[t - 1, ids[t]].item() for t in range(n, len(ids))), rel=1e-5)


# --- the stage end to end ---------------------------------------------------------------------------


@pytest.fixture
def dpo_workspace(instruct_workspace) -> Path:
    """instruct_workspace + models/sft, models/rm (its split recorded) and oracle-ranked rankings."""
    make_sft_and_rm()
    rng = random.Random(0)
    rows = []
    for r in read_jsonl("data/raw/instructions/rl_prompts.jsonl")[:40]:
        responses = sample_responses(r["kind"], r["meta"], rng, 4)
        rows.append({"id": r["id"], "kind": r["kind"], "prompt": r["prompt"], "responses": responses,
                     "ranking": oracle.rank(r, responses, 0.05, rng)})
    Path("data/rankings").mkdir(parents=True)
    pd.DataFrame(rows).to_parquet("data/rankings/rankings.parquet")
    return instruct_workspace


def test_stage_trains_on_the_rm_training_split_and_logs(dpo_workspace, monkeypatch):
    trained = set()
    orig = dpo.pair_logprobs

    def spy(model, pairs, *a):
        if getattr(model, "training", False):  # the policy's training batches (the reference runs in eval mode)
            trained.update(p.id for p in pairs)
        return orig(model, pairs, *a)

    monkeypatch.setattr(dpo, "pair_logprobs", spy)
    m = dpo.run(compose(QUICK))
    heldout = {i for i in pd.read_parquet("data/rankings/rankings.parquet")["id"] if split_of(i, 1337, 0.2, 0.0) == "heldout"}
    assert heldout and m["data"]["heldout_pairs"] > 0 and trained and not trained & heldout
    assert m["data"]["train_pairs"] + m["data"]["identical_pairs"] + m["data"]["too_long_pairs"] == 6 * m["data"]["train_prompts"]
    assert m["steps"] == math.ceil(m["data"]["train_pairs"] / 4)
    curve = Path("metrics/dpo_curve.csv").read_text().splitlines()
    assert curve[0].startswith("step,epoch,lr,loss,reward_acc") and curve[1].startswith("0,0,")
    last = dict(zip(curve[0].split(","), curve[-1].split(",")))
    assert float(last["kl"]) == float(last["kl"]) and 0 <= float(last["eval_oracle_score"]) <= 1 and last["rm_score"]
    assert 0 <= m["heldout"]["label_acc"] <= 1 and m["eval"]["before"]["step"] == 0
    assert json.loads(Path("models/dpo/meta.json").read_text())["stage"] == "dpo"
    assert json.loads(Path("metrics/dpo.json").read_text())["steps"] == m["steps"]


def test_best_vs_rest_pairs_and_ipo():
    assert dpo.ranked_pairs([2, 0, 1], "all") == [(2, 0), (2, 1), (0, 1)]
    assert dpo.ranked_pairs([2, 0, 1], "best_vs_rest") == [(2, 0), (2, 1)]


def test_kill_and_run_again_gives_the_same_curve(dpo_workspace):
    args = [*QUICK, "dpo.epochs=2", "dpo.loss=ipo"]
    dpo.run(compose(args))
    reference = Path("metrics/dpo_curve.csv").read_text()
    total = json.loads(Path("metrics/dpo.json").read_text())["steps"]
    write_params(compose(args), "params.yaml")
    shutil.rmtree("models/dpo")
    killed_at = run_and_kill("dpo", Path(".resume/models/dpo/meta.json"), "step", 4)
    assert killed_at is not None and killed_at < total, "the run finished before it could be killed"
    dpo.run(compose(args))  # resume=auto: continues the unfinished run
    assert Path("metrics/dpo_curve.csv").read_text() == reference  # every logged number, bit for bit
    assert not Path(".resume").exists()


@pytest.mark.parametrize("case,message", [
    ("k1", r"rankings.parquet: row 3 \(rl_prompts-\d+\): 1 response\(s\); a ranking needs at least 2"),
    ("tokenizer", "models/ref/tokenizer.json differs from the policy's models/sft/tokenizer.json"),
    ("beta", "dpo.beta: must be > 0, got 0.0"),  # a hand-edited params.yaml: the schema refuses it
])
def test_bad_input_is_one_line_and_overwrites_nothing(dpo_workspace, case, message):
    Path("metrics").mkdir()
    Path("metrics/dpo.json").write_text("previous\n")
    args = list(QUICK)
    if case == "k1":
        df = pd.read_parquet("data/rankings/rankings.parquet")
        df.at[2, "responses"], df.at[2, "ranking"] = ["only one"], [0]
        df.to_parquet("data/rankings/rankings.parquet")
    elif case == "tokenizer":
        shutil.copytree("models/sft", "models/ref")
        raw = json.loads(Path("models/ref/tokenizer.json").read_text())
        raw["model"]["vocab"]["zzzz"] = len(raw["model"]["vocab"]) + 50
        Path("models/ref/tokenizer.json").write_text(json.dumps(raw))
        args.append("dpo.reference=models/ref")
    write_params(compose(args), "params.yaml")
    if case == "beta":
        edit_params("params.yaml", "dpo", beta=0)
    proc = subprocess.run([sys.executable, "-m", "tasks.dpo", "--params", "params.yaml"], capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.strip().startswith("error: "), proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    import re

    assert re.search(message, proc.stderr), proc.stderr
    assert Path("metrics/dpo.json").read_text() == "previous\n" and not Path("models/dpo").exists()
