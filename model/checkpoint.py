"""Checkpoints: one folder per checkpoint, written atomically, read without unpickling weights.

Layout:
    model.safetensors   weights (the tied lm_head is stored once, as transformer.wte.weight)
    config.json         GPTConfig.to_dict()
    meta.json           free dict: stage, step, metrics, resolved config, token ids...
    tokenizer.json      optional, copied from the tokenizer the model was trained with
    trainer.pt          optional optimizer / scheduler / RNG / data-position state (torch.save,
                        read back with weights_only=True: tensors, numbers, strings, lists, dicts;
                        e.g. numpy RNG state must be converted first)
    heads.safetensors   optional flat dict of extra tensors (classifier, reward or value heads)

A save writes everything into a sibling temp folder, fsyncs it, and only then swaps it in, so a
crash leaves either the old checkpoint or the new one, never half of one (model/files.py).
"""

from __future__ import annotations

import json
import pickle
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from model.errors import CheckpointError  # noqa: F401  (raised here; callers import it from here too)
from model.files import atomic_folder, sweep  # noqa: F401  (atomic_folder: model/hf.py imports it from here)
from model.gpt import GPT, GPTConfig

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
META = "meta.json"
TOKENIZER = "tokenizer.json"
TRAINER = "trainer.pt"
HEADS = "heads.safetensors"
TIED = "lm_head.weight"  # same tensor as transformer.wte.weight, so never stored



@dataclass
class Checkpoint:
    model: GPT
    config: GPTConfig
    meta: dict
    trainer_state: dict | None = None
    extra_tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    tokenizer_path: Path | None = None


def _one_line(e: BaseException) -> str:
    unsupported = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))  # torch.load(weights_only=True)
    if unsupported:
        return f"weights_only loading refuses {unsupported.group(1)}"
    msg = str(e).strip().splitlines()
    return msg[0] if msg else type(e).__name__


def weights_of(model: GPT) -> dict[str, torch.Tensor]:
    """The model's tensors as safetensors wants them: contiguous, on CPU, tied weight once."""
    return {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items() if k != TIED}


