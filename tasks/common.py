"""Plumbing shared by every stage: errors, atomic writes, devices, seeds, threads, tables.

It imports nothing of the project but the torch-free `model.files`; the `__main__` wrapper every stage ends with
(`stage_main`) lives in `tasks/config.py`, beside the config it composes.
"""

from __future__ import annotations

import contextlib
import json
import os
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from model.files import atomic_folder


def finite_or_none(x: float | None) -> float | None:
    """x, or None where it is missing or not finite (JSON has no inf or nan; an empty CSV cell)."""
    return x if x is not None and math.isfinite(x) else None


def plus_minus(mean: float | None, half: float | None) -> str | None:
    """"+0.068 ± 0.014" (a difference and its 95% half-width), "+0.068" without one, None without a mean."""
    return None if mean is None else f"{mean:+.3f} ± {half:.3f}" if half is not None else f"{mean:+.3f}"


class InputError(Exception):
    """Bad input (file, key or row). The message is one line naming what is at fault."""


# a folder written whole or not at all (a sibling temp folder, fsynced, swapped in with two renames;
# leftovers of a killed writer swept): the one implementation, beside the checkpoints that use it too
atomic_dir = atomic_folder


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write `text` to `path` through a temp file and a rename (never a half-written file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:  # a full disk: the temp file goes, `path` stays as it was
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)
    return path


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """Read a JSONL file; a line that is not a JSON object is an InputError naming file and row."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    rows = []
    try:
        with open(path, encoding="utf-8") as f:
            for i, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise InputError(f"{path}: row {i} is not valid JSON ({e.msg})") from None
                if not isinstance(row, dict):
                    raise InputError(f"{path}: row {i} is not a JSON object")
                rows.append(row)
    except UnicodeDecodeError as e:
        raise InputError(f"{path}: not UTF-8 text (byte {e.start})") from None
    return rows


def digest(path: str | os.PathLike) -> str:
    """A file's content in 16 hex digits (SHA-256): whether a record was made from this very file."""
    import hashlib

    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def read_json(path: str | os.PathLike, missing: str = "") -> dict:
    """Read a JSON object; missing, malformed or non-object input is an InputError naming the file.

    `missing` says how the file is normally made, appended to the not-found message."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: not found" + (f" ({missing})" if missing else ""))
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(obj, dict):
        raise InputError(f"{path}: not a JSON object")
    return obj


def write_jsonl(path: str | os.PathLike, rows: list[dict]) -> Path:
    text = "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in rows)
    return atomic_write_text(path, text)


def resolve_device(name: str) -> str:
    """'auto' picks cuda when available, else cpu; anything else is passed through."""
    if name == "auto":
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def markdown_table(rows: list[dict], caption: str = "", digits: int = 3) -> str:
    """A GitHub markdown table of `rows` (same keys each); floats to `digits`, None as '–'."""
    keys = list(rows[0])
    lines = [caption, ""] if caption else []
    lines += ["| " + " | ".join(keys) + " |", "|" + "|".join(["---"] + ["---:"] * (len(keys) - 1)) + "|"]
    for r in rows:
        cells = ["–" if r[k] is None else f"{r[k]:.{digits}f}" if isinstance(r[k], float) else str(r[k]) for k in keys]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run with `n` torch CPU threads (0 = leave torch's default), then restore the caller's count,
    so tests and notebooks that call a stage's `run` in-process keep theirs."""
    import torch

    before = torch.get_num_threads()
    if n > 0:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
