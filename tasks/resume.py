"""Where a long stage keeps its unfinished run, and whether a new start continues it.

Pre-training, SFT, the reward model, PPO and DPO write their periodic checkpoints (optimizer,
RNG and data position included) to ``{resume_dir}/{out_dir}`` (default ``.resume/models/sft``
...), not to their output folder: `dvc repro` deletes a stage's outputs before it runs the
stage, so a checkpoint kept there would not survive a rerun. The final checkpoint goes to the
output folder and the unfinished one is then deleted.

A stage's `resume` setting:

* ``auto`` (default): continue the unfinished run when it was started with the same settings
  (the stage's section, the seed and, for pre-training, the model), the same inputs (a sha256
  of every input file) and the same code (of tasks/ and model/); otherwise start fresh, saying
  which setting, input or the code changed.
  A laptop closed in the middle of pre-training, then ``make pipeline`` again, continues
  from the last checkpoint and ends with the result of an uninterrupted run.
* ``true``: continue the unfinished run even if settings changed (e.g. more steps), else the
  finished checkpoint in the output folder.
* ``false``: always start fresh.

Settings that cannot change a result (`progress`, `threads`, `ckpt_every`, `log_every`, the
`resume` setting itself) are left out of the comparison.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from pathlib import Path
from typing import Any

from model.files import sweep
from tasks.tracking import flatten

UNFINISHED = "trainer.pt"  # a checkpoint folder with this file can be continued
CODE_DIRS = [Path(__file__).resolve().parent, Path(__file__).resolve().parent.parent / "model"]  # tasks/ and model/
KEY = "resume_key"  # where the settings and input digests are kept in the checkpoint's meta.json
IGNORED = ("resume", "progress", "threads", "ckpt_every", "log_every")


def digest(path: str | Path) -> str:
    """sha256 of a file, or of a folder's files (relative names and contents, in sorted order)."""
    path = Path(path)
    h = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else []
    if not files:
        return "missing"
    for f in files:
        h.update(str(f.relative_to(path) if f != path else f.name).encode() + b"\0")
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def code_digest() -> str:
    """sha256 of the project's training code (the .py files of tasks/ and model/): a run is never
    continued by other code than the one that started it."""
    h = hashlib.sha256()
    for root in CODE_DIRS:
        for f in sorted(root.rglob("*.py")):
            h.update(str(f.relative_to(root.parent)).encode() + b"\0" + f.read_bytes())
    return h.hexdigest()


def unfinished_folder(resume_dir: str | Path, out_dir: str | Path) -> Path:
    """``{resume_dir}/{out_dir}``: one folder per output folder, so variants never share one."""
    out = Path(out_dir)
    return Path(resume_dir) / (Path(*out.parts[1:]) if out.is_absolute() else out)


def _differences(saved: dict, now: dict) -> list[str]:
    changed = [k for k in sorted(set(saved.get("config", {})) | set(now["config"]))
               if saved.get("config", {}).get(k) != now["config"].get(k)]
    changed += [f"input {p}" for p in sorted(set(saved.get("inputs", {})) | set(now["inputs"]))
                if saved.get("inputs", {}).get(p) != now["inputs"].get(p)]
    if saved.get("code") != now["code"]:
        changed.append("the code (tasks/, model/)")
    return changed


class Resume:
    """One stage's unfinished run: its folder, the key it is continued by, and the decision.

        res = Resume(cfg, "sft", sections=["seed", "sft"], inputs=[sc.init, sc.data_dir], out_dir=sc.out_dir)
        start = res.start()          # the folder to continue from, or None: start fresh
        ...save periodic checkpoints to res.folder with meta {..., **res.meta()}...
        ...save the final checkpoint to out_dir, then res.finish()
    """

    def __init__(self, cfg, stage: str, *, sections: list[str], inputs: list[str | Path], out_dir: str | Path,
                 setting: Any = None):
        from omegaconf import OmegaConf

        conf = OmegaConf.to_container(cfg, resolve=True)
        self.stage, self.out_dir = stage, Path(out_dir)
        self.setting = conf[stage.split("@")[0]]["resume"] if setting is None else setting
        self.root = Path(conf.get("resume_dir", ".resume"))
        self.folder = unfinished_folder(self.root, out_dir)
        config = {k: v for s in sections for k, v in flatten(conf[s], f"{s}.").items() if k.rsplit(".", 1)[-1] not in IGNORED}
        self.key = {"config": {k: json.dumps(v, sort_keys=True) for k, v in config.items()},
                    "inputs": {str(p): digest(p) for p in inputs if str(p) not in ("", "scratch")}, "code": code_digest()}

    def meta(self) -> dict:
        return {KEY: self.key}

    def say(self, text: str) -> None:
        print(f"{self.stage}: {text}", file=sys.stderr, flush=True)

    def start(self) -> Path | None:
        """The checkpoint folder to continue from, or None to start fresh; says which, and why."""
        sweep(self.folder)  # a writer killed mid-save: its temp folder removed, or the previous checkpoint put back
        unfinished = (self.folder / UNFINISHED).is_file()
        if self.setting is False:
            if unfinished:
                self.say(f"starting fresh (resume=false); the unfinished run in {self.folder} will be replaced")
            return None
        if self.setting is True:
            for folder in (self.folder, self.out_dir):
                if (folder / UNFINISHED).is_file():
                    self.say(f"resuming from {folder} (resume=true: settings not compared)")
                    return folder
            return None
        if not unfinished:
            return None
        try:
            meta = json.loads((self.folder / "meta.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            self.say(f"starting fresh: the unfinished run in {self.folder} has no readable meta.json")
            return None
        changed = _differences(meta.get(KEY) or {}, self.key)
        if changed:
            shown = ", ".join(changed[:4]) + (f" and {len(changed) - 4} more" if len(changed) > 4 else "")
            self.say(f"starting fresh: {shown} changed since the unfinished run in {self.folder}")
            return None
        step = meta.get("step", meta.get("update"))
        self.say(f"resuming the unfinished run in {self.folder}" + (f" from step {step}" if step is not None else ""))
        return self.folder

    def finish(self) -> None:
        """The final checkpoint is written: the unfinished run is no longer needed."""
        shutil.rmtree(self.folder, ignore_errors=True)
        for parent in self.folder.parents:  # the empty folders above it, resume_dir included
            if not parent.is_dir() or any(parent.iterdir()):
                break
            parent.rmdir()
            if parent == self.root:
                break
