"""The GPT model: architecture, sampling, checkpoints (plain PyTorch; `model.hf` for Hugging Face interop)."""

from model.checkpoint import Checkpoint, CheckpointError, load_checkpoint, save_checkpoint
from model.generate import GenerateOutput, generate
from model.gpt import GPT, GPTConfig, KVCache

__all__ = [
    "GPT",
    "GPTConfig",
    "KVCache",
    "generate",
    "GenerateOutput",
    "save_checkpoint",
    "load_checkpoint",
    "Checkpoint",
    "CheckpointError",
]
