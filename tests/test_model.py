"""model/: the GPT itself, sampling, and checkpoints (tiny models, CPU, a few seconds in all)."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from model.checkpoint import load_checkpoint, save_checkpoint
from model.errors import CheckpointError
from model.generate import generate
from model.gpt import GPT, GPTConfig, KVCache
from model.load import from_pretrained

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = [[5, 17, 3], [9, 2, 44, 61, 7, 30, 12], [1], [8, 8, 100, 27, 5]]


def tiny(norm_position="pre", seed=0, **kw) -> GPT:
    """A tiny GPT with weights scaled up so its outputs are far from uniform (greedy paths vary)."""
    torch.manual_seed(seed)
    cfg = dict(vocab_size=128, block_size=64, n_layer=2, n_head=2, n_embd=32, norm_position=norm_position)
    model = GPT(GPTConfig(**(cfg | kw)))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    return model.eval()


def left_pad(prompts, pad=0):
    P = max(map(len, prompts))
    idx = torch.tensor([[pad] * (P - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (P - len(p)) + [1] * len(p) for p in prompts])
    return idx, mask


# --- config -------------------------------------------------------------------------------------


def test_config_round_trip_and_unknown_key():
    cfg = GPTConfig(n_layer=3, norm_position="post")
    assert GPTConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="n_lyer"):
        GPTConfig.from_dict({"n_lyer": 3})
    with pytest.raises(ValueError, match="norm_position"):
        GPTConfig(norm_position="middle")
    with pytest.raises(ValueError, match="divisible"):
        GPTConfig(n_embd=30, n_head=4)


# --- forward ------------------------------------------------------------------------------------


def test_tied_embeddings_and_gpt2_init():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=512, block_size=32, n_layer=8, n_head=4, n_embd=128))
    assert model.lm_head.weight is model.transformer.wte.weight
    assert model.num_params() == sum(p.numel() for p in set(model.parameters()))
    std_proj = model.transformer.h[0].attn.c_proj.weight.std().item()
    std_fc = model.transformer.h[0].mlp.c_fc.weight.std().item()
    assert abs(std_fc - 0.02) < 0.002 and abs(std_proj - 0.02 / 4) < 0.001


def test_forward_shapes_loss_and_block_size():
    model = tiny()
    idx = torch.randint(128, (2, 10))
    assert model(idx).shape == (2, 10, 128)
    assert model.hidden_states(idx).shape == (2, 10, 32)
    targets = idx.roll(-1, dims=1)
    targets[:, -1] = -100
    logits, loss = model(idx, targets)
    expected = F.cross_entropy(logits[:, :-1].reshape(-1, 128), targets[:, :-1].reshape(-1))
    assert torch.allclose(loss, expected)
    with pytest.raises(ValueError, match="block_size"):
        model(torch.zeros(1, 65, dtype=torch.long))


@pytest.mark.parametrize("pos", ["learned", "rope"])
@pytest.mark.parametrize("norm_position", ["pre", "post"])
def test_ragged_rows_equal_the_padded_batch(norm_position, pos):
    """Right-padded rows run as their real tokens only give hidden_states' values at those tokens,
    and TaskModel (built on it) the padded batch's task logits and LM loss, bit for bit."""
    from model.heads import TaskHead, TaskModel

    model = tiny(norm_position, pos_encoding=pos)
    g = torch.Generator().manual_seed(2)
    lengths = torch.randint(3, 40, (6, 3), generator=g)
    T = int(lengths.max())
    idx = torch.randint(128, (6, 3, T), generator=g).masked_fill(torch.arange(T)[None, None, :] >= lengths[..., None], 0)
    flat, n = idx.view(-1, T), lengths.view(-1)
    with torch.no_grad():
        padded = model.hidden_states(flat)
        x, ragged = model.ragged_hidden_states(flat, n)
        assert x.shape == (int(n.sum()), 32)
        assert torch.equal(x, padded[ragged.keep])
        task = TaskModel(model, TaskHead(32, "choice", 1, 0.0)).eval()
        logits, lm = task(idx, lengths, lm=True)
        ends = padded[torch.arange(len(n)), n - 1].view(6, 3, -1)
        assert torch.equal(logits, task.head(ends))
        keep = torch.arange(T - 1)[None, :] < (n - 1)[:, None]
        assert torch.equal(lm, F.cross_entropy(model.lm_head(padded[:, :-1][keep]), flat[:, 1:][keep]))
    with pytest.raises(ValueError, match="block_size"):
        model.ragged_hidden_states(torch.zeros(1, 65, dtype=torch.long), torch.tensor([65]))


