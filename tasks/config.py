"""Compose `conf/` with Hydra, validate it against the typed schema, write `params.yaml`.

    python -m tasks.config experiment=smoke pretrain.lr=1e-3   # writes params.yaml, prints it

Each section's schema is a dataclass of `tasks/schema.py` (which imports no stage);
`Config` below only assembles them, so this module never imports a stage module and a broken
stage breaks only its own entry point. An unknown key or a wrong type is one `ConfigError`
line naming the key.

Every stage module ends with::

    if __name__ == "__main__":
        stage_main(run)

which parses ``[--params params.yaml] [hydra overrides ...]``, validates the config, runs the
stage and turns any bad-input error into one line on stderr and exit status 2.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from tasks.common import InputError, atomic_write_text
from tasks.schema import (CollectRankingsConfig, DataConfig, DPOConfig, EvaluateConfig, FinetuneConfig, PPOConfig, PretrainConfig,
                          PromptEvalConfig, ScalingConfig, SeedsConfig, SFTConfig, TokenizerConfig, TrackingConfig, TrainRMConfig)

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
PARAMS_FILE = "params.yaml"


class ConfigError(Exception):
    """An invalid configuration; the message is one line naming the key."""


@dataclass
class ModelConfig:
    """The GPT's shape (`model/gpt.py`); the vocabulary size comes from the tokenizer."""

    name: str = "tiny"
    n_layer: int = 4  # transformer blocks
    n_head: int = 4  # attention heads per block
    n_embd: int = 128  # residual stream width
    block_size: int = 128  # context window, tokens
    dropout: float = 0.0  # on embeddings, attention weights and residual branches
    bias: bool = True  # biases in Linear and LayerNorm (GPT-1/2 have them)
    norm_position: str = "pre"  # pre: GPT-2 (LN before sublayers + final LN); post: GPT-1
    layer_norm_epsilon: float = 1e-5


@dataclass
class PipelineConfig:
    """How the flow runs the DAG (`flows/pipeline.py`); nothing here changes a stage's numbers."""

    concurrency: int = 0  # stages at once; 0 = the number of CPU cores
    gpu_stages: list[str] = field(default_factory=lambda: ["pretrain", "finetune", "prompt_eval", "sft", "candidates", "train_rm",
                                                           "ppo", "dpo", "evaluate"])  # one at a time on a GPU


@dataclass
class Config:
    seed: int = 1337  # seeds data generation, init, sampling and batching
    device: str = "auto"  # auto (cuda if available, else cpu) | cpu | cuda | cuda:N
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    prompt_eval: PromptEvalConfig = field(default_factory=PromptEvalConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    collect_rankings: CollectRankingsConfig = field(default_factory=CollectRankingsConfig)
    train_rm: TrainRMConfig = field(default_factory=TrainRMConfig)
    ppo: PPOConfig = field(default_factory=PPOConfig)
    dpo: DPOConfig = field(default_factory=DPOConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    scaling: ScalingConfig = field(default_factory=ScalingConfig)
    seeds: SeedsConfig = field(default_factory=SeedsConfig)


def _one_line(e: BaseException) -> str:
    """OmegaConf/Hydra errors span lines ('full_key: ...'); fold them into one naming the key."""
    msg = str(e).strip()
    lines = [ln.strip() for ln in msg.splitlines() if ln.strip()]
    key = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("full_key:")), None)
    head = lines[0] if lines else type(e).__name__
    cause = e.__cause__
    if cause is not None and not key:
        inner = [ln.strip() for ln in str(cause).splitlines() if ln.strip()]
        if inner:
            head = f"{head} {inner[0]}"
    return f"{key}: {head}" if key else head


def validate(raw: DictConfig | dict) -> DictConfig:
    """Merge `raw` into the typed schema and resolve interpolations."""
    try:
        cfg = OmegaConf.merge(OmegaConf.structured(Config), raw)
        OmegaConf.resolve(cfg)
    except OmegaConfBaseException as e:
        raise ConfigError(_one_line(e)) from None
    return cfg


def compose(overrides: list[str] | tuple[str, ...] = ()) -> DictConfig:
    """Compose `conf/config.yaml` with Hydra overrides, validated and resolved."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException

    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            raw = hydra_compose("config", overrides=list(overrides))
    except (HydraException, OmegaConfBaseException) as e:
        raise ConfigError(_one_line(e)) from None
    return validate(raw)


def load_params(path: str | Path = PARAMS_FILE, overrides: list[str] | tuple[str, ...] = ()) -> DictConfig:
    """Read a resolved config (as written by `write_params`), optionally with dotlist overrides."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: file not found (write it with `python -m tasks.config`)")
    try:
        raw = OmegaConf.merge(OmegaConf.load(path), OmegaConf.from_dotlist(list(overrides)))
    except (OmegaConfBaseException, ValueError) as e:
        raise ConfigError(f"{path}: {_one_line(e)}") from None
    try:
        return validate(raw)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None


def write_params(cfg: DictConfig, path: str | Path = PARAMS_FILE) -> Path:
    """Write the resolved config where DVC reads its params."""
    header = "# Written by `python -m tasks.config` / the pipeline flow from conf/. Edit conf/, not this.\n"
    return atomic_write_text(path, header + OmegaConf.to_yaml(cfg, resolve=True))


def stage_main(run: Callable[[Any], dict], argv: list[str] | None = None) -> None:
    """`python -m tasks.<stage> [--params params.yaml] [overrides ...]` for a stage's `run(cfg)`.

    With `--params` the resolved config is read from that file (how `dvc repro` runs stages);
    otherwise `conf/` is composed with the overrides. Bad input exits 2 with one line.
    """
    from model.checkpoint import CheckpointError

    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv[:1] == ["--params"]:
            if len(argv) < 2:
                raise ConfigError("--params needs a file name")
            cfg = load_params(argv[1], argv[2:])
        else:
            cfg = compose(argv)
        metrics = run(cfg)
    except (InputError, ConfigError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    if metrics:
        print(json.dumps(metrics, indent=2, sort_keys=True))


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        cfg = compose(argv)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    path = write_params(cfg)
    print(OmegaConf.to_yaml(cfg, resolve=True))
    print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
