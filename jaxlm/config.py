"""Config helpers: typed ``key=value`` overrides, JSON round-trips and errors that name the fix."""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import types
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """A config value or key is invalid; the message says how to fix it."""


def closest(name: str, options: Iterable[str]) -> str:
    """``" (did you mean 'x'?)"`` for the nearest option, or ``""``."""
    m = difflib.get_close_matches(name, list(options), n=1, cutoff=0.5)
    return f" (did you mean {m[0]!r}?)" if m else ""


def check_choice(field: str, value: Any, options: Iterable[str]) -> None:
    options = list(options)
    if value not in options:
        raise ConfigError(f"{field}={value!r} is not one of {options}{closest(str(value), options)}.")


def parse_step(text: str) -> int | str:
    """A checkpoint step as written on a command line or in a config (``--step``, ``train.init_step``): a
    step number (>= 0), ``best`` or ``latest``. Raises ``argparse.ArgumentTypeError`` otherwise (argparse
    turns it into a usage error)."""
    if text in ("best", "latest"):
        return text
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not a step: give a step number, 'best' or 'latest'.")
    return int(text)


def check_positive(cfg: Any, *fields: str) -> None:
    for f in fields:
        v = getattr(cfg, f)
        if v is not None and v <= 0:
            raise ConfigError(f"{type(cfg).__name__}.{f}={v} must be positive.")


def _convert(value: str, typ: Any, key: str) -> Any:
    """Parse the string ``value`` as type ``typ`` (bool, int, float, str, tuples, Optional, Literal)."""
    origin = typing.get_origin(typ)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(typ)
        if value.lower() in ("none", "null") and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _convert(value, a, key)
            except (ValueError, ConfigError) as e:
                errors.append(str(e))
        raise ConfigError(f"{key}={value!r}: cannot parse as {typ}")
    if origin is typing.Literal:
        opts = typing.get_args(typ)
        for o in opts:
            if str(o) == value:
                return o
        raise ConfigError(f"{key}={value!r} is not one of {list(opts)}{closest(value, map(str, opts))}.")
    if origin in (tuple, list):
        parts = [v for v in value.strip("()[]").split(",") if v.strip()]
        args = typing.get_args(typ)
        inner = args[0] if args else str
        out = [_convert(v.strip(), inner, key) for v in parts]
        return tuple(out) if origin is tuple else out
    if typ is bool:
        if value.lower() in ("1", "true", "yes", "on"):
            return True
        if value.lower() in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{key}={value!r}: expected a boolean (true/false).")
    if typ is int:
        try:
            f = float(value)
        except ValueError:
            raise ConfigError(f"{key}={value!r}: expected an integer.") from None
        if f != int(f):
            raise ConfigError(f"{key}={value!r}: expected an integer.")
        return int(f)
    if typ is float:
        try:
            return float(value)
        except ValueError:
            raise ConfigError(f"{key}={value!r}: expected a number.") from None
    if typ is str or typ is Any:
        return value
    if dataclasses.is_dataclass(typ):
        raise ConfigError(f"{key} is a section; set one of its fields, e.g. {key}.<field>=...")
    return value


def field_types(cls_or_obj: Any) -> dict[str, Any]:
    cls = cls_or_obj if isinstance(cls_or_obj, type) else type(cls_or_obj)
    hints = typing.get_type_hints(cls)
    return {f.name: hints.get(f.name, Any) for f in dataclasses.fields(cls)}


def override(cfg: Any, assignments: Mapping[str, str] | Iterable[str]) -> Any:
    """Return ``cfg`` with ``"a.b=value"`` assignments applied, typed from the dataclass annotations.

    Nested dataclass fields are addressed with dots. Unknown keys raise :class:`ConfigError` naming the
    closest valid key.
    """
    if not isinstance(assignments, Mapping):
        pairs = {}
        for a in assignments:
            if "=" not in a:
                raise ConfigError(f"override {a!r} is not of the form key=value.")
            k, v = a.split("=", 1)
            pairs[k.strip()] = v.strip()
        assignments = pairs
    for key, value in assignments.items():
        cfg = _set(cfg, key.split("."), value, key)
    return cfg


def _set(obj: Any, path: list[str], value: Any, full_key: str) -> Any:
    types_ = field_types(obj)
    name = path[0]
    if name not in types_:
        raise ConfigError(
            f"unknown config key {full_key!r}{closest(name, types_)}; valid keys here: {sorted(types_)}."
        )
    if len(path) > 1:
        child = getattr(obj, name)
        if not dataclasses.is_dataclass(child):
            raise ConfigError(f"{full_key!r}: {name!r} is not a section.")
        return dataclasses.replace(obj, **{name: _set(child, path[1:], value, full_key)})
    new = _convert(value, types_[name], full_key) if isinstance(value, str) else value
    try:
        return dataclasses.replace(obj, **{name: new})
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{full_key}={value!r}: {e}") from e


def to_dict(cfg: Any) -> dict:
    """A JSON-ready dict of a (nested) dataclass config; includes a ``__class__`` tag per dataclass."""
    if dataclasses.is_dataclass(cfg):
        d = {f.name: to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
        d["__class__"] = f"{type(cfg).__module__}.{type(cfg).__qualname__}"
        return d
    if isinstance(cfg, tuple | list):
        return [to_dict(v) for v in cfg]
    if isinstance(cfg, Mapping):
        return {k: to_dict(v) for k, v in cfg.items()}
    if hasattr(cfg, "dtype") and hasattr(cfg, "name"):  # a numpy/jax dtype object
        return str(cfg)
    if isinstance(cfg, type):
        return cfg.__name__
    return cfg


def from_dict(d: Mapping) -> Any:
    """Inverse of :func:`to_dict`."""
    import importlib

    d = dict(d)
    cls_path = d.pop("__class__")
    mod, _, name = cls_path.rpartition(".")
    cls = getattr(importlib.import_module(mod), name)
    kwargs = {}
    types_ = field_types(cls)
    for k, v in d.items():
        if k not in types_:
            raise ConfigError(f"{cls.__name__} has no field {k!r}{closest(k, types_)}.")
        if isinstance(v, Mapping) and "__class__" in v:
            v = from_dict(v)
        elif isinstance(v, list):
            v = tuple(from_dict(x) if isinstance(x, Mapping) and "__class__" in x else x for x in v)
        kwargs[k] = v
    return cls(**kwargs)


def save_json(cfg: Any, path: str | Path) -> None:
    Path(path).write_text(json.dumps(to_dict(cfg), indent=2, sort_keys=True) + "\n")


def load_json(path: str | Path) -> Any:
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"config file {p} does not exist.")
    return from_dict(json.loads(p.read_text()))
