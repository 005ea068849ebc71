"""tokenize stage: BPE training, memmaps with EOS between documents, and its bad inputs."""

import json
import sys

import numpy as np
import pytest

from conftest import run_cmd, write_corpus
from model.tokenizer import MIN_VOCAB, SPECIALS, Tokenizer
from tasks import tokenize
from tasks.common import InputError
from tasks.config import compose


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def cfg_for(*overrides):
    return compose(["experiment=smoke", "tracking.enabled=false", *overrides])


def test_bpe_memmaps_round_trip(workdir, pydoc_docs):
    write_corpus(workdir / "data/raw/corpus.jsonl", pydoc_docs)
    metrics = tokenize.run(cfg_for("tokenizer.vocab_size=600"))
    out = workdir / "data/tokenized"
    meta = json.loads((out / "meta.json").read_text())
    assert meta["vocab_size"] == metrics["vocab_size"] == 600 and meta["dtype"] == "uint16"
    tok = Tokenizer.load(out / "tokenizer.json")
    assert [tok.token_id(s) for s in SPECIALS] == list(range(len(SPECIALS)))
    train = np.memmap(out / "train.bin", dtype=np.uint16, mode="r")
    val = np.memmap(out / "val.bin", dtype=np.uint16, mode="r")
    assert len(train) == meta["train_tokens"] and len(val) == meta["val_tokens"]
    # one EOS after every document, and the documents decode back exactly
    assert int((train == tok.eos_id).sum()) == meta["train_docs"]
    assert meta["train_docs"] + meta["val_docs"] == len(pydoc_docs) and meta["val_docs"] > 0
    first_eos = int(np.argmax(np.asarray(train) == tok.eos_id))
    assert tok.decode(train[:first_eos].tolist()) in pydoc_docs
    assert meta["bytes_per_token"] > 2.0  # BPE merges compress English prose


def test_char_kind_is_bytes(workdir):
    write_corpus(workdir / "data/raw/corpus.jsonl", ["héllo world"] * 5 + ["another document"] * 5)
    tokenize.run(cfg_for("tokenizer=char"))
    meta = json.loads((workdir / "data/tokenized/meta.json").read_text())
    assert meta["vocab_size"] == MIN_VOCAB and meta["kind"] == "char"


def test_reuse_tokenizer_adds_missing_specials(workdir, pydoc_docs):
    from tokenizers import Tokenizer as HF
    from tokenizers import models, pre_tokenizers

    hf = HF(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    from tokenizers import trainers

    hf.train_from_iterator(pydoc_docs[:20], trainers.BpeTrainer(vocab_size=400, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=["<|endoftext|>"]))
    hf.save(str(workdir / "gpt2ish.json"))
    write_corpus(workdir / "data/raw/corpus.jsonl", pydoc_docs[:30])
    tokenize.run(cfg_for(f"tokenizer.path={workdir / 'gpt2ish.json'}"))
    tok = Tokenizer.load(workdir / "data/tokenized/tokenizer.json")
    assert tok.eos_id == 0 and all(tok.token_id(s) >= 0 for s in SPECIALS)


def stage_cli(workdir, *overrides):
    return run_cmd([sys.executable, "-m", "tasks.tokenize", "experiment=smoke", "tracking.enabled=false", *overrides], cwd=workdir, check=False)


@pytest.mark.parametrize(
    "setup,overrides,needle",
    [
        (lambda p: write_corpus(p, ["", "   "]), [], "corpus is empty"),
        (lambda p: p.write_bytes(b'{"text": "caf\xe9"}\n'), [], "not UTF-8"),
        (lambda p: p.write_text('{"text": "ok"}\n{"text": \n'), [], "row 2 is not valid JSON"),
        (lambda p: write_corpus(p, ["some text here"] * 10), ["tokenizer.vocab_size=100"], "tokenizer.vocab_size=100"),
    ],
    ids=["empty", "not-utf8", "bad-json", "vocab-too-small"],
)
def test_bad_input_one_line_nothing_overwritten(workdir, setup, overrides, needle):
    # a previous good output must survive the failed run untouched
    good = workdir / "data/tokenized"
    good.mkdir(parents=True)
    (good / "meta.json").write_text('{"previous": true}')
    corpus = workdir / "data/raw/corpus.jsonl"
    corpus.parent.mkdir(parents=True, exist_ok=True)
    setup(corpus)
    proc = stage_cli(workdir, *overrides)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], proc.stderr
    assert (good / "meta.json").read_text() == '{"previous": true}'


def test_missing_text_field_names_row(workdir):
    corpus = workdir / "data/raw/corpus.jsonl"
    corpus.parent.mkdir(parents=True)
    corpus.write_text('{"text": "fine"}\n{"body": "no text key"}\n')
    with pytest.raises(InputError, match="row 2"):
        tokenize.run(cfg_for())
