"""Config: Hydra composition, schema validation and the one-line errors of every entry point."""

import sys

import pytest
from omegaconf import OmegaConf

from conftest import ROOT, run_cmd
from tasks.config import ConfigError, compose, load_params, write_params


def test_compose_defaults_and_experiment():
    cfg = compose([])
    assert cfg.model.name == "tiny" and cfg.pretrain.out_dir == "models/pretrain"
    smoke = compose(["experiment=smoke"])
    assert smoke.model.n_layer == 2 and smoke.pretrain.max_steps < cfg.pretrain.max_steps
    # interpolations are resolved: stage paths chain through the config
    assert smoke.pretrain.data_dir == smoke.tokenizer.out_dir


@pytest.mark.parametrize("model", ["tiny", "gpt1", "gpt2-124m", "gpt2-350m"])
def test_model_presets(model):
    cfg = compose([f"model={model}"])
    assert cfg.model.n_embd % cfg.model.n_head == 0
    if model == "gpt1":
        assert (cfg.model.n_layer, cfg.model.n_embd, cfg.model.n_head, cfg.model.block_size) == (12, 768, 12, 512)
        assert cfg.model.norm_position == "post"
    else:
        assert cfg.model.norm_position == "pre"


def test_unknown_key_is_one_line_naming_it():
    with pytest.raises(ConfigError) as e:
        compose(["pretrain.learning_rate=1e-3"])
    assert "pretrain.learning_rate" in str(e.value) and "\n" not in str(e.value)


def test_wrong_type_is_one_line_naming_it():
    with pytest.raises(ConfigError) as e:
        compose(["pretrain.lr=fast"])
    assert "pretrain.lr" in str(e.value) and "\n" not in str(e.value)


def test_params_round_trip(tmp_path):
    cfg = compose(["experiment=smoke", "pretrain.lr=0.002"])
    path = write_params(cfg, tmp_path / "params.yaml")
    again = load_params(path)
    assert OmegaConf.to_container(again) == OmegaConf.to_container(cfg)
    with pytest.raises(ConfigError, match="pretrain.max_steps"):
        load_params(path, ["pretrain.max_steps=many"])


def test_params_file_for_dvc_matches_conf():
    """The committed params.yaml is conf/ composed with no override (what dvc repro, make pipeline,
    the flow and the deployment run), and experiment=default names the same thing."""
    committed = OmegaConf.to_container(load_params(ROOT / "params.yaml"))
    assert committed == OmegaConf.to_container(compose([])) == OmegaConf.to_container(compose(["experiment=default"]))


@pytest.mark.parametrize(
    "args,key",
    [(["pretrain.lr=fast"], "pretrain.lr"), (["pretrain.no_such_key=1"], "pretrain.no_such_key")],
)
def test_entry_point_exits_2_with_one_line(tmp_path, args, key):
    proc = run_cmd([sys.executable, "-m", "tasks.pretrain", *args], cwd=ROOT, check=False)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and key in lines[0], proc.stderr


def test_flow_without_arguments_leaves_the_committed_params_unchanged(tmp_path, monkeypatch):
    """`python -m flows.pipeline` with no argument writes params.yaml: byte for byte the committed one."""
    from flows.pipeline import configure

    monkeypatch.chdir(tmp_path)
    configure.fn([])
    assert (tmp_path / "params.yaml").read_bytes() == (ROOT / "params.yaml").read_bytes()
