"""HMM model selection over the number of states, with reproducible parallel restarts.

Notation: K states, d features; ``X`` has shape ``(n_samples, d)`` and ``lengths`` gives the
rows of each of the N runs (see :mod:`latent.features`). A *criterion* is lower-is-better:
BIC = −2·logL + p·ln n, AIC = −2·logL + 2p, or "loglik" = −2·logL (p free parameters, n rows
scored; hmmlearn 0.3 definitions).

What :class:`HMMSelector` does (reference.md C, with the reference's gaps closed). Three
selection procedures share one engine (hmmlearn; the model family, :mod:`latent.family`, is
the Gaussian HMM of :mod:`latent.gaussian` by default), every restart seeded from ``random_state`` with
``numpy.random.SeedSequence`` and run in parallel over processes:

``"cv"`` (default)
    The runs are dealt into ``folds`` groups (seeded). For each fold, K = 1..``max_states`` and
    ``restarts`` restarts per K are fitted on the other folds' runs; the restart with the best
    *training* log-likelihood is scored on the fold's runs. Every run is held out exactly once,
    so each run contributes its own held-out log-likelihood ℓ_i(K). The criterion of K sums
    them: −2·Σ_i ℓ_i(K) + penalty(K) with n = all rows. K is the smallest one whose criterion is
    within one standard error of the best (the paired difference over runs: a K that no run
    clearly prefers to a smaller one is not taken). The chosen K is then refitted on all runs
    (``restarts`` restarts, best training log-likelihood).
``"split"``
    One seeded split of runs (``test_fraction`` held out); per K the restart with the best
    held-out log-likelihood, and *its* criterion (not the mean over restarts).
``"reference"``
    The reference's procedure exactly: one split, per K the best held-out restart is kept, but
    K minimises the criterion *averaged over restarts*.

In every mode degenerate restarts (an exception, non-finite parameters, a non-stochastic row, a
state with fewer expected rows than its covariance needs) are skipped with a logged warning, fitted covariances are repaired to be
symmetric positive definite (:func:`repair_covars`), and the chosen model's states are relabelled
canonically: by mean first-visit checkpoint over all runs' Viterbi paths, so state 0 is where
runs start.
"""

from __future__ import annotations

import logging
import math

import numpy as np

from .errors import UserError
from .family import COVAR_FLOOR, COVARIANCES, DEFAULT_FAMILY, FAMILIES, get_family, repair_covars  # noqa: F401

log = logging.getLogger("latent")

CRITERIA = ("bic", "aic", "loglik")
SELECTIONS = ("cv", "split", "reference")
INITS = ("segments", "kmeans")
#: hmmlearn's forward-backward: "scaling" (Rabiner's per-step normalisation) is ~30 % faster
#: than "log" on this workload and equally exact, but it underflows when every state gives a
#: checkpoint a density below ~1e-308 (outlying held-out runs, near-singular covariances); a
#: restart that underflows is refitted with "log" from the same seed. Decoding always uses "log".
IMPLEMENTATION = "scaling"
FALLBACK_IMPLEMENTATION = "log"


# --------------------------------------------------------------------------- seeds and split


def restart_seed(random_state: int, k: int, restart: int, fold: int | None = None) -> int:
    """The ``random_state`` of one restart (a uint32).

    ``fold=None`` is a fit on all training runs (the final refit, or the single split);
    ``fold=f`` a fit without fold f's runs. The seed depends on nothing else, so it does not
    change with ``max_states``, ``restarts`` or ``folds``.
    """
    key = (1, int(k), int(restart)) if fold is None else (3, int(fold), int(k), int(restart))
    ss = np.random.SeedSequence(int(random_state), spawn_key=key)
    return int(ss.generate_state(1, dtype=np.uint32)[0])


def split_seed(random_state: int) -> int:
    """The seed of the train/held-out split (and of the fold assignment) of runs."""
    ss = np.random.SeedSequence(int(random_state), spawn_key=(0,))
    return int(ss.generate_state(1, dtype=np.uint32)[0])


