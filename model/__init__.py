"""The GPT model: architecture, sampling, checkpoints (plain PyTorch; `model.hf` for Hugging Face interop).

The names below load on first use, so importing one submodule (say `model.errors`) does not
import torch and every other module: a DVC stage's code deps are what it really runs.
"""

from importlib import import_module

_WHERE = {
    "Checkpoint": "model.checkpoint",
    "CheckpointError": "model.errors",
    "load_checkpoint": "model.checkpoint",
    "save_checkpoint": "model.checkpoint",
    "GenerateOutput": "model.generate",
    "generate": "model.generate",
    "GPT": "model.gpt",
    "GPTConfig": "model.gpt",
    "KVCache": "model.gpt",
    "from_pretrained": "model.load",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'model' has no attribute {name!r}")