def test_rope_scores_relative_positions_and_has_no_position_table(tmp_path):
    """Rotary positions: no wpe; the same tokens at every position shifted by a constant give the
    same outputs (attention sees only relative positions), which learned positions do not; a packed
    row of two continuations (a 4-D mask, explicit positions) equals each continuation alone; the
    setting survives a checkpoint and is refused by the GPT-2 export."""
    from model.hf import export_hf

    rope, learned = tiny(pos_encoding="rope"), tiny()
    assert "transformer.wpe.weight" not in rope.state_dict() and "transformer.wpe.weight" in learned.state_dict()
    assert rope.num_params() == learned.num_params() - 64 * 32
    idx = torch.randint(128, (3, 20), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        torch.testing.assert_close(rope(idx), rope(idx, position_ids=torch.arange(9, 29)), atol=1e-4, rtol=0)
        assert not torch.allclose(learned(idx), learned(idx, position_ids=torch.arange(9, 29)), atol=1e-2)
        # a context of 6 then two 4-token continuations side by side, each seeing the context and itself
        ctx, c1, c2 = idx[0, :6], idx[1, :4], idx[2, :4]
        allowed = torch.zeros(14, 14, dtype=torch.bool)
        allowed[:6, :6] = torch.tril(torch.ones(6, 6, dtype=torch.bool))
        for s in (6, 10):
            allowed[s : s + 4, :6] = True
            allowed[s : s + 4, s : s + 4] = torch.tril(torch.ones(4, 4, dtype=torch.bool))
        pos = torch.cat([torch.arange(6), torch.arange(6, 10), torch.arange(6, 10)])
        packed = rope(torch.cat([ctx, c1, c2])[None], attention_mask=allowed[None, None], position_ids=pos[None])[0]
        torch.testing.assert_close(packed[6:10], rope(torch.cat([ctx, c1])[None])[0, 6:], atol=1e-4, rtol=0)
        torch.testing.assert_close(packed[10:], rope(torch.cat([ctx, c2])[None])[0, 6:], atol=1e-4, rtol=0)
    save_checkpoint(tmp_path / "ck", rope, {"stage": "test"})
    back = load_checkpoint(tmp_path / "ck").model.eval()
    assert back.config.pos_encoding == "rope"
    with torch.no_grad():
        assert torch.equal(back(idx), rope(idx))
    # it trains: the optimizer's groups (no wpe to leave undecayed), a step that lowers the loss
    train = tiny(pos_encoding="rope").train()
    opt = train.configure_optimizers(0.1, 1e-2, (0.9, 0.95), "cpu")
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(train.parameters()))
    losses = []
    for _ in range(3):
        _, loss = train(idx, idx.roll(-1, 1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    with pytest.raises(ValueError, match="pos_encoding='rope' cannot be exported"):
        export_hf(tmp_path / "ck", tmp_path / "hf")
    with pytest.raises(ValueError, match="pos_encoding"):
        GPTConfig(pos_encoding="alibi")
    with pytest.raises(ValueError, match="even head size"):
        GPTConfig(n_embd=30, n_head=2, pos_encoding="rope")


def test_token_logprobs_equal_the_full_heads_bit_for_bit():
    """The head run only where a target is (prompts and padding skipped) gives exactly the values
    of log_softmax(forward) at the targets, and 0 where the target is -100."""
    model = tiny()
    g = torch.Generator().manual_seed(1)
    idx = torch.randint(128, (6, 40), generator=g)
    targets = idx.roll(-1, dims=1)
    targets[:, :7] = -100  # a prompt
    targets[2, 20:] = -100  # a short row's padding
    targets[:, -1] = -100
    with torch.no_grad():
        full = torch.log_softmax(model(idx).float(), -1).gather(-1, targets.clamp(min=0)[..., None]).squeeze(-1)
        sparse = model.token_logprobs(idx, targets)
    assert torch.equal(sparse, full * (targets != -100))
    assert torch.equal(sparse.sum(1), (full * (targets != -100)).sum(1))
    assert (sparse[targets == -100] == 0).all() and (sparse[targets != -100] < 0).all()


@pytest.mark.parametrize("pos", ["learned", "rope"])
@pytest.mark.parametrize("norm_position", ["pre", "post"])
def test_left_padding_matches_unpadded(norm_position, pos):
    model = tiny(norm_position, pos_encoding=pos)
    idx, mask = left_pad(PROMPTS)
    with torch.no_grad():
        padded = model(idx, attention_mask=mask)
        for row, p in enumerate(PROMPTS):
            alone = model(torch.tensor([p]))[0]
            torch.testing.assert_close(padded[row, -len(p) :], alone, atol=1e-5, rtol=0)


@pytest.mark.parametrize("pos", ["learned", "rope"])
@pytest.mark.parametrize("padded", [False, True])
def test_kv_cache_matches_full_forward(padded, pos):
    model = tiny(pos_encoding=pos)
    prompts = PROMPTS if padded else [p[:1] + [3, 4, 5, 6] for p in PROMPTS]
    idx, mask = left_pad(prompts)
    T0 = idx.size(1)
    extra = torch.randint(128, (len(prompts), 4))
    full_idx = torch.cat([idx, extra], dim=1)
    full_mask = torch.cat([mask, torch.ones_like(extra)], dim=1) if padded else None
    with torch.no_grad():
        full = model(full_idx, attention_mask=full_mask)
        cache = KVCache(model.config, len(prompts), full_idx.size(1))
        step = [model(idx, attention_mask=mask if padded else None, kv_cache=cache)]
        step.append(model(extra[:, :2], attention_mask=full_mask[:, : T0 + 2] if padded else None, kv_cache=cache))
        for t in (2, 3):  # then one token at a time
            m = full_mask[:, : T0 + t + 1] if padded else None
            step.append(model(extra[:, t : t + 1], attention_mask=m, kv_cache=cache))
    real = full_mask.bool() if padded else torch.ones(full_idx.shape, dtype=torch.bool)
    torch.testing.assert_close(torch.cat(step, dim=1)[real], full[real], atol=1e-5, rtol=0)


@pytest.mark.parametrize("norm_position", ["pre", "post"])
def test_both_norm_positions_train(norm_position):
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=32, block_size=32, n_layer=2, n_head=2, n_embd=32, norm_position=norm_position))
    opt = model.configure_optimizers(weight_decay=0.1, lr=1e-2, betas=(0.9, 0.95), device_type="cpu")
    data = torch.arange(8).repeat(5)[None, :33]  # a tiny repeated sequence
    x, y = data[:, :-1], data[:, 1:]
    losses = []
    for _ in range(15):
        _, loss = model(x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_configure_optimizers_decays_only_matmul_weights():
    model = tiny()
    opt = model.configure_optimizers(weight_decay=0.1, lr=1e-3, betas=(0.9, 0.95), device_type="cpu")
    decay, no_decay = (g["params"] for g in opt.param_groups)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.1, 0.0]
    ids = lambda ps: {id(p) for p in ps}  # noqa: E731
    assert id(model.transformer.wte.weight) in ids(no_decay) and id(model.transformer.wpe.weight) in ids(no_decay)
    assert all(p.dim() == 2 for p in decay) and len(decay) == 4 * model.config.n_layer
    assert len(decay) + len(no_decay) == len(list(model.parameters()))


