"""The GPT model: architecture, sampling, checkpoints (plain PyTorch; `model.hf` for Hugging Face interop)."""

from model.checkpoint import Checkpoint, CheckpointError, load_checkpoint, save_checkpoint
from model.generate import GenerateOutput, generate
from model.gpt import GPT, GPTConfig, KVCache
from model.load import from_pretrained

__all__ = [
    "GPT",
    "GPTConfig",
    "KVCache",
    "from_pretrained",
    "generate",
    "GenerateOutput",
    "save_checkpoint",
    "load_checkpoint",
    "Checkpoint",
    "CheckpointError",
]
