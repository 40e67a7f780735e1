"""Gaussian-HMM model selection over the number of states, with reproducible parallel restarts.

Notation: K states, d features; ``X`` has shape ``(n_samples, d)`` and ``lengths`` gives the
rows of each run (see :mod:`latent.features`).

What :class:`HMMSelector` does (reference.md C, with the reference's gaps closed):

* split the *runs* into train and held-out sets (``test_fraction``, seeded);
* for K = 1..``max_states`` and ``restarts`` restarts per K, fit ``hmmlearn.hmm.GaussianHMM``
  on the training runs with its own ``random_state`` (derived with ``numpy.random.SeedSequence``
  from ``random_state`` and ``(K, restart)``, so a restart's seed does not depend on
  ``max_states`` or ``restarts``), in parallel over processes;
* score every restart on the held-out runs: total log-likelihood, AIC and BIC with
  n = held-out timesteps (hmmlearn 0.3 definitions);
* skip degenerate restarts (an exception, non-finite parameters, a non-stochastic row, a state
  with no data) with a logged warning;
* per K keep the restart with the highest held-out log-likelihood; choose K by the minimum
  mean BIC (or AIC) over restarts, or the maximum mean held-out log-likelihood;
* relabel the states of the chosen model canonically: by mean first-visit checkpoint over all
  runs' Viterbi paths, so state 0 is where runs start.
"""

from __future__ import annotations

import logging
import math
import os
import warnings
from concurrent.futures import ProcessPoolExecutor
import multiprocessing as mp

import numpy as np

from .errors import UserError

log = logging.getLogger("latent")

COVARIANCES = ("full", "diag", "spherical", "tied")
CRITERIA = ("bic", "aic", "loglik")
#: hmmlearn's forward-backward: "scaling" (Rabiner's per-step normalisation) is ~30 % faster
#: than "log" on this workload and equally exact, but it underflows when every state gives a
#: checkpoint a density below ~1e-308 (outlying held-out runs, near-singular covariances); a
#: restart that underflows is refitted with "log" from the same seed. Decoding always uses "log".
IMPLEMENTATION = "scaling"
FALLBACK_IMPLEMENTATION = "log"
MIN_STATE_WEIGHT = 1e-3  # expected training rows below which a state counts as having no data


# --------------------------------------------------------------------------- seeds and split


def restart_seed(random_state: int, k: int, restart: int) -> int:
    """The ``random_state`` of restart ``restart`` of the K = ``k`` fit (a uint32)."""
    ss = np.random.SeedSequence(int(random_state), spawn_key=(1, int(k), int(restart)))
    return int(ss.generate_state(1, dtype=np.uint32)[0])


def split_seed(random_state: int) -> int:
    """The seed of the train/held-out split of runs."""
    ss = np.random.SeedSequence(int(random_state), spawn_key=(0,))
    return int(ss.generate_state(1, dtype=np.uint32)[0])


