"""Is each boundary between states a discrete transition, or a cut through continuous change?

Notation: K states; one run's rows z_0..z_{T-1} (scaled features) and its Viterbi path; a
*boundary* of the transition j → k is a checkpoint b with s_{b−1} = j and s_b = k.

Any latent-state model cuts a trajectory that changes smoothly into pieces (a curve is better
described by more places), so a state boundary is evidence of a phase *transition* only if the
trajectory changes more abruptly there than it does anyway. For each boundary:

1. the direction the model says the run moves in, u = Σ̄⁻¹(μ_k − μ_j) (Σ̄ the states' mean
   covariance), and the run projected on it, x_t = u·z_t;
2. on the window of 2M checkpoints around b, the share of the residual a step at b explains
   beyond a smooth curve: S = (RSS_quad − RSS_quad+step) / RSS_quad+step, with a quadratic in
   time (so steady drift, and drift that speeds up or slows down, cost nothing);
3. the same S at *placebo* points: every checkpoint of the runs whose window lies inside state j
   or k (no boundary in it), projected on the same u. The boundary is a *jump* when its S is above
   the placebo's 95th percentile: it is more abrupt than 95 % of the places where the model saw no
   change. This calibrates S against the runs' own noise, autocorrelation and drift, whatever
   they are.

A transition is **discrete** when at least half of its boundaries (and at least ``min_count``)
are jumps. A fit with no discrete transition describes continuous change: its states are a
discretisation of it, not phases. Calibration (bench/RESULTS.md, block ``boundaries``): on
studies planted with jumps between states most boundaries are jumps; on smooth drift about 20 %
are (the model puts its cuts where noise happens to make the curve steepest), never half.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

#: half-width M of the window around a boundary (checkpoints)
WINDOW = 8
#: a boundary is a jump when its statistic exceeds this quantile of the placebo statistics
QUANTILE = 0.95
#: a transition is discrete when at least this share of its boundaries are jumps
DISCRETE_SHARE = 0.5
#: fewest testable boundaries for a transition to be judged
MIN_COUNT = 5


def _projectors(m: int) -> tuple[np.ndarray, np.ndarray]:
    t = np.arange(-m, m, dtype=float) / m
    smooth = np.column_stack([np.ones(2 * m), t, t**2])
    step = np.column_stack([smooth, (t >= 0).astype(float)])
    eye = np.eye(2 * m)
    return eye - smooth @ np.linalg.pinv(smooth), eye - step @ np.linalg.pinv(step)


def step_statistic(x: np.ndarray, m: int = WINDOW) -> np.ndarray:
    """S at every centre b = m .. T−m of the series ``x`` (the window is x[b−m : b+m])."""
    if len(x) < 2 * m:
        return np.empty(0)
    smooth, step = _projectors(m)
    w = sliding_window_view(np.asarray(x, dtype=float), 2 * m)  # (T−2m+1, 2m); row i is centre b = i + m
    ra = ((w @ smooth.T) ** 2).sum(axis=1)
    rb = ((w @ step.T) ** 2).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(rb > 0, (ra - rb) / np.where(rb > 0, rb, 1), 0.0)


def boundary_sharpness(runs_z, runs_path, means, covars, window: int = WINDOW, quantile: float = QUANTILE,
                       min_count: int = MIN_COUNT) -> dict:
    """Which transitions of a fit are jumps (module docstring); the ``transitions`` part of the audit.

    Parameters
    ----------
    runs_z, runs_path : list of arrays
        Each run's scaled rows (T, d) and Viterbi states (T,).
    means, covars : arrays (K, d), (K, d, d)
        The fit's state means and covariances (any family: the direction of the move only).

    Returns
    -------
    dict
        ``window``, ``quantile``, ``transitions``: per observed transition ``source, target,
        boundaries`` (testable: at least ``window`` checkpoints on each side), ``jumps``,
        ``share``, ``discrete`` (None when fewer than ``min_count`` are testable), ``states``: per
        state ``entries``, ``jumps``, ``discrete`` (entered by at least one discrete transition;
        None when no entry could be judged), and ``discrete_transitions`` (their number).
    """
    means = np.asarray(means, dtype=float)
    covars = np.asarray(covars, dtype=float)
    K = len(means)
    prec = np.linalg.inv(covars.mean(axis=0))
    m = int(window)
    found: dict[tuple[int, int], list[tuple[int, int]]] = {}  # (j, k) -> [(run, b)]
    cuts = []
    for i, path in enumerate(runs_path):
        path = np.asarray(path)
        c = np.flatnonzero(path[1:] != path[:-1]) + 1
        cuts.append(c)
        for b in c:
            found.setdefault((int(path[b - 1]), int(path[b])), []).append((i, int(b)))
    # placebo centres per run: windows [b−m, b+m) with no boundary inside
    quiet = []
    for path, c in zip(runs_path, cuts):
        T = len(path)
        centres = np.arange(m, T - m + 1)
        ok = np.ones(len(centres), dtype=bool)
        for cut in c:
            ok &= ~((centres - m < cut) & (cut <= centres + m - 1))
        quiet.append(centres[ok])
    rows = []
    state_entries = np.zeros(K, dtype=int)
    state_jumps = np.zeros(K, dtype=int)
    state_discrete = [None] * K
    for (j, k), where in sorted(found.items()):
        u = prec @ (means[k] - means[j])
        norm = np.sqrt(max(float(u @ covars.mean(axis=0) @ u), 1e-300))
        u = u / norm
        stats_cache: dict[int, np.ndarray] = {}
        placebo = []
        for i, path in enumerate(runs_path):
            q = quiet[i]
            if not q.size:
                continue
            inside = np.isin(np.asarray(path)[q], (j, k))
            if not inside.any():
                continue
            s = stats_cache.setdefault(i, step_statistic(runs_z[i] @ u, m))
            placebo.append(s[q[inside] - m])
        placebo = np.concatenate(placebo) if placebo else np.empty(0)
        threshold = float(np.quantile(placebo, quantile)) if placebo.size >= 20 else None
        tested = jumps = 0
        for i, b in where:
            if b < m or b > len(runs_path[i]) - m or threshold is None:
                continue
            s = stats_cache.setdefault(i, step_statistic(runs_z[i] @ u, m))
            tested += 1
            jumps += bool(s[b - m] > threshold)
        share = jumps / tested if tested else None
        discrete = None if tested < min_count else bool(share >= DISCRETE_SHARE)
        rows.append({"source": j, "target": k, "boundaries": tested, "jumps": jumps, "share": share,
                     "threshold": threshold, "placebo": int(placebo.size), "discrete": discrete})
        state_entries[k] += tested
        state_jumps[k] += jumps
        if discrete is not None:
            state_discrete[k] = bool(state_discrete[k]) or discrete
    states = [{"state": s, "entries": int(state_entries[s]), "jumps": int(state_jumps[s]),
               "discrete": state_discrete[s]} for s in range(K)]
    return {"window": m, "quantile": quantile, "share": DISCRETE_SHARE, "min_count": min_count,
            "transitions": rows, "states": states,
            "discrete_transitions": sum(1 for r in rows if r["discrete"]),
            "judged_transitions": sum(1 for r in rows if r["discrete"] is not None)}


def verdict(sharp: dict) -> str:
    """One sentence: the fit's discrete transitions, or that it describes continuous change."""
    judged = [r for r in sharp["transitions"] if r["discrete"] is not None]
    if not judged:
        return "too few boundaries with enough checkpoints around them to tell jumps from continuous change"
    discrete = [r for r in judged if r["discrete"]]
    if not discrete:
        return (f"no discrete transitions: at none of the {len(judged)} transitions judged do most boundaries jump "
                "more than the runs move anyway, so nothing here shows the states to be phases rather than "
                "stretches cut out of continuous change (read them as a discretisation; where runs drift inside "
                "planted states, as real runs do, this is said too: docs/fit.md)")
    names = ", ".join(f"{r['source']}→{r['target']} ({r['jumps']}/{r['boundaries']})" for r in discrete)
    return (f"{len(discrete)} of {len(judged)} transitions judged are discrete (most boundaries jump): {names}; "
            "the others cut through continuous change")
