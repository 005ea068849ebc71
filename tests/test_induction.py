"""The copy probe (model/induction.py): Olsson et al.'s repeated random tokens tell a model that
copies from its context from one that does not, whatever the model's size."""

import types

import pytest
import torch

from model.induction import repeat_loss, repeat_loss_of

VOCAB = 300


class Copier(torch.nn.Module):
    """An induction head written out: at each position find the last earlier occurrence of the current
    token and predict the token that followed it (confidently); elsewhere, uniform."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.config = types.SimpleNamespace(block_size=256)

    def forward(self, idx):
        B, T = idx.shape
        logits = torch.zeros(B, T, VOCAB)
        for b in range(B):
            seen = {}
            for t in range(T):
                tok = int(idx[b, t])
                if tok in seen and seen[tok] + 1 < T:
                    logits[b, t, int(idx[b, seen[tok] + 1])] = 20.0
                seen[tok] = t
        return logits + self.w


class Uniform(Copier):
    def forward(self, idx):
        return torch.zeros(*idx.shape, VOCAB) + self.w


def test_a_copier_scores_far_below_zero_and_a_blind_model_zero():
    copier = Copier().train()
    c = repeat_loss(copier, 0, 5, VOCAB, length=40, sequences=8, batch_size=3)
    assert copier.training  # eval mode inside, restored after
    # random repeats inside one copy mislead it a little (birthday collisions among 40 of 295 tokens)
    assert c.accuracy > 0.8 and c.score < -3 and c.loss_first == pytest.approx(torch.log(torch.tensor(float(VOCAB))).item(), rel=0.15)
    u = repeat_loss(Uniform(), 0, 5, VOCAB, length=40, sequences=8)
    assert u.score == pytest.approx(0.0, abs=1e-9) and u.accuracy == 0.0  # argmax of a tie is id 0, a special: never drawn
    assert (c.sequences, c.length) == (8, 40)


def test_same_seed_same_sequences_and_bad_arguments():
    a = repeat_loss(Copier(), 0, 5, VOCAB, length=20, sequences=4, seed=3)
    assert a == repeat_loss(Copier(), 0, 5, VOCAB, length=20, sequences=4, seed=3)
    with pytest.raises(ValueError, match="exceed the model's window of 256"):
        repeat_loss(Copier(), 0, 5, VOCAB, length=200)
    with pytest.raises(ValueError, match="empty"):
        repeat_loss(Copier(), 0, 5, 5)


def test_given_sequences_pool_their_tokens_and_equal_the_random_probe():
    """repeat_loss_of on the random probe's own sequences gives its numbers; on sequences of other
    lengths the copier still copies and the blind model does not."""
    seq = torch.randint(5, VOCAB, (6, 20), generator=torch.Generator().manual_seed(3))
    a, b = repeat_loss(Copier(), 0, 5, VOCAB, length=20, sequences=6, seed=3), repeat_loss_of(Copier(), 0, seq.tolist())
    assert (a.loss_first, a.loss_second, a.accuracy) == pytest.approx((b.loss_first, b.loss_second, b.accuracy))
    mixed = [seq[0, :5].tolist(), seq[1].tolist(), seq[2, :12].tolist()]
    c = repeat_loss_of(Copier(), 0, mixed)
    assert c.score < -3 and c.accuracy > 0.8 and (c.sequences, c.length) == (3, 12)
    assert repeat_loss_of(Uniform(), 0, mixed).score == pytest.approx(0.0, abs=1e-9)
    with pytest.raises(ValueError, match="at least 2 tokens"):
        repeat_loss_of(Copier(), 0, [[7]])
    with pytest.raises(ValueError, match="window of 256"):
        repeat_loss_of(Copier(), 0, [list(range(5, 200))])


def test_the_pretrained_gpt_runs_the_probe():
    from model.gpt import GPT, GPTConfig

    torch.manual_seed(0)
    gpt = GPT(GPTConfig(vocab_size=64, n_layer=1, n_head=1, n_embd=16, block_size=32))
    r = repeat_loss(gpt, 0, 5, 64, length=15, sequences=4)
    assert r.loss_first > 0 and abs(r.score) < 1.0  # an untrained model does not copy


def test_the_command_probes_checkpoints_and_names_a_bad_one(tmp_path):
    import json
    import subprocess
    import sys

    from model.checkpoint import save_checkpoint
    from model.gpt import GPT, GPTConfig
    from model.tokenizer import Tokenizer

    tok = Tokenizer.train(["a tiny corpus of words"] * 4, 261, kind="char")
    tok.save(tmp_path / "tokenizer.json")
    gpt = GPT(GPTConfig(vocab_size=tok.vocab_size, n_layer=1, n_head=1, n_embd=16, block_size=32))
    save_checkpoint(tmp_path / "ckpt", gpt, {"stage": "test"}, tokenizer_path=tmp_path / "tokenizer.json")
    r = subprocess.run([sys.executable, "-m", "tasks.induction", str(tmp_path / "ckpt"), "--sequences", "4"],
                       capture_output=True, text=True, check=True)
    out = json.loads(r.stdout)
    assert out["length"] == 15 and out["sequences"] == 4 and out["loss_first"] > 0  # 50 cut to (32 - 1) // 2
    r = subprocess.run([sys.executable, "-m", "tasks.induction", str(tmp_path / "ckpt"), "--sequences", "3", "--words", "2"],
                       capture_output=True, text=True, check=True)
    out = json.loads(r.stdout)  # two words of the world, one token per character here
    assert out["sequences"] == 3 and out["length"] >= 6 and out["loss_first"] > 0
    bad = subprocess.run([sys.executable, "-m", "tasks.induction", str(tmp_path)], capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.strip() == f"error: checkpoint {tmp_path}: config.json is missing"
    (tmp_path / "empty").mkdir()
    bad = subprocess.run([sys.executable, "-m", "tasks.induction", str(tmp_path / "empty")], capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.strip() == f"error: {tmp_path / 'empty'}: no tokenizer.json (a checkpoint folder of this project is needed)"


@pytest.mark.parametrize("pos", ["learned", "rope"])
def test_the_gpt_learns_to_copy_from_a_pure_copy_task(pos):
    """The circuit the probe looks for is within the model's reach: a 2-layer GPT trained on nothing
    but random tokens said twice (`train_copying`) predicts the second copy exactly within 150 steps
    (docs/prompting.md, "Copying from the context, measured": the corpus runs never find it)."""
    from model.gpt import GPT, GPTConfig
    from model.induction import train_copying

    torch.manual_seed(0)
    gpt = GPT(GPTConfig(vocab_size=64, block_size=128, n_layer=2, n_head=2, n_embd=64, pos_encoding=pos))
    before = repeat_loss(gpt, 0, 1, 64, length=20, sequences=32)
    log = train_copying(gpt, 0, 1, 64, steps=150, batch_size=64, min_length=20, max_length=20, probe_every=50,
                        probe_length=20)
    after = repeat_loss(gpt, 0, 1, 64, length=20, sequences=32)
    assert before.accuracy < 0.1 and abs(before.score) < 0.5
    assert after.accuracy > 0.95 and after.score < -2
    assert [r["step"] for r in log] == [50, 100, 150] and log[-1]["copy_accuracy"] > 0.9
    with pytest.raises(ValueError, match="window of 128"):
        train_copying(gpt, 0, 1, 64, steps=1, max_length=70)


def test_copy_warmup_writes_a_checkpoint_pretrain_can_start_from(tmp_path):
    import json
    import subprocess
    import sys

    from model.checkpoint import load_checkpoint
    from model.tokenizer import Tokenizer

    tok = Tokenizer.train(["a tiny corpus of words"] * 4, 261, kind="char")
    tok.save(tmp_path / "tokenizer.json")
    over = ["--", "experiment=smoke", f"pretrain.data_dir={tmp_path}"]
    r = subprocess.run([sys.executable, "-m", "tasks.copy_warmup", str(tmp_path / "warm"), "--steps", "4", "--probe-every", "2", "--max-length", "20", *over],
                       capture_output=True, text=True, check=True)
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert [row["step"] for row in rows] == [2, 4] and all(row["loss"] > 0 for row in rows)
    ck = load_checkpoint(tmp_path / "warm")
    assert ck.meta["stage"] == "copy_warmup" and ck.config.vocab_size == tok.vocab_size
    assert (tmp_path / "warm" / "tokenizer.json").read_text() == (tmp_path / "tokenizer.json").read_text()
    bad = subprocess.run([sys.executable, "-m", "tasks.copy_warmup", str(tmp_path / "w2"), "--", f"pretrain.data_dir={tmp_path / 'none'}"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.strip() == f"error: {tmp_path / 'none' / 'tokenizer.json'}: not found (run `dvc repro tokenize` first)"
