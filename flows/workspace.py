"""One pipeline run at a time per workspace: an exclusive `flock` on `.instructflow.lock` in the
repo root, held for the whole run (two runs would write the same outputs, `params.yaml` first).

A second run is refused at once with one line naming the holder (pid, its host-local start time,
its command), read from the lock file, which the holder writes after taking the lock. The kernel
releases a `flock` when its holder dies, however it dies (kill -9 included), so a lock file left
behind never blocks a rerun: only a live process holds the lock, never the file's existence.

The lock's descriptor is not inherited by child processes (Python opens files close-on-exec), so
the stage subprocesses (`dvc repro`, `python -m tasks.<stage>`) do not hold it; DVC's own per-output
locks guard a stage still running after its flow was killed.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import os
import shlex
import sys
from collections.abc import Iterator
from pathlib import Path

from tasks.config import ConfigError

LOCK_FILE = ".instructflow.lock"

_held: dict[str, list] = {}  # lock path -> [open file, depth]: re-entrant within one process


class WorkspaceBusy(ConfigError):
    """Another live process holds the workspace lock; the message is one line naming it."""


def _describe(path: Path) -> str:
    try:
        text = path.read_text(encoding="utf-8").strip()
    except OSError:
        text = ""
    info = dict(line.split("=", 1) for line in text.splitlines() if "=" in line)
    if not info.get("pid"):
        return "another process (it has not written its name yet)"
    return f"pid {info['pid']} (started {info.get('started', '?')}, `{info.get('command', '?')}`)"


def command_line() -> str:
    """This process's command as typed: `python -m flows.pipeline experiment=smoke`."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    head = ["python", "-m", spec.name] if spec is not None and spec.name else [Path(sys.argv[0]).name]
    return shlex.join([*head, *sys.argv[1:]])


@contextlib.contextmanager
def workspace_lock(root: str | os.PathLike = ".", what: str | None = None) -> Iterator[Path]:
    """Hold the workspace's lock for the block, or raise WorkspaceBusy at once (never waits).

    `what` names this run in the lock file (default: this process's command line). Re-entrant in
    one process (the command line takes it, then the flow it runs takes it again)."""
    path = (Path(root) / LOCK_FILE).resolve()
    key = str(path)
    if key in _held:
        _held[key][1] += 1
        try:
            yield path
        finally:
            _held[key][1] -= 1
        return
    f = open(path, "a+", encoding="utf-8")
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        raise WorkspaceBusy(f"{path.parent}: workspace in use by {_describe(path)}; wait for it to end or stop it, "
                            "then run again") from None
    except BaseException:
        f.close()
        raise
    started = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")
    f.seek(0)
    f.truncate()
    f.write(f"pid={os.getpid()}\nstarted={started}\ncommand={what or command_line()}\n")
    f.flush()
    _held[key] = [f, 1]
    try:
        repair_dvc_files(path.parent)
        yield path
    finally:
        _held[key][1] -= 1
        if _held[key][1] == 0:
            del _held[key]
            with contextlib.suppress(OSError):
                f.seek(0)
                f.truncate()  # no stale name left behind (the lock itself goes with the descriptor)
            f.close()


def _say(text: str) -> None:
    print(f"workspace: {text}", file=sys.stderr, flush=True)


def _readable_lock(path: Path) -> str | None:
    """None when `path` is a lock file `dvc` reads, else why not."""
    from dvc.exceptions import DvcException
    from dvc.schema import COMPILED_LOCKFILE_SCHEMA
    from dvc.utils import strictyaml

    try:  # what `dvc` itself checks when it reads the file
        strictyaml.load(str(path), schema=COMPILED_LOCKFILE_SCHEMA)
    except (DvcException, UnicodeDecodeError) as e:
        return type(e).__name__
    return None


def repair_dvc_files(root: Path) -> list[str]:
    """Undo what a run killed while DVC wrote its own files leaves behind; -> what was done.

    DVC rewrites `dvc.lock` and `.dvc/tmp/rwlock` in place, so a SIGKILL in the middle leaves
    them cut short and every later `dvc` command fails on them. With the workspace lock held no
    other run of ours is writing them. A readable `dvc.lock` is copied to `.dvc/tmp/dvc.lock.good`
    at the start of every run; one that no longer reads is set aside (`dvc.lock.broken-<time>`) and
    that copy put back: the stages finished since then run again, or come back from DVC's run
    cache. An unreadable `rwlock` (it only lists the DVC processes running now, and none is) is
    removed; entries of dead processes in a readable one DVC clears itself."""
    import json
    import shutil

    done = []
    lock, good = root / "dvc.lock", root / ".dvc" / "tmp" / "dvc.lock.good"
    if lock.is_file():
        why = _readable_lock(lock)
        if why is None:
            good.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(lock, good.with_suffix(".tmp"))
            os.replace(good.with_suffix(".tmp"), good)
        else:
            aside = lock.with_name(f"dvc.lock.broken-{datetime.datetime.now():%Y%m%d-%H%M%S}")
            os.replace(lock, aside)
            back = good.is_file() and _readable_lock(good) is None
            if back:
                shutil.copyfile(good, lock)
            done.append(f"{lock.name} was cut short by a killed run ({why}); set aside as {aside.name}"
                        + (", the copy from the start of the last run put back" if back else "")
                        + "; stages without a record run again or come back from DVC's run cache")
    rwlock = root / ".dvc" / "tmp" / "rwlock"
    if rwlock.is_file():
        try:
            json.loads(rwlock.read_text(encoding="utf-8") or "{}")
        except (ValueError, UnicodeDecodeError):
            rwlock.unlink()
            done.append(f"{rwlock.relative_to(root)} was cut short by a killed run; removed (no DVC process of this workspace is running)")
    for line in done:
        _say(line)
    return done


def hold_for_test(root: str) -> None:  # pragma: no cover - run as a process by the tests
    """`python -m flows.workspace ROOT`: take ROOT's lock, say so, and sleep until killed."""
    import time

    with workspace_lock(root, what="python -m flows.workspace (test holder)"):
        print("held", flush=True)
        while True:
            time.sleep(60)


if __name__ == "__main__":
    hold_for_test(sys.argv[1] if len(sys.argv) > 1 else ".")
