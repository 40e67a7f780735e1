"""Which tensors of any model count in the reference's weight statistics, and the 14 columns from them.

:mod:`latent.collect.metrics` holds the definitions (reference.md B1–B5); the tasks hand it their
weights by hand. This module finds them in a model it has never seen, from an ``nn.Module``
(:func:`select_module`) or from a plain state dict of names and tensors (:func:`select_state_dict`,
what ``latent import checkpoints`` has), and computes the columns with one seed (S = 1).

Rules (reference.md B4, generalised):

* **matrices** (per-matrix metrics, ``w_all``): the weight of every ``nn.Linear`` (and of any
  other 2-D tensor named ``weight``, ``weight_*`` or ``*_weight``: LSTM gates, transformers'
  ``Conv1D``). ``nn.MultiheadAttention``'s ``in_proj_weight`` is split into Q, K and V and each
  of those per head (``(embed_dim / num_heads) × embed_dim`` apiece), as the reference splits
  its own transformer; ``q/k/v_proj_weight`` (``kdim``/``vdim`` ≠ ``embed_dim``) per head too.
  ``out_proj`` is one matrix. Separate ``query``/``key``/``value`` Linears (BERT) stay whole,
  as the reference treats HF BERT, and so GPT-2's fused ``c_attn`` (a ``Conv1D``, stored
  ``in × out``) is cut into its Q, K and V (K and V in cross-attention): whole ``d × d``
  matrices, as BERT's.
* **conv kernels** (reference B2: only ``l1``, ``l2``, ``code_sparsity``, as the mean over the
  ``out × in`` kernel slices; ``w_all``): the weight of every ``nn.Conv*``/``nn.ConvTranspose*``
  and any other weight of 3 or more dimensions. A kernel slice is everything after the first
  two axes (Conv1d: ``k``; Conv3d: ``d×h×w``).
* **biases** (``b_all``): a tensor named ``bias``, ``bias_*`` or ``*_bias`` counts when a weight
  of the same layer does (so a LayerNorm's bias does not).
* **excluded**: embeddings (``nn.Embedding``/``nn.EmbeddingBag``, or in a state dict a weight
  whose layer is named ``*embed*``/``*_emb``/``wte``/``wpe``) and any weight tied to one (an
  LM head sharing the embedding matrix); norm layers (their 1-D scales are no matrix, and
  their biases follow them); any other tensor, raw parameters and buffers included; tensors
  that are not floating point.

``include=`` adds tensors the rules leave out and ``exclude=`` removes tensors they take; a
tensor matched by both is excluded. Patterns match full tensor names (state-dict keys): a
string is a glob (``fnmatch``: ``"encoder.*"``, ``"*.bias"``), ``"re:…"`` or a compiled
``re.Pattern`` is a regular expression searched in the name. A pattern that matches no tensor
is an error (a typo would otherwise pass silently). An included tensor's role follows its
shape: a name like a bias → ``b_all``; 1-D or 0-D → ``w_all`` only; 2-D → a matrix; a 3-D
tensor not named like a weight → a stack of matrices on its first axis (the reference's own
per-head ``W_Q`` layout); otherwise a conv kernel.

Where the two paths differ: the module path knows layer types, the state-dict path only names
and shapes. On a state dict nothing says how many heads an ``in_proj_weight`` has: pass
``heads=`` to split per head (otherwise Q, K and V are three whole matrices), and an embedding
must be named like one. With those, both paths give the same columns (tested).
"""

from __future__ import annotations

import fnmatch
import math
import re
from dataclasses import dataclass
from typing import Mapping, Sequence

import torch
from torch import nn

from latent.errors import UserError
from latent.store import REFERENCE_COLUMNS

from .metrics import WeightGroups, reference_metrics

MATRIX, CONV, WEIGHT, BIAS = "matrix", "conv", "weight", "bias"

#: Columns that come from matrices alone (conv kernels have no spectrum, reference B2).
SPECTRAL_COLUMNS = ("trace", "spectral", "computational_sparsity", "mean_lambda", "variance_lambda")

_EMBED_RE = re.compile(r"(^|[_\d])emb|^wte$|^wpe$", re.IGNORECASE)
_NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm,
               *((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ()))
_EMBED_TYPES = (nn.Embedding, nn.EmbeddingBag)


