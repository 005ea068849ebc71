"""Config: Hydra composition, schema validation and the one-line errors of every entry point."""

import dataclasses
import sys
import typing

import pytest
from omegaconf import OmegaConf

from conftest import ROOT, run_cmd
from tasks import schema
from tasks.config import CONF_DIR, ConfigError, compose, load_params, write_params


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
    [(["pretrain.lr=fast"], "pretrain.lr"), (["pretrain.no_such_key=1"], "pretrain.no_such_key"),
     (["pretrain.dtype=fp16"], "pretrain.dtype")],
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


# --- one source for every value: conf/ holds them, tasks/schema.py holds only types -------------


def _dataclasses_in(tp):
    """The schema dataclasses inside annotation `tp`, each with whether it sits in a list or dict."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Annotated:
        yield from _dataclasses_in(args[0])
    elif origin in (list, dict):
        yield from ((cls, True) for cls, _ in _dataclasses_in(args[-1]))
    elif args:
        for a in args:
            yield from _dataclasses_in(a)
    elif dataclasses.is_dataclass(tp):
        yield tp, False


def _schema_classes() -> tuple[set, set]:
    """(sections, entries): the dataclasses reachable from Config through fields, and those
    reachable only as the values of lists and dicts (entries users add, like data.tasks)."""
    sections, entries, todo = {schema.Config}, set(), [schema.Config]
    while todo:
        cls = todo.pop()
        for hint in typing.get_type_hints(cls, include_extras=True).values():
            for sub, in_container in _dataclasses_in(hint):
                if sub not in sections | entries:
                    (entries if in_container else sections).add(sub)
                    todo.append(sub)
    return sections, entries


def test_the_schema_states_no_value():
    """One default per setting, by construction: a section's field has no default in the schema (its
    value and comment are in conf/, which DVC composes too). Only entry types give their optional
    keys a default, as no YAML holds a template for an entry a user adds."""
    sections, entries = _schema_classes()
    assert schema.DataConfig in sections and schema.ModelConfig in sections and len(sections) > 15
    with_default = {f"{cls.__name__}.{f.name}" for cls in sections for f in dataclasses.fields(cls)
                    if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING}
    assert not with_default, f"settings with a default in tasks/schema.py (give the value in conf/ instead): {sorted(with_default)}"
    optional = {cls for cls in entries if any(f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
                                              for f in dataclasses.fields(cls))}
    assert optional == {schema.UserTaskConfig, schema.PromptTemplate, schema.ScalingSize}


def _leaves(d, path=()):
    if isinstance(d, dict) and d:
        for k, v in d.items():
            yield from _leaves(v, (*path, k))
    else:
        yield path, d


def _restated(delta: dict, base: dict) -> list[str]:
    """The settings of `delta` (a YAML's own values) that `base` already has, with the same value."""
    out = []
    for path, value in _leaves(delta):
        node = base
        for k in path:
            node = node.get(k, KeyError) if isinstance(node, dict) else KeyError
        if node == value:
            out.append(".".join(map(str, path)))
    return out


def test_conf_states_each_value_once():
    """An experiment or an option built on another option (data/pydoc.yaml on data/world.yaml)
    states only what it changes: a value equal to the one it would get anyway is a second copy."""
    base = OmegaConf.to_container(compose([]))
    twice = {}
    for path in sorted((CONF_DIR / "experiment").glob("*.yaml")):
        own = OmegaConf.to_container(OmegaConf.load(path))
        own.pop("defaults", None)
        twice[f"experiment/{path.name}"] = _restated(own, base)
    for path in sorted(CONF_DIR.glob("*/*.yaml")):
        group = path.parent.name
        own = OmegaConf.to_container(OmegaConf.load(path))
        bases = [d for d in own.pop("defaults", []) if isinstance(d, str) and d != "_self_"] if group != "experiment" else []
        for b in bases:
            twice[f"{group}/{path.name}"] = _restated(own, OmegaConf.to_container(compose([f"{group}={b}"]))[group])
    assert any(k.startswith("data/") for k in twice)  # the data sources are deltas on data/world.yaml
    assert not {k: v for k, v in twice.items() if v}


def _dvc_compose(tmp_path, overrides: list[str]) -> dict:
    """conf/ composed the way `dvc exp run -S` does (hydra.enabled): Hydra alone, no schema."""
    import yaml
    from dvc.utils.hydra import compose_and_dump

    out = tmp_path / "params.yaml"
    compose_and_dump(out, str(CONF_DIR), None, "config", str(tmp_path), overrides)
    return yaml.safe_load(out.read_text())


@pytest.mark.parametrize("overrides", [
    [], *([f"experiment={p.stem}"] for p in sorted(CONF_DIR.glob("experiment/*.yaml"))),
    *([f"{p.parent.name}={p.stem}"] for p in sorted(CONF_DIR.glob("*/*.yaml")) if p.parent.name in ("data", "tokenizer")),
])
def test_dvc_composition_equals_ours(tmp_path, overrides):
    """DVC composes conf/ without our schema; since the schema adds no value, both give the same params."""
    assert _dvc_compose(tmp_path, overrides) == OmegaConf.to_container(compose(overrides))


def test_conf_oracle_noise_is_the_calibrated_one():
    from tasks.world.oracle import DEFAULT_NOISE

    assert compose([]).data.oracle_noise == DEFAULT_NOISE


# --- choices and ranges are types: one line naming the key ------------------------------------


@pytest.mark.parametrize("override,message", [
    ("ppo.estimator=x", "ppo.estimator: must be one of ppo, rloo, grpo, got 'x'"),
    ("pretrain.dtype=fp16", "pretrain.dtype: must be one of auto, float32, bfloat16, got 'fp16'"),
    ("finetune.ablations.init=[pretrain,random]", "finetune.ablations.init[1]: must be one of pretrain, scratch, got 'random'"),
    ("data.tasks=[{name: a, type: regression, train: a, val: b, test: c}]",
     "data.tasks[0].type: must be one of classification, entailment, similarity, multiple_choice, got 'regression'"),
    ("collect_rankings.k=10", "collect_rankings.k: must be between 2 and 9, got 10"),
    ("dpo.beta=0", "dpo.beta: must be > 0, got 0.0"),
    ("ppo.beta=-0.1", "ppo.beta: must be >= 0, got -0.1"),
    ("tokenizer.val_fraction=1", "tokenizer.val_fraction: must be >= 0 and < 1, got 1.0"),
    ("prompt_eval.max_items=0", "prompt_eval.max_items: must be >= 1 or -1, got 0"),
    ("data.task_sizes.sentiment.val=2", "data.task_sizes.sentiment.val: must be >= 4 or -1, got 2"),
    ("collect_rankings.temperatures=[1.0,0]", "collect_rankings.temperatures[1]: must be > 0, got 0.0"),
    ("prompt_eval.shots=[]", "prompt_eval.shots: must not be empty"),
    ("prompt_eval.shots=[0,1,1]", "prompt_eval.shots: must not repeat a value, got [0, 1, 1]"),
    ("+data.task_sizes.reviews={train: 10, val: 10, test: 10}",
     "data.task_sizes.reviews: unknown name, must be one of sentiment, entailment, paraphrase, story_cloze"),
    ("data.demo_flaws.mix.too_long=-1", "data.demo_flaws.mix.too_long: must be >= 0, got -1.0"),
    ("ppo.variants.ppo_gold.reward=gold", "ppo.variants.ppo_gold.reward: must be one of rm, oracle, got 'gold'"),
    ("ppo.variants.ppo_ptx.ptx_coef=-1", "ppo.variants.ppo_ptx.ptx_coef: must be >= 0, got -1.0"),
    ("+ppo.variants.mine={lr_typo: 1}", "ppo.variants.mine.lr_typo: not a setting of ppo"),
    ("~data.demo_flaws", "data.demo_flaws: missing value (give it in conf/ or as an override)"),
    ("data.tasks=[{name: a}]", "data.tasks[0].type: missing value (give it in conf/ or as an override)"),
])
def test_bad_choice_or_range_is_one_line_naming_the_key(override, message):
    with pytest.raises(ConfigError) as e:
        compose([override])
    assert str(e.value) == message


def test_params_file_values_are_checked_too(tmp_path):
    path = write_params(compose(["experiment=smoke"]), tmp_path / "params.yaml")
    with pytest.raises(ConfigError) as e:
        load_params(path, ["ppo.kl_estimator=k2"])
    assert str(e.value) == f"{path}: ppo.kl_estimator: must be one of k1, k3, got 'k2'"


def test_choices_are_the_ones_the_algorithms_know():
    """The schema spells out the choices model/rl.py implements; they must stay the same."""
    from model import rl

    def choices(cls, name):
        return set(typing.get_args(typing.get_type_hints(cls)[name]))

    assert choices(schema.PPOConfig, "kl_estimator") == set(rl.KL_ESTIMATORS)
    assert choices(schema.PPOConfig, "estimator") == {"ppo", *rl.ADVANTAGE_ESTIMATORS}
    assert choices(schema.DPOConfig, "loss") == set(rl.DPO_LOSSES)


def test_validated_configs_and_sections_pickle():
    """The schema's OmegaConf twins are importable (tasks.config.<Section>), so configs pickle."""
    import pickle

    cfg = compose(["experiment=smoke"])
    assert pickle.loads(pickle.dumps(cfg)) == cfg
    pc = OmegaConf.to_object(cfg.ppo)
    assert isinstance(pc, schema.PPOConfig) and pickle.loads(pickle.dumps(pc)) == pc
