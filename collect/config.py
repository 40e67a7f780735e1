"""Presets and typed ``key=value`` overrides for frozen config dataclasses, and the training
fields every task's config shares (:class:`TrainingConfig`, :class:`AdamWConfig`)."""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any, Mapping, Optional

from latent.errors import UserError


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainingConfig:
    """The training fields every task's config has, declared, typed and checked once.

    A task's config subclasses this (or :class:`AdamWConfig`) and gives its own values: fields
    without a default here (``batch_size``, ``epochs``, ``log_every``, ``threshold``) have no value
    that suits every task, so each task must give one. Its docstring says what a field means for
    it (the step unit of ``log_every``, what ``split_seed`` splits, the direction of ``threshold``).

    Attributes
    ----------
    batch_size : int
        Minibatch size per seed (modadd: 0 means full batch).
    epochs : int
        Training length in epochs.
    log_every : int
        Checkpoint interval, in the task's step unit (epochs or optimiser steps).
    threshold : float
        Convergence: the first checkpoint whose convergence metric crosses it.
    lr, weight_decay : float
        The optimiser's learning rate and (decoupled, for AdamW) weight decay.
    split_seed : int or None
        An integer: one data split for the whole study; None: each run's own, from its seed.
    """

    batch_size: int
    epochs: int
    log_every: int
    threshold: float
    lr: float = 1e-3
    weight_decay: float = 0.01
    split_seed: Optional[int] = 0

    def validate_training(self) -> None:
        """The checks every task's training fields must pass (a :class:`UserError` naming the field)."""
        for name in ("epochs", "log_every"):
            if getattr(self, name) < 1:
                raise UserError(f"{name} must be positive, got {getattr(self, name)}")
        if not self.lr > 0 or not math.isfinite(self.lr):
            raise UserError(f"lr must be positive, got {self.lr}")
        if not self.weight_decay >= 0 or not math.isfinite(self.weight_decay):
            raise UserError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if not math.isfinite(self.threshold):
            raise UserError(f"threshold must be a finite number, got {self.threshold}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class AdamWConfig(TrainingConfig):
    """:class:`TrainingConfig` for tasks trained with AdamW: its two betas and epsilon besides."""

    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8

    def validate_training(self) -> None:
        super().validate_training()
        for name in ("beta1", "beta2"):
            if not 0 <= getattr(self, name) < 1:
                raise UserError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if not self.eps > 0:
            raise UserError(f"eps must be positive, got {self.eps}")


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
