"""Studies compared on equal numbers of runs: refits on subsamples of the larger study.

K, R², the trajectory dissimilarity and the number of detours all depend on how many runs a fit
sees (more runs support more states and a tighter regression), so two studies of different size
can differ in them with identical dynamics. ``latent compare`` therefore refits every larger
study on ``count`` random subsamples of ``n`` of its runs, ``n`` the smallest study's size, and
reads the smallest study's value against that spread.

The test
--------
Under "same dynamics", the smallest study is one draw of ``n`` runs from the process the larger
study samples, so its value is exchangeable with the subsample values. The two-sided Monte Carlo
p-value of a value ``v`` against the subsample values ``s_1..s_S`` is

    p = min(1, 2 min(1 + #{s_i <= v}, 1 + #{s_i >= v}) / (S + 1)),

which counts ties against the difference (conservative for the discrete K and detour count).
Between two subsampled studies (both larger than ``n``) each median is read against the other's
values and the larger p is kept. The p-values of all pairs and quantities are adjusted together
by Holm's method, and a quantity is called different only when its adjusted p is at most
``alpha``. ``S`` subsamples cannot give a p below ``2 / (S + 1)``: with the default 20 a
difference is never claimed, only described, and the text says how many subsamples a test needs.

Subsamples are drawn from the runs the study's fit used, each from its own random stream
``(random_state, n, i)``, so draw ``i`` is the same whatever ``count`` is and a larger ``count``
extends a smaller one. The refits use the study's fit settings without the stability resamples
and the audit (neither changes K, R², the dissimilarity or the flagged detours). Their values
are cached in ``<fit-dir>/subsamples-n<n>.json`` (plain JSON, checked on read; a fit written
anew replaces its directory and the cache with it).
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .errors import StoreError, UserError

SUBSAMPLES_FORMAT = "latent.subsamples/1"
DEFAULT_SUBSAMPLES = 20

#: the quantities compared at equal size: key in a draw, label
QUANTITIES = (("n_states", "K"), ("r2", "R²"), ("dissimilarity", "dissimilarity"), ("detours", "detour states"))


def subsample_seeds(seeds: Sequence[int], n: int, index: int, random_state: int = 0) -> tuple[int, ...]:
    """The ``index``-th subsample of ``n`` of ``seeds`` (sorted), from its own random stream.

    Parameters
    ----------
    seeds : sequence of int
        The runs to draw from (order does not matter).
    n : int
        Runs per subsample, at most ``len(seeds)``.
    index : int
        Which draw; draw ``i`` does not depend on how many draws are made.
    random_state : int

    Returns
    -------
    tuple of int
    """
    pool = np.array(sorted(int(s) for s in seeds))
    if not 0 < n <= len(pool):
        raise ValueError(f"cannot draw {n} of {len(pool)} runs")
    rng = np.random.default_rng([int(random_state), int(n), int(index)])
    return tuple(int(s) for s in np.sort(rng.choice(pool, size=n, replace=False)))


def fit_values(n_states, r2, dissimilarity, detours) -> dict:
    """One fit's values of :data:`QUANTITIES` (None where undefined)."""
    from .compare import _opt_float

    return {"n_states": int(n_states), "r2": _opt_float(r2), "dissimilarity": _opt_float(dissimilarity),
            "detours": int(detours)}


@dataclass(frozen=True)
class SubsampleSpread:
    """A study refitted on subsamples of ``n_runs`` of its ``of_runs`` runs.

    Attributes
    ----------
    study : str
    n_runs, of_runs : int
    draws : tuple of dict
        Per subsample: ``index``, ``seeds``, and either the values of :data:`QUANTITIES` or
        ``error`` (why the refit failed).
    cached : int
        Draws read from the cache rather than refitted now.
    """

    study: str
    n_runs: int
    of_runs: int
    draws: tuple
    cached: int = 0

    def values(self, key: str) -> list[float]:
        """The defined values of one quantity over the successful draws."""
        return [float(d[key]) for d in self.draws if "error" not in d and d.get(key) is not None]

    def summary(self, key: str) -> dict:
        """``median``, ``low``, ``high`` (min and max) and ``n`` of one quantity's values."""
        v = self.values(key)
        if not v:
            return {"median": None, "low": None, "high": None, "n": 0}
        return {"median": float(np.median(v)), "low": min(v), "high": max(v), "n": len(v)}

    @property
    def failed(self) -> list[dict]:
        """The draws whose refit failed."""
        return [d for d in self.draws if "error" in d]

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "summary": {k: self.summary(k) for k, _ in QUANTITIES}}


