"""ppo stage (InstructGPT step 3): the math of model/rl.py against hand-computed values, the
rollout layout (the score on each row's last real token, nothing on padding), one update
raising the clipped objective, PPO-ptx's data untouched at γ = 0, bit-exact kill-and-resume,
and bad input; the critic-free estimators (RLOO, GRPO): their advantages by hand, the stage's
groups of samples per prompt, and bit-exact resume. Seconds each."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import edit_params, make_sft_and_rm, run_and_kill, settings
from model.gpt import GPT
from model import rl
from model.reward import RewardModel
from model.tokenizer import Tokenizer
from model import ppo as model_ppo
from model.instruct import response_logprobs
from tasks import ppo
from tasks.common import InputError
from tasks.config import compose, write_params
from tasks.inputs import read_prompts

QUICK = ["experiment=smoke", "tracking.enabled=false", "ppo.progress=false", "ppo.updates=4", "ppo.episodes=8",
         "ppo.minibatch=4", "ppo.ppo_epochs=2", "ppo.max_new_tokens=8", "ppo.eval_prompts=4", "ppo.eval_every=2",
         "ppo.ckpt_every=2", "ppo.samples_every=0"]


# --- model/rl.py ---------------------------------------------------------------------------------


def test_gae_against_a_hand_computed_example():
    # row 0: three tokens; row 1: two tokens and one padded column (junk there must not matter)
    rewards = torch.tensor([[0.0, 0.0, 1.0], [0.5, -1.0, 7.0]])
    values = torch.tensor([[0.5, 0.2, 0.4], [1.0, 0.3, 9.0]])
    mask = torch.tensor([[True, True, True], [True, True, False]])
    adv, ret = rl.gae(rewards, values, mask, gamma=0.9, lam=0.5)
    # row 0: d2 = 1 - 0.4 = 0.6; d1 = 0.9*0.4 - 0.2 = 0.16, A1 = 0.16 + 0.45*0.6 = 0.43;
    #        d0 = 0.9*0.2 - 0.5 = -0.32, A0 = -0.32 + 0.45*0.43 = -0.1265
    # row 1: d1 = -1 - 0.3 = -1.3 (the state after the last token is terminal);
    #        d0 = 0.5 + 0.9*0.3 - 1.0 = -0.23, A0 = -0.23 + 0.45*(-1.3) = -0.815
    assert torch.allclose(adv, torch.tensor([[-0.1265, 0.43, 0.6], [-0.815, -1.3, 0.0]]), atol=1e-6)
    assert torch.allclose(ret, torch.tensor([[0.3735, 0.63, 1.0], [0.185, -1.0, 0.0]]), atol=1e-6)
    # γ = λ = 1: every advantage is the rest of the row's reward minus the value
    adv1, _ = rl.gae(rewards, values, mask, 1.0, 1.0)
    assert torch.allclose(adv1[0], torch.tensor([1 - 0.5, 1 - 0.2, 1 - 0.4]))


def test_kl_estimators_and_whitening_by_hand():
    lp, ref = torch.tensor([[-1.0, -2.0, -0.5]]), torch.tensor([[-1.5, -2.0, -5.0]])
    mask = torch.tensor([[True, True, False]])
    assert torch.allclose(rl.kl_k1(lp, ref, mask), torch.tensor([[0.5, 0.0, 0.0]]))
    # k3 with log r = -0.5: e^-0.5 - 1 + 0.5
    assert torch.allclose(rl.kl_k3(lp, ref, mask), torch.tensor([[math.exp(-0.5) - 0.5, 0.0, 0.0]]))
    w = rl.whiten(torch.tensor([[1.0, 3.0, 100.0]]), mask)
    assert torch.allclose(w, torch.tensor([[-1.0, 1.0, 0.0]]), atol=1e-6)


def test_score_lands_on_the_last_real_token_and_nothing_on_padding():
    mask = torch.tensor([[True, True, True, True], [True, False, False, False], [True, True, False, False]])
    kl = torch.full((3, 4), 0.5)
    r = rl.token_rewards(torch.tensor([1.0, 2.0, 3.0]), kl, mask, beta=0.1)
    expected = torch.tensor([[-0.05, -0.05, -0.05, 0.95], [1.95, 0, 0, 0], [-0.05, 2.95, 0, 0]])
    assert torch.allclose(r, expected)
    assert (r[~mask] == 0).all()


def test_clipped_losses_entropy_and_explained_variance_by_hand():
    old = torch.zeros(1, 3)
    new = torch.log(torch.tensor([[1.5, 0.5, 1.1]]))  # ratios 1.5, 0.5, 1.1
    adv = torch.tensor([[1.0, -1.0, 2.0]])
    mask = torch.ones(1, 3, dtype=torch.bool)
    loss, st = rl.policy_loss(new, old, adv, mask, clip=0.2)
    # max(-A*r, -A*clip(r)): -1.2 (clipped), 0.8 (clipped), -2.2
    assert math.isclose(loss.item(), (-1.2 + 0.8 - 2.2) / 3, rel_tol=1e-6) and math.isclose(st["clip_frac"].item(), 2 / 3, rel_tol=1e-6)
    vl, vst = rl.value_loss(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 0.0]]), torch.tensor([[1.0, 1.0]]),
                            torch.ones(1, 2, dtype=torch.bool), clip=0.2)
    # token 0: max(0, 0.8^2) = 0.64; token 1: max(1, 1) = 1
    assert math.isclose(vl.item(), 0.5 * (0.64 + 1.0) / 2, rel_tol=1e-6) and vst["vf_clip_frac"].item() == 0.5
    uniform = torch.zeros(1, 1, 4)
    assert math.isclose(rl.entropy(uniform, torch.ones(1, 1, dtype=torch.bool)).item(), math.log(4), rel_tol=1e-6)
    ret = torch.tensor([[1.0, 2.0, 3.0]])
    assert rl.explained_variance(ret, ret, mask) == 1.0 and rl.explained_variance(torch.zeros(1, 3), ret, mask) == 0.0


def test_adaptive_kl_controller():
    fixed = rl.KLController(0.05)
    assert fixed.update(100.0, 64) == 0.05
    ctl = rl.KLController(0.1, target=6.0, horizon=10_000)
    assert math.isclose(ctl.update(12.0, 1000), 0.1 * (1 + 0.2 * 0.1))  # err clipped at +0.2
    assert math.isclose(ctl.update(5.4, 1000), 0.1 * 1.02 * (1 - 0.1 * 0.1))  # err = 5.4/6 - 1 = -0.1


def test_rloo_and_grpo_advantages_by_hand():
    # k = 4: group 0 [1, 0, 0, 1], group 1 [2, 0, 1, 5]
    r = torch.tensor([1.0, 0.0, 0.0, 1.0, 2.0, 0.0, 1.0, 5.0])
    # RLOO: R_i minus the mean of the other three. group 0: 1 - 1/3, 0 - 2/3; group 1 (sum 8): 2 - 6/3, 0 - 8/3, 1 - 7/3, 5 - 3/3
    rloo = rl.rloo_advantages(r, 4)
    assert torch.allclose(rloo, torch.tensor([2 / 3, -2 / 3, -2 / 3, 2 / 3, 0.0, -8 / 3, -4 / 3, 4.0]), atol=1e-6)
    # GRPO, unbiased std: group 0 mean 0.5, std sqrt(4 * 0.25 / 3) = sqrt(1/3);
    # group 1 mean 2, squared deviations 0 + 4 + 1 + 9 = 14, std sqrt(14/3)
    s0, s1 = math.sqrt(1 / 3) + 1e-6, math.sqrt(14 / 3) + 1e-6
    grpo = rl.grpo_advantages(r, 4)
    expected = torch.tensor([0.5 / s0, -0.5 / s0, -0.5 / s0, 0.5 / s0, 0.0, -2 / s1, -1 / s1, 3 / s1])
    assert torch.allclose(grpo, expected, atol=1e-6)
    # k = 2: RLOO is the difference of the pair, GRPO ±1/sqrt(2) (std of a pair |a - b|/sqrt(2))
    pair = torch.tensor([3.0, 1.0])
    assert rl.rloo_advantages(pair, 2).tolist() == [2.0, -2.0]
    assert torch.allclose(rl.grpo_advantages(pair, 2, eps=0.0), torch.tensor([1.0, -1.0]) / math.sqrt(2))


def test_a_tied_group_gives_exactly_zero_and_is_counted():
    r = torch.tensor([0.1, 0.1, 0.1, 0.1, 1.0, 0.0, 0.0, 1.0, -0.3, -0.3, -0.3, -0.3, 2.0, 2.0, 2.0, 2.5])
    for f in (rl.rloo_advantages, rl.grpo_advantages):
        adv = f(r, 4)
        assert (adv[:4] == 0).all() and (adv[8:12] == 0).all()  # exactly 0, not float noise
        assert (adv[4:8] != 0).all() and (adv[12:] != 0).all()
    assert rl.zero_std_share(r, 4) == 0.5
    assert rl.zero_std_share(torch.tensor([1.0, 2.0, 3.0, 4.0]), 2) == 0.0
    assert rl.zero_std_share(torch.tensor([1.0, 1.0, 3.0, 3.0]), 2) == 1.0
    for bad in (1, 3):
        with pytest.raises(ValueError, match=f"k={bad}"):
            rl.rloo_advantages(r, bad)


def test_sequence_rewards_are_the_token_rewards_summed():
    mask = torch.tensor([[True, True, False], [True, False, False]])
    kl = torch.tensor([[0.5, 1.0, 9.0], [0.2, 9.0, 9.0]])  # junk on padding must not count
    score = torch.tensor([1.0, -1.0])
    seq = rl.sequence_rewards(score, kl, mask, beta=0.1)
    assert torch.allclose(seq, torch.tensor([1.0 - 0.15, -1.0 - 0.02]))
    assert torch.allclose(seq, rl.token_rewards(score, kl, mask, 0.1).sum(1))
    assert rl.sequence_advantages(torch.tensor([2.0, -1.0]), mask).tolist() == [[2.0, 2.0, 0.0], [-1.0, 0.0, 0.0]]


# --- rollouts and one update on a tiny model ----------------------------------------------------


@pytest.fixture
def tiny():
    torch.manual_seed(0)
    from model.gpt import GPTConfig

    gpt = GPT(GPTConfig(vocab_size=50, block_size=32, n_layer=2, n_head=2, n_embd=32))
    prompts = [[5, 6, 7, 8], [9, 10], [11, 12, 13]]
    responses = [{"tokens": [20, 21, 0], "eos": True, "text": "a b"}, {"tokens": [22], "eos": False, "text": "c"},
                 {"tokens": [23, 24, 25, 26, 0], "eos": True, "text": "d e f"}]
    batch = model_ppo.make_batch([{"id": str(i)} for i in range(3)], prompts, responses, pad_id=1, device="cpu")
    return gpt, batch, responses


def test_batch_layout_response_tokens_and_positions(tiny):
    gpt, batch, responses = tiny
    for i, r in enumerate(responses):
        n = len(r["tokens"])
        assert batch.targets[i, :n].tolist() == r["tokens"] and (batch.targets[i, n:] == -100).all()
        # the output at pos[i, j] predicts response token j: the token right after it in ids
        assert batch.ids[i, batch.pos[i, :n] + 1].tolist() == r["tokens"]
    sub = batch.select(torch.tensor([1]))
    assert sub.ids.shape == (1, 3) and sub.targets.tolist() == [[22]]


def test_kl_penalty_is_exactly_zero_when_the_policy_is_the_reference(tiny):
    gpt, batch, _ = tiny
    ref = GPT(gpt.config)
    ref.load_state_dict(gpt.state_dict())
    critic = RewardModel(GPT(gpt.config))
    pc = settings("ppo", value="sft", beta=0.5)
    score = torch.tensor([1.0, -1.0, 2.0])
    stats = model_ppo.experience(batch, gpt, ref, critic, score, pc, beta=0.5)
    assert stats["kl"] == 0.0 and stats["kl_k3"] == 0.0 and stats["non_score_reward"] == 0.0
    assert math.isclose(stats["reward"], score.mean().item(), rel_tol=1e-6)


def test_one_ppo_update_raises_the_clipped_objective(tiny):
    gpt, batch, _ = tiny
    ref = GPT(gpt.config)
    ref.load_state_dict(gpt.state_dict())
    critic = RewardModel(GPT(gpt.config))  # a separate value network
    pc = settings("ppo", value="sft", lr=1e-3, value_lr=1e-3, minibatch=3, episodes=3)
    model_ppo.experience(batch, gpt, ref, critic, torch.tensor([1.0, -1.0, 2.0]), pc, beta=0.1)

    def objective() -> float:
        with torch.no_grad():
            lp = response_logprobs(model_ppo.policy_forward(gpt, batch, 1.0)[0], batch.targets)
            return -rl.policy_loss(lp, batch.data["old_logprobs"], batch.data["advantages"], batch.mask, pc.clip)[0].item()

    before = objective()
    learner = model_ppo.Learner(gpt, critic, *model_ppo.optimizers(gpt, critic, pc, "cpu"), shared=False)
    stats = model_ppo.ppo_step(learner, batch, pc, None)
    assert stats["approx_kl"] < 1e-6 and stats["clip_frac"] == 0.0  # the first step starts at ratio 1
    assert objective() > before + 1e-3


@pytest.mark.parametrize("estimator", ["rloo", "grpo"])
def test_critic_free_experience_and_update(tiny, estimator):
    gpt, batch, _ = tiny
    ref = GPT(gpt.config)
    ref.load_state_dict(gpt.state_dict())
    with torch.no_grad():  # a reference unlike the policy: a KL term in the reward
        for p in ref.parameters():
            p.add_(0.05 * torch.randn_like(p))
    pc = settings("ppo", estimator=estimator, group_size=3, episodes=3, minibatch=3, lr=1e-3, beta=0.1)
    score = torch.tensor([1.0, -1.0, 2.0])  # the three rows as one group
    stats = model_ppo.experience(batch, gpt, ref, None, score, pc, beta=0.1)
    d, mask = batch.data, batch.mask
    assert "old_values" not in d and "returns" not in d and stats["explained_var"] is None
    kl = rl.kl_k1(d["old_logprobs"], d["ref_logprobs"], mask)
    seq = score - 0.1 * kl.sum(1)
    adv = rl.ADVANTAGE_ESTIMATORS[estimator](seq, 3)
    assert torch.equal(d["advantages"], adv[:, None] * mask) and (d["advantages"][~mask] == 0).all()
    assert math.isclose(stats["reward"], seq.mean().item(), rel_tol=1e-6) and stats["zero_std_share"] == 0.0

    def objective() -> float:
        with torch.no_grad():
            lp = response_logprobs(model_ppo.policy_forward(gpt, batch, 1.0)[0], batch.targets)
            return -rl.policy_loss(lp, d["old_logprobs"], d["advantages"], mask, pc.clip)[0].item()

    before = objective()
    policy_opt, value_opt = model_ppo.optimizers(gpt, None, pc, "cpu")
    assert value_opt is None
    step = model_ppo.ppo_step(model_ppo.Learner(gpt, None, policy_opt, None, shared=False), batch, pc, None)
    assert "value_loss" not in step and step["clip_frac"] == 0.0
    assert objective() > before + 1e-3


# --- the stage end to end ---------------------------------------------------------------------------


@pytest.fixture
def ppo_workspace(instruct_workspace) -> Path:
    """instruct_workspace + models/sft (the tiny GPT), models/rm (a tiny RM from it) and data/tokenized."""
    make_sft_and_rm()
    tok = Tokenizer.load("models/sft/tokenizer.json")
    Path("data/tokenized").mkdir(parents=True)
    rng = np.random.default_rng(0)
    rng.integers(0, tok.vocab_size, 5000).astype(np.uint16).tofile("data/tokenized/train.bin")
    rng.integers(0, tok.vocab_size, 500).astype(np.uint16).tofile("data/tokenized/val.bin")
    (Path("data/tokenized") / "meta.json").write_text(json.dumps({"dtype": "uint16", "vocab_size": tok.vocab_size}))
    shutil.copy("models/sft/tokenizer.json", "data/tokenized/tokenizer.json")
    return instruct_workspace


def curve(variant="ppo") -> list[str]:
    return Path(f"metrics/ppo/{variant}_curve.csv").read_text().splitlines()


def test_stage_trains_logs_and_keeps_heldout_prompts_out(ppo_workspace, monkeypatch):
    seen = []
    sample = ppo.respond

    def spy(model, tok, prompts, *a, **kw):
        seen.append(kw.get("temperature"))
        return sample(model, tok, prompts, *a, **kw)

    monkeypatch.setattr(ppo, "respond", spy)
    prompts_used = []
    orig = ppo.make_batch
    monkeypatch.setattr(ppo, "make_batch", lambda rows, *a: prompts_used.extend(r["id"] for r in rows) or orig(rows, *a))
    m = ppo.run(compose(QUICK))
    rows = curve()
    assert rows[0].split(",")[:4] == ["update", "episodes", "beta", "rm_score"] and len(rows) == 5
    assert m["updates"] == 4 and m["kl_estimator"] == "k1" and m["eval"]["before"]["update"] == 0
    assert 0 <= m["final"]["oracle_score"] <= 1 and m["final"]["response_len"] <= 8
    assert m["final"]["beta"] == compose(QUICK).ppo.beta and "ptx_loss" not in m["final"]
    heldout = {r["id"] for r in read_prompts("data/raw/instructions/rl_prompts.jsonl",
                                                 {"seed": 1337, "heldout": 0.2, "val": 0.0})[1]}
    assert heldout and prompts_used and not heldout & set(prompts_used)
    assert seen[0] == 0.0 and 1.0 in seen  # greedy evaluation, rollouts at temperature 1
    ckpt = json.loads(Path("models/ppo/meta.json").read_text())
    assert ckpt["stage"] == "ppo" and ckpt["kl_estimator"] == "k1" and ckpt["update"] == 4


def test_ptx_coef_zero_never_reads_the_pretraining_data(ppo_workspace, monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("pre-training data read")

    monkeypatch.setattr(ppo, "load_tokens", refuse)
    monkeypatch.setattr(ppo, "window_batch", refuse)
    ppo.run(compose([*QUICK, "ppo.updates=2"]))  # variant ppo: ptx_coef 0
    with pytest.raises(AssertionError, match="pre-training data read"):
        ppo.run(compose([*QUICK, "ppo.updates=2", "ppo.variant=ppo_ptx"]))


def test_ptx_variant_logs_the_pretraining_loss(ppo_workspace):
    m = ppo.run(compose([*QUICK, "ppo.updates=2", "ppo.variant=ppo_ptx", "ppo.ptx_block=32", "ppo.value=sft"]))
    assert m["ptx_coef"] == 0.2 and m["final"]["ptx_loss"] > 0 and Path("models/ppo_ptx/model.safetensors").is_file()
    assert Path("metrics/ppo/ppo_ptx.json").is_file() and not Path("models/ppo").exists()


def test_kill_and_run_again_gives_the_same_curve(ppo_workspace):
    args = [*QUICK, "ppo.updates=12", "ppo.ckpt_every=2", "ppo.eval_every=4", "ppo.episodes=16", "ppo.variant=ppo_ptx",
            "ppo.ptx_block=32", "ppo.kl_target=1.0", "ppo.reward=oracle", "ppo.value=rm"]  # the most state: two networks
    ppo.run(compose(args))
    reference = curve("ppo_ptx")
    write_params(compose(args), "params.yaml")
    shutil.rmtree("models/ppo_ptx")
    killed_at = run_and_kill("ppo", Path(".resume/models/ppo_ptx/meta.json"), "update", 4)
    assert killed_at is not None and killed_at < 12, "the run finished before it could be killed"
    ppo.run(compose(args))  # resume=auto: continues the unfinished run
    assert curve("ppo_ptx") == reference  # every logged number, bit for bit
    assert not Path(".resume").exists()


@pytest.mark.parametrize("case,message", [
    ("beta", "params.yaml: ppo.beta: must be >= 0, got -0.1"),  # a hand-edited params.yaml: the schema refuses it
    ("no_sft", "models/sft: no SFT policy checkpoint (run the sft stage first)"),
    ("no_rm", "models/rm: no reward model checkpoint (run the train_rm stage first)"),
    ("tokenizer", "models/rm/tokenizer.json differs from the policy's models/sft/tokenizer.json"),
    ("group_size", "ppo.group_size=3: rloo needs >= 2 samples per prompt and ppo.episodes=8 a multiple of it"),
])
def test_bad_input_is_one_line_and_overwrites_nothing(ppo_workspace, case, message):
    Path("metrics/ppo").mkdir(parents=True)
    Path("metrics/ppo/ppo.json").write_text("previous\n")
    args = [*QUICK]
    if case == "group_size":
        args += ["ppo.estimator=rloo", "ppo.group_size=3"]
    elif case == "no_sft":
        shutil.rmtree("models/sft")
    elif case == "no_rm":
        shutil.rmtree("models/rm")
    else:
        raw = json.loads(Path("models/rm/tokenizer.json").read_text())
        raw["model"]["vocab"]["zzzz"] = len(raw["model"]["vocab"]) + 50
        Path("models/rm/tokenizer.json").write_text(json.dumps(raw))
    write_params(compose(args), "params.yaml")
    if case == "beta":
        edit_params("params.yaml", "ppo", beta=-0.1)
    proc = subprocess.run([sys.executable, "-m", "tasks.ppo", "--params", "params.yaml"], capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.strip().startswith("error: " + message), proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert Path("metrics/ppo/ppo.json").read_text() == "previous\n" and not Path("models/ppo").exists()


@pytest.mark.parametrize("estimator", ["rloo", "grpo"])
def test_critic_free_stage_samples_groups_and_logs_zero_std_share(ppo_workspace, monkeypatch, estimator):
    batches = []
    orig = ppo.make_batch
    monkeypatch.setattr(ppo, "make_batch", lambda rows, *a: batches.append([r["id"] for r in rows]) or orig(rows, *a))
    m = ppo.run(compose([*QUICK, "ppo.updates=2", f"ppo.estimator={estimator}", "ppo.value=rm"]))  # value: ignored
    assert m["estimator"] == estimator and m["group_size"] == 4 and m["value"] is None and m["episodes"] == 16
    for ids in batches:  # 8 episodes: 2 prompts, 4 samples each, consecutive
        assert len(ids) == 8 and len(set(ids[:4])) == 1 and len(set(ids[4:])) == 1
    assert batches[0][0] != batches[0][4]  # two different prompts
    rows = [r.split(",") for r in curve()]
    col = rows[0].index("zero_std_share")
    assert len(rows) == 3 and all(0.0 <= float(r[col]) <= 1.0 for r in rows[1:])
    assert rows[0][: len(ppo.CURVE)] == list(ppo.CURVE) and all(r[rows[0].index("value_loss")] == "" for r in rows[1:])
    assert 0 <= m["final"]["zero_std_share"] <= 1 and "value_loss" not in m["final"]
    assert not Path("models/ppo/heads.safetensors").exists()  # no value model built or saved
    assert json.loads(Path("models/ppo/meta.json").read_text())["estimator"] == estimator


def test_ppo_curve_has_an_empty_zero_std_share(ppo_workspace):
    ppo.run(compose([*QUICK, "ppo.updates=1"]))
    rows = [r.split(",") for r in curve()]
    assert rows[1][rows[0].index("zero_std_share")] == ""


def test_critic_free_resume_continues_bit_for_bit_and_estimator_overrides_a_variant(ppo_workspace):
    args = [*QUICK, "ppo.variant=ppo_ptx", "ppo.estimator=grpo", "ppo.group_size=2", "ppo.ptx_block=32", "ppo.eval_every=2",
            "ppo.kl_target=1.0"]
    m = ppo.run(compose([*args, "ppo.updates=4"]))
    assert m["ptx_coef"] == 0.2 and m["estimator"] == "grpo" and m["final"]["ptx_loss"] > 0  # the variant's and the override's
    reference = curve("ppo_ptx")
    shutil.rmtree("models/ppo_ptx")
    ppo.run(compose([*args, "ppo.updates=2"]))  # a checkpoint at update 2 (evaluated there, as the 4-update run is)
    ppo.run(compose([*args, "ppo.updates=4", "ppo.resume=true"]))
    assert curve("ppo_ptx") == reference  # every logged number, bit for bit
    with pytest.raises(InputError, match="trained with ppo.estimator=grpo, cannot resume it with ppo.estimator=ppo"):
        ppo.run(compose([*QUICK, "ppo.variant=ppo_ptx", "ppo.ptx_block=32", "ppo.updates=6", "ppo.resume=true"]))


def test_oracle_reward_needs_no_reward_model(ppo_workspace):
    shutil.rmtree("models/rm")
    m = ppo.run(compose([*QUICK, "ppo.updates=1", "ppo.reward=oracle", "ppo.value=sft"]))
    assert m["reward"] == "oracle" and m["reward_norm"] is not None and "rm_score" not in m["final"]
    with pytest.raises(InputError, match="no reward model"):
        ppo.run(compose([*QUICK, "ppo.updates=1", "ppo.reward=oracle", "ppo.value=rm"]))  # a value model from the RM needs it