# --------------------------------------------------------------------------- the selection


@dataclass(frozen=True)
class Entry:
    """One selected tensor.

    Attributes
    ----------
    name : str
        Its full name (state-dict key).
    role : {"matrix", "conv", "weight", "bias"}
    shape : tuple of int
        What it is reshaped to: ``(M, m, n)`` for a matrix entry (M pieces: heads, or Q/K/V),
        ``(out, in, a, b)`` for a conv kernel, its own shape otherwise.
    transposed : bool
        The tensor is stored ``in × out`` (transformers' ``Conv1D``) and is transposed before
        the reshape, so that its pieces are cut along the outputs.
    """

    name: str
    role: str
    shape: tuple[int, ...]
    transposed: bool = False


@dataclass(frozen=True)
class Selection:
    """The tensors of one model that count, and how: build once, apply at every checkpoint.

    Attributes
    ----------
    entries : tuple of Entry
        Sorted by name.
    signature : tuple
        ``(name, shape)`` of every tensor the selection was made from; a model with the same
        signature gets the same selection.
    """

    entries: tuple[Entry, ...]
    signature: tuple[tuple[str, tuple[int, ...]], ...] = ()

    def names(self, role: str | None = None) -> list[str]:
        """Names of the selected tensors (of one role, if given)."""
        return [e.name for e in self.entries if role is None or e.role == role]

    @property
    def undefined(self) -> tuple[str, ...]:
        """Reference columns this model cannot have (always NaN): no bias → ``*_b``; no matrix →
        the spectral ones; only matrices with one row or column → ``variance_lambda``."""
        roles = {e.role for e in self.entries}
        out = []
        matrices = [e for e in self.entries if e.role == MATRIX]
        if not matrices:
            out += SPECTRAL_COLUMNS
        elif all(min(e.shape[1:]) == 1 for e in matrices):
            out.append("variance_lambda")
        if BIAS not in roles:
            out += ["mean_b", "median_b", "var_b"]
        return tuple(c for c in REFERENCE_COLUMNS if c in out)

    def groups(self, tensors: Mapping[str, torch.Tensor]) -> WeightGroups:
        """The selected tensors of ``tensors`` as :class:`WeightGroups` with one seed.

        Matrices of one shape are stacked into one group, so each shape costs one batched
        eigendecomposition whatever the number of layers and heads.
        """
        by_shape: dict[tuple[int, int], list[torch.Tensor]] = {}
        groups = WeightGroups()
        for e in self.entries:
            t = tensors[e.name].detach()
            if e.role == MATRIX:
                pieces = (t.T if e.transposed else t).reshape(e.shape)
                by_shape.setdefault(tuple(e.shape[1:]), []).append(pieces)
                groups.weights.append(t[None])
            elif e.role == CONV:
                groups.convs.append(t.reshape(e.shape)[None])
                groups.weights.append(t[None])
            elif e.role == WEIGHT:
                groups.weights.append(t.reshape(1, -1))
            else:
                groups.biases.append(t.reshape(1, -1))
        groups.matrices = [torch.cat(parts)[None] if len(parts) > 1 else parts[0][None] for parts in by_shape.values()]
        return groups

    def metrics(self, tensors: Mapping[str, torch.Tensor], variant: str = "reference") -> dict[str, float]:
        """The 14 reference columns of ``tensors`` (which must hold every selected name).

        ``variant`` picks the definitions (:func:`latent.collect.metrics.reference_metrics`):
        ``"reference"`` (the reference code's) or ``"paper"``.
        """
        with torch.no_grad():
            values = reference_metrics(self.groups(tensors), variant)
        return {k: float(v[0]) for k, v in values.items()}


# --------------------------------------------------------------------------- patterns


def _patterns(patterns, what: str) -> list[tuple[str, object]]:
    """``[(shown, matcher)]`` for glob strings, ``"re:"`` strings and compiled regexes."""
    if patterns is None:
        return []
    if isinstance(patterns, (str, re.Pattern)):
        patterns = [patterns]
    out = []
    for p in patterns:
        if isinstance(p, re.Pattern):
            out.append((f"re:{p.pattern}", p))
        elif isinstance(p, str) and p.startswith("re:"):
            try:
                out.append((p, re.compile(p[3:])))
            except re.error as exc:
                raise UserError(f"{what} pattern {p!r} is not a valid regular expression ({exc})") from None
        elif isinstance(p, str) and p:
            out.append((p, p))
        else:
            raise UserError(f"{what} patterns must be non-empty strings (globs, or 're:REGEX'), got {p!r}")
    return out


