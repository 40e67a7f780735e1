"""Presets and typed ``key=value`` overrides for frozen config dataclasses."""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Mapping

from latent.errors import UserError


def config_fields(cls) -> dict[str, Any]:
    """Field name -> resolved type of a config dataclass."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _parse_bool(text: str) -> bool:
    low = text.strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected true/false, got {text!r}")


def parse_value(text: str, typ: Any) -> Any:
    """Parse the string ``text`` as a value of type ``typ`` (int, float, bool, str, tuples, Optional)."""
    origin = typing.get_origin(typ)
    args = typing.get_args(typ)
    if origin in (typing.Union, types.UnionType):
        if type(None) in args and text.strip().lower() in ("none", "null", ""):
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return parse_value(text, arg)
            except ValueError:
                continue
        raise ValueError(f"cannot parse {text!r} as {typ}")
    if origin is tuple:
        items = [t for t in text.replace("(", "").replace(")", "").split(",") if t.strip()]
        if args and args[-1] is Ellipsis:
            return tuple(parse_value(t, args[0]) for t in items)
        if len(items) != len(args):
            raise ValueError(f"expected {len(args)} comma-separated values, got {text!r}")
        return tuple(parse_value(t, a) for t, a in zip(items, args))
    if typ is bool:
        return _parse_bool(text)
    if typ is int:
        return int(text.strip())
    if typ is float:
        return float(text.strip())
    if typ is str:
        return text
    raise ValueError(f"unsupported config type {typ}")


def _type_name(typ: Any) -> str:
    return getattr(typ, "__name__", None) or str(typ).replace("typing.", "")


def parse_overrides(cls, pairs: list[str]) -> dict[str, Any]:
    """Parse ``["lr=1e-3", "layernorm=true"]`` against the fields of config class ``cls``.

    Raises
    ------
    UserError
        For a malformed pair, an unknown key (the message lists the valid ones) or a value of
        the wrong type.
    """
    fields = config_fields(cls)
    out: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise UserError(f"--set expects key=value, got {pair!r}")
        key, text = pair.split("=", 1)
        key = key.strip().replace("-", "_")
        if key not in fields:
            raise UserError(f"unknown config key {key!r} for --set; valid keys: {', '.join(sorted(fields))}")
        try:
            out[key] = parse_value(text, fields[key])
        except ValueError as exc:
            raise UserError(f"--set {key}={text}: expected {_type_name(fields[key])} ({exc})") from None
    return out


def resolve_config(cls, presets: Mapping[str, Mapping[str, Any]], preset: str, overrides: Mapping[str, Any]):
    """Build a frozen config: class defaults, then the preset's values, then overrides."""
    if preset not in presets:
        raise UserError(f"unknown preset {preset!r}; choose one of: {', '.join(presets)}")
    values = dict(presets[preset])
    values.update(overrides)
    cfg = cls(**values)
    validate = getattr(cfg, "validate", None)
    if validate is not None:
        validate()
    return cfg


def config_to_dict(cfg) -> dict[str, Any]:
    """A config as plain JSON-ready data (tuples become lists)."""
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(cfg).items()}
