"""The training library (model/train.py, model/data.py) on hand cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from model.data import TokensMissing, load_tokens, step_offsets, window_batch
from model.train import (NonFiniteLoss, curve_csv, epoch_order, generator, optimizer_step, set_dropout, stream_indices, warmup_cosine,
                         warmup_linear, warmup_steps)


def test_warmup_cosine_by_hand():
    lr, lo = 1e-3, 1e-4
    assert warmup_cosine(0, 100, 10, lr, lo) == pytest.approx(lr / 10)
    assert warmup_cosine(9, 100, 10, lr, lo) == pytest.approx(lr)
    assert warmup_cosine(10, 100, 10, lr, lo) == pytest.approx(lr)  # top of the cosine
    assert warmup_cosine(55, 100, 10, lr, lo) == pytest.approx(lo + 0.5 * (lr - lo))  # half-way
    assert warmup_cosine(100, 100, 10, lr, lo) == pytest.approx(lo)
    assert warmup_cosine(500, 100, 10, lr, lo) == pytest.approx(lo)  # stays at the floor


def test_warmup_linear_by_hand():
    assert warmup_steps(0.1, 50) == 5 and warmup_steps(0.0, 50) == 1
    assert warmup_linear(0, 50, 5, 1.0) == pytest.approx(0.2)
    assert warmup_linear(5, 50, 5, 1.0) == pytest.approx(1.0)
    assert warmup_linear(50, 50, 5, 1.0) == 0.0
    assert warmup_linear(60, 50, 5, 1.0) == 0.0  # never negative


def test_optimizer_step_refuses_a_nonfinite_loss_and_updates_nothing():
    w = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.SGD([w], lr=0.1)
    with pytest.raises(NonFiniteLoss, match="step 7"):
        optimizer_step((w * float("nan")).sum(), opt, [w], 1.0, "stage: non-finite loss at step 7")
    assert torch.equal(w.detach(), torch.ones(3)) and w.grad is None
    optimizer_step((w * 2).sum(), opt, [w], 0.0, "unused")  # grad 2 each, no clipping
    assert torch.allclose(w.detach(), torch.full((3,), 0.8)) and w.grad is None
    optimizer_step((w * 2).sum(), opt, [w], 1.0, "unused")  # grad norm 2*sqrt(3) clipped to 1
    assert torch.allclose(w.detach(), torch.full((3,), 0.8 - 0.1 / math.sqrt(3)))


def test_seeded_orders_are_pure_functions():
    assert epoch_order(1, 0, 10) == epoch_order(1, 0, 10) != epoch_order(1, 1, 10)
    assert sorted(epoch_order(1, 3, 10)) == list(range(10))
    # a stream of permutations: items 8..13 of n=5 span epochs 1 and 2
    assert stream_indices(1, 8, 6, 5) == epoch_order(1, 1, 5)[3:] + epoch_order(1, 2, 5)[:4]
    a = torch.rand(3, generator=generator(1, 2, 3))
    assert torch.equal(a, torch.rand(3, generator=generator(1, 2, 3)))
    assert not torch.equal(a, torch.rand(3, generator=generator(1, 3, 3)))


def test_set_dropout_reaches_every_dropout():
    from model.gpt import GPT, GPTConfig

    gpt = GPT(GPTConfig(vocab_size=32, block_size=8, n_layer=2, n_head=2, n_embd=16, dropout=0.1))
    set_dropout(gpt, 0.0)
    assert all(m.p == 0.0 for m in gpt.modules() if isinstance(m, torch.nn.Dropout))
    assert all(b.attn.dropout == 0.0 for b in gpt.transformer.h)


def test_curve_csv_keeps_full_precision_and_blanks():
    text = curve_csv([{"step": 1, "loss": 0.1 + 0.2}, {"step": 2, "loss": None}], ("step", "loss", "val"))
    assert text == "step,loss,val\n1,0.30000000000000004,\n2,,\n"


def test_windows(tmp_path):
    with pytest.raises(TokensMissing, match="meta.json"):
        load_tokens(tmp_path)
    data = np.arange(100, dtype=np.uint16)
    x, y = window_batch(data, torch.tensor([0, 10]), 4)
    assert x.tolist() == [[0, 1, 2, 3], [10, 11, 12, 13]] and y.tolist() == [[1, 2, 3, 4], [11, 12, 13, 14]]
    assert torch.equal(step_offsets(1, 5, 8, 90), step_offsets(1, 5, 8, 90))
    assert not torch.equal(step_offsets(1, 5, 8, 90), step_offsets(1, 6, 8, 90))


def test_loop_cadence_and_resume_state():
    from model.loop import Loop

    loop = Loop("x", 7, eval_every=3, log_every=2, ckpt_every=4)
    seen = []
    while loop.running():
        loop.advance()
        seen.append((loop.step, loop.evaluating(), loop.logging(), loop.checkpointing()))
        if loop.logging():
            loop.history.append({"step": loop.step})
    assert [s for s, e, _, _ in seen if e] == [3, 6, 7]  # every 3 and after the last
    assert [s for s, _, g, _ in seen if g] == [2, 3, 4, 6, 7]  # every 2 and whenever it evaluates
    assert [s for s, _, _, c in seen if c] == [4]  # never after the last: the caller saves that one
    again = Loop("x", 9, step_key="update", state={"update": 7, "history": loop.history})
    assert again.step == 7 and again.history == loop.history and again.state() == {"update": 7, "history": loop.history}
    assert Loop("x", 0).running() is False