def _cache_path(fit_dir: Path, n: int) -> Path:
    return Path(fit_dir) / f"subsamples-n{int(n)}.json"


def _read_cache(path: Path, fit_id: str, pool: list[int], n: int, random_state: int) -> dict[int, dict]:
    """Cached draws keyed by index; anything that does not check out is ignored (and refitted)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("format") != SUBSAMPLES_FORMAT or data.get("fit_id") != fit_id \
            or data.get("pool") != pool or data.get("n") != n or data.get("random_state") != random_state:
        return {}
    out = {}
    for d in data.get("draws") or []:
        if not isinstance(d, dict) or not isinstance(d.get("index"), int) or not isinstance(d.get("seeds"), list):
            continue
        if tuple(d["seeds"]) != subsample_seeds(pool, n, d["index"], random_state):
            continue
        if "error" in d:
            if isinstance(d["error"], str):
                out[d["index"]] = d
            continue
        ok = isinstance(d.get("n_states"), int) and isinstance(d.get("detours"), int) and all(
            d.get(k) is None or (isinstance(d.get(k), (int, float)) and not isinstance(d.get(k), bool)
                                 and math.isfinite(d[k])) for k in ("r2", "dissimilarity"))
        if ok:
            out[d["index"]] = {"index": d["index"], "seeds": d["seeds"], **fit_values(
                d["n_states"], d["r2"], d["dissimilarity"], d["detours"])}
    return out


def refit_subsamples(study, config, fit_dir, fit_id: str, seeds_used: Sequence[int], n: int, count: int, *,
                     n_jobs: int | None = None, progress: bool = False, allow_fit: bool = True,
                     say: Callable[[str], None] | None = None) -> SubsampleSpread:
    """Refit ``study`` on ``count`` subsamples of ``n`` of the runs its fit used.

    Parameters
    ----------
    study : Study
    config : FitConfig
        The study's resolved fit settings (the refits drop the resamples and the audit).
    fit_dir : path
        The study's fit with these settings; the cache lives there.
    fit_id : str
    seeds_used : sequence of int
        The runs the fit used (``model.json`` ``seeds.used``).
    n, count : int
        Runs per subsample and number of subsamples.
    n_jobs : int, optional
    progress : bool
        A progress bar of the refits on stderr.
    allow_fit : bool
        If False, only cached draws are used and a missing one is an error (``--no-fit``).
    say : callable, optional
        Receives one line before and one after the refits.

    Returns
    -------
    SubsampleSpread
    """
    from tqdm import tqdm

    from .fit import fit_study
    from .store import atomic_write_json

    say = say or (lambda line: None)
    pool = sorted(int(s) for s in seeds_used)
    path = _cache_path(fit_dir, n)
    cache = _read_cache(path, fit_id, pool, n, config.random_state)
    todo = [i for i in range(count) if i not in cache]
    sub_cfg = dataclasses.replace(config, resamples=0, audit=False)
    if todo and not allow_fit:
        raise UserError(f"--no-fit: comparing at equal size needs {len(todo)} subsample refit(s) of {study.name} "
                        f"({n} of its {len(pool)} runs) that are not cached; drop --no-fit, or pass --all-runs to "
                        "compare the full studies only")
    if not todo:
        say(f"study {study.name}: reusing {count} cached subsample refit(s) of {n} of its {len(pool)} runs ({path})")
    else:
        say(f"study {study.name}: refitting {len(todo)} subsample(s) of {n} of its {len(pool)} runs, to compare at "
            f"equal size" + (f" ({count - len(todo)} cached)" if count > len(todo) else ""))
    for i in tqdm(todo, desc=f"{study.name}: subsamples of {n}", unit="fit", disable=not progress, leave=False):
        seeds = subsample_seeds(pool, n, i, config.random_state)
        try:
            result = fit_study(study, sub_cfg, n_jobs=n_jobs, seeds=seeds)
        except UserError as exc:
            cache[i] = {"index": i, "seeds": list(seeds), "error": str(exc)}
            continue
        a = result.analysis
        cache[i] = {"index": i, "seeds": list(seeds), **fit_values(
            result.model["n_states"], (a.get("regression") or {}).get("r2"),
            (a.get("dissimilarity") or {}).get("value"), len(a.get("detours") or []))}
    if todo:
        try:
            atomic_write_json(path, {"format": SUBSAMPLES_FORMAT, "fit_id": fit_id, "pool": pool, "n": n,
                                     "random_state": config.random_state,
                                     "draws": [cache[i] for i in sorted(cache)]})
        except (OSError, StoreError) as exc:  # a read-only store still gets its comparison
            say(f"study {study.name}: could not cache the subsample refits ({exc})")
    draws = tuple(cache[i] for i in range(count))
    spread = SubsampleSpread(study=study.name, n_runs=n, of_runs=len(pool), draws=draws,
                             cached=count - len(todo))
    if spread.failed:
        say(f"study {study.name}: {len(spread.failed)} of {count} subsample refits failed "
            f"(first: {spread.failed[0]['error']})")
    return spread


# --------------------------------------------------------------------------- tests


def monte_carlo_p(value: float, sample: Sequence[float]) -> float | None:
    """Two-sided Monte Carlo p of ``value`` against ``sample`` (ties count against a difference)."""
    s = np.asarray(sample, dtype=float)
    if value is None or s.size == 0:
        return None
    below, above = int(np.sum(s <= value)), int(np.sum(s >= value))
    return min(1.0, 2 * min(1 + below, 1 + above) / (s.size + 1))


@dataclass(frozen=True)
class EqualTest:
    """One quantity of two studies at equal size.

    Attributes
    ----------
    a, b : str
    quantity, label : str
        Key in :data:`QUANTITIES` and its label.
    a_value, b_value : float or None
        The value at ``n`` runs: the full fit of a study of that size, else its subsamples' median.
    a_range, b_range : tuple or None
        ``(low, high)`` over the subsamples of a subsampled study; None for a study of size ``n``.
    p, p_adjusted : float or None
        Monte Carlo p (module docstring) and after Holm's adjustment over every equal-size test.
    differs : bool
        ``p_adjusted <= alpha``.
    min_p : float or None
        The smallest p these subsample counts can give.
    """

    a: str
    b: str
    quantity: str
    label: str
    a_value: float | None
    b_value: float | None
    a_range: tuple | None
    b_range: tuple | None
    p: float | None
    p_adjusted: float | None = None
    differs: bool = False
    min_p: float | None = None


def _side(summary, spread: SubsampleSpread | None, key: str):
    if spread is None:
        return fit_values(summary.n_states, summary.r2, summary.dissimilarity, len(summary.detours))[key], None, None
    s = spread.summary(key)
    return s["median"], ((s["low"], s["high"]) if s["n"] else None), spread.values(key)


def equal_tests(summaries: Sequence, spreads: dict, alpha: float = 0.05) -> tuple[EqualTest, ...]:
    """Every pair and quantity at equal size, Holm-adjusted together.

    Parameters
    ----------
    summaries : sequence of StudySummary
    spreads : dict of str to SubsampleSpread
        The subsampled studies by name; a study not in it is at the common size already.
    alpha : float

    Returns
    -------
    tuple of EqualTest
        Empty when no study was subsampled.
    """
    from .compare import holm

    if not spreads:
        return ()
    raw = []
    for i, a in enumerate(summaries):
        for b in summaries[i + 1:]:
            for key, label in QUANTITIES:
                av, ar, asample = _side(a, spreads.get(a.name), key)
                bv, br, bsample = _side(b, spreads.get(b.name), key)
                ps, mins = [], []
                if asample is not None and bv is not None and asample:
                    ps.append(monte_carlo_p(bv, asample))
                    mins.append(2 / (len(asample) + 1))
                if bsample is not None and av is not None and bsample:
                    ps.append(monte_carlo_p(av, bsample))
                    mins.append(2 / (len(bsample) + 1))
                p = max(ps) if ps else None
                raw.append(EqualTest(a.name, b.name, key, label, av, bv, ar, br, p,
                                     min_p=max(mins) if mins else None))
    adjusted = holm([t.p for t in raw])
    return tuple(dataclasses.replace(t, p_adjusted=q, differs=q is not None and q <= alpha)
                 for t, q in zip(raw, adjusted))


def subsamples_for(alpha: float, tests: int) -> int:
    """Fewest subsamples whose smallest p survives Holm's first step over ``tests`` tests at ``alpha``."""
    return max(1, math.ceil(2 * max(tests, 1) / alpha) - 1)
