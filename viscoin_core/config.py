"""Typed run configs: plain dataclasses, validated from flat papermill/YAML parameters.

A config class is a dataclass whose fields are declared with `param(...)`. `parse_config` turns a
flat mapping (a notebook's `parameters` cell, a YAML file) into an instance and raises
`ConfigError` naming the key, the value and what is allowed for an unknown key, a wrong type, an
out-of-range value or a missing required key (paths have no silent defaults: declare them without
a default). Cross-field rules go in the class's `__post_init__`, raising `ConfigError` too.
"""

from __future__ import annotations

import dataclasses
import json
import re
import types
import typing
from pathlib import Path
from typing import Any, Mapping

import yaml


class ConfigError(ValueError):
    """A parameter is unknown, mistyped, out of range or missing; the message names it."""


def param(default: Any = dataclasses.MISSING, *, low: float | None = None, high: float | None = None,
          choices: tuple | None = None, low_open: bool = False, help: str = "") -> Any:
    """A dataclass field with validation metadata.

    `low`/`high` bound numbers (inclusive, unless `low_open`), `choices` lists the allowed values.
    Leave `default` out for a required parameter (every path should be).
    """
    meta = {"low": low, "high": high, "choices": choices, "low_open": low_open, "help": help}
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda d=default: type(d)(d), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def fail(key: str, value: Any, allowed: str, source: str) -> ConfigError:
    """A ConfigError whose message names the key, the value, what is allowed and where it came from."""
    return ConfigError(f"{source}: parameter '{key}' = {value!r} is not allowed; expected {allowed}")


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _check_type(value: Any, tp: Any) -> bool:
    """True when `value` fits the annotation `tp` (ints are accepted for floats, bools never for numbers)."""
    if tp is Any:
        return True
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return any(_check_type(value, arg) for arg in typing.get_args(tp))
    if tp is type(None):
        return value is None
    if origin is typing.Literal:
        return value in typing.get_args(tp)
    if origin in (list, tuple):
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            return False
        item = args[0] if args else Any
        return all(_check_type(v, item) for v in value)
    if origin is dict:
        key_tp, val_tp = typing.get_args(tp) or (Any, Any)
        return isinstance(value, dict) and all(
            _check_type(k, key_tp) and _check_type(v, val_tp) for k, v in value.items())
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, tp)


def _coerce(value: Any, tp: Any) -> Any:
    """Make YAML/JSON values match the annotation: floats stay floats, lists become tuples where asked."""
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if typing.get_origin(tp) is tuple and isinstance(value, list):
        return tuple(value)
    return value


def _check_range(key: str, value: Any, meta: Mapping, source: str) -> None:
    if meta.get("choices") is not None and value not in meta["choices"]:
        raise fail(key, value, f"one of {list(meta['choices'])}", source)
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return
    low, high = meta.get("low"), meta.get("high")
    too_low = low is not None and (value <= low if meta.get("low_open") else value < low)
    too_high = high is not None and value > high
    if too_low or too_high:
        left = "(" if meta.get("low_open") else "["
        bounds = f"{left}{'-inf' if low is None else low}, {'inf' if high is None else high}]"
        raise fail(key, value, f"a value in {bounds}", source)


