"""Pre-training data as token windows (plain PyTorch + NumPy): the tokenized corpus read as
memory maps, a step's window offsets as a pure function of (seed, step), and the windows'
inputs and next-token targets."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch


class TokensMissing(FileNotFoundError):
    """The tokenized corpus (meta.json, train.bin, val.bin) is not there."""


def load_tokens(data_dir: Path) -> tuple[dict, np.memmap, np.memmap]:
    """(meta, train tokens, val tokens) of a tokenize stage's output folder."""
    meta_path = Path(data_dir) / "meta.json"
    if not meta_path.is_file():
        raise TokensMissing(f"{meta_path}: not found (run the tokenize stage first)")
    meta = json.loads(meta_path.read_text())
    bins = [np.memmap(Path(data_dir) / f"{s}.bin", dtype=np.dtype(meta["dtype"]), mode="r") for s in ("train", "val")]
    return meta, bins[0], bins[1]


def window_batch(data: np.memmap, offsets: torch.Tensor, T: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and next-token targets for windows starting at `offsets`."""
    rows = np.stack([np.asarray(data[o : o + T + 1], dtype=np.int64) for o in offsets.tolist()])
    xy = torch.from_numpy(rows)  # (B, T+1)
    return xy[:, :-1], xy[:, 1:]


def step_offsets(seed: int, step: int, n: int, high: int) -> torch.Tensor:
    """The global batch of step `step`: a pure function of (seed, step), identical on all ranks."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + step)
    return torch.randint(0, high, (n,), generator=g)
