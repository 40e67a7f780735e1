"""Robustness audit: does each phase and detour survive a change of method?

Notation: the fit has K states; a *phase* is a state, i.e. the set of checkpoints its Viterbi
paths put there. An *alternative* is the same data fitted differently:

* ``K-1`` and ``K+1``: the same family with one state fewer or more;
* ``family <name>``: every other state family (:mod:`latent.family`) at the same K;
* ``without <group>``: the same model on the features that remain when one feature group
  (:data:`FEATURE_GROUPS`: norms, spectra and sparsity, weight distribution, losses and
  accuracies, other) is dropped, when at least one feature remains.

Each alternative is fitted on all runs (``restarts`` EM restarts from the segment start, the best
training log-likelihood kept) and decoded. A state **survives** an alternative when some state of
the alternative holds mostly the same checkpoints: the Jaccard index of the two sets of
checkpoints (|A ∩ B| / |A ∪ B|) is at least :data:`JACCARD`. A detour survives when, in addition,
that partner is again a detour under the same test (:func:`latent.detours.detour_tests`).

**Change points**: an independent method, with no model of states at all. Each run is cut by
binary segmentation (ruptures ``Binseg``, least-squares cost) into as many pieces as its Viterbi
path has, so the method gets the same budget of boundaries and is asked only *where* they lie;
an entry into a state is *confirmed* when a change point lies within :data:`TOLERANCE`
checkpoints of it. A state whose entries are mostly not confirmed is a boundary the HMM draws
where nothing changes abruptly (e.g. in smooth drift).
"""

from __future__ import annotations

import logging

import numpy as np

from .detours import converging_states, detour_tests, entry_steps
from .family import FAMILIES, get_family
from .parallel import pmap

log = logging.getLogger("latent")

#: feature groups the audit drops one at a time (a feature in none of them is "other")
FEATURE_GROUPS = {
    "norms": ("l1", "l2", "trace", "spectral"),
    "spectra and sparsity": ("mean_lambda", "variance_lambda", "code_sparsity", "computational_sparsity"),
    "weight distribution": ("mean_w", "median_w", "var_w", "mean_b", "median_b", "var_b"),
    "losses and accuracies": ("train_loss", "val_loss", "train_acc", "val_acc", "test_loss", "test_acc"),
}
#: a state survives an alternative when some state of it shares this Jaccard index of checkpoints
JACCARD = 0.5
#: checkpoints between an HMM boundary and a change point for it to count as confirmed
TOLERANCE = 3
#: a phase is "robust" when it survives at least this share of the alternatives
ROBUST_SHARE = 0.75


def feature_groups(features: list[str]) -> dict[str, list[int]]:
    """``{group: column indices}`` of the groups present in ``features`` (``other`` for the rest)."""
    out: dict[str, list[int]] = {}
    for i, name in enumerate(features):
        group = next((g for g, names in FEATURE_GROUPS.items() if name in names), "other features")
        out.setdefault(group, []).append(i)
    return out


def alternatives(features: list[str], k: int, family: str, max_k: int | None = None) -> list[dict]:
    """The alternatives audited for a K-state fit of ``family`` on ``features``."""
    d = len(features)
    out = []
    if k > 1:
        out.append({"name": f"K-1 ({k - 1} states)", "kind": "k", "k": k - 1, "family": family,
                    "columns": list(range(d))})
    out.append({"name": f"K+1 ({k + 1} states)", "kind": "k", "k": k + 1, "family": family,
                "columns": list(range(d))})
    for other in FAMILIES:
        if other != family:
            out.append({"name": f"family {other}", "kind": "family", "k": k, "family": other,
                        "columns": list(range(d))})
    groups = feature_groups(features)
    if len(groups) > 1:
        for group, cols in groups.items():
            keep = [i for i in range(d) if i not in cols]
            out.append({"name": f"without {group}", "kind": "features", "k": k, "family": family,
                        "columns": keep, "dropped": [features[i] for i in cols]})
    return out


