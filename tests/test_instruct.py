"""The instruction format and the SFT objective (model/instruct.py): prompt tokens carry no loss,
long prompts are cut from the left, responses end in EOS, and `respond` stops there."""

from __future__ import annotations

import random

import pytest
import torch
from torch.nn import functional as F

from model.gpt import GPT, GPTConfig
from model.instruct import (
    MIN_PROMPT_TOKENS,
    SEPARATOR,
    decode_response,
    encode_example,
    encode_prompt,
    encode_response,
    format_prompt,
    pad_right,
    respond,
    response_logprobs,
    response_targets,
)
from model.tokenizer import Tokenizer

WORDS = "red blue green cat dog bird Ann Bob park shop happy sad is the a write sentence about".split()


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    rng = random.Random(0)
    return Tokenizer.train([" ".join(rng.choice(WORDS) for _ in range(12)) + SEPARATOR for _ in range(300)], vocab_size=300)


def tiny(vocab: int, block: int = 64) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=vocab, block_size=block, n_layer=2, n_head=2, n_embd=32))


def test_format_and_eos(tok):
    assert format_prompt("  Where is Ann? ") == "Where is Ann?\nAnswer:"
    resp = encode_response(tok, "Ann is at the park.")
    assert resp[-1] == tok.eos_id and tok.eos_id not in resp[:-1]
    assert decode_response(tok, resp + [7, 8]) == "Ann is at the park."
    ids, n_prompt, cut = encode_example(tok, "Where is Ann?", "Ann is at the park.", 64)
    assert ids == encode_prompt(tok, "Where is Ann?")[0] + resp and n_prompt == len(ids) - len(resp) and not cut


def test_long_prompt_is_cut_from_the_left_and_a_too_long_response_refused(tok):
    prompt = " ".join(["red cat"] * 40) + " Where is Ann?"
    full = encode_prompt(tok, prompt)[0]
    ids, n_prompt, cut = encode_example(tok, prompt, "Ann is at the park.", 32)
    assert cut and len(ids) == 32 and ids[:n_prompt] == full[-n_prompt:]  # the end (the question) stays
    assert encode_example(tok, "hi", " ".join(["red"] * 40), 32) is None
    assert encode_example(tok, "hi", "red cat", MIN_PROMPT_TOKENS + len(encode_response(tok, "red cat"))) is not None


def test_targets_mask_prompt_and_padding(tok):
    a = encode_example(tok, "Write a happy sentence", "Ann is happy.", 64)
    b = encode_example(tok, "Where is Bob?", "Bob is at the shop.", 64)
    ids, lengths = pad_right([a[0], b[0]], tok.pad_id)
    y = response_targets(ids, lengths, torch.tensor([a[1], b[1]]))
    for row, (seq, n_prompt, _) in enumerate((a, b)):
        scored = (y[row] != -100).nonzero().squeeze(1).tolist()
        # exactly the response tokens and EOS are predicted, each from the token before it
        assert scored == list(range(n_prompt - 1, len(seq) - 1))
        assert y[row, scored].tolist() == seq[n_prompt:]


def test_sft_loss_ignores_prompt_tokens(tok):
    """Changing what the model 'should' predict at prompt positions changes neither loss nor gradient."""
    model = tiny(tok.vocab_size)
    ex = encode_example(tok, "Write a sad sentence about the red cat", "The cat is sad.", 64)
    ids, lengths = pad_right([ex[0]], tok.pad_id)
    y = response_targets(ids, lengths, torch.tensor([ex[1]]))
    logits = model(ids)
    loss = F.cross_entropy(logits.flatten(0, 1), y.flatten(), ignore_index=-100)
    # the same loss if the prompt's next-token targets were anything else: they are ignored
    other = y.clone()
    other[0, : ex[1] - 1] = -100
    assert torch.equal(other, y)
    g = torch.autograd.grad(loss, logits)[0]
    assert g[0, : ex[1] - 1].abs().sum() == 0 and g[0, ex[1] - 1 :].abs().sum() > 0
    # and it equals the mean negative log-probability of the response tokens
    lp = response_logprobs(logits, y)
    assert torch.allclose(loss, -lp.sum() / (y != -100).sum(), atol=1e-6)


def test_respond_stops_at_eos_and_keeps_order(tok):
    model = tiny(tok.vocab_size)
    with torch.no_grad():  # every final state is all ones and EOS's output row too: greedy stops at once
        model.transformer.ln_f.weight.zero_()
        model.transformer.ln_f.bias.fill_(1.0)
        model.lm_head.weight[tok.eos_id] = 1.0
    prompts = ["Where is Ann?", "Write a happy sentence about the red cat and the dog"]
    out = respond(model, tok, prompts, 8, temperature=0.0)
    assert [o["tokens"] for o in out] == [[tok.eos_id], [tok.eos_id]] and all(o["eos"] for o in out)
    # sampling is reproducible with a seeded generator, and rows come back in prompt order
    fresh = tiny(tok.vocab_size)
    a = respond(fresh, tok, prompts, 6, temperature=1.0, generator=torch.Generator().manual_seed(3))
    b = respond(fresh, tok, prompts, 6, temperature=1.0, generator=torch.Generator().manual_seed(3))
    assert [o["tokens"] for o in a] == [o["tokens"] for o in b]
    alone = respond(fresh, tok, prompts[1:], 6, temperature=0.0)
    both = respond(fresh, tok, prompts, 6, temperature=0.0)
    assert alone[0]["tokens"] == both[1]["tokens"]
