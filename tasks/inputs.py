"""Readers of the inputs several stages share, each refusing bad input with one InputError line
naming the file, key or row: checkpoint folders and their tokenizers, the pre-training tokens,
demonstrations and prompts, the rankings table, and the reward model's split of prompts.

Shared infrastructure (like `tasks.common`, `tasks.config`, `tasks.tracking`, `tasks.labels`):
stages import it, it imports no stage.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from typing import TYPE_CHECKING

from tasks.common import InputError, read_jsonl
from tasks.contracts import RANKING_COLUMNS

if TYPE_CHECKING:  # torch is imported only by the readers that need it (the data stage needs none)
    from model.tokenizer import Tokenizer



def load_tokens(data_dir: Path):
    """(meta, train tokens, val tokens) of the tokenize stage's output (model.data.load_tokens)."""
    from model.data import TokensMissing
    from model.data import load_tokens as _load_tokens

    try:
        return _load_tokens(Path(data_dir))
    except TokensMissing as e:
        raise InputError(str(e)) from None


def strict_tokenizer(folder: Path) -> Tokenizer:
    """Like `load_tokenizer` but a tokenizer lacking EOS is refused outright (not patched)."""
    from model.tokenizer import Tokenizer, TokenizerError

    path = folder / "tokenizer.json"
    try:
        return Tokenizer.load(path)
    except TokenizerError as e:
        raise InputError(f"{e} (an instruction-following model needs <|endoftext|> to learn to stop)") from None


def read_demos(path: Path, limit: int = -1) -> list[dict]:
    rows = read_jsonl(path)
    for i, r in enumerate(rows, start=1):
        for k in ("prompt", "response"):
            if not isinstance(r.get(k), str) or not r[k].strip():
                raise InputError(f"{path}: row {i} has no '{k}' text")
    return rows[:limit] if limit >= 0 else rows


def same_tokenizer(a: Path, b: Path) -> bool:
    return json.loads(a.read_text(encoding="utf-8")) == json.loads(b.read_text(encoding="utf-8"))


def checkpoint_dir(path: str, what: str, made_by: str) -> Path:
    folder = Path(path)
    if not (folder / "model.safetensors").is_file():
        raise InputError(f"{folder}: no {what} checkpoint (run the {made_by} stage first)")
    return folder


def read_rankings(path: Path):
    """The rankings table, validated row by row (InputError naming file and row)."""
    import pandas as pd

    if not path.is_file():
        raise InputError(f"{path}: not found (run the collect_rankings stage first)")
    try:
        df = pd.read_parquet(path)
    except Exception as e:  # pyarrow raises several types for a bad file
        raise InputError(f"{path}: not a readable parquet file ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
    missing = [c for c in RANKING_COLUMNS if c not in df.columns]
    if missing:
        raise InputError(f"{path}: missing column(s) {', '.join(missing)} (expected {', '.join(RANKING_COLUMNS)})")
    if df.empty:
        raise InputError(f"{path}: no rows")
    for r, row in enumerate(df.itertuples(index=False), start=1):
        where = f"{path}: row {r}"
        if not isinstance(row.id, str) or not isinstance(row.prompt, str) or not isinstance(row.kind, str):
            raise InputError(f"{where}: 'id', 'kind' and 'prompt' must be strings")
        responses, ranking = row.responses, row.ranking
        if responses is None or not all(isinstance(x, str) for x in responses):
            raise InputError(f"{where} ({row.id}): 'responses' must be a list of strings")
        k = len(responses)
        if k < 2:
            raise InputError(f"{where} ({row.id}): {k} response(s); a ranking needs at least 2")
        try:
            ranking = [int(x) for x in ranking] if ranking is not None else None
        except (TypeError, ValueError):
            ranking = None
        if ranking is None or sorted(ranking) != list(range(k)):
            shown = None if row.ranking is None else [x.item() if hasattr(x, "item") else x for x in row.ranking]
            raise InputError(f"{where} ({row.id}): ranking {shown} is not a permutation of 0..{k - 1}")
    return df


def split_of(pid: str, seed: int, heldout: float, val: float) -> str:
    """'heldout' | 'val' | 'train' for a prompt id: a pure function of (seed, id)."""
    u = int.from_bytes(hashlib.sha256(f"{seed}:{pid}".encode()).digest()[:8], "big") / 2**64
    return "heldout" if u < heldout else "val" if u < heldout + val else "train"


def rm_split(rm_meta: dict | None, fallback) -> dict:
    """How train_rm split prompts (seed, heldout, val): from the RM's meta.json (its resolved
    config), or from this config's train_rm section when no reward model is involved."""
    if rm_meta is not None:
        rc = (rm_meta.get("config") or {}).get("train_rm")
        if not isinstance(rc, dict) or not {"split_seed", "heldout_fraction"} <= set(rc):
            raise InputError("reward model meta.json records no train_rm split (config.train_rm.split_seed, heldout_fraction)")
    else:
        rc = fallback
    return {"seed": int(rc["split_seed"]), "heldout": float(rc["heldout_fraction"]), "val": float(rc.get("val_fraction", 0.0))}


def read_prompts(path: str, split: dict) -> tuple[list[dict], list[dict]]:
    """(training prompts, held-out prompts): the RM's held-out split is only ever evaluated."""
    rows = read_jsonl(path)
    for i, r in enumerate(rows, start=1):
        if not isinstance(r.get("id"), str) or not isinstance(r.get("prompt"), str):
            raise InputError(f"{path}: row {i} needs string 'id' and 'prompt'")
    held = [r for r in rows if split_of(r["id"], split["seed"], split["heldout"], split["val"]) == "heldout"]
    train = [r for r in rows if split_of(r["id"], split["seed"], split["heldout"], split["val"]) != "heldout"]
    if not train:
        raise InputError(f"{path}: no prompts outside the reward model's held-out split")
    return train, held
