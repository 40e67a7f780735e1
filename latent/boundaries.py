"""Is each boundary between states a discrete transition, or a cut through continuous change?

Notation: K states; one run's rows z_0..z_{T-1} (scaled features) and its Viterbi path; a
*boundary* of the transition j → k is a checkpoint b with s_{b−1} = j and s_b = k.

Any latent-state model cuts a trajectory that changes smoothly into pieces (a curve is better
described by more places), so a state boundary is evidence of a phase *transition* only if the
trajectory changes more abruptly there than it does anyway. For each boundary:

1. the direction the model says the run moves in, u = Σ̄⁻¹(μ_k − μ_j) (Σ̄ the states' mean
   covariance), and the run projected on it, x_t = u·z_t;
2. on the window of 2M checkpoints around b, the share of the residual a transition at b explains
   beyond a smooth curve: S = (RSS_quad − RSS_quad+ramp) / RSS_quad+ramp, with a quadratic in time
   (so steady drift, and drift that speeds up or slows down, cost nothing) and the best of a set
   of transitions: a step from one checkpoint to the next, or a straight ramp over 2-8 checkpoints,
   its middle within 3 checkpoints of b (:func:`transition_shapes`). Transitions take a few
   checkpoints, and the model's boundary falls anywhere in them: a step exactly at b missed ramps of
   5 checkpoints even on the true boundaries (bench/RESULTS.md, block ``boundaries``);
3. the same S (the same search) at *placebo* points: every checkpoint of the runs whose window lies
   inside state j or k (no boundary in it), projected on the same u. The boundary is a *jump* when
   its S is above the placebo's 95th percentile: it is more abrupt than 95 % of the places where the
   model saw no change. This calibrates S against the runs' own noise, autocorrelation and drift,
   whatever they are, and against the search over transitions.

A transition is **discrete** when at least half of its boundaries (and at least ``min_count``)
are jumps. A fit with no discrete transition describes continuous change: its states are a
discretisation of it, not phases. Calibration (bench/RESULTS.md, block ``boundaries``, where the
window and the transitions were chosen on 10 draws of each family and checked on 10 others): on
studies planted with jumps or ramps between states most draws have discrete transitions; on smooth
change cut into states by a fit (the model puts its cuts where noise makes the curve steepest)
about 10 % of boundaries jump, and a transition rarely has half.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

#: half-width M of the window around a boundary (checkpoints)
WINDOW = 10
#: widths (checkpoints) of the transitions looked for: 0 is a step from one checkpoint to the next, w > 0
#: a straight ramp over w checkpoints (transitions take a few; a step alone misses them: bench/RESULTS.md,
#: block ``boundaries``, where this setting was chosen)
RAMPS = (0, 2, 4, 6, 8)
#: how far (checkpoints) the middle of a transition may lie from the boundary the model put
SHIFT = 3
#: a boundary is a jump when its statistic exceeds this quantile of the placebo statistics
QUANTILE = 0.95
#: a transition is discrete when at least this share of its boundaries are jumps
DISCRETE_SHARE = 0.5
#: fewest testable boundaries for a transition to be judged
MIN_COUNT = 5


def transition_shapes(m: int, ramps=RAMPS, shift: int = SHIFT) -> list[tuple[int, int]]:
    """The (first row, width) of every transition looked for, in rows relative to the boundary (the
    first row of the new state is 0): a ramp of width w over rows s .. s + w − 1 reaches its end at
    s + w (w = 0: a step at s), its middle s + (w − 1)/2 within ``shift`` of the boundary's middle −1/2 (half a
    checkpoint more for odd w)."""
    out = []
    for w in ramps:
        for c in range(-shift, shift + 1):
            s = c - w // 2
            if s - 1 >= -m and s + w <= m - 1 and (s, w) not in out:
                out.append((s, w))
    if not out:
        raise ValueError(f"no transition of widths {tuple(ramps)} fits a window of {2 * m} checkpoints")
    return out


@lru_cache(maxsize=16)
def _projectors(m: int, ramps=RAMPS, shift: int = SHIFT) -> tuple[np.ndarray, np.ndarray]:
    """The window's (2m rows) residual projector onto a quadratic in time, and (2m, S) each transition of
    :func:`transition_shapes` less its quadratic part, normalised: adding transition s to the quadratic
    lowers a window's residual sum of squares by exactly (its column · window)² (one more regressor)."""
    t = np.arange(-m, m, dtype=float)
    smooth = np.column_stack([np.ones(2 * m), t / m, (t / m) ** 2])
    resid = np.eye(2 * m) - smooth @ np.linalg.pinv(smooth)
    shapes = np.column_stack([np.clip((t - s + 1) / (w + 1), 0.0, 1.0)  # w = 0: 0 before row s, 1 from it
                              for s, w in transition_shapes(m, ramps, shift)])
    shapes = resid @ shapes
    return resid, shapes / np.linalg.norm(shapes, axis=0)


