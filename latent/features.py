"""The one adapter between the trajectory table and hmmlearn's ``(X, lengths)``, and back.

Notation: a study holds N runs; run i has T_i checkpoints (after truncation to ``first_n``);
d features are chosen. ``X`` stacks the runs vertically, shape ``(sum T_i, d)``, in sorted seed
order, each run sorted by step; ``lengths[i] = T_i``.

Scaling follows the reference (reference.md B6): every run's feature trajectory is z-scored on
its own time axis with the population standard deviation (``ddof=0``). ``scaling="global"``
z-scores with one mean and std pooled over all kept runs instead. A feature with zero variance
(within a run, or globally) is mapped to 0 instead of NaN (its std is recorded as 1.0).
Runs containing a non-finite value in a chosen feature are excluded with a warning naming them.
No other module reshapes trajectories.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from .errors import UserError
from .store import REFERENCE_COLUMNS

log = logging.getLogger("latent")

#: The 14 reference columns (reference.md B5, C "base").
REFERENCE_FEATURES = REFERENCE_COLUMNS
_ID_COLUMNS = ("seed", "step", "epoch")
SCALINGS = ("per_run", "global")


@dataclass
class FeatureMatrix:
    """Scaled trajectories of the kept runs, stacked for hmmlearn.

    Attributes
    ----------
    X : ndarray, shape (n_samples, d)
        Scaled (z) features of every kept run, stacked in ``seeds`` order.
    raw : ndarray, shape (n_samples, d)
        The same rows in original units.
    lengths : ndarray of int, shape (n_runs,)
        Checkpoints per kept run.
    seeds : list of int
        Kept runs, sorted.
    steps : ndarray of int, shape (n_samples,)
        The ``step`` of each row.
    features : list of str
        Column names, in column order.
    scaling : dict
        The scaling in artifact form (docs/artifacts.md, ``model.json`` ``scaling``).
    excluded : dict
        ``{seed: reason}`` for runs left out.
    """

    X: np.ndarray
    raw: np.ndarray
    lengths: np.ndarray
    seeds: list[int]
    steps: np.ndarray
    features: list[str]
    scaling: dict
    excluded: dict = field(default_factory=dict)

    @property
    def offsets(self) -> np.ndarray:
        """Start row of each run, shape (n_runs + 1,) (the last entry is ``n_samples``)."""
        return np.concatenate([[0], np.cumsum(self.lengths)])

    def split(self, values: np.ndarray) -> list[np.ndarray]:
        """Split an array of per-row values (first axis ``n_samples``) into one array per run."""
        off = self.offsets
        return [values[off[i] : off[i + 1]] for i in range(len(self.seeds))]

    def subset(self, run_index) -> tuple[np.ndarray, np.ndarray]:
        """``(X, lengths)`` of the runs at positions ``run_index`` (in that order)."""
        parts = self.split(self.X)
        idx = list(run_index)
        if not idx:
            return np.empty((0, self.X.shape[1])), np.empty(0, dtype=int)
        return np.concatenate([parts[i] for i in idx]), self.lengths[idx].copy()

    def to_frame(self, columns: dict[str, np.ndarray]) -> pd.DataFrame:
        """A long table ``seed, step, <columns>`` with one row per stacked row."""
        frame = pd.DataFrame(
            {
                "seed": np.repeat(np.asarray(self.seeds, dtype=np.int64), self.lengths),
                "step": self.steps.astype(np.int64),
            }
        )
        for name, values in columns.items():
            frame[name] = values
        return frame


def zscore(values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Column-wise z-scores with the population std (ddof=0, as scipy.stats.zscore).

    Computed on values divided by each column's largest magnitude, so features of any size
    (1e-200 or 1e200) neither underflow nor overflow. A column whose spread is below 1e-12 of
    its magnitude is constant (floating-point noise, not signal): it maps to 0 and its std is
    recorded as 1.

    Returns ``(z, mean, std, constant)``; ``z = (values - mean) / std``.
    """
    scale = np.abs(values).max(axis=0)
    scale = np.where(scale > 0, scale, 1.0)
    v = values / scale
    m = v.mean(axis=0)
    s = v.std(axis=0)
    constant = ~(s > 1e-12)
    s = np.where(constant, 1.0, s)
    z = (v - m) / s
    z[:, constant] = 0.0
    return z, m * scale, np.where(constant, 1.0, s * scale), constant


#: named feature groups ``latent fit --features`` understands (docs/fit.md); ``all`` is every
#: recorded group but the losses and accuracies
GROUP_NAMES = ("weights", "progress", "function", "losses")
LOSS_FEATURES = ("train_loss", "val_loss", "train_acc", "val_acc")


#: columns measured on a thinned grid of checkpoints (the ``llc`` group: ``latent.collect.llc``), NaN between
THINNED_COLUMNS = ("llc", "llc_std")


def measured_rows(table: pd.DataFrame, features) -> pd.DataFrame:
    """The rows where every chosen :data:`THINNED_COLUMNS` feature was measured.

    The local learning coefficient is estimated at every n-th checkpoint only; a fit (or a
    forecast) that uses it sees those checkpoints. Without such a feature, ``table`` unchanged.
    """
    thinned = [f for f in features if f in THINNED_COLUMNS and f in table.columns]
    if not thinned:
        return table
    keep = table[thinned].notna().all(axis=1)
    return table[keep]