def split_runs(n_runs: int, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split run positions ``0..n_runs-1`` into sorted train and held-out positions.

    The held-out set has ``ceil(test_fraction * n_runs)`` runs (as sklearn's
    ``train_test_split``); at least 2 training and 1 held-out run are required.
    """
    if not 0 < test_fraction < 1:
        raise UserError(f"--test-fraction must be between 0 and 1, got {test_fraction}")
    n_test = int(math.ceil(test_fraction * n_runs))
    if n_test < 1 or n_runs - n_test < 2:
        raise UserError(
            f"too few runs for the held-out split: {n_runs} usable run(s), need at least "
            f"{_min_runs(test_fraction)} for --test-fraction {test_fraction}; collect more seeds"
        )
    perm = np.random.default_rng(seed).permutation(n_runs)
    return np.sort(perm[n_test:]), np.sort(perm[:n_test])


def _min_runs(test_fraction: float) -> int:
    n = 1
    while True:
        n_test = int(math.ceil(test_fraction * n))
        if n_test >= 1 and n - n_test >= 2:
            return n
        n += 1


def n_parameters(k: int, d: int, covariance_type: str) -> int:
    """Free parameters of a K-state Gaussian HMM (hmmlearn 0.3's count)."""
    cov = {
        "full": k * d * (d + 1) // 2,
        "diag": k * d,
        "spherical": k,
        "tied": d * (d + 1) // 2,
    }[covariance_type]
    return (k - 1) + k * (k - 1) + k * d + cov


# --------------------------------------------------------------------------- plain-data models


def model_params(model) -> dict:
    """A fitted GaussianHMM as plain arrays; ``covars`` always as full ``(K, d, d)`` matrices."""
    means = np.asarray(model.means_, dtype=float)
    if model.covariance_type == "spherical":
        # hmmlearn 0.3.3 keeps spherical variances as a (K, d) array of equal rows and its
        # ``covars_`` property mis-expands that shape; build the full matrices ourselves
        var = np.asarray(model._covars_, dtype=float).reshape(len(means), -1)[:, 0]
        covars = np.array([v * np.eye(means.shape[1]) for v in var])
    else:
        covars = np.asarray(model.covars_, dtype=float)
    return {
        "startprob": np.asarray(model.startprob_, dtype=float),
        "transmat": np.asarray(model.transmat_, dtype=float),
        "means": means,
        "covars": covars,
    }


def build_hmm(params: dict, covariance_type: str):
    """A ready-to-use ``GaussianHMM`` from :func:`model_params` output (or model.json fields)."""
    from hmmlearn.hmm import GaussianHMM

    means = np.asarray(params["means"], dtype=float)
    full = np.asarray(params["covars"], dtype=float)
    k, d = means.shape
    model = GaussianHMM(n_components=k, covariance_type=covariance_type, init_params="", params="",
                        implementation=FALLBACK_IMPLEMENTATION)
    model.n_features = d
    model.startprob_ = np.asarray(params["startprob"], dtype=float)
    model.transmat_ = np.asarray(params["transmat"], dtype=float)
    model.means_ = means
    if covariance_type == "full":
        model.covars_ = full
    elif covariance_type == "diag":
        model.covars_ = np.array([np.diag(c) for c in full])
    elif covariance_type == "spherical":
        model.covars_ = full[:, 0, 0].copy()
    elif covariance_type == "tied":
        model.covars_ = full[0].copy()
    else:
        raise UserError(f"unknown covariance type {covariance_type!r}")
    return model


def permute_params(params: dict, order) -> dict:
    """Reorder states: new state i is old state ``order[i]``."""
    order = np.asarray(order)
    return {
        "startprob": params["startprob"][order],
        "transmat": params["transmat"][np.ix_(order, order)],
        "means": params["means"][order],
        "covars": params["covars"][order],
    }


# --------------------------------------------------------------------------- one restart

_DATA: tuple | None = None


def _init_worker(data) -> None:
    """Process-pool initializer: hold the data and pin BLAS/OpenMP to one thread."""
    global _DATA
    _DATA = data
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = "1"
    _load_native_libraries()
    from threadpoolctl import threadpool_limits

    globals()["_LIMITS"] = threadpool_limits(1)
    logging.getLogger("hmmlearn").setLevel(logging.ERROR)
    warnings.simplefilter("ignore")


def _load_native_libraries() -> None:
    """Import what loads OpenMP/BLAS *before* limiting threads: threadpoolctl only limits the
    libraries already loaded, and an unlimited, spinning OpenMP pool in every worker of a
    process pool oversubscribes the cores badly (tens of times slower)."""
    import hmmlearn.hmm  # noqa: F401
    import scipy.linalg  # noqa: F401
    import sklearn.cluster  # noqa: F401


def _run_job(job: tuple) -> dict:
    k, restart, seed, covariance_type, n_iter, tol = job
    X_tr, len_tr, X_te, len_te = _DATA
    return fit_restart(X_tr, len_tr, X_te, len_te, k, seed, covariance_type, n_iter, tol, restart=restart)


def fit_restart(X_tr, len_tr, X_te, len_te, k, seed, covariance_type, n_iter, tol, restart=0) -> dict:
    """Fit one restart and score it on the held-out runs; never raises for a degenerate fit.

    Returns a dict with ``k, restart, random_state, ok, reason, converged, n_iter, loglik,
    aic, bic, n_params, params``.
    """
    from hmmlearn.hmm import GaussianHMM

    d = X_tr.shape[1]
    p = n_parameters(k, d, covariance_type)
    rec = {"k": k, "restart": restart, "random_state": seed, "ok": False, "reason": None,
           "converged": False, "n_iter": 0, "loglik": None, "aic": None, "bic": None,
           "n_params": p, "params": None}
    from sklearn.cluster import KMeans

    for implementation in (IMPLEMENTATION, FALLBACK_IMPLEMENTATION):
        model = GaussianHMM(n_components=k, covariance_type=covariance_type, n_iter=n_iter, tol=tol,
                            random_state=seed, implementation=implementation, init_params="stc")
        try:
            with np.errstate(all="ignore"):
                # means initialised as hmmlearn 0.3.0 did (KMeans, n_init=1, the restart's seed);
                # hmmlearn 0.3.3 runs 10 KMeans inits, which costs time and changes nothing we need
                model.means_ = KMeans(n_clusters=k, n_init=1, random_state=seed).fit(X_tr).cluster_centers_
                model.fit(X_tr, len_tr)
                params = model_params(model)
                rec["converged"] = bool(model.monitor_.converged)
                rec["n_iter"] = int(model.monitor_.iter)
                reason = _degeneracy(params)
                if reason is None:
                    empty = empty_states(model, X_tr, len_tr)
                    if empty:
                        reason = f"state(s) {empty} have no training data"
                if reason is None:
                    ll = float(model.score(X_te, len_te))
                    if not np.isfinite(ll):
                        reason = f"held-out log-likelihood is {ll}"
        except Exception as exc:  # hmmlearn/scipy raise ValueError/LinAlgError on degenerate fits
            reason = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
            if "underflow" in str(exc) and implementation != FALLBACK_IMPLEMENTATION:
                continue
        break
    rec["implementation"] = implementation
    if reason is not None:
        rec["reason"] = reason
        return rec
    n = X_te.shape[0]
    rec.update(ok=True, loglik=ll, aic=-2 * ll + 2 * p, bic=-2 * ll + p * math.log(n), params=params)
    return rec


def empty_states(model, X, lengths) -> list[int]:
    """States whose expected number of rows in ``X`` (posterior mass) is below ``MIN_STATE_WEIGHT``."""
    weight = model.predict_proba(X, lengths).sum(axis=0)
    return np.flatnonzero(~(weight >= MIN_STATE_WEIGHT)).tolist()


def _degeneracy(params: dict) -> str | None:
    for name, arr in params.items():
        if not np.all(np.isfinite(arr)):
            return f"non-finite {name}"
    rows = params["transmat"].sum(axis=1)
    if np.any(np.abs(rows - 1) > 1e-6) or np.any(params["transmat"] < 0):
        return f"non-stochastic transition row(s) {np.flatnonzero(np.abs(rows - 1) > 1e-6).tolist()}"
    if abs(params["startprob"].sum() - 1) > 1e-6:
        return "start probabilities do not sum to 1"
    return None


# --------------------------------------------------------------------------- estimator


class HMMSelector:
    """Choose the number of states of a Gaussian HMM on held-out runs, then canonicalise.

    Parameters
    ----------
    max_states : int, default 8
        Fit K = 1..max_states.
    restarts : int, default 5
        Random restarts per K.
    n_iter : int, default 32
        EM iterations per restart (the paper's runs).
    covariance_type : {"full", "diag", "spherical", "tied"}, default "full"
    criterion : {"bic", "aic", "loglik"}, default "bic"
        Minimum mean held-out BIC / AIC, or maximum mean held-out log-likelihood.
    test_fraction : float, default 0.2
        Fraction of runs held out.
    tol : float, default 1e-2
        EM convergence tolerance (hmmlearn's default).
    random_state : int, default 0
        Seeds the split and every restart.
    n_jobs : int or None
        Worker processes; None uses ``os.cpu_count()``; 1 runs in this process.
    progress : bool, default False
        Show a progress bar of finished restarts on stderr.

    Attributes
    ----------
    n_states_ : int
        K chosen.
    model_ : hmmlearn.hmm.GaussianHMM
        The chosen restart, states in canonical order.
    params_ : dict
        ``startprob, transmat, means, covars`` (full) of ``model_``.
    selection_ : list of dict
        One row per K (see docs/artifacts.md ``selection``).
    restarts_ : list of dict
        Every restart: ``k, restart, random_state, ok, reason, converged, n_iter, loglik, aic, bic``.
    train_runs_, test_runs_ : ndarray of int
        Run positions (into ``lengths``) used for fitting and scoring.
    state_order_ : list of int
        ``state_order_[canonical] = raw hmmlearn state``.
    first_visit_ : ndarray, shape (K,)
        Mean first-visit checkpoint index of each canonical state (inf if never visited).
    """

    def __init__(self, max_states=8, restarts=5, n_iter=32, covariance_type="full", criterion="bic",
                 test_fraction=0.2, tol=1e-2, random_state=0, n_jobs=None, progress=False):
        self.max_states = max_states
        self.restarts = restarts
        self.n_iter = n_iter
        self.covariance_type = covariance_type
        self.criterion = criterion
        self.test_fraction = test_fraction
        self.tol = tol
        self.random_state = random_state
        self.n_jobs = n_jobs
        self.progress = progress

    def _validate(self) -> None:
        if not isinstance(self.max_states, (int, np.integer)) or self.max_states < 1:
            raise UserError(f"--max-states must be at least 1, got {self.max_states}")
        if not isinstance(self.restarts, (int, np.integer)) or self.restarts < 1:
            raise UserError(f"--restarts must be at least 1, got {self.restarts}")
        if not isinstance(self.n_iter, (int, np.integer)) or self.n_iter < 1:
            raise UserError(f"--n-iter must be at least 1, got {self.n_iter}")
        if self.covariance_type not in COVARIANCES:
            raise UserError(f"unknown covariance {self.covariance_type!r}; choose one of {', '.join(COVARIANCES)}")
        if self.criterion not in CRITERIA:
            raise UserError(f"unknown criterion {self.criterion!r}; choose one of {', '.join(CRITERIA)}")
        if self.n_jobs is not None and self.n_jobs < 1:
            raise UserError(f"--jobs must be at least 1, got {self.n_jobs}")
        if not isinstance(self.random_state, (int, np.integer)) or self.random_state < 0:
            raise UserError(f"--random-state must be a non-negative integer, got {self.random_state}")

    def fit(self, X, lengths):
        """Run model selection on runs stacked in ``X`` (shape ``(n_samples, d)``).

        Returns
        -------
        self
        """
        self._validate()
        X = np.ascontiguousarray(X, dtype=float)
        lengths = np.asarray(lengths, dtype=int)
        off = np.concatenate([[0], np.cumsum(lengths)])
        runs = [X[off[i] : off[i + 1]] for i in range(len(lengths))]
        train, test = split_runs(len(lengths), self.test_fraction, split_seed(self.random_state))
        X_tr, len_tr = np.concatenate([runs[i] for i in train]), lengths[train]
        X_te, len_te = np.concatenate([runs[i] for i in test]), lengths[test]
        self.train_runs_, self.test_runs_ = train, test

        jobs = [
            (k, r, restart_seed(self.random_state, k, r), self.covariance_type, int(self.n_iter), float(self.tol))
            for k in range(int(self.max_states), 0, -1)  # largest K first: the longest jobs start first
            for r in range(int(self.restarts))
        ]
        results = self._run_jobs(jobs, (X_tr, len_tr, X_te, len_te))
        results.sort(key=lambda rec: (rec["k"], rec["restart"]))
        for rec in results:
            if not rec["ok"]:
                log.warning("skipped HMM restart K=%d #%d (random_state=%d): %s",
                            rec["k"], rec["restart"], rec["random_state"], rec["reason"])
        self.restarts_ = [{key: v for key, v in rec.items() if key != "params"} for rec in results]
        self.selection_, best = self._table(results)
        ok_rows = [row for row in self.selection_ if row["best_random_state"] is not None]
        if not ok_rows:
            raise UserError(
                "no HMM restart succeeded for any K; try --covariance diag, fewer --features, or more runs"
            )
        if self.criterion == "loglik":
            chosen = max(ok_rows, key=lambda row: (row["loglik_mean"], -row["k"]))
        else:
            chosen = min(ok_rows, key=lambda row: (row[self.criterion], row["k"]))
        self.n_states_ = int(chosen["k"])
        raw = best[self.n_states_]["params"]

        # canonical order: mean first-visit checkpoint of each state over all runs' Viterbi paths
        model = build_hmm(raw, self.covariance_type)
        path = model.predict(X, lengths)
        first = np.full(self.n_states_, np.inf)
        for k in range(self.n_states_):
            visits = [np.flatnonzero(path[off[i] : off[i + 1]] == k) for i in range(len(lengths))]
            firsts = [v[0] for v in visits if v.size]
            if firsts:
                first[k] = float(np.mean(firsts))
        order = sorted(range(self.n_states_), key=lambda k: (first[k], k))
        self.state_order_ = [int(o) for o in order]
        self.first_visit_ = first[order]
        self.params_ = permute_params(raw, order)
        self.model_ = build_hmm(self.params_, self.covariance_type)
        return self

    def _run_jobs(self, jobs, data) -> list[dict]:
        from tqdm import tqdm

        bar = tqdm(total=len(jobs), desc="HMM restarts", unit="fit", disable=not self.progress,
                   dynamic_ncols=True, leave=False)
        results = []
        try:
            for rec in self._iter_jobs(jobs, data):
                results.append(rec)
                bar.update(1)
        finally:
            bar.close()
        return results

    def _iter_jobs(self, jobs, data):
        """Yield each job's result, in job order."""
        n_jobs = self.n_jobs or os.cpu_count() or 1
        n_jobs = min(n_jobs, len(jobs))
        _load_native_libraries()  # before forking and before limiting threads
        if n_jobs == 1:
            from threadpoolctl import threadpool_limits

            hl = logging.getLogger("hmmlearn")
            level = hl.level
            hl.setLevel(logging.ERROR)
            try:
                with threadpool_limits(1), warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    global _DATA
                    _DATA = data
                    try:
                        for job in jobs:
                            yield _run_job(job)
                    finally:
                        _DATA = None
            finally:
                hl.setLevel(level)
            return
        ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else None
        with ProcessPoolExecutor(max_workers=n_jobs, mp_context=ctx, initializer=_init_worker,
                                 initargs=(data,)) as pool:
            yield from pool.map(_run_job, jobs, chunksize=1)

    def _table(self, results):
        by_k: dict[int, list[dict]] = {}
        for rec in results:
            by_k.setdefault(rec["k"], []).append(rec)
        table, best = [], {}
        for k in sorted(by_k):
            recs = by_k[k]
            ok = [r for r in recs if r["ok"]]
            row = {
                "k": k,
                "n_params": recs[0]["n_params"],
                "n_converged": sum(1 for r in ok if r["converged"]),
                "n_failed": len(recs) - len(ok),
                "random_states": [r["random_state"] for r in recs],
                "failures": [f"random_state={r['random_state']}: {r['reason']}" for r in recs if not r["ok"]],
                "loglik_mean": None, "loglik_std": None, "aic": None, "bic": None,
                "best_random_state": None,
            }
            if ok:
                ll = np.array([r["loglik"] for r in ok])
                top = max(ok, key=lambda r: (r["loglik"], -r["restart"]))
                best[k] = top
                row.update(
                    loglik_mean=float(ll.mean()),
                    loglik_std=float(ll.std()),
                    aic=float(np.mean([r["aic"] for r in ok])),
                    bic=float(np.mean([r["bic"] for r in ok])),
                    best_random_state=top["random_state"],
                )
            else:
                log.warning("no restart of K=%d succeeded (%d failed)", k, len(recs))
            table.append(row)
        return table, best

    # -- prediction on new data (canonical labels) -------------------------------------------

    def predict(self, X, lengths):
        """Viterbi state of every row (canonical labels)."""
        return self.model_.predict(X, lengths)

    def predict_proba(self, X, lengths):
        """Smoothed posterior state probabilities, shape ``(n_samples, K)``."""
        return self.model_.predict_proba(X, lengths)

    def score(self, X, lengths) -> float:
        """Total log-likelihood of ``X`` under the chosen model (higher is better)."""
        return float(self.model_.score(X, lengths))
