"""Load a GPT from our checkpoint folder or a Hugging Face GPT-2 folder (the one loader every stage uses).

Dependencies run one way: `load` -> `hf` -> `checkpoint` -> `gpt`; no module imports its importer.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from model.checkpoint import CONFIG, WEIGHTS, CheckpointError, config_from_dict, load_weights, read_json, read_tensors
from model.gpt import GPT


def from_pretrained(path, *, dropout: float | None = None) -> GPT:
    """Our checkpoint folder or a Hugging Face GPT-2 folder (config.json + model.safetensors).

    The kind is told by config.json: `model_type: gpt2` is Hugging Face. Weights are read with
    safetensors only (no pickles). `dropout` overrides the stored value (HF: resid_pdrop).
    """
    folder = Path(path)
    if not folder.is_dir():
        raise CheckpointError(f"checkpoint {folder}: folder not found")
    raw = read_json(folder, CONFIG)
    tensors = read_tensors(folder, WEIGHTS)
    if raw.get("model_type") == "gpt2":
        from model import hf  # only for Hugging Face folders (and so `python -m model.hf` imports cleanly)

        config = hf.config_from_hf(raw, folder)
        tensors = hf.state_dict_from_hf(tensors, folder)
    else:
        config = config_from_dict(raw, folder)
    if dropout is not None:
        config = replace(config, dropout=dropout)
    model = GPT(config)
    load_weights(model, tensors, folder)
    return model
