"""train_rm stage (InstructGPT §3.5): the K-way loss, one forward row per response, the reward
at the last real token, the bias, the stage end to end on a tiny world, and bad input. Seconds."""

from __future__ import annotations

import json
import math
import random
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from torch.nn import functional as F

from conftest import ROOT, run_cmd, settings
from model.checkpoint import save_checkpoint
from model.gpt import GPT, GPTConfig
from model.instruct import encode_example, pad_right
from model.reward import RewardModel
from model.tokenizer import Tokenizer
from tasks import train_rm
from tasks.common import InputError, write_jsonl
from tasks.config import compose
from tasks.inputs import split_of
from tasks.world import oracle
from tasks.world.instructions import make_instruction_splits, sample_responses

QUICK = ["experiment=smoke", "tracking.enabled=false", "train_rm.progress=false", "train_rm.batch_size=4"]
K = 4


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict:
    """A tiny world: instructions, a tokenizer trained on them, a tiny GPT checkpoint, rankings."""
    root = tmp_path_factory.mktemp("world")
    rng = random.Random(0)
    splits = make_instruction_splits(rng, {"sft_val": 12, "rl_prompts": 40}, set())
    rankings = []
    for row in splits["rl_prompts"]:
        responses = sample_responses(row["kind"], row["meta"], rng, K)
        rankings.append({"id": row["id"], "kind": row["kind"], "prompt": row["prompt"], "responses": responses,
                         "ranking": oracle.rank(row, responses, 0.09, rng), "labeler": "oracle",
                         "time": "2024-01-01T00:00:00", "sources": ["sft T=1.0"] * K})
    texts = [r["prompt"] for r in splits["rl_prompts"]] + [x for r in rankings for x in r["responses"]]
    tok = Tokenizer.train(texts + [r["response"] for r in splits["sft_val"]], vocab_size=400)
    tok.save(root / "tokenizer.json")
    torch.manual_seed(0)
    gpt = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=128, n_layer=2, n_head=2, n_embd=32))
    save_checkpoint(root / "sft", gpt, {"stage": "sft"}, tokenizer_path=root / "tokenizer.json")
    return {"root": root, "splits": splits, "rankings": rankings, "tok": tok, "gpt": gpt}


@pytest.fixture
def workspace(tmp_path, monkeypatch, world) -> Path:
    """cwd laid out as the pipeline leaves it before train_rm: data/raw/instructions, models/sft, data/rankings."""
    import shutil

    monkeypatch.chdir(tmp_path)
    for split, rows in world["splits"].items():
        write_jsonl(tmp_path / f"data/raw/instructions/{split}.jsonl", rows)
    shutil.copytree(world["root"] / "sft", tmp_path / "models/sft")
    write_rankings(tmp_path, world["rankings"])
    return tmp_path


def write_rankings(root: Path, rows: list[dict]) -> Path:
    path = root / "data/rankings/rankings.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_parquet(path)
    return path


def tiny_rm(world, seed: int = 0, lm_scale: float | None = None) -> RewardModel:
    torch.manual_seed(seed)
    gpt = GPT(world["gpt"].config)
    gpt.load_state_dict(world["gpt"].state_dict())
    return RewardModel(gpt, lm_scale=lm_scale)


def items_of(world, n: int) -> list[train_rm.Item]:
    tok, ins = world["tok"], {r["id"]: r for r in world["splits"]["rl_prompts"]}
    df = pd.DataFrame(world["rankings"][:n])
    items, counts = train_rm.encode_items(df, Path("r.parquet"), ins, tok, 128)
    assert counts == {"dropped_responses": 0, "skipped_prompts": 0}
    return items


# --- the loss and the model ----------------------------------------------------------------------