def split_runs(n_runs: int, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split run positions ``0..n_runs-1`` into sorted train and held-out positions.

    The held-out set has ``ceil(test_fraction * n_runs)`` runs (as sklearn's
    ``train_test_split``); at least 2 training and 1 held-out run are required.
    """
    if not 0 < test_fraction < 1:
        raise UserError(f"test_fraction must be between 0 and 1, got {test_fraction}")
    n_test = int(math.ceil(test_fraction * n_runs))
    if n_test < 1 or n_runs - n_test < 2:
        raise UserError(
            f"too few runs for the held-out split: {n_runs} usable run(s), need at least "
            f"{_min_runs(test_fraction)} for --test-fraction {test_fraction}; collect more seeds"
        )
    perm = np.random.default_rng(seed).permutation(n_runs)
    return np.sort(perm[n_test:]), np.sort(perm[:n_test])


def fold_runs(n_runs: int, folds: int, seed: int) -> list[np.ndarray]:
    """Deal run positions into ``min(folds, n_runs)`` near-equal groups (sorted within each).

    Raises :class:`UserError` below 3 runs (each fit needs at least 2 training runs).
    """
    if n_runs < 3:
        raise UserError(f"too few runs for cross-validation: {n_runs} usable run(s), need at least 3; "
                        "collect more seeds")
    f = min(int(folds), n_runs)
    perm = np.random.default_rng(seed).permutation(n_runs)
    return [np.sort(perm[i::f]) for i in range(f)]


def _min_runs(test_fraction: float) -> int:
    n = 1
    while True:
        n_test = int(math.ceil(test_fraction * n))
        if n_test >= 1 and n - n_test >= 2:
            return n
        n += 1


def n_parameters(k: int, d: int, covariance_type: str, family: str = DEFAULT_FAMILY) -> int:
    """Free parameters of a K-state HMM of ``family`` (the Gaussian HMM: hmmlearn 0.3's count)."""
    return get_family(family).n_parameters(k, d, covariance_type)


def criterion_value(criterion: str, loglik: float, p: int, n: int) -> float:
    """Lower-is-better criterion of a held-out log-likelihood (hmmlearn 0.3's AIC/BIC)."""
    if criterion == "bic":
        return -2 * loglik + p * math.log(n)
    if criterion == "aic":
        return -2 * loglik + 2 * p
    return -2 * loglik


# --------------------------------------------------------------------------- plain-data models


def model_params(model, family: str = DEFAULT_FAMILY) -> dict:
    """A fitted model of ``family`` as plain arrays; ``covars`` always full ``(K, d, d)``."""
    return get_family(family).to_params(model)


def build_hmm(params: dict, covariance_type: str, implementation: str = FALLBACK_IMPLEMENTATION,
              family: str = DEFAULT_FAMILY):
    """A ready-to-use HMM from :func:`model_params` output (or model.json fields).

    Saved parameters are checked and repaired here rather than trusted to hmmlearn's validator:
    probabilities are renormalised and covariances made symmetric positive definite, so a model
    that was fitted always rebuilds. Anything beyond repair (wrong shapes, non-finite values)
    raises :class:`UserError` (:meth:`latent.family.StateFamily.check`).
    """
    return get_family(family).build(params, covariance_type, implementation)


def permute_params(params: dict, order, family: str = DEFAULT_FAMILY) -> dict:
    """Reorder states: new state i is old state ``order[i]``."""
    return get_family(family).permute(params, order)


# --------------------------------------------------------------------------- one restart

def stack_runs(X, lengths, idx) -> tuple[np.ndarray, np.ndarray]:
    """``(X, lengths)`` of the runs at positions ``idx`` (in that order) of stacked runs."""
    off = np.concatenate([[0], np.cumsum(lengths)])
    parts = [X[off[i] : off[i + 1]] for i in idx]
    return np.concatenate(parts), np.asarray(lengths)[idx]


def restart_job(data: dict, job: dict) -> dict:
    """One restart of one fit (a :func:`latent.parallel.pmap` job): ``data`` holds ``X``,
    ``lengths`` and ``standardize``; ``job`` the runs to fit and score and the settings."""
    X, lengths = data["X"], data["lengths"]
    train, test = job["train"], job["test"]
    X_tr, len_tr = stack_runs(X, lengths, train)
    if data.get("standardize"):
        # re-standardise with the training runs only, so held-out runs never inform the scale
        mu, sd = X_tr.mean(axis=0), X_tr.std(axis=0)
        sd = np.where(sd > 0, sd, 1.0)
        X = (X - mu) / sd
        X_tr = (X_tr - mu) / sd
    X_te, len_te = stack_runs(X, lengths, test) if len(test) else (None, None)
    segments = [data["segments"][i] for i in train] if data.get("segments") is not None else None
    rec = fit_restart(X_tr, len_tr, X_te, len_te, job["k"], job["seed"], job["covariance_type"],
                      job["n_iter"], job["tol"], restart=job["restart"], init=data.get("init", "segments"),
                      segments=segments, family=job.get("family", DEFAULT_FAMILY))
    rec["fold"] = job["fold"]
    return rec


def fit_restart(X_tr, len_tr, X_te, len_te, k, seed, covariance_type, n_iter, tol, restart=0,
                init="segments", segments=None, family=DEFAULT_FAMILY) -> dict:
    """Fit one restart of a ``family`` HMM and score it on the held-out runs; never raises for a
    degenerate fit.

    ``init="segments"`` starts EM from a segmentation of the training runs
    (:mod:`latent.segments`; ``segments`` are the training runs' segments, computed if None);
    ``init="kmeans"`` as hmmlearn 0.3.0 does (KMeans of checkpoints, ``n_init=1``, Dirichlet
    start and transition rows), the reference's start; for families other than the Gaussian HMM
    the KMeans labels are the hard labelling EM starts from.

    Returns a dict with ``k, restart, random_state, ok, reason, converged, n_iter,
    train_loglik, loglik (held-out, total), loglik_runs (per held-out run), aic, bic, n_params,
    params``. Without held-out runs (``X_te`` None) the held-out entries are None.
    """
    from sklearn.cluster import KMeans

    from .segments import labels_from_segments, run_segments

    fam = get_family(family)
    d = X_tr.shape[1]
    p = fam.n_parameters(k, d, covariance_type)
    rec = {"k": k, "restart": restart, "random_state": seed, "ok": False, "reason": None,
           "converged": False, "n_iter": 0, "train_loglik": None, "loglik": None, "loglik_runs": None,
           "aic": None, "bic": None, "n_params": p, "params": None}
    ll = None
    for implementation in (IMPLEMENTATION, FALLBACK_IMPLEMENTATION):
        model = fam.new_model(k, covariance_type, n_iter=n_iter, tol=tol, random_state=seed,
                              implementation=implementation)
        reason = None
        try:
            with np.errstate(all="ignore"):
                if init == "kmeans" and fam.name == "gaussian":
                    # as hmmlearn 0.3.0 did (KMeans, n_init=1, the restart's seed, Dirichlet start
                    # and transition rows); hmmlearn 0.3.3 would run 10 KMeans inits
                    model.init_params = "stc"
                    model.means_ = KMeans(n_clusters=k, n_init=1, random_state=seed).fit(X_tr).cluster_centers_
                else:
                    if init == "kmeans":
                        labels = KMeans(n_clusters=k, n_init=1, random_state=seed).fit(X_tr).labels_
                    else:
                        if segments is None:
                            segments = run_segments(X_tr, len_tr)
                        labels = labels_from_segments(X_tr, len_tr, segments, k, seed, (0.5, 1.0)[restart % 2])
                    fam.set_params(model, fam.start_params(X_tr, len_tr, labels, k), covariance_type)
                model.fit(X_tr, len_tr)
                params = fam.to_params(model)
                rec["converged"] = bool(model.monitor_.converged)
                rec["n_iter"] = int(model.monitor_.iter)
                reason = _degeneracy(params)
                if reason is None:
                    repaired = repair_covars(params["covars"])
                    if not np.array_equal(repaired, params["covars"]):
                        params["covars"] = repaired
                        model = fam.build(params, covariance_type, implementation)
                    train_ll, post = model.score_samples(X_tr, len_tr)
                    rec["train_loglik"] = float(train_ll)
                    thin = thin_states(post.sum(axis=0), covariance_type, d)
                    if thin:
                        reason = (f"state(s) {thin} have fewer expected training rows than their "
                                  f"covariance needs ({min_state_rows(covariance_type, d)})")
                    elif not np.isfinite(train_ll):
                        reason = f"training log-likelihood is {train_ll}"
                if reason is None and X_te is not None:
                    off = np.concatenate([[0], np.cumsum(len_te)])
                    runs = [float(model.score(X_te[off[i] : off[i + 1]])) for i in range(len(len_te))]
                    ll = float(np.sum(runs))
                    rec["loglik_runs"] = runs
                    if not np.isfinite(ll):
                        reason = f"held-out log-likelihood is {ll}"
        except Exception as exc:  # hmmlearn/scipy raise ValueError/LinAlgError on degenerate fits
            reason = failure_reason(exc)
            if "underflow" in str(exc) and implementation != FALLBACK_IMPLEMENTATION:
                continue
        break
    rec["implementation"] = implementation
    if reason is not None:
        rec.update(reason=reason, train_loglik=None, loglik_runs=None)
        return rec
    rec.update(ok=True, params=params)
    if ll is not None:
        n = X_te.shape[0]
        rec.update(loglik=ll, aic=criterion_value("aic", ll, p, n), bic=criterion_value("bic", ll, p, n))
    return rec


#: library messages on degenerate fits, and what they mean in this tool's words
_FAILURE_WORDS = (
    ("must be symmetric, positive-definite", "a state's covariance collapsed (no longer positive definite)"),
    ("underflow", "the state probabilities underflowed"),
    ("singular matrix", "a state's covariance could not be inverted"),
    ("not positive definite", "a state's covariance collapsed (no longer positive definite)"),
    ("nan", "the fit produced non-finite parameters"),
)


def failure_reason(exc: BaseException) -> str:
    """Why an EM fit failed, in this tool's words (a library's own message never reaches the user:
    it names internals such as hmmlearn's ``'covars'``)."""
    text = str(exc).lower()
    for needle, words in _FAILURE_WORDS:
        if needle in text:
            return words
    return f"the EM fit failed ({type(exc).__name__})"


def min_state_rows(covariance_type: str, d: int) -> float:
    """Expected rows a state needs for its own covariance to be estimable (d + 1 for full)."""
    return {"full": d + 1, "diag": 2, "spherical": 2, "tied": 1}[covariance_type]


def thin_states(weight: np.ndarray, covariance_type: str, d: int) -> list[int]:
    """States whose expected number of rows (posterior mass ``weight``) is below
    :func:`min_state_rows`: their covariance collapses onto the few rows they hold."""
    need = min_state_rows(covariance_type, d)
    return np.flatnonzero(~(np.asarray(weight) >= need)).tolist()


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
    """Choose the number of states of an HMM on held-out runs, then canonicalise.

    Parameters
    ----------
    family : {"gaussian", "ar"}, default "gaussian"
        The model family (:mod:`latent.family`): a state is a place (the Gaussian HMM) or a
        linear regime of change (:mod:`latent.autoregressive`).
    max_states : int, default 8
        Fit K = 1..max_states.
    restarts : int, default 5
        Random restarts per K (per fold in ``"cv"``).
    n_iter : int, default 32
        EM iterations per restart (the paper's runs).
    covariance_type : {"full", "diag", "spherical", "tied"}, default "full"
    criterion : {"loglik", "bic", "aic"}, default "loglik"
        Lower-is-better held-out criterion (see the module docstring): −2·logL, or with the BIC or
        AIC penalty added.
    selection : {"cv", "split", "reference"}, default "cv"
        How held-out scores choose K (see the module docstring).
    folds : int, default 5
        Folds of runs for ``"cv"``.
    one_se : bool, default True
        ``"cv"``: take the smallest K within one standard error of the best criterion.
    test_fraction : float, default 0.2
        Fraction of runs held out in ``"split"`` and ``"reference"``.
    standardize : bool, default False
        Re-standardise every fit's data with its own training runs' mean and std (for globally
        scaled features, so held-out runs never inform the scaling).
    init : {"segments", "kmeans"}, default "segments"
        Where EM starts: from a segmentation of the runs (:mod:`latent.segments`), or from
        KMeans of checkpoints as hmmlearn 0.3.0 (the reference).
    tol : float, default 1e-2
        EM convergence tolerance (hmmlearn's default).
    random_state : int, default 0
        Seeds the split or folds and every restart.
    n_jobs : int or None
        Worker processes; None uses ``os.cpu_count()``; 1 runs in this process.
    progress : bool, default False
        Show a progress bar of finished restarts on stderr.

    Attributes
    ----------
    n_states_ : int
        K chosen.
    model_ : hmmlearn.hmm.GaussianHMM
        The chosen model, states in canonical order.
    params_ : dict
        ``startprob, transmat, means, covars`` (full) of ``model_``.
    selection_ : list of dict
        One row per K (see docs/artifacts.md ``selection``).
    restarts_ : list of dict
        Every restart: ``fold, k, restart, random_state, ok, reason, converged, n_iter,
        train_loglik, loglik, aic, bic`` (held-out scores).
    final_restarts_ : list of dict
        ``"cv"``: the restarts of the final refit on all runs (else empty).
    folds_ : list of list of int
        Held-out run positions of each fold (``"split"``/``"reference"``: one group).
    fold_choice_ : dict
        ``{K: number of folds whose own held-out runs choose K}`` (``"cv"``; else empty).
    fragile_ : bool
        The chosen K's criterion is within the restart spread of the runner-up K's.
    runner_up_ : int or None
        The K with the next best criterion.
    train_runs_, test_runs_ : ndarray of int
        ``"split"``/``"reference"``: the run positions fitted and scored; ``"cv"``: all runs and
        none (every run is held out once, in its fold).
    state_order_ : list of int
        ``state_order_[canonical] = raw hmmlearn state``.
    first_visit_ : ndarray, shape (K,)
        Mean first-visit checkpoint index of each canonical state (inf if never visited).
    """

    def __init__(self, max_states=8, restarts=5, n_iter=32, covariance_type="full", criterion="loglik",
                 selection="cv", folds=5, one_se=True, test_fraction=0.2, standardize=False, init="segments",
                 tol=1e-2, random_state=0, n_jobs=None, progress=False, family=DEFAULT_FAMILY):
        self.family = family
        self.max_states = max_states
        self.restarts = restarts
        self.n_iter = n_iter
        self.covariance_type = covariance_type
        self.criterion = criterion
        self.selection = selection
        self.folds = folds
        self.one_se = one_se
        self.test_fraction = test_fraction
        self.standardize = standardize
        self.init = init
        self.tol = tol
        self.random_state = random_state
        self.n_jobs = n_jobs
        self.progress = progress

    def _validate(self) -> None:
        def positive_int(value, flag, least=1):
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < least:
                raise UserError(f"{flag} must be an integer of at least {least}, got {value!r}")

        positive_int(self.max_states, "max_states")
        positive_int(self.restarts, "restarts")
        positive_int(self.n_iter, "n_iter")
        positive_int(self.folds, "folds", 2)
        if self.family not in FAMILIES:
            raise UserError(f"unknown state family {self.family!r}; choose one of {', '.join(FAMILIES)}")
        if self.covariance_type not in COVARIANCES:
            raise UserError(f"unknown covariance {self.covariance_type!r}; choose one of {', '.join(COVARIANCES)}")
        if self.criterion not in CRITERIA:
            raise UserError(f"unknown criterion {self.criterion!r}; choose one of {', '.join(CRITERIA)}")
        if self.init not in INITS:
            raise UserError(f"unknown init {self.init!r}; choose one of {', '.join(INITS)}")
        if self.selection not in SELECTIONS:
            raise UserError(f"unknown selection {self.selection!r}; choose one of {', '.join(SELECTIONS)}")
        if self.n_jobs is not None and self.n_jobs < 1:
            raise UserError(f"n_jobs must be at least 1, got {self.n_jobs}")
        if not isinstance(self.random_state, (int, np.integer)) or self.random_state < 0:
            raise UserError(f"random_state must be a non-negative integer, got {self.random_state}")

    # -- fitting ------------------------------------------------------------------------------

    def fit(self, X, lengths):
        """Run model selection on runs stacked in ``X`` (shape ``(n_samples, d)``).

        Returns
        -------
        self
        """
        self._validate()
        X = np.ascontiguousarray(X, dtype=float)
        lengths = np.asarray(lengths, dtype=int)
        n_runs = len(lengths)
        kmax = int(self.max_states)
        ks = range(kmax, 0, -1)  # largest K first: the longest jobs start first
        base = {"covariance_type": self.covariance_type, "n_iter": int(self.n_iter), "tol": float(self.tol),
                "family": self.family}
        if self.selection == "cv":
            groups = fold_runs(n_runs, self.folds, split_seed(self.random_state))
            everyone = np.arange(n_runs)
            jobs = [dict(base, k=k, restart=r, fold=f, seed=restart_seed(self.random_state, k, r, f),
                         train=np.setdiff1d(everyone, g), test=g)
                    for k in ks for f, g in enumerate(groups) for r in range(int(self.restarts))]
            self.train_runs_, self.test_runs_ = everyone, np.array([], dtype=int)
        else:
            train, test = split_runs(n_runs, self.test_fraction, split_seed(self.random_state))
            groups = [test]
            jobs = [dict(base, k=k, restart=r, fold=None, seed=restart_seed(self.random_state, k, r),
                         train=train, test=test)
                    for k in ks for r in range(int(self.restarts))]
            self.train_runs_, self.test_runs_ = train, test
        self.folds_ = [g.tolist() for g in groups]
        self.fold_choice_ = {}
        segments = None
        if self.init == "segments":
            from .segments import run_segments

            segments = run_segments(X, lengths)
        data = {"X": X, "lengths": lengths, "standardize": bool(self.standardize), "init": self.init,
                "segments": segments}
        results = self._run_jobs(jobs, data, "HMM restarts")
        results.sort(key=lambda rec: (rec["k"], -1 if rec["fold"] is None else rec["fold"], rec["restart"]))
        _warn_skipped(results)
        n_rows = int(sum(lengths[g].sum() for g in groups))
        if self.selection == "cv":
            self.selection_, chosen_params = self._table_cv(results, groups, n_rows)
        else:
            self.selection_, chosen_params = self._table_split(results, n_rows)
        self.restarts_ = [{key: v for key, v in rec.items() if key not in ("params", "loglik_runs")}
                          for rec in results]
        ok_rows = [row for row in self.selection_ if row["score"] is not None]
        if not ok_rows:
            raise UserError(
                "no HMM restart succeeded for any K; try --covariance diag, fewer --features, or more runs"
            )
        self.n_states_ = self._choose(ok_rows)
        self.final_restarts_ = []
        if self.selection == "cv":
            raw = self._refit_all(X, lengths, base, segments)  # may step down from a K it cannot refit
        else:
            raw = chosen_params[self.n_states_]
        self._mark_fragile()
        self._canonicalise(raw, X, lengths)
        return self

    def _choose(self, rows: list[dict]) -> int:
        best = min(rows, key=lambda row: (row["score"], row["k"]))
        if self.selection == "cv" and self.one_se:
            for row in sorted(rows, key=lambda r: r["k"]):
                if row["k"] >= best["k"]:
                    break
                if row["score"] - best["score"] <= (row["se"] or 0.0):
                    return int(row["k"])
        return int(best["k"])

    def _mark_fragile(self) -> None:
        rows = {r["k"]: r for r in self.selection_ if r["score"] is not None}
        chosen = rows[self.n_states_]
        others = [r for k, r in rows.items() if k != self.n_states_]
        self.runner_up_ = None
        self.fragile_ = False
        if not others:
            return
        runner = min(others, key=lambda r: (r["score"], r["k"]))
        self.runner_up_ = int(runner["k"])
        gap = abs(runner["score"] - chosen["score"])
        spread = max(chosen["spread"] or 0.0, runner["spread"] or 0.0)
        self.fragile_ = bool(gap <= spread)
        chosen["gap_to_runner_up"] = float(gap)

    def _table_split(self, results: list[dict], n_rows: int):
        crit = self.criterion
        by_k: dict[int, list[dict]] = {}
        for rec in results:
            by_k.setdefault(rec["k"], []).append(rec)
        table, best = [], {}
        for k in sorted(by_k):
            recs = by_k[k]
            ok = [r for r in recs if r["ok"]]
            row = _row(k, recs)
            if ok:
                ll = np.array([r["loglik"] for r in ok])
                top = max(ok, key=lambda r: (r["loglik"], -r["restart"]))
                best[k] = top["params"]
                values = np.array([criterion_value(crit, r["loglik"], r["n_params"], n_rows) for r in ok])
                row.update(
                    loglik=float(top["loglik"]), loglik_mean=float(ll.mean()), loglik_std=float(ll.std()),
                    aic=float(np.mean([r["aic"] for r in ok])), bic=float(np.mean([r["bic"] for r in ok])),
                    best_random_state=top["random_state"], spread=float(values.std()),
                    score=float(values.mean()) if self.selection == "reference"
                    else criterion_value(crit, top["loglik"], top["n_params"], n_rows),
                )
                if self.selection == "split":  # the best restart's own criterion values
                    row.update(aic=float(top["aic"]), bic=float(top["bic"]))
            else:
                log.warning("no restart of K=%d succeeded (%d failed)", k, len(recs))
            table.append(row)
        return table, best

    def _table_cv(self, results: list[dict], groups, n_rows: int):
        crit = self.criterion
        n_runs = sum(len(g) for g in groups)
        by_k: dict[int, list[dict]] = {}
        for rec in results:
            by_k.setdefault(rec["k"], []).append(rec)
        table, per_run = [], {}
        for k in sorted(by_k):
            recs = by_k[k]
            row = _row(k, recs)
            p = recs[0]["n_params"]
            runs = np.full(n_runs, np.nan)
            spread_var, means, failed_folds = 0.0, 0.0, []
            for f, g in enumerate(groups):
                ok = [r for r in recs if r["fold"] == f and r["ok"]]
                if not ok:
                    failed_folds.append(f)
                    continue
                top = max(ok, key=lambda r: (r["train_loglik"], -r["restart"]))  # chosen on training data
                runs[g] = top["loglik_runs"]
                ll = np.array([r["loglik"] for r in ok])
                means += ll.mean()
                spread_var += 4 * ll.var()  # the criterion is −2·ll: its variance is 4·var(ll)
            if failed_folds:
                log.warning("no restart of K=%d succeeded in fold(s) %s; K=%d is not scored", k,
                            ", ".join(map(str, failed_folds)), k)
                table.append(row)
                continue
            ll = float(runs.sum())
            per_run[k] = runs
            row.update(
                loglik=ll, loglik_mean=float(means), loglik_std=float(np.sqrt(spread_var / 4)),
                aic=criterion_value("aic", ll, p, n_rows), bic=criterion_value("bic", ll, p, n_rows),
                score=criterion_value(crit, ll, p, n_rows), spread=float(np.sqrt(spread_var)),
            )
            table.append(row)
        # standard error of each K's criterion difference to the best K, paired over runs
        scored = [r for r in table if r["score"] is not None]
        if scored:
            best = min(scored, key=lambda r: (r["score"], r["k"]))
            for row in scored:
                diff = -2 * (per_run[row["k"]] - per_run[best["k"]])
                row["se"] = float(np.sqrt(n_runs) * diff.std(ddof=1)) if n_runs > 1 else 0.0
            # which K each fold's own held-out runs would choose (the same rule, on its runs)
            choice: dict[int, int] = {}
            for f, g in enumerate(groups):
                rows_f = []
                for row in scored:
                    llf = per_run[row["k"]][g]
                    pen = criterion_value(crit, 0.0, row["n_params"], n_rows) * len(g) / n_runs
                    rows_f.append({"k": row["k"], "score": float(-2 * llf.sum() + pen),
                                   "runs": -2 * llf + pen / len(g)})
                bf = min(rows_f, key=lambda r: (r["score"], r["k"]))
                kf = bf["k"]
                if self.one_se and len(g) > 1:
                    for r in sorted(rows_f, key=lambda r: r["k"]):
                        if r["k"] >= bf["k"]:
                            break
                        se = np.sqrt(len(g)) * (r["runs"] - bf["runs"]).std(ddof=1)
                        if r["score"] - bf["score"] <= se:
                            kf = r["k"]
                            break
                choice[kf] = choice.get(kf, 0) + 1
            self.fold_choice_ = dict(sorted(choice.items()))
        return table, {}

    def _refit_all(self, X, lengths, base, segments) -> dict:
        """Refit the chosen K on all runs. When every restart of it is degenerate there (a state
        that held enough rows in each fold's training runs collapses on all of them), the next
        smaller scored K is refitted instead, with a warning; only when none can be refitted is it
        an error."""
        everyone = np.arange(len(lengths))
        data = {"X": X, "lengths": lengths, "standardize": False, "init": self.init, "segments": segments}
        chosen = self.n_states_
        scored = sorted((r["k"] for r in self.selection_ if r["score"] is not None and r["k"] <= chosen), reverse=True)
        failures = []
        for k in scored:
            jobs = [dict(base, k=k, restart=r, fold=None, seed=restart_seed(self.random_state, k, r),
                         train=everyone, test=np.array([], dtype=int)) for r in range(int(self.restarts))]
            results = sorted(self._run_jobs(jobs, data, f"refit K={k}"), key=lambda r: r["restart"])
            self.final_restarts_ = [{key: v for key, v in rec.items() if key not in ("params", "loglik_runs")}
                                    for rec in results]
            ok = [r for r in results if r["ok"]]
            if ok:
                if k != chosen:
                    log.warning("every refit of the chosen K = %d on all runs was degenerate (%s); K = %d, the next "
                                "smaller one scored, is used instead", chosen, failures[0], k)
                    self.n_states_ = k
                return max(ok, key=lambda r: (r["train_loglik"], -r["restart"]))["params"]
            failures.append(results[0]["reason"])
        raise UserError(f"every refit of K = {', '.join(map(str, scored))} on all runs failed (e.g. {failures[0]}); "
                        "try --covariance diag or fewer --features")

    def _canonicalise(self, raw: dict, X, lengths) -> None:
        """Relabel states by mean first-visit checkpoint over all runs' Viterbi paths."""
        off = np.concatenate([[0], np.cumsum(lengths)])
        model = build_hmm(raw, self.covariance_type, family=self.family)
        path = model.predict(X, lengths)
        K = self.n_states_
        first = np.full(K, np.inf)
        for k in range(K):
            firsts = [np.flatnonzero(path[off[i] : off[i + 1]] == k) for i in range(len(lengths))]
            firsts = [v[0] for v in firsts if v.size]
            if firsts:
                first[k] = float(np.mean(firsts))
        order = sorted(range(K), key=lambda k: (first[k], k))
        self.state_order_ = [int(o) for o in order]
        self.first_visit_ = first[order]
        self.params_ = permute_params(raw, order, self.family)
        self.model_ = build_hmm(self.params_, self.covariance_type, family=self.family)

    def _run_jobs(self, jobs, data, desc) -> list[dict]:
        from .parallel import pmap

        return pmap(restart_job, jobs, data, self.n_jobs, self.progress, desc)

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


def _warn_skipped(results: list[dict]) -> None:
    """One warning per K for the restarts skipped as degenerate (each restart is in model.json)."""
    by_k: dict[int, list[dict]] = {}
    for rec in results:
        by_k.setdefault(rec["k"], []).append(rec)
    for k, recs in sorted(by_k.items()):
        bad = [r for r in recs if not r["ok"]]
        if not bad:
            continue
        first = bad[0]
        where = "" if first["fold"] is None else f" fold {first['fold']}"
        log.warning("skipped %d of %d HMM restarts of K=%d as degenerate; e.g.%s random_state=%d: %s "
                    "(every restart is listed in model.json)", len(bad), len(recs), k, where,
                    first["random_state"], first["reason"])


def _row(k: int, recs: list[dict]) -> dict:
    ok = [r for r in recs if r["ok"]]
    return {
        "k": k,
        "n_params": recs[0]["n_params"],
        "n_converged": sum(1 for r in ok if r["converged"]),
        "n_failed": len(recs) - len(ok),
        "random_states": [r["random_state"] for r in recs],
        "failures": [f"random_state={r['random_state']}: {r['reason']}" for r in recs if not r["ok"]],
        "loglik": None, "loglik_mean": None, "loglik_std": None, "aic": None, "bic": None,
        "score": None, "spread": None, "se": None, "best_random_state": None,
    }