# --- generate -----------------------------------------------------------------------------------


@pytest.mark.parametrize("pos", ["learned", "rope"])
@pytest.mark.parametrize("norm_position", ["pre", "post"])
def test_greedy_cache_equals_recompute_and_unpadded(norm_position, pos):
    model = tiny(norm_position, seed=0 if pos == "learned" else 2, pos_encoding=pos)  # seeds whose greedy paths vary
    cached = generate(model, PROMPTS, 12, temperature=0)
    recomputed = generate(model, PROMPTS, 12, temperature=0, use_cache=False)
    assert cached.tokens == recomputed.tokens
    assert len({tuple(t) for t in cached.tokens}) > 1 and len(set(cached.tokens[1])) > 1  # not degenerate
    for row, p in enumerate(PROMPTS):
        alone = generate(model, [p], 12, temperature=0)
        assert alone.tokens[0] == cached.tokens[row]
        assert alone.logprobs[0] == pytest.approx(cached.logprobs[row], abs=1e-4)
    P = max(map(len, PROMPTS))
    assert cached.sequences.shape == cached.attention_mask.shape == (len(PROMPTS), P + 12)
    assert cached.sequences[:, P:].tolist() == cached.tokens
    assert cached.attention_mask.sum(1).tolist() == [len(p) + 12 for p in PROMPTS]
    # ordinary tensors (not inference-mode ones): PPO re-scores them with autograd
    model.train()
    logits = model(cached.sequences, attention_mask=cached.attention_mask)
    logits.logsumexp(-1).mean().backward()