def study_groups(meta: dict) -> dict[str, list[str]]:
    """The feature groups a study records (``study.json`` ``groups``); a study from before groups
    has ``weights`` (its ``features``) and ``losses`` (those of its metrics that are losses)."""
    groups = {k: list(v) for k, v in (meta.get("groups") or {}).items() if isinstance(v, (list, tuple))}
    groups.setdefault("weights", list(meta.get("features") or REFERENCE_FEATURES))
    metrics = meta.get("metrics")
    groups.setdefault("losses", [c for c in LOSS_FEATURES if metrics is None or c in metrics])
    return groups


def expand_feature_names(names, meta: dict) -> tuple[str, ...]:
    """``--features`` as columns: group names (:data:`GROUP_NAMES`, ``all``) become their columns,
    anything else is a column; duplicates are dropped, order kept.

    Raises
    ------
    UserError
        A group name the study does not record.
    """
    groups = study_groups(meta)
    out: list[str] = []
    for name in names:
        if name == "all":
            order = [g for g in GROUP_NAMES if g in groups] + sorted(g for g in groups if g not in GROUP_NAMES)
            cols = [c for g in order if g != "losses" for c in groups[g]]
        elif name in groups:
            cols = groups[name]
        elif name in GROUP_NAMES:
            raise UserError(f"--features {name}: this study records no {name} group (it has "
                            f"{', '.join(sorted(groups))}); collect with --metric-groups {name}, or name columns")
        else:
            cols = [name]
        out += [c for c in cols if c not in out]
    return tuple(out)


def available_features(table: pd.DataFrame) -> list[str]:
    """Numeric columns of a trajectory table that can be used as features."""
    return [
        c
        for c in table.columns
        if c not in _ID_COLUMNS and pd.api.types.is_numeric_dtype(table[c]) and not pd.api.types.is_bool_dtype(table[c])
    ]


def build_features(
    table: pd.DataFrame,
    features: list[str] | tuple[str, ...],
    first_n: int = 1000,
    scaling: str = "per_run",
) -> FeatureMatrix:
    """Turn a trajectory table into scaled ``(X, lengths)``.

    Parameters
    ----------
    table : DataFrame
        Long table with ``seed``, ``step`` and feature columns (any row order).
    features : list of str
        Columns to use, in order.
    first_n : int
        Keep the first ``first_n`` checkpoints (by step) of each run.
    scaling : {"per_run", "global"}
        Per-run z-scoring (reference) or one pooled z-scoring.

    Returns
    -------
    FeatureMatrix

    Raises
    ------
    UserError
        Unknown feature, bad ``first_n`` / ``scaling``, or no usable run.
    """
    features = list(features)
    if not features:
        raise UserError("no features chosen; pass --features a,b,c")
    if len(set(features)) != len(features):
        raise UserError(f"--features lists a column twice: {','.join(features)}")
    if first_n < 1:
        raise UserError(f"--first-n must be at least 1, got {first_n}")
    if scaling not in SCALINGS:
        raise UserError(f"unknown scaling {scaling!r}; choose one of {', '.join(SCALINGS)}")
    avail = available_features(table)
    unknown = [f for f in features if f not in avail]
    if unknown:
        raise UserError(
            f"unknown feature(s) {', '.join(unknown)}; available: {', '.join(avail) or '(none)'} "
            "(choose with --features a,b,c)"
        )
    if "seed" not in table.columns or "step" not in table.columns:
        raise UserError("trajectory table needs 'seed' and 'step' columns")

    table = table.sort_values(["seed", "step"], kind="stable")
    kept_raw, kept_steps, seeds, excluded = [], [], [], {}
    for seed, run in table.groupby("seed", sort=True):
        run = run.head(first_n)
        values = run[features].to_numpy(dtype=float)
        bad = ~np.isfinite(values)
        if bad.any():
            cols = [features[j] for j in np.flatnonzero(bad.any(axis=0))]
            excluded[int(seed)] = f"non-finite values in {', '.join(cols)}"
            continue
        if len(values) == 0:
            excluded[int(seed)] = "no checkpoints"
            continue
        seeds.append(int(seed))
        kept_raw.append(values)
        kept_steps.append(run["step"].to_numpy())
    if excluded:
        log.warning(
            "excluded %d run(s): %s",
            len(excluded),
            "; ".join(f"seed {s}: {r}" for s, r in sorted(excluded.items())),
        )
    if not seeds:
        raise UserError("no usable run: every run has non-finite values in the chosen features")

    constant: dict[str, int] = {}
    if scaling == "per_run":
        scaled, per_run = [], {}
        for seed, values in zip(seeds, kept_raw):
            z, mean, std, zero = zscore(values)
            for j in np.flatnonzero(zero):
                constant[features[j]] = constant.get(features[j], 0) + 1
            scaled.append(z)
            per_run[str(seed)] = {"mean": mean.tolist(), "std": std.tolist()}
        scaling_doc = {"kind": "per_run", "per_run": per_run}
        X = np.concatenate(scaled)
    else:
        X, mean, std, zero = zscore(np.concatenate(kept_raw))
        for j in np.flatnonzero(zero):
            constant[features[j]] = len(seeds)
        scaling_doc = {"kind": "global", "mean": mean.tolist(), "std": std.tolist()}
    if constant:
        log.warning(
            "constant feature(s) set to 0 after scaling (zero variance): %s",
            ", ".join(f"{f} in {n} run(s)" for f, n in constant.items()),
        )
    return FeatureMatrix(
        X=np.ascontiguousarray(X),
        raw=np.concatenate(kept_raw),
        lengths=np.array([len(v) for v in kept_raw], dtype=int),
        seeds=seeds,
        steps=np.concatenate(kept_steps),
        features=features,
        scaling=scaling_doc,
        excluded=excluded,
    )
