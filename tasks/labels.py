"""Human rankings of sampled responses (InstructGPT step 2): the labels file and its rules.

Candidates (``data/rankings/candidates.jsonl``, written by the collect stage), one JSON object
a line::

    {"id": "rl_prompts-00012", "kind": "list", "prompt": "...",
     "responses": ["...", ...],            # K strings, 2 <= K <= 9
     "sources": ["sft T=1.0", ...]}

Labels (default ``labels/human.jsonl``, tracked by DVC with ``dvc add``), one JSON object per
answered prompt::

    {"id": "rl_prompts-00012",
     "key": "rl_prompts-00012:3f9a0c1b2d4e",   # label_key(id, responses)
     "prompt": "...", "responses": ["...", ...],
     "ranking": [2, 0, 3, 1],                  # 0-based indices into responses, best first
     "labeler": "human", "time": "2025-01-01T12:00:00+00:00",   # ISO-8601 UTC
     "flags": [[], ["unsafe"], [], ["not_an_answer"]],   # optional: per response, in response order
     "note": "..."}                                       # optional: the person's note

The ranking page (`flows/ranking_page.py`) writes ``flags`` and ``note`` when a person sets them;
rows without them (the Prefect form's, older rows) stay valid.

Rules:

* The file is append-only. Each answer is appended as one line, flushed and fsync'ed the
  moment it arrives, so a killed flow, a timeout or a restart loses no answered prompt; the
  next run asks only for the candidates whose key is not in the file (:func:`missing`).
* The key is the prompt id plus a short sha256 of the responses: if a prompt's candidates
  change, its old label stays in the file but is not reused for the new candidates.
* If one key appears more than once, the last row wins (a deliberate relabel is an append).
* A torn last line (a write cut short, no newline at the end) is skipped on reading; the next
  append cuts those incomplete bytes off first, so the file stays valid JSONL. Every complete
  line is kept byte for byte. Any other malformed row is an :class:`InputError` naming file and
  row: a person's labels are never silently dropped.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
from collections.abc import Iterable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from tasks.common import InputError

MIN_K, MAX_K = 2, 9
LABEL_FIELDS = {"id": str, "key": str, "prompt": str, "responses": list, "ranking": list, "labeler": str, "time": str}
FLAGS = ("not_an_answer", "unsafe")  # what a person may mark a response as
NOTE_MAX = 2000  # characters


def label_key(prompt_id: str, responses: list[str]) -> str:
    """`<id>:<first 12 hex of sha256 of the responses>`: new candidates, new key."""
    digest = hashlib.sha256(json.dumps(list(responses), ensure_ascii=False).encode("utf-8")).hexdigest()
    return f"{prompt_id}:{digest[:12]}"


def _show(value: Any, limit: int = 80) -> str:
    text = repr(value) if not isinstance(value, list) else "[" + ", ".join(repr(v) for v in value) + "]"
    text = text.replace("\n", "\\n")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _permutation_problem(numbers: list[int], lo: int, k: int) -> str | None:
    """Why `numbers` is not a permutation of lo..lo+k-1, or None when it is."""
    hi = lo + k - 1
    if len(numbers) != k:
        return f"{len(numbers)} numbers, need {k}"
    out = [n for n in numbers if not lo <= n <= hi]
    if out:
        return f"{out[0]} is out of range"
    seen = set()
    for n in numbers:
        if n in seen:
            return f"{n} appears twice"
        seen.add(n)
    return None


def parse_ranking(value: Any, k: int, where: str) -> list[int]:
    """1-based response numbers, best first (a list of ints, or "2,1,4,3" / "2 1 4 3"),
    as 0-based indices. Anything but a permutation of 1..k is an InputError naming `where`."""
    numbers: list[int] | None = None
    if isinstance(value, str):
        parts = [p for p in re.split(r"[\s,;]+", value.strip().strip("[]()")) if p]
        if parts and all(re.fullmatch(r"[+-]?\d+", p) for p in parts):
            numbers = [int(p) for p in parts]
    elif isinstance(value, (list, tuple)) and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        numbers = list(value)
    if numbers is None:
        raise InputError(f"{where}: ranking {_show(value)} is not a permutation of 1..{k} (not a list of whole numbers)")
    problem = _permutation_problem(numbers, 1, k)
    if problem:
        raise InputError(f"{where}: ranking {_show(value)} is not a permutation of 1..{k} ({problem})")
    return [n - 1 for n in numbers]


def check_candidate(row: Any, where: str) -> dict:
    """A candidates row: id, prompt, 2..9 response strings. Returns it; InputError otherwise."""
    if not isinstance(row, dict):
        raise InputError(f"{where}: not a JSON object")
    for name in ("id", "prompt"):
        if not isinstance(row.get(name), str) or not row[name]:
            raise InputError(f"{where}: field {name!r} missing or not a non-empty string")
    responses = row.get("responses")
    if not isinstance(responses, list) or not all(isinstance(r, str) for r in responses):
        raise InputError(f"{where}: field 'responses' missing or not a list of strings")
    if not MIN_K <= len(responses) <= MAX_K:
        raise InputError(f"{where}: {len(responses)} responses, need {MIN_K} to {MAX_K}")
    return row


def read_candidates(path: str | os.PathLike) -> list[dict]:
    """The candidates file, every row checked (InputError naming file and row)."""
    from tasks.common import read_jsonl

    rows = read_jsonl(path)
    return [check_candidate(row, f"{path}: row {i}") for i, row in enumerate(rows, start=1)]


def check_label(row: Any, where: str) -> dict:
    """A labels row: every field, ranking a permutation of range(len(responses)), key matching."""
    if not isinstance(row, dict):
        raise InputError(f"{where}: not a JSON object")
    for name, typ in LABEL_FIELDS.items():
        if not isinstance(row.get(name), typ):
            raise InputError(f"{where}: field {name!r} missing or not a {typ.__name__}")
    responses, ranking = row["responses"], row["ranking"]
    if not all(isinstance(r, str) for r in responses) or not MIN_K <= len(responses) <= MAX_K:
        raise InputError(f"{where}: 'responses' must be {MIN_K} to {MAX_K} strings")
    k = len(responses)
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in ranking):
        raise InputError(f"{where}: ranking {_show(ranking)} is not a permutation of 0..{k - 1} (not whole numbers)")
    problem = _permutation_problem(ranking, 0, k)
    if problem:
        raise InputError(f"{where}: ranking {_show(ranking)} is not a permutation of 0..{k - 1} ({problem})")
    if row["key"] != label_key(row["id"], responses):
        raise InputError(f"{where}: key {row['key']!r} does not match id and responses")
    if "flags" in row:
        check_flags(row["flags"], k, where)
    if "note" in row:
        check_note(row["note"], where)
    return row


def check_flags(flags: Any, k: int, where: str) -> list[list[str]]:
    """Per-response flags: K lists (response order) of names from FLAGS, each name once."""
    if not isinstance(flags, list) or len(flags) != k or not all(isinstance(f, list) for f in flags):
        raise InputError(f"{where}: flags {_show(flags)} must be {k} lists, one per response")
    for i, names in enumerate(flags, start=1):
        for name in names:
            if name not in FLAGS:
                raise InputError(f"{where}: flag {_show(name)} of response {i} is not one of {', '.join(FLAGS)}")
        if len(set(names)) != len(names):
            raise InputError(f"{where}: flags of response {i} repeat a name")
    return flags


def check_note(note: Any, where: str) -> str:
    if not isinstance(note, str):
        raise InputError(f"{where}: note must be a string")
    if len(note) > NOTE_MAX:
        raise InputError(f"{where}: note has {len(note)} characters, at most {NOTE_MAX}")
    return note


def read_labels(path: str | os.PathLike) -> dict[str, dict]:
    """key -> row for every label in the file (missing file: none). A torn last line is
    skipped; any other malformed row is an InputError naming file and row."""
    path = Path(path)
    if not path.is_file():
        return {}
    data = path.read_bytes()
    lines = data.split(b"\n")
    # `lines[-1]` is b"" when the file ends with a newline, else an unterminated last line
    labels: dict[str, dict] = {}
    for i, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        torn_candidate = i == len(lines)  # the unterminated tail
        try:
            row = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            if torn_candidate:
                continue  # a write cut short: never a complete answer
            msg = e.msg if isinstance(e, json.JSONDecodeError) else "not UTF-8"
            raise InputError(f"{path}: row {i} is not valid JSON ({msg})") from None
        row = check_label(row, f"{path}: row {i}")
        labels[row["key"]] = row
    return labels


@contextlib.contextmanager
def _locked(f) -> Any:
    try:
        import fcntl
    except ImportError:  # pragma: no cover (not POSIX)
        yield
        return
    fcntl.flock(f.fileno(), fcntl.LOCK_EX)
    try:
        yield
    finally:
        fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def append_label(path: str | os.PathLike, row: dict) -> dict:
    """Check `row` and append it as one line, flushed and fsync'ed before returning.

    An unterminated tail left by an earlier write cut short is cut off first when it is not
    valid JSON (it was never a complete answer), or given its newline when it is."""
    path = Path(path)
    check_label(row, f"{path}: new row for {row.get('id')!r}" if isinstance(row, dict) else f"{path}: new row")
    line = (json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n").encode("utf-8")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as f, _locked(f):
        f.seek(0, os.SEEK_END)
        size = f.tell()
        if size:
            f.seek(max(0, size - 1))
            if f.read(1) != b"\n":
                f.seek(0)
                data = f.read()
                start = data.rfind(b"\n") + 1
                try:
                    json.loads(data[start:].decode("utf-8"))
                    line = b"\n" + line
                except (UnicodeDecodeError, json.JSONDecodeError):
                    f.truncate(start)
        f.seek(0, os.SEEK_END)
        f.write(line)
        f.flush()
        os.fsync(f.fileno())
    return row


def make_label(candidate: dict, ranking: list[int], labeler: str = "human",
               flags: list[list[str]] | None = None, note: str = "") -> dict:
    """The labels-file row for `candidate` ranked `ranking` (0-based indices, best first);
    `flags` (per response) and `note` are written only when set."""
    row = {
        "id": candidate["id"],
        "key": label_key(candidate["id"], candidate["responses"]),
        "prompt": candidate["prompt"],
        "responses": list(candidate["responses"]),
        "ranking": list(ranking),
        "labeler": labeler,
        "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    if flags and any(flags):
        row["flags"] = [list(f) for f in flags]
    if note.strip():
        row["note"] = note.strip()
    return row


def missing(candidates: Iterable[dict], labels: dict[str, dict]) -> list[dict]:
    """The candidates whose key is not in `labels` (in order, each key once)."""
    out, seen = [], set()
    for c in candidates:
        key = label_key(c["id"], c["responses"])
        if key not in labels and key not in seen:
            seen.add(key)
            out.append(c)
    return out