def test_logprobs_are_the_unmodified_distribution():
    model = tiny()
    g = torch.Generator().manual_seed(0)
    out = generate(model, PROMPTS, 6, temperature=0.7, top_k=5, generator=g)
    with torch.no_grad():
        logits = model(out.sequences, attention_mask=out.attention_mask)
    logp = F.log_softmax(logits, dim=-1)
    P = max(map(len, PROMPTS))
    for row in range(len(PROMPTS)):
        for t, (tok, lp) in enumerate(zip(out.tokens[row], out.logprobs[row])):
            assert lp == pytest.approx(logp[row, P + t - 1, tok].item(), abs=1e-4)


def test_top_k_and_top_p_stay_in_the_allowed_set():
    model = tiny()
    prompt = [[5, 17, 3]]
    with torch.no_grad():
        probs = F.softmax(model(torch.tensor(prompt))[0, -1], dim=-1)
    order = probs.argsort(descending=True).tolist()
    top3 = set(order[:3])
    cum, nucleus = 0.0, set()
    for tok in order:  # smallest set whose mass reaches 0.5
        nucleus.add(tok)
        cum += probs[tok].item()
        if cum >= 0.5:
            break
    g = torch.Generator().manual_seed(0)
    k_draws = {t[0] for t in generate(model, prompt * 64, 1, top_k=3, generator=g).tokens}
    p_draws = {t[0] for t in generate(model, prompt * 64, 1, top_p=0.5, generator=g).tokens}
    assert k_draws <= top3 and len(k_draws) > 1
    assert p_draws <= nucleus


