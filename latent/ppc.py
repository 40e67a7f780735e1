"""Posterior predictive checks: do studies drawn from the fitted model look like the data?

Notation: N runs, K states; ``runs_z`` the scaled rows, ``runs_path`` the decoded states.

A fitted model makes claims about how runs move (independent draws around a place for the
Gaussian HMM, a linear regime for ``ar``, a wander near a place for ``hamilton``). We draw
``n_sims`` studies of the same shape from the fitted model (:meth:`latent.family.StateFamily.sample`),
decode them with the same model (so both sides go through the same Viterbi step), and compare
four statistics of the data with their simulated distribution:

* **within-state autocorrelation**: per state and feature, the lag-1 autocorrelation of the
  checkpoints inside the state, pooled over stretches of at least ``MIN_STRETCH`` consecutive
  checkpoints, each demeaned on its own; the median over (state, feature);
* **run-to-run spread of state means**: per state and feature, over runs with at least
  ``MIN_ROWS`` checkpoints in the state, the sd across runs of the run's mean there, in units of
  the pooled within-run sd; the median over (state, feature);
* **dwell time**: the mean number of checkpoints of a stay in a state (every stay of every run);
* **visits per run**: the mean number of stays per run (entries into a state, the first included).

A statistic of the data outside the central 95 % of the simulated ones (or outside all of them,
when fewer than 40 are drawn) means the model does not produce runs like these; the fit says so.
"""

from __future__ import annotations

import numpy as np

from .family import get_family

MIN_STRETCH = 10
MIN_ROWS = 5
#: the checks, in order: (key, what it measures)
STATISTICS = (
    ("autocorrelation", "within-state lag-1 autocorrelation (median over states and features)"),
    ("run_spread", "run-to-run spread of state means, in within-run sds (median over states and features)"),
    ("dwell", "mean checkpoints per stay in a state"),
    ("visits", "mean stays per run"),
)


def _stays(path: np.ndarray) -> list[tuple[int, int, int]]:
    """``(state, start, stop)`` of every stay of one path."""
    path = np.asarray(path)
    cuts = np.flatnonzero(path[1:] != path[:-1]) + 1
    starts = np.concatenate([[0], cuts])
    stops = np.concatenate([cuts, [len(path)]])
    return [(int(path[a]), int(a), int(b)) for a, b in zip(starts, stops)]


def study_statistics(runs_z, runs_path, k: int) -> dict:
    """The four statistics of the module docstring for one study (NaN where undefined)."""
    d = runs_z[0].shape[1] if runs_z else 0
    num = np.zeros((k, d))
    den = np.zeros((k, d))
    run_means: list[list[np.ndarray]] = [[] for _ in range(k)]
    run_vars: list[list[np.ndarray]] = [[] for _ in range(k)]
    stay_lengths, visits = [], []
    for z, path in zip(runs_z, runs_path):
        stays = _stays(path)
        visits.append(len(stays))
        for s, a, b in stays:
            stay_lengths.append(b - a)
            if b - a >= MIN_STRETCH:
                x = z[a:b] - z[a:b].mean(axis=0)
                num[s] += (x[1:] * x[:-1]).sum(axis=0)
                den[s] += (x * x).sum(axis=0)
        path = np.asarray(path)
        for s in range(k):
            rows = z[path == s]
            if len(rows) >= MIN_ROWS:
                run_means[s].append(rows.mean(axis=0))
                run_vars[s].append(rows.var(axis=0, ddof=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        ac = np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)
    spread = []
    for s in range(k):
        if len(run_means[s]) >= 3:
            within = np.sqrt(np.mean(run_vars[s], axis=0))
            between = np.std(run_means[s], axis=0, ddof=1)
            with np.errstate(invalid="ignore", divide="ignore"):
                spread.append(np.where(within > 0, between / np.where(within > 0, within, 1), np.nan))
    spread = np.concatenate(spread) if spread else np.array([np.nan])
    return {
        "autocorrelation": float(np.nanmedian(ac)) if np.isfinite(ac).any() else float("nan"),
        "run_spread": float(np.nanmedian(spread)) if np.isfinite(spread).any() else float("nan"),
        "dwell": float(np.mean(stay_lengths)) if stay_lengths else float("nan"),
        "visits": float(np.mean(visits)) if visits else float("nan"),
    }


def posterior_predictive(params: dict, family: str, covariance_type: str, runs_z, runs_path,
                         n_sims: int = 20, random_state: int = 0) -> dict:
    """The posterior predictive checks of a fit (module docstring); the ``ppc`` block of ``analysis.json``.

    Parameters
    ----------
    params : dict
        The fitted model (canonical states, plain data).
    family, covariance_type : str
    runs_z, runs_path : list of arrays
        The scaled runs as fitted and their Viterbi paths.
    n_sims : int
        Studies drawn from the model.
    random_state : int

    Returns
    -------
    dict
        ``n_sims``, ``level`` (the central share the data should fall in), ``statistics``: per
        statistic ``name, description, data, simulated`` (list), ``low, high`` (the central
        interval of the simulated values), ``outside`` (bool; None when undefined), and
        ``outside_names``.
    """
    fam = get_family(family)
    K = len(params["startprob"])
    lengths = np.array([len(z) for z in runs_z])
    model = fam.build(params, covariance_type)
    data = study_statistics(runs_z, runs_path, K)
    first_rows = np.array([z[0] for z in runs_z])
    rng = np.random.default_rng(np.random.SeedSequence(int(random_state), spawn_key=(12,)))
    sims = []
    for _ in range(int(n_sims)):
        with np.errstate(all="ignore"):
            z_sim, _ = fam.sample(params, lengths, rng, first_rows)
            X = np.concatenate(z_sim)
            if not np.all(np.isfinite(X)):
                continue
            path = model.predict(X, lengths)
        off = np.concatenate([[0], np.cumsum(lengths)])
        sims.append(study_statistics(z_sim, [path[off[i]:off[i + 1]] for i in range(len(lengths))], K))
    level = 0.95
    rows = []
    for key, text in STATISTICS:
        values = np.array([s[key] for s in sims], dtype=float)
        values = values[np.isfinite(values)]
        value = data[key]
        if values.size and np.isfinite(value):
            if values.size >= 40:
                low, high = (float(q) for q in np.quantile(values, [(1 - level) / 2, (1 + level) / 2]))
            else:
                low, high = float(values.min()), float(values.max())
            outside = bool(value < low or value > high)
        else:
            low = high = outside = None
        rows.append({"name": key, "description": text, "data": None if not np.isfinite(value) else float(value),
                     "simulated": values.tolist(), "low": low, "high": high, "outside": outside})
    return {"n_sims": len(sims), "level": level, "statistics": rows,
            "outside_names": [r["name"] for r in rows if r["outside"]]}


def ppc_lines(ppc: dict | None) -> list[str]:
    """The fit summary's posterior predictive block."""
    if not ppc or not ppc.get("statistics"):
        return []
    lines = [f"posterior predictive checks ({ppc['n_sims']} studies drawn from the fitted model and decoded; the "
             f"data should fall in the range they span):"]
    for r in ppc["statistics"]:
        if r["data"] is None or r["low"] is None:
            lines.append(f"  {r['description']}: not defined here")
            continue
        flag = "  <- OUTSIDE: the model does not produce runs like these" if r["outside"] else ""
        lines.append(f"  {r['description']}: data {r['data']:.3g}, model {r['low']:.3g} to {r['high']:.3g}{flag}")
    return lines
