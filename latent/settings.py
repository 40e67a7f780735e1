"""Config fields that carry their own flag, help, bounds and fit-id token.

A frozen config dataclass declares each field with :func:`setting`; from those declarations come
its validation (:func:`validate_fields`), its command-line options (:func:`add_options`,
:func:`from_args`), the flags of its recorded command (:func:`command_flags`) and, for
:class:`latent.fit.FitConfig`, the tokens of its fit id. Library errors name the field
(``max_states must be an integer of at least 1``); the command line shows the same error with
the flag (``--max-states must be ...``), through :class:`ConfigError`.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from typing import Any, Sequence

import numpy as np

from .errors import UserError


class ConfigError(UserError):
    """A config field holds a value it may not. ``str()`` names the field (the library's words);
    :meth:`for_cli` names its flag (the command line's).

    Parameters
    ----------
    field : str
        The field's name.
    flag : str or None
        Its command-line flag, if it has one.
    text : str
        The message with ``{name}`` where the field or flag goes.
    """

    def __init__(self, field: str, flag: str | None, text: str):
        self.field, self.flag, self.text = field, flag, text
        super().__init__(text.format(name=field))

    def for_cli(self) -> str:
        """The message with the flag in place of the field name."""
        return self.text.format(name=self.flag or self.field)


def setting(default: Any, *, flag: str | None = None, help: str = "", token: str | None = None,
            least: int | None = None, choices: Sequence[str] | None = None, between: tuple | None = None,
            kind: str | None = None) -> Any:
    """A dataclass field with its command-line and validation metadata.

    Parameters
    ----------
    default
        The field's default.
    flag : str, optional
        Its command-line flag (``--max-states``); for a boolean, the flag that sets the value
        opposite to the default (``--no-audit``).
    help : str
        Its ``--help`` text (the default is appended).
    token : str, optional
        Prefix of the field's fit-id token (``max`` for ``max6``).
    least : int, optional
        An integer field's smallest value.
    choices : sequence of str, optional
        A string field's allowed values.
    between : (low, high), optional
        A number field's open interval.
    kind : {"int", "float", "str", "list", "bool"}, optional
        How the flag parses its value (default from the default's type).
    """
    if kind is None:
        kind = ("bool" if isinstance(default, bool) else "int" if isinstance(default, int)
                else "float" if isinstance(default, float) else "str")
    meta = {"flag": flag, "help": help, "token": token, "least": least, "choices": choices, "between": between,
            "kind": kind}
    return dataclasses.field(default=default, metadata={"setting": meta})


def _meta(f: dataclasses.Field) -> dict | None:
    return f.metadata.get("setting")


def settings_of(cls) -> list[tuple[dataclasses.Field, dict]]:
    """``(field, metadata)`` of every :func:`setting` field of a dataclass, in field order."""
    return [(f, _meta(f)) for f in dataclasses.fields(cls) if _meta(f) is not None]


def validate_fields(config) -> None:
    """Check every :func:`setting` field of ``config`` against its bounds and choices.

    Raises
    ------
    ConfigError
        The first field that fails, in field order (``None`` values are not checked: they mean
        "the study's default").
    """
    for f, m in settings_of(type(config)):
        value = getattr(config, f.name)
        if value is None:
            continue
        if m["least"] is not None:
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < m["least"]:
                raise ConfigError(f.name, m["flag"], f"{{name}} must be an integer of at least {m['least']}, "
                                                     f"got {value!r}")
        if m["choices"] is not None and value not in m["choices"]:
            raise ConfigError(f.name, m["flag"], f"unknown {{name}} {value!r}; choose one of {', '.join(m['choices'])}")
        if m["between"] is not None:
            low, high = m["between"]
            try:
                ok = low < float(value) < high
            except (TypeError, ValueError):
                ok = False
            if not ok or not math.isfinite(float(value)):
                raise ConfigError(f.name, m["flag"], f"{{name}} must be between {low:g} and {high:g}, got {value!r}")


def parse_int(text: str) -> int:
    """argparse type: an integer, or a one-line error."""
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


def parse_float(text: str) -> float:
    """argparse type: a number, or a one-line error."""
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None


PARSERS = {"int": parse_int, "float": parse_float, "str": str, "list": str}


def add_options(group, cls) -> None:
    """One command-line option per :func:`setting` field of ``cls`` that has a flag, in field order.

    Every option defaults to None ("not given"), so that :func:`from_args` passes only what the
    user set and the config's own defaults (and the study's) apply; the default is shown in the
    help. Booleans are switches that set the value opposite to the default.
    """
    defaults = cls()
    for f, m in settings_of(cls):
        if not m["flag"]:
            continue
        if m["kind"] == "bool":
            group.add_argument(m["flag"], dest=f.name, action="store_false" if f.default else "store_true",
                               default=None, help=m["help"])
            continue
        default = getattr(defaults, f.name)
        shown = f" (default {default})" if default is not None and m["kind"] != "list" else ""
        group.add_argument(m["flag"], dest=f.name, type=PARSERS[m["kind"]], default=None, help=m["help"] + shown)


def from_args(args, cls) -> dict:
    """The fields the command line set: ``{name: value}`` (lists split at commas)."""
    out = {}
    for f, m in settings_of(cls):
        if not m["flag"]:
            continue
        value = getattr(args, f.name, None)
        if value is None:
            continue
        if m["kind"] == "list":
            value = tuple(v.strip() for v in str(value).split(",") if v.strip())
        out[f.name] = value
    return out


def command_flags(config) -> list[str]:
    """The flags that spell out every setting of ``config`` (booleans only where they differ from
    the default), for the command recorded in an artifact."""
    parts = []
    for f, m in settings_of(type(config)):
        if not m["flag"]:
            continue
        value = getattr(config, f.name)
        if m["kind"] == "bool":
            if value != f.default:
                parts.append(m["flag"])
            continue
        if value is None:
            continue
        parts.append(f"{m['flag']} {','.join(value) if m['kind'] == 'list' else value}")
    return parts


def token_prefix(cls, name: str) -> str | None:
    """The fit-id token prefix of a field (``"max"`` for ``max_states``)."""
    f = {f.name: f for f in dataclasses.fields(cls)}[name]
    m = _meta(f) or {}
    return m.get("token")