def test_eos_stops_a_row_and_the_batch():
    model = tiny()
    greedy = generate(model, PROMPTS, 12, temperature=0)
    eos = greedy.tokens[1][3]  # row 1 hits this at step 4 (others may too, earlier or later)
    out = generate(model, PROMPTS, 12, temperature=0, eos_id=eos, pad_id=127)
    for row, toks in enumerate(out.tokens):
        full = greedy.tokens[row]
        stop = full.index(eos) + 1 if eos in full else len(full)
        assert toks == full[:stop]
        P = max(map(len, PROMPTS))
        after = out.sequences[row, P + len(toks) :]
        assert (after == 127).all() and (out.attention_mask[row, P + len(toks) :] == 0).all()
    # every row stopping ends the loop early
    single = generate(model, [PROMPTS[1]], 12, temperature=0, eos_id=eos)
    assert single.tokens[0] == greedy.tokens[1][:4]
    assert single.sequences.shape[1] == len(PROMPTS[1]) + 4


@pytest.mark.parametrize("kw", [dict(temperature=0), dict(temperature=1.0), dict(temperature=1.3, top_p=0.8)])
def test_stopped_rows_leave_the_batch_and_nothing_changes(kw, monkeypatch):
    """Compaction (rows that stopped leave the running batch with their KV cache) gives the same
    tokens, sequences and masks as keeping every row, the same log-probabilities up to the last bits
    (which CPU kernels a batch of a given size takes depends on the machine and the shapes; on the
    pipeline's model they were bit-identical), and leaves the generator where it would be."""
    model = tiny()
    rng = np.random.default_rng(0)
    prompts = [rng.integers(1, 127, int(n)).tolist() for n in rng.integers(1, 9, 24)]
    first = generate(model, prompts, 16, generator=torch.Generator().manual_seed(1), **kw)
    eos = int(np.bincount([t for row in first.tokens for t in row]).argmax())  # a common token: rows stop apart
    kept = []
    monkeypatch.setattr(KVCache, "keep", lambda self, rows, f=KVCache.keep: (kept.append(rows.numel()), f(self, rows)))
    g1, g2 = torch.Generator().manual_seed(2), torch.Generator().manual_seed(2)
    out = generate(model, prompts, 16, eos_id=eos, pad_id=127, generator=g1, **kw)
    ref = generate(model, prompts, 16, eos_id=eos, pad_id=127, generator=g2, compact=False, **kw)
    assert out.tokens == ref.tokens
    for a, b in zip(out.logprobs, ref.logprobs):
        assert a == pytest.approx(b, abs=1e-5)
    assert torch.equal(out.sequences, ref.sequences) and torch.equal(out.attention_mask, ref.attention_mask)
    assert torch.equal(torch.rand(4, generator=g1), torch.rand(4, generator=g2))
    lengths = [len(t) for t in out.tokens]
    assert min(lengths) < 16 and len(set(lengths)) >= 3  # rows stopped at different steps
    assert kept and min(kept) >= 4 and kept == sorted(kept, reverse=True)  # compacted, never below MIN_ROWS


def test_sampling_is_torch_multinomials_draw():
    """_pick's sample (argmax of p / q, q ~ Exp(1), drawn for the whole batch) equals torch.multinomial."""
    from model.generate import _pick

    logits = torch.randn(16, 50) * 3
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    for _ in range(3):
        want = torch.multinomial(torch.softmax(logits, -1), 1, generator=g1).squeeze(1)
        got = _pick(logits, 1.0, 0, 1.0, g2, torch.arange(16), 16)
        assert torch.equal(want, got)
    # read at a subset of rows: each row's sample is the one it gets in the whole batch
    rows = torch.tensor([1, 7, 8, 15])
    want = torch.multinomial(torch.softmax(logits, -1), 1, generator=g1).squeeze(1)[rows]
    assert torch.equal(_pick(logits[rows], 1.0, 0, 1.0, g2, rows, 16), want)


def test_generate_rejects_overlong_and_keeps_train_mode():
    model = tiny().train()
    with pytest.raises(ValueError, match="block_size"):
        generate(model, PROMPTS, 60)
    with pytest.raises(ValueError, match="at least one token"):
        generate(model, [[1], []], 4)
    generate(model, PROMPTS, 2)
    assert model.training


