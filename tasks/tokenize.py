"""tokenize stage: train a byte-level BPE on the corpus and encode it into token memmaps.

    python -m tasks.tokenize                                   # conf/ defaults
    python -m tasks.tokenize tokenizer=char                    # tiny CPU demo: bytes, no merges
    python -m tasks.tokenize tokenizer.path=gpt2/tokenizer.json  # reuse a tokenizer

Reads `<in_dir>/corpus.jsonl` (one `{"text": ...}` document per line). Writes to `out_dir`:
`tokenizer.json`, `train.bin` and `val.bin` (flat token ids, uint16 or uint32 when the
vocabulary needs it, `<|endoftext|>` after every document) and `meta.json` (counts, dtype).
Documents go to validation by a hash of their text, so the split does not depend on order.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from model.tokenizer import Tokenizer, TokenizerError
from tasks import tracking
from tasks.common import InputError, atomic_dir, atomic_write_json, read_jsonl
from tasks.config import stage_main
from tasks.schema import TokenizerConfig  # noqa: F401  (the section's schema lives in tasks/schema.py)



def read_corpus(path: Path) -> list[str]:
    """The documents of a corpus.jsonl; empty or malformed input is an InputError."""
    docs = []
    for i, row in enumerate(read_jsonl(path), start=1):
        text = row.get("text")
        if not isinstance(text, str):
            raise InputError(f"{path}: row {i} has no string field 'text'")
        if text.strip():
            docs.append(text)
    if not docs:
        raise InputError(f"{path}: the corpus is empty (no non-blank 'text')")
    return docs


def split_docs(docs: list[str], val_fraction: float) -> tuple[list[str], list[str]]:
    """Deterministic, order-free train/val split by a hash of each document."""
    train, val = [], []
    for d in docs:
        h = int.from_bytes(hashlib.blake2b(d.encode("utf-8"), digest_size=8).digest(), "big")
        (val if h / 2**64 < val_fraction else train).append(d)
    if not val and val_fraction > 0:  # tiny corpora: still validate on something
        val.append(train.pop())
    if not train:
        raise InputError(f"corpus: {len(docs)} document(s) leave nothing to train on at val_fraction={val_fraction}")
    return train, val


def encode_to_bin(tok: Tokenizer, docs: list[str], path: Path, dtype: np.dtype, chunk: int = 2048) -> int:
    """Encode documents in parallel batches, `<|endoftext|>` after each, into a flat binary file."""
    eos = tok.eos_id
    n = 0
    with open(path, "wb") as f:
        for i in range(0, len(docs), chunk):
            ids = tok.encode_batch(docs[i : i + chunk])
            flat = np.fromiter((t for doc in ids for t in (*doc, eos)), dtype=dtype)
            f.write(flat.tobytes())
            n += len(flat)
    return n


def run(cfg) -> dict[str, float]:
    tc: TokenizerConfig = cfg.tokenizer
    if tc.num_workers > 0:
        os.environ["RAYON_NUM_THREADS"] = str(tc.num_workers)
    corpus_path = Path(tc.in_dir) / "corpus.jsonl"
    out_dir = Path(tc.out_dir)
    docs = read_corpus(corpus_path)
    train_docs, val_docs = split_docs(docs, tc.val_fraction)
    with tracking.stage_run(cfg, "tokenize", sections=["tokenizer"]):
        try:
            if tc.path:
                tok = Tokenizer.load(tc.path, add_missing_specials=True)
            else:
                tok = Tokenizer.train(train_docs, tc.vocab_size, min_frequency=tc.min_frequency, kind=tc.kind)
        except TokenizerError as e:
            raise InputError(str(e)) from None
        dtype = np.dtype(np.uint16 if tok.vocab_size <= 2**16 else np.uint32)
        with atomic_dir(out_dir) as tmp:
            tok.save(tmp / "tokenizer.json")
            n_train = encode_to_bin(tok, train_docs, tmp / "train.bin", dtype)
            n_val = encode_to_bin(tok, val_docs, tmp / "val.bin", dtype)
            n_bytes = sum(len(d.encode("utf-8")) for d in train_docs)
            meta = {
                "vocab_size": tok.vocab_size,
                "dtype": dtype.name,
                "kind": "file" if tc.path else tc.kind,
                "train_tokens": n_train,
                "val_tokens": n_val,
                "train_docs": len(train_docs),
                "val_docs": len(val_docs),
                "bytes_per_token": n_bytes / max(1, n_train - len(train_docs)),
                "eos_id": tok.eos_id,
                "pad_id": tok.pad_id,
                "corpus_sha256": hashlib.sha256(corpus_path.read_bytes()).hexdigest(),
            }
            atomic_write_json(tmp / "meta.json", meta)
        metrics = {k: float(meta[k]) for k in ("vocab_size", "train_tokens", "val_tokens", "bytes_per_token")}
        tracking.log_metrics(metrics)
        tracking.log_artifact(out_dir / "tokenizer.json", "tokenized")
        tracking.log_artifact(out_dir / "meta.json", "tokenized")
        return metrics


if __name__ == "__main__":
    stage_main(run)