def test_k_way_loss_is_the_mean_of_the_pairwise_losses():
    """Prompts of K = 3, 4 and 4 (grouped by K inside): the loss is the mean over prompts of the
    mean over each prompt's C(K,2) pairs of -log sigmoid(r_winner - r_loser), computed naively."""
    g = torch.Generator().manual_seed(0)
    items, rewards = [], []
    for k in (3, 4, 4):
        order = torch.randperm(k, generator=g).tolist()
        items.append(train_rm.Item("p", "list", "", [""] * k, [""] * k, [[1]] * k, [0] * k, [], order, {}))
        rewards.append(torch.randn(k, generator=g))
    loss, right, pairs = train_rm.items_loss(rewards, items)
    per_prompt, naive_right = [], 0
    for it, r in zip(items, rewards):
        terms = []
        for a in range(len(it.order)):
            for b in range(a + 1, len(it.order)):
                d = r[it.order[a]] - r[it.order[b]]
                terms.append(-F.logsigmoid(d))
                naive_right += int(d > 0)
        assert len(terms) == math.comb(len(it.order), 2)
        per_prompt.append(sum(terms) / len(terms))
    torch.testing.assert_close(loss, sum(per_prompt) / len(per_prompt))
    assert pairs == 3 + 6 + 6 and right == pytest.approx(naive_right)


@pytest.mark.parametrize("packed", [False, True])
def test_each_response_is_forwarded_once_per_batch(world, packed):
    """One trunk pass per batch; each response's tokens in it once (never once per pair): K rows
    per prompt, or packed, one row per prompt holding the prompt once and its K responses."""
    items = items_of(world, 10)
    rm = tiny_rm(world)
    passes = []  # per trunk pass: (rows, real tokens)
    pad = world["tok"].pad_id
    rm.gpt.transformer.wte.register_forward_hook(lambda m, args, out: passes.append((args[0].shape[0], int((args[0] != pad).sum()))) and None)
    rc = settings("train_rm", batch_size=4, epochs=1, progress=False, pack=packed)
    history = train_rm.train(rm, rc, {"train": items, "val": [], "heldout": []}, pad, "cpu")
    assert len(passes) == math.ceil(10 / 4) and history[0]["train_loss"] > 0
    responses = sum(len(r) - n for it in items for r, n in zip(it.rows, it.n_prompt))
    if packed:
        assert sum(p[0] for p in passes) == 10 and sum(p[1] for p in passes) == responses + sum(len(it.prompt_ids) for it in items)
    else:
        assert sum(p[0] for p in passes) == 10 * K and sum(p[1] for p in passes) == sum(len(r) for it in items for r in it.rows)


@pytest.mark.parametrize("lm_scale", [None, 0.7])
def test_packed_rows_score_like_unpacked_rows(world, lm_scale):
    """A prompt once, K responses after it under the tree mask: the same rewards as K rows (with
    and without the likelihood feature); and scoring packs only prompts that no response needed
    cut, so it always matches K rows."""
    items = items_of(world, 40)
    uncut = [it for it in items if all(len(it.prompt_ids) == n for n in it.n_prompt)]
    assert 5 <= len(uncut) < len(items)  # the tiny tokenizer makes some stories overflow the window
    rm, pad = tiny_rm(world, lm_scale=lm_scale).eval(), world["tok"].pad_id
    with torch.no_grad():
        rows = train_rm.forward_items(rm, items, pad, "cpu", packed=False)
        packed = train_rm.forward_items(rm, uncut, pad, "cpu", packed=True)
    for a, b in zip([r for r, it in zip(rows, items) if it in uncut], packed):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    scored = train_rm.score_items(rm, items, pad, "cpu", batch_size=7)
    torch.testing.assert_close(torch.tensor([x for r in scored for x in r]), torch.cat(rows), rtol=1e-4, atol=1e-5)