def _matches(matcher, name: str) -> bool:
    if isinstance(matcher, str):
        return fnmatch.fnmatchcase(name, matcher)
    return matcher.search(name) is not None


def _check_used(patterns, names: Sequence[str], what: str) -> None:
    for shown, matcher in patterns:
        if not any(_matches(matcher, n) for n in names):
            sample = ", ".join(names[:6]) + (", …" if len(names) > 6 else "")
            raise UserError(f"{what} pattern {shown!r} matches no tensor of the model (its names look like: "
                            f"{sample or 'none'}); fix the pattern")


# --------------------------------------------------------------------------- rules


def _split(name: str) -> tuple[str, str]:
    owner, _, leaf = name.rpartition(".")
    return owner, leaf


def _is_weight_name(leaf: str) -> bool:
    return leaf == "weight" or leaf.startswith("weight_") or leaf.endswith("_weight")


def _is_bias_name(leaf: str) -> bool:
    return leaf == "bias" or leaf.startswith("bias_") or leaf.endswith("_bias")


def _looks_like_embedding(owner: str) -> bool:
    return bool(_EMBED_RE.search(owner.rpartition(".")[2]))


def _conv_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    """A kernel ``(out, in, *k)`` as ``(out, in, a, b)``: the slice norms over ``k`` are unchanged."""
    if len(shape) == 3:
        return (shape[0], shape[1], shape[2], 1)
    return (shape[0], shape[1], math.prod(shape[2:-1]), shape[-1])