# --- checkpoints --------------------------------------------------------------------------------


def test_checkpoint_round_trip(tmp_path):
    model = tiny("post")
    tok = tmp_path / "tok.json"
    tok.write_text('{"model": {}}')
    opt = model.configure_optimizers(0.1, 1e-3, (0.9, 0.95), "cpu")
    _, loss = model(torch.randint(128, (1, 8)), torch.randint(128, (1, 8)))
    loss.backward()
    opt.step()
    heads = {"value.weight": torch.randn(1, 32), "value.bias": torch.zeros(1)}
    state = {"optimizer": opt.state_dict(), "step": 7, "rng": torch.get_rng_state()}
    path = save_checkpoint(
        tmp_path / "ck",
        model,
        {"stage": "sft", "step": 7},
        tokenizer_path=tok,
        trainer_state=state,
        extra_tensors=heads,
    )
    assert sorted(p.name for p in path.iterdir()) == sorted(
        ["model.safetensors", "config.json", "meta.json", "tokenizer.json", "trainer.pt", "heads.safetensors"]
    )
    ck = load_checkpoint(path, load_trainer=True)
    assert ck.config == model.config and ck.meta == {"stage": "sft", "step": 7}
    assert ck.model.lm_head.weight is ck.model.transformer.wte.weight
    for (k, a), b in zip(model.state_dict().items(), ck.model.state_dict().values()):
        assert torch.equal(a, b), k
    assert ck.trainer_state["step"] == 7 and torch.equal(ck.trainer_state["rng"], state["rng"])
    assert set(ck.extra_tensors) == set(heads) and torch.equal(ck.extra_tensors["value.weight"], heads["value.weight"])
    assert ck.tokenizer_path.read_text() == tok.read_text()
    assert load_checkpoint(path).trainer_state is None
    assert from_pretrained(path, dropout=0.2).config.dropout == 0.2