def test_reward_is_read_at_the_last_real_token_whatever_the_padding(world):
    tok, rm = world["tok"], tiny_rm(world).eval()
    r = world["rankings"][0]
    rows = [encode_example(tok, r["prompt"], y, 128)[0] for y in r["responses"]]
    ids, lengths = pad_right(rows, tok.pad_id)
    with torch.no_grad():
        base = rm(ids, lengths)
        more_pad = torch.cat([ids, torch.full((len(rows), 7), tok.pad_id)], dim=1)
        garbage = torch.where(torch.arange(ids.size(1))[None, :] < lengths[:, None], ids, torch.randint(5, 300, ids.shape))
        torch.testing.assert_close(rm(more_pad, lengths), base)
        torch.testing.assert_close(rm(garbage, lengths), base)  # whatever follows the EOS
        for i, row in enumerate(rows):  # each row alone, unpadded
            torch.testing.assert_close(rm(torch.tensor([row]), torch.tensor([len(row)])), base[i : i + 1])
        torch.testing.assert_close(rm.scores(ids)[torch.arange(len(rows)), lengths - 1], base)
    assert all(row[-1] == tok.eos_id for row in rows) and base.std() > 0


def test_save_load_and_normalized(world, tmp_path):
    tok, rm = world["tok"], tiny_rm(world)
    rm.bias, rm.std = 0.25, 2.0
    rm.save(tmp_path / "rm", {"stage": "train_rm", "reward": {"bias_measured_on": "test"}}, tokenizer_path=world["root"] / "tokenizer.json")
    back = RewardModel.load(tmp_path / "rm").eval()
    assert (back.bias, back.std) == (0.25, 2.0) and back.meta["reward"]["bias_measured_on"] == "test"
    ids, lengths = pad_right([encode_example(tok, "Name two animals.", "A cat and a dog.", 128)[0]], tok.pad_id)
    with torch.no_grad():
        raw = rm.eval()(ids, lengths)
        torch.testing.assert_close(back(ids, lengths), raw)
        torch.testing.assert_close(back.normalized(ids, lengths), (raw - 0.25) / 2.0)
    with pytest.raises(Exception, match="not a reward model"):
        RewardModel.load(world["root"] / "sft")


def test_split_is_by_prompt_stable_and_seeded():
    ids = [f"rl_prompts-{i:05d}" for i in range(2000)]
    a = [split_of(i, 1, 0.2, 0.1) for i in ids]
    assert a == [split_of(i, 1, 0.2, 0.1) for i in ids]  # a pure function of (seed, id)
    assert abs(a.count("heldout") / 2000 - 0.2) < 0.03 and abs(a.count("val") / 2000 - 0.1) < 0.03
    assert a != [split_of(i, 2, 0.2, 0.1) for i in ids]
    # more held out never moves a held-out prompt back into training
    b = [split_of(i, 1, 0.3, 0.0) for i in ids]
    assert all(y == "heldout" for x, y in zip(a, b) if x == "heldout")


# --- the stage -----------------------------------------------------------------------------------