def audit_job(data: dict, job: dict) -> dict:
    """Fit and decode one alternative (a :func:`latent.parallel.pmap` job)."""
    from .hmm import fit_restart
    from .segments import run_segments

    X = data["X"][:, job["columns"]]
    lengths = data["lengths"]
    segments = run_segments(X, lengths)
    best = None
    for r in range(data["restarts"]):
        rec = fit_restart(X, lengths, None, None, job["k"], job["seed"] + r, data["covariance_type"],
                          data["n_iter"], data["tol"], restart=r, init="segments", segments=segments,
                          family=job["family"])
        if rec["ok"] and (best is None or rec["train_loglik"] > best["train_loglik"]):
            best = rec
    if best is None:
        return {"name": job["name"], "ok": False, "path": None, "reason": "every restart failed"}
    model = get_family(job["family"]).build(best["params"], data["covariance_type"])
    return {"name": job["name"], "ok": True, "path": model.predict(X, lengths), "reason": None}


def jaccard(a: np.ndarray, b: np.ndarray, k: int, kb: int) -> np.ndarray:
    """Jaccard index of the checkpoints of each state of ``a`` (K) with each state of ``b`` (Kb)."""
    inter = np.zeros((k, kb))
    np.add.at(inter, (a, b), 1)
    size_a, size_b = inter.sum(axis=1), inter.sum(axis=0)
    union = size_a[:, None] + size_b[None, :] - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, inter / union, 0.0)