def test_save_failure_keeps_the_old_checkpoint(tmp_path):
    path = save_checkpoint(tmp_path / "ck", tiny(seed=1), {"step": 1})
    before = {p.name: p.read_bytes() for p in path.iterdir()}
    with pytest.raises(CheckpointError, match="trainer_state cannot be saved"):
        save_checkpoint(path, tiny(seed=2), {"step": 2}, trainer_state={"fn": lambda: 0})  # lambdas don't pickle
    with pytest.raises(CheckpointError, match="numpy"):  # pickles, but weights_only loading would refuse it
        save_checkpoint(path, tiny(seed=2), {"step": 2}, trainer_state={"rng": np.random.get_state()})
    with pytest.raises(TypeError):
        save_checkpoint(path, tiny(seed=2), {"step": object()})  # meta must be JSON
    assert {p.name: p.read_bytes() for p in path.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["ck"]  # no temp folder left behind
    save_checkpoint(path, tiny(seed=2), {"step": 2})  # a good save replaces it
    assert load_checkpoint(path).meta == {"step": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["ck"]


def test_corrupt_checkpoints_raise_checkpoint_error(tmp_path):
    path = save_checkpoint(tmp_path / "ck", tiny(), {"step": 1})
    weights = path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match="model.safetensors is truncated or corrupt") as e:
        load_checkpoint(path)
    assert "\n" not in str(e.value) and str(path) in str(e.value)

    path = save_checkpoint(tmp_path / "ck2", tiny(), {"step": 1})
    (path / "meta.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="meta.json is not valid JSON"):
        load_checkpoint(path)
    (path / "meta.json").unlink()
    with pytest.raises(CheckpointError, match="meta.json is missing"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="folder not found"):
        load_checkpoint(tmp_path / "nope")

    path = save_checkpoint(tmp_path / "ck3", tiny(), {"step": 1})
    cfg = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps(cfg | {"n_layer": 3}))
    with pytest.raises(CheckpointError, match="does not match config.json"):
        load_checkpoint(path)
    (path / "config.json").write_text(json.dumps(cfg | {"n_lyer": 3}))
    with pytest.raises(CheckpointError, match="n_lyer"):
        load_checkpoint(path)


def test_model_package_imports_no_optional_dependencies():
    code = (
        "import sys, model, model.hf; "
        "bad = {'transformers', 'prefect', 'mlflow', 'dvc', 'hydra', 'omegaconf'} & sys.modules.keys(); "
        "print(sorted(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# --- in-context learning by position (model/icl.py) -----------------------------------------------


class CopyModel(torch.nn.Module):
    """Predicts that the next token repeats the current one (logit C on it): each position's loss is
    HIT where the document repeats its token, MISS elsewhere. Records its inputs."""

    C, V = 4.0, 8

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(()))
        self.seen = []

    def forward(self, idx):
        self.seen.append(idx.clone())
        return self.C * F.one_hot(idx, self.V).float() + self.w  # (B, T, V)


HIT = float(np.log(np.exp(CopyModel.C) + CopyModel.V - 1) - CopyModel.C)
MISS = float(np.log(np.exp(CopyModel.C) + CopyModel.V - 1))
EOS = 0
LONG = [1, 2] * 5 + [3] * 10  # 20 tokens: alternating (misses), then repeated (hits from position 11 on)
SHORT = [4, 5, 4, 5, 4]


def stream_of(docs) -> np.ndarray:
    return np.array([t for d in docs for t in (*d, EOS)], dtype=np.uint16)


def test_scaled_ranges_keep_olssons_positions_or_shrink_with_the_window():
    from model.icl import scaled_ranges

    assert scaled_ranges([40, 60], [450, 500], 512) == ((40, 60), (450, 500))
    assert scaled_ranges([40, 60], [450, 500], 64) == ((5, 8), (57, 64))
    assert scaled_ranges([40, 60], [450, 500], 4) == ((0, 1), (3, 4))  # never empty
    for early, late in (([60, 40], [450, 500]), ([40, 460], [450, 500]), ([40], [450, 500])):
        with pytest.raises(ValueError, match="early="):
            scaled_ranges(early, late, 512)


def test_documents_are_the_runs_between_eos():
    from model.icl import documents

    starts, lengths = documents(np.array([7, 7, EOS, EOS, 3, EOS, 5, 6]), EOS)  # an empty document, an unterminated tail
    assert starts.tolist() == [0, 4, 6] and lengths.tolist() == [2, 1, 2]


def test_icl_score_on_a_model_whose_losses_are_known():
    """Windows start at document starts (EOS, then the document); each position's loss is the
    copy model's HIT or MISS, so the curve, both scores and the long-document count are exact."""
    from model.icl import position_loss

    docs = [LONG, SHORT, LONG, SHORT, SHORT, LONG, LONG]
    stream = stream_of(docs)
    T, early, late = 16, (2, 4), (12, 16)
    model = CopyModel()
    pl = position_loss(model, stream, EOS, T, windows=100, early=early, late=late, seed=0, batch_size=3)
    starts = np.cumsum([0] + [len(d) + 1 for d in docs[:-1]])
    assert pl.windows == 7 and pl.long_docs == 4 and pl.windows_long == 4  # every start fits: the last LONG has 20 tokens
    # every window seen once (the long score reuses the windows of long documents): EOS then the T-1 first tokens of a document
    rows = torch.cat(model.seen).numpy()
    assert [len(r) for r in model.seen] == [3, 3, 1] and rows.shape == (7, T)
    assert sorted(tuple(r) for r in rows) == sorted(tuple([EOS, *stream[s : s + T - 1]]) for s in starts)
    # long windows: hits from position 11, misses before; short windows miss everywhere (alternating, then EOS, then LONG's start)
    want_long = np.array([MISS] * 11 + [HIT] * 5)
    assert np.allclose(pl.curve_long, want_long, atol=1e-5)
    short_curve = np.array([MISS] * 16)
    short_curve[6] = MISS  # position 5 predicts EOS after 4 (miss), position 6 the next document's first token after EOS (miss)
    assert np.allclose(pl.curve, (4 * want_long + 3 * short_curve) / 7, atol=1e-5)
    assert pl.score == pytest.approx(4 / 7 * (HIT - MISS), abs=1e-5)
    assert pl.score_long == pytest.approx(HIT - MISS, abs=1e-5)
    # the score is the late mean minus the early mean of the returned curve
    assert pl.score == pytest.approx(pl.curve[12:16].mean() - pl.curve[2:4].mean())
    assert (pl.early, pl.late) == (early, late)


def test_icl_long_windows_stop_at_their_document_and_none_without_long_documents():
    from model.icl import position_loss

    stream = stream_of([SHORT] * 6 + [LONG] + [SHORT] * 2)
    pl = position_loss(CopyModel(), stream, EOS, 24, windows=100, early=(2, 4), late=(12, 20))
    assert pl.long_docs == 1 and pl.windows_long == 1
    assert np.isnan(pl.curve_long[20:]).all() and not np.isnan(pl.curve_long[:20]).any()  # past LONG's 20 tokens: not scored
    assert pl.windows == 7  # the last two SHORTs start too close to the end for a whole window
    none = position_loss(CopyModel(), stream_of([SHORT] * 8), EOS, 8, early=(2, 4), late=(6, 8))
    assert none.long_docs == 0 and none.score_long is None and none.curve_long is None and np.isfinite(none.score)


def test_icl_is_seeded_batched_and_leaves_train_mode():
    """A real GPT: the same windows for the same seed, batching changes nothing, a subset for fewer windows."""
    from model.icl import buckets, position_loss

    model = tiny().train()
    rng = np.random.default_rng(1)
    docs = [rng.integers(1, 128, size=int(n)).tolist() for n in rng.integers(5, 60, size=40)]
    stream = stream_of(docs)
    kw = dict(early=(4, 8), late=(24, 32), seed=3)
    a = position_loss(model, stream, EOS, 32, windows=10, batch_size=4, **kw)
    b = position_loss(model, stream, EOS, 32, windows=10, batch_size=10, **kw)
    assert model.training  # restored
    assert a.windows == 10 and np.allclose(a.curve, b.curve, atol=1e-5) and a.score == pytest.approx(b.score, abs=1e-5)
    c = position_loss(model, stream, EOS, 32, windows=10, batch_size=4, **(kw | {"seed": 4}))
    assert not np.allclose(a.curve, c.curve)  # another seed, other windows
    assert a.long_docs == sum(len(d) >= 32 for d in docs) and a.windows_long == min(10, a.long_docs)
    rows = buckets(a.curve, 8)
    assert [p for p, _ in rows] == list(range(0, 32, 4)) and rows[1][1] == pytest.approx(a.curve[4:8].mean())


def test_a_pickle_planted_in_a_checkpoint_is_refused_not_run(tmp_path):
    """trainer.pt is read with weights_only=True: a pickle that would run code when unpickled (here:
    create a file) is refused with one line, and the code never runs. The weights are safetensors."""
    import torch

    class Exploit:
        def __reduce__(self):
            return (Path.touch, (tmp_path / "pwned",))

    path = tmp_path / "ckpt"
    save_checkpoint(path, tiny(seed=1), {"step": 1}, trainer_state={"step": 1})
    torch.save({"step": 1, "payload": Exploit()}, path / "trainer.pt")
    with pytest.raises(CheckpointError, match=r"checkpoint .*ckpt: trainer.pt is truncated or corrupt \(weights_only loading refuses"):
        load_checkpoint(path, load_trainer=True)
    assert not (tmp_path / "pwned").exists()
    assert load_checkpoint(path).meta["step"] == 1  # the weights alone never unpickle anything