def _head_split(shape: tuple[int, ...], parts: int, heads: int | None, name: str) -> tuple[int, int, int]:
    """``(M, m, n)`` for a matrix made of ``parts`` stacked blocks (Q, K, V), each cut per head."""
    rows, cols = shape
    pieces = parts * (heads or 1)
    if rows % pieces:
        raise UserError(f"cannot split {name} {tuple(shape)} into {parts} × {heads or 1} heads "
                        f"({rows} rows); pass the model's number of heads with heads=")
    return (pieces, rows // pieces, cols)


def _by_shape(name: str, shape: tuple[int, ...], forced: bool) -> Entry | None:
    """The role a tensor gets from its name and shape alone (``forced``: named by ``include=``)."""
    owner, leaf = _split(name)
    if _is_bias_name(leaf):
        return Entry(name, BIAS, shape) if forced else None
    weightish = _is_weight_name(leaf)
    if not forced and (not weightish or len(shape) < 2):
        return None
    if len(shape) <= 1:
        return Entry(name, WEIGHT, shape)
    if len(shape) == 2:
        return Entry(name, MATRIX, (1, *shape))
    if len(shape) == 3 and not weightish:
        return Entry(name, MATRIX, shape)
    return Entry(name, CONV, _conv_shape(shape))


def _default_state_dict_entry(name: str, shape: tuple[int, ...], heads: int | None) -> Entry | None:
    """The rule for a tensor known only by name and shape (and for unknown module types)."""
    owner, leaf = _split(name)
    if not _is_weight_name(leaf) or len(shape) < 2 or _looks_like_embedding(owner):
        return None
    if leaf == "in_proj_weight" and len(shape) == 2:
        return Entry(name, MATRIX, _head_split(shape, 3, heads, name))
    if leaf in ("q_proj_weight", "k_proj_weight", "v_proj_weight") and len(shape) == 2:
        return Entry(name, MATRIX, _head_split(shape, 1, heads, name))
    if leaf == "weight" and owner.rsplit(".", 1)[-1] == "c_attn" and len(shape) == 2 \
            and shape[1] in (2 * shape[0], 3 * shape[0]):
        # GPT-2's fused attention input (Conv1D, in × out = d × 3d; d × 2d for cross-attention
        # K and V): Q, K and V, each whole, as BERT's separate Linears
        return Entry(name, MATRIX, (shape[1] // shape[0], shape[0], shape[0]), transposed=True)
    return _by_shape(name, shape, forced=False)


def _tie_key(t: torch.Tensor):
    if t.numel() == 0 or t.device.type == "meta":
        return None
    return (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), tuple(t.stride()))


def _finish(candidates: list[tuple[str, torch.Tensor, Entry | None, bool]], include, exclude,
            what: str) -> Selection:
    """Apply biases-follow-weights, ties to excluded embeddings, include= and exclude=.

    ``candidates``: ``(name, tensor, default entry or None, is_embedding)`` in model order.
    """
    inc, exc = _patterns(include, "include"), _patterns(exclude, "exclude")
    names = [c[0] for c in candidates]
    _check_used(inc, names, "include")
    _check_used(exc, names, "exclude")
    embed_keys = {_tie_key(t) for _, t, _, emb in candidates if emb} - {None}
    chosen: dict[str, Entry | None] = {}
    for name, t, entry, _ in candidates:
        if entry is not None and entry.role != BIAS and _tie_key(t) in embed_keys:
            entry = None  # a head tied to the embedding matrix is the embedding
        chosen[name] = entry
    layers = {_split(n)[0] for n, e in chosen.items() if e is not None and e.role != BIAS}
    entries = []
    for name, t, entry, _ in candidates:
        entry = chosen[name]
        owner, leaf = _split(name)
        if entry is None and _is_bias_name(leaf) and owner in layers and t.is_floating_point():
            entry = Entry(name, BIAS, tuple(t.shape))
        elif entry is not None and entry.role == BIAS and owner not in layers:
            entry = None
        if any(_matches(m, name) for _, m in exc):
            continue
        if entry is None and t.is_floating_point() and any(_matches(m, name) for _, m in inc):
            entry = _by_shape(name, tuple(t.shape), forced=True)
        if entry is not None and t.numel():
            entries.append(entry)
    if not any(e.role in (MATRIX, CONV) for e in entries):
        raise UserError(f"no weight matrix or conv kernel of {what} counts under the reference's rules "
                        "(Linear/conv weights, not embeddings or norms); name some with include=")
    signature = tuple((n, tuple(t.shape)) for n, t, _, _ in candidates)
    # sorted by name: sums then run in one order whatever order a file stores its tensors in
    # (safetensors sorts them), so every path gives bit-identical columns
    return Selection(tuple(sorted(entries, key=lambda e: e.name)), signature)


# --------------------------------------------------------------------------- from a module


def _module_candidates(model: nn.Module):
    for mod_name, mod in model.named_modules(remove_duplicate=False):
        params = list(mod.named_parameters(prefix=mod_name, recurse=False))
        for name, p in params:
            if isinstance(p, nn.parameter.UninitializedParameter):
                raise UserError(f"{name} is an uninitialised lazy parameter; run one forward pass before logging")
            shape = tuple(p.shape)
            leaf = _split(name)[1]
            if not p.is_floating_point():
                yield name, p, None, False
            elif isinstance(mod, _EMBED_TYPES):
                yield name, p, None, True
            elif isinstance(mod, _NORM_TYPES):
                yield name, p, None, False
            elif isinstance(mod, nn.MultiheadAttention):
                heads = mod.num_heads
                if leaf == "in_proj_weight":
                    yield name, p, Entry(name, MATRIX, _head_split(shape, 3, heads, name)), False
                elif leaf in ("q_proj_weight", "k_proj_weight", "v_proj_weight"):
                    yield name, p, Entry(name, MATRIX, _head_split(shape, 1, heads, name)), False
                else:
                    yield name, p, Entry(name, BIAS, shape) if _is_bias_name(leaf) else None, False
            elif isinstance(mod, nn.Linear) and leaf == "weight":
                yield name, p, Entry(name, MATRIX, (1, *shape)), False
            elif isinstance(mod, nn.modules.conv._ConvNd) and leaf == "weight":
                yield name, p, Entry(name, CONV, _conv_shape(shape)), False
            elif isinstance(mod, (nn.Linear, nn.modules.conv._ConvNd)):
                yield name, p, Entry(name, BIAS, shape) if _is_bias_name(leaf) else None, False
            else:  # a module type we do not know: judge by name and shape, as for a state dict
                embedding = _is_weight_name(leaf) and _looks_like_embedding(_split(name)[0])
                yield name, p, _default_state_dict_entry(name, shape, None), embedding


def select_module(model: nn.Module, include=(), exclude=()) -> Selection:
    """The tensors of ``model`` that count in the 14 reference columns (rules: module docstring).

    Parameters
    ----------
    model : nn.Module
        Any module; its layer types decide (Linear, conv, MultiheadAttention, embeddings, norms).
    include, exclude : str, re.Pattern or sequence of them
        Globs or ``"re:REGEX"`` over full parameter names: tensors to add, tensors to drop.

    Returns
    -------
    Selection

    Raises
    ------
    UserError
        If a pattern matches nothing, a parameter is an uninitialised lazy one, or nothing
        with a matrix or kernel is left.
    """
    if not isinstance(model, nn.Module):
        raise UserError(f"expected a torch.nn.Module, got {type(model).__name__}")
    return _finish(list(_module_candidates(model)), include, exclude, f"the {type(model).__name__}")


def module_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter of ``model`` by full name, tied ones under each of their names (as in a state dict)."""
    return dict(model.named_parameters(remove_duplicate=False))


def module_metrics(model: nn.Module, include=(), exclude=()) -> dict[str, float]:
    """The 14 reference columns of ``model``'s current weights (:func:`select_module`'s tensors)."""
    return select_module(model, include, exclude).metrics(module_tensors(model))


# --------------------------------------------------------------------------- from a state dict


def check_state_dict(state_dict, where: str = "the state dict") -> dict[str, torch.Tensor]:
    """``state_dict`` as a dict of str to tensor, or a one-line :class:`UserError` naming ``where``."""
    if not isinstance(state_dict, Mapping):
        raise UserError(f"{where} holds a {type(state_dict).__name__}, not a state dict (names to tensors)")
    out = {}
    for name, t in state_dict.items():
        if not isinstance(name, str) or not isinstance(t, torch.Tensor):
            what = f"entry {name!r} is of type {type(t).__name__}" if isinstance(name, str) else \
                f"key {name!r} is not a string"
            raise UserError(f"{where} is not a plain state dict of tensors: {what}")
        out[name] = t
    if not out:
        raise UserError(f"{where} is empty (no tensors)")
    return out


def select_state_dict(state_dict: Mapping[str, torch.Tensor], include=(), exclude=(),
                      heads: int | None = None, where: str = "the state dict") -> Selection:
    """The tensors of a state dict that count, from names and shapes alone (rules: module docstring).

    Parameters
    ----------
    state_dict : mapping of str to torch.Tensor
        Parameter (and buffer) names to tensors, as ``model.state_dict()`` or a checkpoint file.
    include, exclude : str, re.Pattern or sequence of them
        As for :func:`select_module`.
    heads : int, optional
        Attention heads of every ``in_proj_weight``/``q_proj_weight``…: splits them per head.
    where : str
        How error messages name the state dict (a file name, say).

    Returns
    -------
    Selection
    """
    tensors = check_state_dict(state_dict, where)
    if heads is not None and (not isinstance(heads, int) or isinstance(heads, bool) or heads < 1):
        raise UserError(f"heads must be a positive integer, got {heads!r}")
    candidates = []
    for name, t in tensors.items():
        shape = tuple(t.shape)
        if not t.is_floating_point():
            candidates.append((name, t, None, False))
            continue
        owner, leaf = _split(name)
        embedding = _is_weight_name(leaf) and _looks_like_embedding(owner)
        candidates.append((name, t, _default_state_dict_entry(name, shape, heads), embedding))
    return _finish(candidates, include, exclude, where)


def state_dict_metrics(state_dict: Mapping[str, torch.Tensor], include=(), exclude=(),
                       heads: int | None = None, where: str = "the state dict") -> dict[str, float]:
    """The 14 reference columns of a state dict (:func:`select_state_dict`'s tensors)."""
    return select_state_dict(state_dict, include, exclude, heads, where).metrics(state_dict)


def describe(selection: Selection) -> str:
    """A few lines saying what counts, for docs and debugging: ``matrix  encoder.0.linear1.weight (1, 64, 32)``."""
    return "\n".join(f"{e.role:<6}  {e.name} {e.shape}{' (transposed)' if e.transposed else ''}"
                     for e in selection.entries)


__all__ = ["Entry", "Selection", "select_module", "select_state_dict", "module_metrics", "state_dict_metrics",
           "module_tensors", "check_state_dict", "describe", "SPECTRAL_COLUMNS"]