def step_statistic(x: np.ndarray, m: int = WINDOW, ramps=RAMPS, shift: int = SHIFT) -> np.ndarray:
    """S at every centre b = m .. T−m of the series ``x`` (the window is x[b−m : b+m]): the share of the
    quadratic's residual that the best of the transitions (:func:`transition_shapes`) explains."""
    if len(x) < 2 * m:
        return np.empty(0)
    smooth, shapes = _projectors(int(m), tuple(int(r) for r in ramps), int(shift))  # cached: one per setting
    w = sliding_window_view(np.asarray(x, dtype=float), 2 * m)  # (T−2m+1, 2m); row i is centre b = i + m
    ra = ((w @ smooth.T) ** 2).sum(axis=1)
    # the best transition's residual; floored so that a window it fits exactly stays a (huge) jump
    rb = np.maximum(ra - ((w @ shapes) ** 2).max(axis=1), 1e-12 * ra)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(rb > 0, (ra - rb) / np.where(rb > 0, rb, 1), 0.0)


def boundary_sharpness(runs_z, runs_path, means, covars, window: int = WINDOW, quantile: float = QUANTILE,
                       min_count: int = MIN_COUNT, ramps=RAMPS, shift: int = SHIFT) -> dict:
    """Which transitions of a fit are jumps (module docstring); the ``transitions`` part of the audit.

    Parameters
    ----------
    runs_z, runs_path : list of arrays
        Each run's scaled rows (T, d) and Viterbi states (T,).
    means, covars : arrays (K, d), (K, d, d)
        The fit's state means and covariances (any family: the direction of the move only).
    window, quantile, min_count
        The half-width M of the window, the placebo quantile a jump exceeds, the fewest testable
        boundaries of a judged transition.
    ramps, shift
        The transitions looked for (:func:`transition_shapes`): their widths, and how far their middle
        may lie from the boundary.

    Returns
    -------
    dict
        ``window``, ``ramps``, ``shift``, ``quantile``, ``share``, ``min_count`` (the settings),
        ``transitions``: per observed transition ``source, target,
        boundaries`` (testable: at least ``window`` checkpoints on each side), ``jumps``,
        ``share``, ``discrete`` (None when fewer than ``min_count`` are testable), ``states``: per
        state ``entries``, ``jumps``, ``discrete`` (entered by at least one discrete transition;
        None when no entry could be judged), ``discrete_transitions`` (their number) and
        ``judged_transitions`` (transitions with at least ``min_count`` testable boundaries).
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
        cache: dict[int, np.ndarray] = {}  # each run's statistic on this direction, computed once
        placebo = []
        for i, path in enumerate(runs_path):
            q = quiet[i]
            if not q.size:
                continue
            inside = np.isin(np.asarray(path)[q], (j, k))
            if not inside.any():
                continue
            if i not in cache:
                cache[i] = step_statistic(runs_z[i] @ u, m, ramps, shift)
            placebo.append(cache[i][q[inside] - m])
        placebo = np.concatenate(placebo) if placebo else np.empty(0)
        threshold = float(np.quantile(placebo, quantile)) if placebo.size >= 20 else None
        tested = jumps = 0
        for i, b in where:
            if b < m or b > len(runs_path[i]) - m or threshold is None:
                continue
            if i not in cache:
                cache[i] = step_statistic(runs_z[i] @ u, m, ramps, shift)
            tested += 1
            jumps += bool(cache[i][b - m] > threshold)
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
    return {"window": m, "ramps": [int(w) for w in ramps], "shift": int(shift), "quantile": quantile,
            "share": DISCRETE_SHARE, "min_count": min_count,
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
