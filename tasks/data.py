"""data stage (placeholder until the world generator lands): see DataConfig."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class DataConfig:
    source: str = "pydoc"  # world | pydoc | files | hf
    out_dir: str = "data/raw"  # stage output: corpus.jsonl, tasks/, prompts/, instructions/