def save_checkpoint(
    path,
    model: GPT,
    meta: dict,
    *,
    tokenizer_path=None,
    trainer_state: dict | None = None,
    extra_tensors: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write `model` (+ meta, tokenizer, trainer state, head tensors) as the checkpoint folder `path`."""
    dest = Path(path)
    if tokenizer_path is not None and not Path(tokenizer_path).is_file():
        raise CheckpointError(f"checkpoint {dest}: tokenizer file {tokenizer_path} not found")
    kept = "the previous checkpoint is kept" if dest.is_dir() else "nothing was written"
    meta_text = json.dumps(meta, indent=2, sort_keys=True) + "\n"  # bad meta: json's TypeError, before anything is written
    name = META
    try:
        with atomic_folder(dest) as tmp:
            # the JSON and pickle steps come first: they are the ones that fail on bad input
            (tmp / META).write_text(meta_text, encoding="utf-8")
            if trainer_state is not None:
                name = TRAINER
                try:  # (a failed write is torch's RuntimeError: the disk, reported below)
                    torch.save(trainer_state, tmp / TRAINER)
                except (pickle.PicklingError, TypeError, AttributeError) as e:
                    raise CheckpointError(f"checkpoint {dest}: trainer_state cannot be saved ({_one_line(e)})") from None
                try:  # and refuse now what resuming could not read back (mmap: only the pickle is parsed)
                    torch.load(tmp / TRAINER, weights_only=True, mmap=True)
                except pickle.UnpicklingError as e:
                    raise CheckpointError(f"checkpoint {dest}: trainer_state cannot be saved ({_one_line(e)})") from None
            name = CONFIG
            (tmp / CONFIG).write_text(json.dumps(model.config.to_dict(), indent=2) + "\n", encoding="utf-8")
            name = WEIGHTS
            save_file(weights_of(model), tmp / WEIGHTS, metadata={"format": "pt"})
            if extra_tensors:
                name = HEADS
                save_file({k: v.detach().contiguous().cpu() for k, v in extra_tensors.items()}, tmp / HEADS)
            if tokenizer_path is not None:
                name = TOKENIZER
                shutil.copyfile(tokenizer_path, tmp / TOKENIZER)
    except CheckpointError:
        raise
    except Exception as e:  # a full disk, a quota, a file size limit, an I/O error (safetensors has its own error type)
        raise CheckpointError(f"checkpoint {dest}: writing {name} failed ({_one_line(e)}); {kept}") from None
    return dest


def read_json(folder: Path, name: str) -> dict:
    path = folder / name
    if not path.is_file():
        raise CheckpointError(f"checkpoint {folder}: {name} is missing")
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"checkpoint {folder}: {name} is not valid JSON ({_one_line(e)})") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"checkpoint {folder}: {name} is not a JSON object")
    return obj


def read_tensors(folder: Path, name: str, device="cpu") -> dict[str, torch.Tensor]:
    path = folder / name
    if not path.is_file():
        raise CheckpointError(f"checkpoint {folder}: {name} is missing")
    try:
        return load_file(path, device=str(device))
    except Exception as e:  # safetensors raises its own error type for bad headers and short files
        raise CheckpointError(f"checkpoint {folder}: {name} is truncated or corrupt ({_one_line(e)})") from None


def config_from_dict(raw: dict, folder: Path) -> GPTConfig:
    try:
        return GPTConfig.from_dict(raw)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"checkpoint {folder}: {CONFIG} is invalid ({_one_line(e)})") from None


def load_weights(model: GPT, tensors: dict[str, torch.Tensor], folder: Path) -> None:
    """Copy `tensors` into `model`; every parameter but the tied lm_head must be present, nothing else."""
    dtypes = {t.dtype for t in tensors.values()}
    if len(dtypes) == 1:  # keep the stored precision (e.g. bf16) rather than upcasting
        model.to(dtype=dtypes.pop())
    try:
        missing, unexpected = model.load_state_dict(tensors, strict=False)
    except RuntimeError as e:  # shape mismatches
        msg = " ".join(str(e).split())[:300]
        raise CheckpointError(f"checkpoint {folder}: {WEIGHTS} does not match {CONFIG} ({msg})") from None
    problems = []
    if missing := [k for k in missing if k != TIED]:
        problems.append(f"missing {', '.join(missing[:5])}")
    if unexpected:
        problems.append(f"unexpected {', '.join(unexpected[:5])}")
    if problems:
        raise CheckpointError(f"checkpoint {folder}: {WEIGHTS} does not match {CONFIG} ({'; '.join(problems)})")


def load_checkpoint(path, *, device="cpu", load_trainer: bool = False) -> Checkpoint:
    """Read a checkpoint folder written by `save_checkpoint`, the model on `device`."""
    folder = Path(path)
    sweep(folder)
    if not folder.is_dir():
        raise CheckpointError(f"checkpoint {folder}: folder not found")
    model = GPT(config_from_dict(read_json(folder, CONFIG), folder))
    load_weights(model, read_tensors(folder, WEIGHTS), folder)
    model = model.to(device)
    meta = read_json(folder, META)
    trainer_state = None
    if load_trainer and (folder / TRAINER).is_file():
        try:
            trainer_state = torch.load(folder / TRAINER, map_location=device, weights_only=True)
        except Exception as e:
            raise CheckpointError(f"checkpoint {folder}: {TRAINER} is truncated or corrupt ({_one_line(e)})") from None
    extra = read_tensors(folder, HEADS, device) if (folder / HEADS).is_file() else {}
    tokenizer = folder / TOKENIZER
    return Checkpoint(
        model=model,
        config=model.config,
        meta=meta,
        trainer_state=trainer_state,
        extra_tensors=extra,
        tokenizer_path=tokenizer if tokenizer.is_file() else None,
    )