def changepoint_entries(runs_z, runs_path, k: int, tolerance: int = TOLERANCE) -> list[dict]:
    """Per state: its entries (a Viterbi path moving into it) and how many a change point confirms."""
    import ruptures

    entries = np.zeros(k, dtype=int)
    confirmed = np.zeros(k, dtype=int)
    for z, path in zip(runs_z, runs_path):
        path = np.asarray(path)
        bounds = np.flatnonzero(path[1:] != path[:-1]) + 1  # first checkpoint of each new stay
        if bounds.size == 0 or len(z) < 4:
            continue
        n_bkps = min(int(bounds.size), len(z) // 2 - 1)
        if n_bkps < 1:
            continue
        cps = np.array(ruptures.Binseg(model="l2", min_size=2, jump=1).fit(z).predict(n_bkps=n_bkps)[:-1])
        for b in bounds:
            s = int(path[b])
            entries[s] += 1
            if cps.size and np.min(np.abs(cps - b)) <= tolerance:
                confirmed[s] += 1
    return [{"state": s, "entries": int(entries[s]), "confirmed": int(confirmed[s])} for s in range(k)]


def audit_fit(X, lengths, path, features, k, family, covariance_type, steps, y, detours, *, converged=None, use=None,
              min_runs=5, alpha=0.05, n_iter=32, tol=1e-2, restarts=2, random_state=0, n_jobs=None,
              progress=False) -> dict:
    """The audit of one fit (module docstring); the ``audit`` block of ``analysis.json``.

    Parameters
    ----------
    X, lengths : the scaled runs as fitted; path : their Viterbi states (canonical)
    features : list of str
    k, family, covariance_type : the fit's
    steps : array (n_samples,)
        The step of every row.
    y : array
        Restricted convergence steps of the runs the detour tests use; ``use`` their positions;
        ``converged`` which of them converged
    detours : list of int
        The fit's detour states.

    Returns
    -------
    dict
        ``alternatives`` (name, kind, k, family, ok, reason), ``states`` (per state: ``survives``
        {alternative: bool}, ``jaccard`` {alternative: best index}, ``survived``, ``of``, ``robust``),
        ``detours`` (per detour state: ``survives`` {alternative: bool}, ``survived``, ``of``,
        ``robust``), ``changepoints`` (``method``, ``tolerance``, per state ``entries`` and
        ``confirmed``), ``rule``.
    """
    path = np.asarray(path)
    lengths = np.asarray(lengths)
    alts = alternatives(list(features), k, family)
    seed = int(np.random.SeedSequence(int(random_state), spawn_key=(9,)).generate_state(1, dtype=np.uint32)[0])
    jobs = [dict(a, seed=(seed + 1000 * i) % 2**32) for i, a in enumerate(alts)]
    data = {"X": np.asarray(X, dtype=float), "lengths": lengths, "covariance_type": covariance_type,
            "n_iter": int(n_iter), "tol": float(tol), "restarts": int(restarts)}
    results = pmap(audit_job, jobs, data, n_jobs, progress, "robustness audit")
    off = np.concatenate([[0], np.cumsum(lengths)])
    use = np.arange(len(lengths)) if use is None else np.asarray(use)
    states = [{"state": s, "survives": {}, "jaccard": {}} for s in range(k)]
    det_rows = {d: {"state": d, "survives": {}} for d in detours}
    alt_out = []
    for alt, res in zip(alts, results):
        alt_out.append({key: alt[key] for key in ("name", "kind", "k", "family")} | {
            "ok": res["ok"], "reason": res["reason"], **({"dropped": alt["dropped"]} if "dropped" in alt else {})})
        if not res["ok"]:
            continue
        other = np.asarray(res["path"])
        J = jaccard(path, other, k, alt["k"])
        partner = J.argmax(axis=1)
        for s in range(k):
            states[s]["jaccard"][alt["name"]] = float(J[s, partner[s]])
            states[s]["survives"][alt["name"]] = bool(J[s, partner[s]] >= JACCARD)
        if detours:
            alt_paths = [other[off[i]:off[i + 1]] for i in use]
            alt_steps = [steps[off[i]:off[i + 1]] for i in use]
            conv = np.ones(len(use), dtype=bool) if converged is None else np.asarray(converged, dtype=bool)
            entry = entry_steps(alt_paths, alt_steps, y, alt["k"], conv)
            rows = detour_tests(entry, y, min_runs, alpha, n_perm=2000, random_state=int(random_state),
                                converging_in=converging_states(alt_paths, alt_steps, y, conv))
            flagged = {r["state"] for r in rows if r["detour"]}
            for d in detours:
                det_rows[d]["survives"][alt["name"]] = bool(states[d]["survives"][alt["name"]]
                                                           and int(partner[d]) in flagged)
    for row in [*states, *det_rows.values()]:
        row["survived"] = int(sum(row["survives"].values()))
        row["of"] = len(row["survives"])
        row["robust"] = bool(row["of"] and row["survived"] >= ROBUST_SHARE * row["of"])
    runs_z = [X[off[i]:off[i + 1]] for i in range(len(lengths))]
    runs_path = [path[off[i]:off[i + 1]] for i in range(len(lengths))]
    cp = changepoint_entries(runs_z, runs_path, k)
    return {
        "rule": (f"a state survives an alternative fit when some state of it holds checkpoints with Jaccard "
                 f"index >= {JACCARD}; a detour when that state is also a detour there; robust: surviving "
                 f">= {ROBUST_SHARE:.0%} of the alternatives"),
        "alternatives": alt_out,
        "states": states,
        "detours": list(det_rows.values()),
        "changepoints": {"method": "ruptures Binseg (l2 cost), as many change points per run as its Viterbi "
                                   "path has boundaries", "tolerance": TOLERANCE, "states": cp},
    }


def audit_lines(audit: dict) -> list[str]:
    """The fit summary's robustness block: one line per state, and one per detour."""
    if not audit:
        return []
    n_alt = len(audit["alternatives"])
    failed = [a["name"] for a in audit["alternatives"] if not a["ok"]]
    lines = [f"robustness (each state against {n_alt} alternative fits: K-1, K+1, the other families, each feature "
             f"group dropped; and change points of each run, ruptures):"
             + (f" {len(failed)} alternative(s) could not be fitted: {', '.join(failed)}" if failed else "")]
    cps = {r["state"]: r for r in audit["changepoints"]["states"]}
    for row in audit["states"]:
        lost = [name for name, ok in row["survives"].items() if not ok]
        cp = cps.get(row["state"], {})
        cp_text = (f"; {cp['confirmed']} of {cp['entries']} entries at a change point"
                   if cp.get("entries") else "")
        verdict = "robust" if row["robust"] else "NOT robust"
        lines.append(f"  state {row['state']}: {verdict}, survives {row['survived']}/{row['of']}"
                     + (f" (not: {', '.join(lost)})" if lost else "") + cp_text)
    for row in audit["detours"]:
        lost = [name for name, ok in row["survives"].items() if not ok]
        lines.append(f"  detour {row['state']}: {'robust' if row['robust'] else 'does NOT survive a change of method'}"
                     f", a detour in {row['survived']}/{row['of']} alternatives"
                     + (f" (not: {', '.join(lost)})" if lost else ""))
    return lines
