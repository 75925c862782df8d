"""YAML configs with `base:` inheritance and dotted overrides, built into typed dataclasses.

Every tool uses the same rule: `--config FILE key.sub=value ...`. Files named in `base:` (a string
or a list, relative to the file) are merged first, in order; the file itself overrides them; the
command-line overrides come last. The merged tree is then built into the tool's dataclass schema,
which rejects unknown keys and wrong types with the dotted field name and the allowed values.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

import yaml

from megaspeech.errors import ConfigError, check  # noqa: F401  (check: the helper every config section uses)


T = TypeVar("T")


def deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def load_yaml_tree(path: str | Path, _seen: tuple = ()) -> dict:
    path = Path(path).resolve()
    if path in _seen:
        raise ConfigError(f"{path}: `base:` inheritance cycle through {[str(p) for p in _seen]}")
    if not path.is_file():
        if _seen:  # named by a `base:` entry, not by --config
            raise ConfigError(f"{_seen[-1]}: its `base:` names {path}, which does not exist (`base:` paths are "
                              f"relative to the file that names them); fix the `base:` entry")
        raise ConfigError(f"config file {path} does not exist (pass --config with an existing YAML file)")
    try:
        with open(path) as f:
            tree = yaml.safe_load(f) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {' '.join(str(e).split())}; fix the syntax there") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not a text (UTF-8) YAML file ({e})") from None
    if not isinstance(tree, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(tree).__name__}")
    bases = tree.pop("base", None) or []
    if isinstance(bases, str):
        bases = [bases]
    merged: dict = {}
    for b in bases:
        merged = deep_merge(merged, load_yaml_tree(path.parent / b, _seen + (path,)))
    return deep_merge(merged, tree)


def apply_overrides(tree: dict, overrides: list[str]) -> dict:
    """Apply `a.b.c=value` strings; values are parsed as YAML (`1e-3`, `true`, `[1,2]`, `null`)."""
    tree = dict(tree)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key.sub=value")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError as e:
            raise ConfigError(f"override {item!r}: the value is not valid YAML ({' '.join(str(e).split())}); "
                              f"fix it, or quote a string value") from None
        parts = key.strip().split(".")
        if not all(parts) or any(not p.replace("_", "").replace("-", "").isalnum() for p in parts):
            raise ConfigError(f"override {item!r}: {key!r} is not a dotted key like train.steps")
        node = tree
        for i, p in enumerate(parts[:-1]):
            nxt = node.get(p)
            if nxt is not None and not isinstance(nxt, dict):
                raise ConfigError(f"override {item!r}: {'.'.join(parts[:i + 1])} is a value ({nxt!r}), not a "
                                  f"section; set {'.'.join(parts[:i + 1])}=... instead")
            nxt = dict(nxt) if isinstance(nxt, dict) else {}
            node[p] = nxt
            node = nxt
        node[parts[-1]] = value
    return tree


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, where: str) -> Any:
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"{where}: {value!r} is not one of {' | '.join(_type_name(a) for a in args)}")
    if origin is Literal:
        allowed = get_args(tp)
        if value not in allowed:
            raise ConfigError(f"{where}: {value!r} is not allowed; choose one of {list(allowed)}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        args = get_args(tp)
        item_tp = args[0] if args else Any
        out = [_coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(out) if origin is tuple else out
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        kt, vt = get_args(tp) or (Any, Any)
        return {k: _coerce(v, vt, f"{where}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        return build(tp, value, where)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    return value


def build(cls: type[T], data: Any, where: str = "") -> T:
    """Build dataclass `cls` from a mapping, checking keys and types recursively."""
    label = where or cls.__name__
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{label}: expected a mapping of fields, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        prefix = f"{where}." if where else ""
        raise ConfigError(
            f"unknown config key {prefix}{unknown[0]}; allowed keys under {label}: {sorted(fields)}"
        )
    kwargs = {}
    for name, value in data.items():
        sub = f"{where}.{name}" if where else name
        kwargs[name] = _coerce(value, hints[name], sub)
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except TypeError as e:  # a required field is missing
        raise ConfigError(f"{label}: {e}") from None


def load_config(schema: type[T], path: str | Path, overrides: list[str] | None = None) -> T:
    tree = apply_overrides(load_yaml_tree(path), list(overrides or []))
    prepare = getattr(schema, "prepare_tree", None)  # a schema's fill-in of unset keys (PretrainConfig: init_from_hf)
    return build(schema, prepare(tree) if prepare else tree)


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)

