"""Folders written whole or not at all, and what a writer killed mid-save leaves behind (torch-free).

`atomic_folder(dest)` yields a temp folder beside `dest` (``.{name}.tmp-{pid}``); on success it is
fsynced and swapped in with two renames (the old folder to ``.{name}.old-{pid}``, the new one to
`dest`), and the old one deleted. A process killed at any point leaves either the old `dest` or the
new one; `sweep(dest)`, run before every save and before a stage decides to resume, removes the
temp folders of writers that are no longer running and, if one died between its two renames,
puts its old folder back.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # ours from an earlier attempt in this process: nothing is writing it now
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep(dest: str | os.PathLike) -> None:
    """Clear the leftovers of dead writers of `dest` (see the module's docstring)."""
    dest = Path(dest)
    if not dest.parent.is_dir():
        return
    for p in sorted(dest.parent.glob(f".{dest.name}.*-*")):
        kind, _, pid = p.name[len(dest.name) + 2 :].partition("-")
        if kind not in ("tmp", "old") or not pid.isdigit() or _alive(int(pid)):
            continue
        if kind == "old" and not dest.exists():
            os.replace(p, dest)  # killed between its two renames: the previous folder is the good one
        else:
            shutil.rmtree(p, ignore_errors=True)


def fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_folder(dest: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temp folder beside `dest`; on success it replaces `dest`, on error it is removed.

    The old `dest` is renamed away only once the new folder is complete and fsynced, and deleted
    only after the new one is in place.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    sweep(dest)
    tmp = dest.parent / f".{dest.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        for f in tmp.iterdir():
            fsync_path(f)
        fsync_path(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = dest.parent / f".{dest.name}.old-{os.getpid()}"
    if dest.exists():
        os.replace(dest, old)
    os.replace(tmp, dest)
    fsync_path(dest.parent)  # make the renames durable
    shutil.rmtree(old, ignore_errors=True)
