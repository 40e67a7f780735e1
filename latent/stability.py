"""How stable a fit's states and detours are under resampling of runs.

For each of B bootstrap resamples of the runs (seeded), the chosen K-state model is refitted by
EM on the resampled runs, starting from the fitted parameters (so it measures how the fitted
solution moves with the sample, not how often a fresh start finds it), the resampled runs are
decoded, and the detour rule is applied again. Each refitted state is matched to a fitted one by
its mean (Hungarian assignment on Euclidean distance in z units). A fitted state *reappears* in
a resample when its partner is visited by some resampled run and lies nearer to it than to any
other fitted state's mean; a detour reappears when, in addition, the partner is a detour there.

How often K itself recurs comes from model selection's folds (:class:`latent.hmm.HMMSelector`
``fold_choice_``): each fold chooses K from its own held-out runs.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment

from .detours import OccupancyRegression, converging_states, detour_tests, entry_steps, paper_detours
from .family import DEFAULT_FAMILY, get_family, repair_covars
from .hmm import FALLBACK_IMPLEMENTATION, IMPLEMENTATION, failure_reason, stack_runs
from .parallel import pmap

N_PERM = 2000  # permutations per resample's detour tests (p resolution 5e-4)


def resample_job(data: dict, job: dict) -> dict:
    """Refit, decode and re-test one bootstrap resample (a :func:`latent.parallel.pmap` job)."""
    idx = job["runs"]
    Xb, lb = stack_runs(data["X"], data["lengths"], idx)
    params = data["params"]
    K = len(params["startprob"])
    out = {"resample": job["resample"], "ok": False, "reason": None}
    fam = get_family(data.get("family", DEFAULT_FAMILY))
    for implementation in (IMPLEMENTATION, FALLBACK_IMPLEMENTATION):
        model = fam.build(params, data["covariance_type"], implementation)  # EM starts at the fit
        model.params, model.n_iter, model.tol = "st" + fam.emission_codes, data["n_iter"], data["tol"]
        try:
            with np.errstate(all="ignore"):
                model.fit(Xb, lb)
                fitted = fam.to_params(model)
                fitted["covars"] = repair_covars(fitted["covars"])
                path = fam.build(fitted, data["covariance_type"]).predict(Xb, lb)
        except Exception as exc:  # a degenerate resample is reported, not fatal
            out["reason"] = failure_reason(exc)
            if "underflow" in str(exc) and implementation != FALLBACK_IMPLEMENTATION:
                continue
            return out
        break
    off = np.concatenate([[0], np.cumsum(lb)])
    visited = np.zeros((len(idx), K), dtype=bool)
    occupancy = np.zeros((len(idx), K))
    for i in range(len(idx)):
        counts = np.bincount(path[off[i] : off[i + 1]], minlength=K)
        visited[i] = counts > 0
        occupancy[i] = counts / counts.sum()
    y = data["y"][idx]
    run_off = np.concatenate([[0], np.cumsum(data["lengths"])])
    run_steps = [data["steps"][run_off[i]:run_off[i + 1]] for i in idx]
    if data["rule"] == "paper":
        reg = OccupancyRegression(n_boot=0, min_runs=data["min_runs"]).fit(occupancy, y)
        detours = paper_detours(reg.coef_, visited, data["converged"][idx])
    else:
        run_paths = [path[off[i]:off[i + 1]] for i in range(len(idx))]
        entry = entry_steps(run_paths, run_steps, y, K, data["converged"][idx])
        conv_in = converging_states(run_paths, run_steps, y, data["converged"][idx])
        rows = detour_tests(entry, y, data["min_runs"], data["alpha"], N_PERM, job["seed"], converging_in=conv_in)
        detours = [r["state"] for r in rows if r["detour"]]
    # where each state begins: the median step at which the resampled runs first enter it
    first = [[] for _ in range(K)]
    for i in range(len(idx)):
        p = path[off[i]:off[i + 1]]
        for s_ in np.unique(p):
            first[int(s_)].append(float(run_steps[i][np.argmax(p == s_)]))
    entry = [float(np.median(v)) if v else None for v in first]
    out.update(ok=True, means=fitted["means"], used=visited.any(axis=0), detours=detours, entry=entry)
    return out


def match_states(ref_means: np.ndarray, means: np.ndarray) -> np.ndarray:
    """``partner[k]``: the state of ``means`` assigned to ``ref_means[k]`` (Hungarian, Euclidean)."""
    cost = np.sqrt(((ref_means[:, None, :] - means[None, :, :]) ** 2).sum(-1))
    rows, cols = linear_sum_assignment(cost)
    partner = np.empty(len(ref_means), dtype=int)
    partner[rows] = cols
    return partner


def resample_stability(X, lengths, params: dict, covariance_type: str, y, converged, detours: list[int],
                       steps=None, rule: str = "delay", min_runs: int = 5, alpha: float = 0.05, resamples: int = 20,
                       n_iter: int = 32, tol: float = 1e-2, random_state: int = 0, n_jobs=None,
                       progress: bool = False, family: str = DEFAULT_FAMILY) -> dict:
    """Refit on ``resamples`` bootstrap resamples of runs; how often each state and detour recurs.

    Parameters
    ----------
    X, lengths : the scaled runs (as fitted)
    params : dict
        The fitted model (canonical order).
    covariance_type : str
    y : array (N,)
        Each run's convergence time as the detour rule uses it.
    converged : bool array (N,)
    detours : list of int
        The fit's detour states.
    steps : array (n_samples,), optional
        The step of every row (default: its checkpoint index); detour tests count only the
        states a run enters before its convergence step.
    rule : {"delay", "paper"}
    min_runs, alpha : the detour rule's settings
    resamples : int
    n_iter, tol : EM settings of each refit
    random_state : int
    family : str
        The fit's model family (:mod:`latent.family`).

    Returns
    -------
    dict
        ``resamples`` (asked), ``used`` (refits that succeeded), ``failures``, ``state_found``
        (per state: resamples in which it reappears), ``detour_found`` ({state: resamples in
        which it is again a detour}), ``new_detours`` ({state: resamples in which a non-detour
        state becomes one}), ``entry_interval`` (per state: the 2.5-97.5 % range, over the
        resamples where it reappears, of the median step at which the resampled runs first enter
        it: where the boundary into it lies, with its uncertainty; None when it reappears in fewer
        than 2), ``seed``.
    """
    n = len(lengths)
    K = len(params["startprob"])
    root = np.random.SeedSequence(int(random_state), spawn_key=(5,))
    jobs = []
    for b, child in enumerate(root.spawn(int(resamples))):
        rng = np.random.default_rng(child)
        jobs.append({"resample": b, "runs": np.sort(rng.integers(0, n, n)),
                     "seed": int(child.generate_state(1, dtype=np.uint32)[0])})
    data = {"X": X, "lengths": np.asarray(lengths), "params": params, "covariance_type": covariance_type,
            "n_iter": int(n_iter), "tol": float(tol), "y": np.asarray(y, dtype=float),
            "converged": np.asarray(converged, dtype=bool), "rule": rule, "min_runs": int(min_runs),
            "alpha": float(alpha), "family": family,
            "steps": (np.concatenate([np.arange(m) for m in np.asarray(lengths)]) if steps is None
                      else np.asarray(steps, dtype=float))}
    results = pmap(resample_job, jobs, data, n_jobs, progress, "stability resamples")
    means = np.asarray(params["means"])
    found = np.zeros(K, dtype=int)
    det_found = {k: 0 for k in detours}
    new = {}
    failures = []
    used = 0
    entries: list[list[float]] = [[] for _ in range(K)]
    for res in results:
        if not res["ok"]:
            failures.append(f"resample {res['resample']}: {res['reason']}")
            continue
        used += 1
        partner = match_states(means, res["means"])
        d_to_ref = np.sqrt(((res["means"][:, None, :] - means[None, :, :]) ** 2).sum(-1))  # (K_b, K)
        for k in range(K):
            j = partner[k]
            if res["used"][j] and np.argmin(d_to_ref[j]) == k:
                found[k] += 1
                if res["entry"][j] is not None:
                    entries[k].append(res["entry"][j])
                if j in res["detours"]:
                    if k in det_found:
                        det_found[k] += 1
                    else:
                        new[k] = new.get(k, 0) + 1
    entry_interval = [{"low": float(np.percentile(v, 2.5)), "high": float(np.percentile(v, 97.5)), "n": len(v)}
                      if len(v) >= 2 else None for v in entries]
    return {"resamples": int(resamples), "used": used, "failures": failures, "state_found": found.tolist(),
            "entry_interval": entry_interval,
            "detour_found": {int(k): v for k, v in det_found.items()},
            "new_detours": {int(k): v for k, v in sorted(new.items())}, "seed": int(random_state)}