def parse_config(cls: type, params: Mapping[str, Any], source: str = "parameters") -> Any:
    """Build a `cls` instance from flat `params`, validating every key; `source` names the file or cell."""
    if not isinstance(params, Mapping):
        raise ConfigError(f"{source}: expected a mapping of parameter names to values, got {type(params).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(params) - set(fields))
    if unknown:
        raise ConfigError(f"{source}: unknown parameter(s) {unknown} for {cls.__name__}; "
                          f"allowed keys are {sorted(fields)}")
    values = {}
    for name, field in fields.items():
        if name not in params:
            if field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
                raise ConfigError(f"{source}: required parameter '{name}' is missing for {cls.__name__}")
            continue
        value = params[name]
        if not _check_type(value, hints[name]):
            raise fail(name, value, f"type {_type_name(hints[name])}", source)
        value = _coerce(value, hints[name])
        _check_range(name, value, field.metadata, source)
        values[name] = value
    try:
        return cls(**values)
    except ConfigError as err:
        raise ConfigError(f"{source}: {err}") from None


def read_params(path: str | Path, _seen: tuple = ()) -> dict:
    """Read a flat YAML parameter file; a missing file or a non-mapping is a ConfigError naming it.

    A file may start from another with `extends: other.yaml` (a path relative to its own folder) and
    override some of its keys: an ablation row is then its base plus the one value it changes. A list,
    `extends: [a.yaml, b.yaml]`, merges its files in order (later ones win), then the file's own keys.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"parameter file {path} does not exist")
    if path.resolve() in _seen:
        raise ConfigError(f"{path}: 'extends' forms a cycle through {[str(p) for p in _seen]}")
    try:
        data = load_yaml(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({err})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a YAML mapping of parameters, got {type(data).__name__}")
    bases = data.pop("extends", [])
    bases = [bases] if isinstance(bases, str) else bases
    if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
        raise ConfigError(f"{path}: 'extends' = {bases!r} must be a file name or a list of them")
    merged: dict = {}
    for base in bases:
        merged.update(read_params(path.parent / base, _seen + (path.resolve(),)))
    merged.update(data)
    return merged


def load_config(cls: type, path: str | Path | None = None, **overrides: Any) -> Any:
    """`parse_config` on a YAML file (optional) updated with keyword overrides."""
    params = read_params(path) if path is not None else {}
    params.update(overrides)
    return parse_config(cls, params, source=str(path) if path is not None else "parameters")


def config_from(cls: type, config: Any, source: str = "parameters") -> Any:
    """A `cls` from itself, a flat mapping (`source` names it in errors) or a YAML parameter file
    (a path, relative to the repository root when not absolute)."""
    if isinstance(config, cls):
        return config
    if isinstance(config, (str, Path)):
        return parse_config(cls, read_params(resolve_path(config)), source=str(config))
    return parse_config(cls, dict(config), source=source)


def to_dict(config: Any) -> dict:
    """A JSON-friendly dict of a config (tuples become lists)."""
    # A JSON round trip: tuples become lists, as config.json will hold them. parse_config admits only
    # JSON values, so nothing needs converting.
    return json.loads(json.dumps(dataclasses.asdict(config)))


def repo_root(start: str | Path | None = None) -> Path:
    """The checkout's root (the folder with pyproject.toml and viscoin_core/), found upward from `start`.

    Notebooks run from notebooks/ under papermill and nbval; parameters hold paths relative to this
    root, so every notebook resolves them against it.
    """
    here = Path(start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "pyproject.toml").is_file() and (folder / "viscoin_core").is_dir():
            return folder
    return Path(__file__).resolve().parents[1]


def resolve_path(path: str | Path, root: str | Path | None = None) -> Path:
    """A path from a parameter file or a command line: absolute as given (after `~`), else relative
    to `root` (default: the repository root, `repo_root`), wherever the process runs from."""
    path = Path(path).expanduser()
    return path if path.is_absolute() else Path(root or repo_root()) / path

class _FloatsLoader(yaml.SafeLoader):
    """yaml.SafeLoader that also reads 1e6, 1E-4 and -2e+3 as floats (YAML 1.1 wants a dot: 1.0e+6)."""


_FloatsLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"), list("-+0123456789"))


def load_yaml(text: str) -> Any:
    """yaml.safe_load, except that exponent numbers without a dot (1e6, 1e-4) are floats, not strings."""
    return yaml.load(text, Loader=_FloatsLoader)


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """['k=v', ...] -> {k: YAML value of v}; a malformed item raises ConfigError naming it."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. --set iterations=600")
        try:
            out[key.strip()] = load_yaml(value)     # reads 1e6 and 1e-4 as floats (YAML 1.1 would not)
        except yaml.YAMLError as err:
            raise ConfigError(f"--set {item!r}: the value is not valid YAML ({' '.join(str(err).split())})") from None
    return out