def test_end_to_end_metrics_checkpoint_bias_and_mlflow(workspace, world):
    tracked = [o for o in QUICK if not o.startswith("tracking.")]
    cfg = compose([*tracked, f"tracking.uri=sqlite:///{workspace}/mlflow.db",
                   "train_rm.epochs=2", "train_rm.lr=1e-3", "train_rm.heldout_fraction=0.3"])
    flat = train_rm.run(cfg)
    m = json.loads(Path("metrics/train_rm.json").read_text())
    ho = m["heldout"]
    for key in ("pairwise_acc", "oracle_acc", "labeler_agreement", "tie_share", "margin"):
        assert 0 <= ho[key] <= 1 or key == "margin", key
    assert 0 <= m["train"]["pairwise_acc"] <= 1
    assert m["data"]["train_prompts"] + m["data"]["heldout_prompts"] == 40 and m["data"]["heldout_prompts"] > 5
    assert ho["pairs"] == 6 * m["data"]["heldout_prompts"] and ho["oracle_pairs"] == round(ho["pairs"] * (1 - ho["tie_share"]))
    assert ho["decisive_pairs"] == ho["oracle_pairs"] and ho["tied_pairs"] + ho["decisive_pairs"] == ho["pairs"]
    right = sum(ho[f"{t}_label_acc"] * ho[f"{t}_pairs"] for t in ("tied", "decisive") if ho[f"{t}_pairs"])
    assert right == pytest.approx(ho["pairwise_acc"] * ho["pairs"])  # the two parts make up the whole
    assert set(ho["by_kind"]) <= {"mood_sentence", "story_where", "story_colour", "list", "describe", "opposite"}
    assert sum(v["pairs"] for v in ho["by_kind"].values()) == ho["pairs"]
    assert all({"pairwise_acc", "oracle_acc"} <= set(v) for v in ho["by_kind"].values())
    assert set(ho["by_source"]) == {"sft"} and ho["by_source"]["sft"]["pairwise_acc"] == ho["pairwise_acc"]  # "sft T=1.0" -> sft
    assert m["reward"]["std"] > 0 and m["reward"]["demonstrations"] == 12 and m["reward"]["samples"] == 40 * K
    assert flat["heldout.pairwise_acc"] == ho["pairwise_acc"]

    # the checkpoint: demonstrations average 0 after the bias; std as measured on the candidates
    rm = RewardModel.load("models/rm")
    assert rm.meta["stage"] == "train_rm" and rm.bias == m["reward"]["bias"] and "sft_val.jsonl" in rm.meta["reward"]["bias_measured_on"]
    assert rm.lm_scale is not None and rm.lm_scale.item() != 1.0  # the likelihood feature's scale is trained too
    tok = Tokenizer.load("models/rm/tokenizer.json")
    demos = train_rm.demonstrations(cfg.train_rm, tok, 128)
    ids, lengths = pad_right([r for r, _ in demos], tok.pad_id)
    with torch.no_grad():
        assert abs(rm.eval().normalized(ids, lengths, torch.tensor([n for _, n in demos])).mean().item()) < 1e-4
    items = items_of(world, 40)
    raw = torch.tensor([x for r in train_rm.score_items(rm, items, tok.pad_id, "cpu", 64) for x in r])
    assert raw.std().item() == pytest.approx(rm.std, rel=1e-4)

    import mlflow

    (run,) = mlflow.search_runs(experiment_names=[cfg.tracking.experiment], output_format="list")
    assert run.data.tags["instructflow.stage"] == "train_rm"
    assert run.data.metrics["final/heldout.pairwise_acc"] == pytest.approx(ho["pairwise_acc"])
    assert [d.dataset.name for d in run.inputs.dataset_inputs] == ["rankings"]
    assert run.data.params["train_rm.epochs"] == "2"


def test_early_stopping_keeps_the_best_val_epoch(workspace):
    train_rm.run(compose([*QUICK, "train_rm.epochs=3", "train_rm.val_fraction=0.3", "train_rm.patience=1", "train_rm.lr=3e-3"]))
    m = json.loads(Path("metrics/train_rm.json").read_text())
    hist = json.loads(Path("models/rm/meta.json").read_text())["history"]
    assert 2 <= m["epochs_run"] == len(hist) <= 3 and m["data"]["val_prompts"] > 0
    best = max(h["val_acc"] for h in hist)
    assert m["val"]["pairwise_acc"] == pytest.approx(best)  # the kept weights are the best epoch's


def test_kill_and_run_again_ends_as_an_uninterrupted_run(workspace):
    """Checkpoints every ckpt_every steps go to .resume/models/rm; killed there and started again with
    the same settings, the run continues mid-epoch (shuffle, running sums, best epoch so far) and
    ends with the weights and metrics of a run never stopped."""
    from conftest import run_and_kill
    from tasks.config import write_params

    args = [*QUICK, "train_rm.epochs=3", "train_rm.val_fraction=0.3", "train_rm.patience=2", "train_rm.ckpt_every=3",
            "train_rm.lr=3e-3", "train_rm.dropout=0.1"]
    train_rm.run(compose(args))
    weights = {p: Path(p).read_bytes() for p in ("models/rm/model.safetensors", "models/rm/heads.safetensors")}
    timeless = lambda m: {k: v for k, v in m.items() if k not in ("time_s", "wall_s")}  # noqa: E731
    reference = timeless(json.loads(Path("metrics/train_rm.json").read_text()))
    assert not Path(".resume").exists()
    write_params(compose(args), "params.yaml")
    killed_at = run_and_kill("train_rm", Path(".resume/models/rm/meta.json"), "step", 6)
    steps = json.loads(Path("models/rm/meta.json").read_text())["history"][-1]["step"]
    assert killed_at is not None and killed_at < steps, "the run finished before it could be killed"
    train_rm.run(compose(args))
    assert {p: Path(p).read_bytes() for p in weights} == weights
    assert timeless(json.loads(Path("metrics/train_rm.json").read_text())) == reference
    assert not Path(".resume").exists()


