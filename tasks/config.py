"""Compose `conf/` with Hydra, validate it against the typed schema, write `params.yaml`.

    python -m tasks.config experiment=smoke pretrain.lr=1e-3   # writes params.yaml, prints it

`conf/*.yaml` holds every value and its comment, once; `tasks/schema.py` holds only the types
(`Config` and one dataclass per section, which import no stage), so this module never imports a
stage module and a broken stage breaks only its own entry point. A composed config is merged into
the schema (OmegaConf checks keys and types), resolved, and then checked by `_check` against what
OmegaConf cannot express: `Literal` choices and the `Range`/`NonEmpty`/`Distinct`/`VariantsOf`
markers of the annotations. An unknown key, a missing value, a wrong type, a value outside its
choices or its range: each is one `ConfigError` line naming the dotted key.

Every stage module ends with::

    if __name__ == "__main__":
        stage_main(run)

which parses ``[--params params.yaml] [hydra overrides ...]``, validates the config, runs the
stage and turns any bad-input error into one line on stderr and exit status 2.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import sys
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin, get_type_hints

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from tasks.common import InputError, atomic_write_text
from tasks import schema
from tasks.schema import Distinct, NonEmpty, Range, VariantsOf  # the markers; no section is named here (see __getattr__)

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
PARAMS_FILE = "params.yaml"


class ConfigError(InputError):
    """An invalid configuration; the message is one line naming the key (bad input, like any InputError)."""


# --- the schema as OmegaConf sees it ------------------------------------------------------------


def _plain(tp: Any) -> Any:
    """Annotation `tp` in the types OmegaConf accepts: Annotated unwrapped, a Literal as the type of
    its values, a schema dataclass as its `_structured` twin."""
    origin, args = get_origin(tp), get_args(tp)
    if origin is Annotated:
        return _plain(args[0])
    if origin is Literal:
        kinds = {type(a) for a in args}
        return kinds.pop() if len(kinds) == 1 else Any
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        return typing.Optional[_plain(inner[0])] if len(inner) == 1 else Any
    if origin is list:
        return list[_plain(args[0])]
    if origin is dict:
        return dict[_plain(args[0]), _plain(args[1])]
    if dataclasses.is_dataclass(tp):
        return _structured(tp)
    return tp


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return get_type_hints(cls, include_extras=True)


@functools.cache
def _structured(cls: type) -> type:
    """A subclass of schema dataclass `cls` with the same fields (and defaults: none but an entry
    type's optional keys) in annotations OmegaConf accepts; `OmegaConf.to_object` builds these.
    It is importable as `tasks.config.<name>` (see `__getattr__`), so configs and the objects
    built from them pickle."""
    fields = [(f.name, _plain(_hints(cls)[f.name]), dataclasses.field(default=f.default, default_factory=f.default_factory))
              for f in dataclasses.fields(cls)]
    twin = dataclasses.make_dataclass(cls.__name__, fields, bases=(cls,))
    twin.__module__, twin.__qualname__, twin.__doc__ = "tasks.config", cls.__qualname__, cls.__doc__
    return twin


def __getattr__(name: str) -> type:
    """`tasks.config.<Section>`: the `_structured` twin of schema dataclass <Section> (how pickle finds it)."""
    cls = getattr(schema, name, None)
    if isinstance(cls, type) and dataclasses.is_dataclass(cls):
        return _structured(cls)
    raise AttributeError(f"module 'tasks.config' has no attribute {name!r}")


# --- the checks OmegaConf cannot make -----------------------------------------------------------


def _bounds(r: Range) -> str:
    if r.ge is not None and r.le is not None:
        text = f"between {r.ge} and {r.le}"
    else:
        lo = f">= {r.ge}" if r.ge is not None else f"> {r.gt}" if r.gt is not None else ""
        hi = f"<= {r.le}" if r.le is not None else f"< {r.lt}" if r.lt is not None else ""
        text = " and ".join(t for t in (lo, hi) if t)
    return " or ".join([text, *map(str, r.also)])


def _check_mark(mark: Any, value: Any, key: str) -> None:
    if isinstance(mark, Range) and value not in mark.also:
        r = mark
        if ((r.ge is not None and value < r.ge) or (r.gt is not None and value <= r.gt)
                or (r.le is not None and value > r.le) or (r.lt is not None and value >= r.lt)):
            raise ConfigError(f"{key}: must be {_bounds(r)}, got {value!r}")
    elif isinstance(mark, NonEmpty) and len(value) == 0:
        raise ConfigError(f"{key}: must not be empty")
    elif isinstance(mark, Distinct) and len(set(value)) != len(value):
        raise ConfigError(f"{key}: must not repeat a value, got {list(value)}")


def _join(key: str, name: Any) -> str:
    return f"{key}.{name}" if key else str(name)


def _child(node: Any, k: Any, key: str) -> Any:
    if OmegaConf.is_missing(node, k):
        raise ConfigError(f"{key}: missing value (give it in conf/ or as an override)")
    return node[k]


def _check(value: Any, tp: Any, key: str = "") -> None:
    """Raise a ConfigError naming the first value under `key` that is missing or outside the
    choices (Literal) or the markers of its annotation `tp`; `value` is the resolved config node
    (keys and types already checked by OmegaConf)."""
    marks: tuple = ()
    if get_origin(tp) is Annotated:
        tp, marks = get_args(tp)[0], get_args(tp)[1:]
    if value is None:
        return
    for mark in marks:
        _check_mark(mark, value, key)
    origin, args = get_origin(tp), get_args(tp)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{key}: must be one of {', '.join(map(str, args))}, got {value!r}")
    elif origin in (typing.Union, types.UnionType):
        for a in args:
            if a is not type(None):
                _check(value, a, key)
    elif origin is list:
        for i in range(len(value)):
            _check(_child(value, i, f"{key}[{i}]"), args[0], f"{key}[{i}]")
    elif origin is dict:
        for k in value:
            if get_origin(args[0]) is Literal and k not in get_args(args[0]):
                raise ConfigError(f"{_join(key, k)}: unknown name, must be one of {', '.join(map(str, get_args(args[0])))}")
            _check(_child(value, k, _join(key, k)), args[1], _join(key, k))
    elif dataclasses.is_dataclass(tp):
        for name, hint in _hints(tp).items():
            _check(_child(value, name, _join(key, name)), hint, _join(key, name))
            if any(isinstance(m, VariantsOf) for m in get_args(hint)[1:]):
                _check_variants(value, tp, name, _join(key, name))


def _check_variants(section: DictConfig, cls: type, field_name: str, key: str) -> None:
    """Each entry of section[field_name] overrides settings of `section`: each must be one, and its
    value is checked as that setting (type, choices, range)."""
    for name, entry in section[field_name].items():
        if not isinstance(entry, DictConfig):
            raise ConfigError(f"{_join(key, name)}: must be a mapping of {key.rsplit('.', 1)[0] or 'section'} settings, got {entry!r}")
        for k, v in entry.items():
            where = _join(_join(key, name), k)
            if k not in _hints(cls) or k == field_name:
                raise ConfigError(f"{where}: not a setting of {key.rsplit('.', 1)[0]}")
            try:
                merged = OmegaConf.merge(section, {k: v})
            except OmegaConfBaseException as e:
                raise ConfigError(f"{where}: {_one_line(e).split(': ', 1)[-1]}") from None
            _check(merged[k], _hints(cls)[k], where)


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
    """Merge `raw` into the typed schema, resolve interpolations, and check every value."""
    try:
        cfg = OmegaConf.merge(OmegaConf.structured(_structured(schema.Config)), raw)
        OmegaConf.resolve(cfg)
    except OmegaConfBaseException as e:
        raise ConfigError(_one_line(e)) from None
    _check(cfg, schema.Config)
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
    from model.errors import CheckpointError, NonFiniteLoss

    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv[:1] == ["--params"]:
            if len(argv) < 2:
                raise ConfigError("--params needs a file name")
            cfg = load_params(argv[1], argv[2:])
        else:
            cfg = compose(argv)
        metrics = run(cfg)
    except (InputError, ConfigError, CheckpointError, NonFiniteLoss) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except OSError as e:  # a full disk, a quota, a permission: what failed and on which file, in one line
        print(f"error: {e.filename + ': ' if e.filename else ''}{e.strerror or e}", file=sys.stderr)
        sys.exit(1)
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