# --- bad input -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda rows: [{k: v for k, v in r.items() if k != "ranking"} for r in rows], r"rankings.parquet: missing column\(s\) ranking"),
        (lambda rows: rows[:2] + [{**rows[2], "ranking": [0, 1, 1, 3]}] + rows[3:],
         r"rankings.parquet: row 3 \(rl_prompts-\d+\): ranking \[0, 1, 1, 3\] is not a permutation of 0..3"),
        (lambda rows: rows[:4] + [{**rows[4], "responses": ["only one"], "ranking": [0]}] + rows[5:],
         r"rankings.parquet: row 5 \(rl_prompts-\d+\): 1 response\(s\); a ranking needs at least 2"),
        (lambda rows: rows[:1] + [{**rows[1], "id": "nowhere-1"}] + rows[2:], r"row 2: prompt id 'nowhere-1' is not in rl_prompts.jsonl"),
    ],
)
def test_bad_rankings_are_one_line_and_write_nothing(workspace, world, edit, match):
    write_rankings(workspace, edit(world["rankings"]))
    with pytest.raises(InputError, match=match) as e:
        train_rm.run(compose(QUICK))
    assert "\n" not in str(e.value)
    assert not Path("models/rm").exists() and not Path("metrics").exists()


def test_missing_rankings_exit_2_with_one_line(workspace):
    Path("data/rankings/rankings.parquet").unlink()
    proc = run_cmd([sys.executable, "-m", "tasks.train_rm", *QUICK], cwd=workspace, env={"PYTHONPATH": str(ROOT)}, check=False)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines == ["error: data/rankings/rankings.parquet: not found (run the collect_rankings stage first)"]
    assert not Path("models/rm").exists() and not Path("metrics").exists()


def test_likelihood_feature_is_the_mean_response_log_prob(world):
    """r = head(EOS state) + lm_scale * mean log p(every response token, the first and the EOS), by hand;
    a response of EOS alone is scored by log p(EOS | prompt), not by an empty mean (0, the best)."""
    from torch.nn import functional as F

    items = items_of(world, 4)
    rm_plain, rm_lm = tiny_rm(world), tiny_rm(world, lm_scale=0.5)
    it = items[0]
    ids, lengths = pad_right(it.rows, world["tok"].pad_id)
    n_prompt = torch.tensor(it.n_prompt)
    with torch.no_grad():
        got = rm_lm(ids, lengths, n_prompt) - rm_plain(ids, lengths)
        logp = F.log_softmax(rm_plain.gpt(ids), dim=-1)
        for i, row in enumerate(it.rows):
            lps = [logp[i, t, row[t + 1]].item() for t in range(it.n_prompt[i] - 1, len(row) - 1)]
            assert got[i].item() == pytest.approx(0.5 * sum(lps) / len(lps), rel=1e-4, abs=1e-5)
    with pytest.raises(ValueError, match="pass n_prompt"):
        rm_lm(ids, lengths)
    prompt = it.rows[0][: it.n_prompt[0]]
    eos = world["tok"].eos_id
    ids, lengths = pad_right([prompt + [eos]], world["tok"].pad_id)
    with torch.no_grad():
        got = rm_lm(ids, lengths, torch.tensor([len(prompt)])) - rm_plain(ids, lengths)
        want = F.log_softmax(rm_plain.gpt(ids), dim=-1)[0, len(prompt) - 1, eos].item()
    assert got.item() == pytest.approx(0.5 * want, rel=1e-4, abs=1e-5) and want < -1e-3
