"""Convergence time, detour states, the bag-of-states regression and trajectory dissimilarity.

Notation: N runs, K states; ``visited`` is an (N, K) boolean matrix (run i's Viterbi path
enters state k); ``occupancy`` an (N, K) matrix of the fraction of run i's checkpoints in each
state (rows sum to 1); ``y`` each run's convergence step, *restricted* at τ, the last step every
run reaches: y_i = min(convergence step, τ), so a run that never converges counts as τ
(reference.md E1/E2; the restricted mean is the honest mean of a time that is censored at τ).

**Detours** (:func:`detour_tests`). A state is a detour when visiting it delays convergence.
Only states a run enters *before* it converges count (:func:`entry_steps`): a state reached after
convergence (a place where slow runs end up, say) cannot have delayed anything. For every
*optional* state (some runs enter it before converging, some do not) the delay is

    Δ_k = mean(y | runs visiting k) − mean(y | runs skipping k),

tested one-sided (H1: Δ_k > 0) with the Welch t statistic by permuting convergence times over
runs (exact under "visiting k does not change convergence"), adjusted over the states tested by
the Westfall–Young step-down maxT procedure, with a Welch t interval. A state visited or skipped
by fewer than ``min_runs`` runs is reported as not estimable, never as significant, and so is a
state that few skippers are still unconverged to see when the visitors enter it: runs that reach
a state only because they have not converged yet are slow for another reason (immortal-time
bias). A state most of its visitors converge in is where runs converge, not a detour taken on the
way (status ``"converging"``). A state visited by every run is obligatory, never a detour. This asks the paper's question
(do runs that take this state converge later?) without the paper's rule's flaw: in the occupancy
regression every pre-convergence state gets a positive coefficient (its checkpoints *are* time
before convergence), so "optional and positive coefficient" flags both branches of a symmetric
fork.

**Regression** (:class:`OccupancyRegression`, the paper's Table 1). OLS of y on the occupancy
fractions, without an intercept on the visited states (the same column space as an intercept
plus K'−1 fractions): ``beta[k]`` is the predicted y of a run that spends all its time in k,
``intercept`` = Σ p̄_k β_k = ȳ (p̄: mean occupancy), ``coef[k]`` = β_k − intercept; R², and the
F-test with rank-aware degrees of freedom (rank − 1, N − rank). A coefficient is reported only
where it is estimable: its state is visited by at least ``min_runs`` runs and its contrast lies
in the row space of the design. When some occupancies are exact combinations of others (a phase
that lasts the same in every run; two states only ever visited together) the effects of those
states cannot be told apart from the rest: they are reported as collinear, and the reference
level is the occupancy-weighted mean over the states that remain comparable.
Percentile bootstrap intervals (runs resampled, seeded) for the estimable ones.
``coef_reference`` is what the reference notebook's scikit-learn ``LinearRegression`` would
return: the minimum-norm solution with an intercept on all K fractions.
"""

from __future__ import annotations

import logging

import numpy as np

from .errors import UserError

log = logging.getLogger("latent")

NONCONVERGED_RULES = ("restrict", "exclude")
DETOUR_RULES = ("delay", "paper")
MIN_RUNS = 5  # default: fewer visitors or skippers than this and a delay is not estimable


def convergence_step(steps: np.ndarray, values: np.ndarray, threshold: float, direction: str = "above"):
    """The first ``step`` where ``values > threshold`` (``"below"``: ``<``), or None."""
    values = np.asarray(values, dtype=float)
    if direction == "above":
        hit = values > threshold
    elif direction == "below":
        hit = values < threshold
    else:
        raise UserError(f"unknown convergence direction {direction!r}; use 'above' or 'below'")
    idx = np.flatnonzero(hit)
    return int(steps[idx[0]]) if idx.size else None


def restricted_times(conv, last_steps) -> tuple[np.ndarray, float]:
    """y_i = min(conv_i, τ) with τ = min(last_steps) (the follow-up every run has); None → τ."""
    tau = float(min(last_steps))
    y = np.array([tau if c is None else min(float(c), tau) for c in conv], dtype=float)
    return y, tau


def occupancy_fractions(path: np.ndarray, k: int) -> np.ndarray:
    """Fraction of checkpoints in each of ``k`` states."""
    return np.bincount(np.asarray(path), minlength=k)[:k] / len(path)


# --------------------------------------------------------------------------- detour tests


def entry_steps(run_paths, run_steps, y, k: int, converged=None) -> np.ndarray:
    """When each run first enters each state before it converges: shape (N, K), NaN where it does not.

    ``run_paths``/``run_steps``: each run's states and steps; ``y``: its restricted convergence
    step; ``converged``: which runs converged (default: all). A state counts for a converged run
    when the run enters it before ``y_i``: a state reached only after convergence cannot have
    delayed it. For a run that never converges every state entered up to τ counts. Whether a
    run later *leaves* the state is not asked: that would select on the future (runs that
    converge early never get to leave), the immortal-time bias this function exists to avoid.
    """
    y = np.asarray(y, dtype=float)
    converged = np.ones(len(y), dtype=bool) if converged is None else np.asarray(converged, dtype=bool)
    out = np.full((len(run_paths), k), np.nan)
    for i, (path, steps) in enumerate(zip(run_paths, run_steps)):
        path, steps = np.asarray(path), np.asarray(steps, dtype=float)
        before = steps < y[i] if converged[i] else steps <= y[i]
        for s in np.unique(path[before]):
            out[i, int(s)] = steps[before][np.argmax(path[before] == s)]
    return out


def welch_interval(a: np.ndarray, b: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Welch t interval for mean(a) − mean(b)."""
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    se = np.sqrt(va + vb)
    diff = a.mean() - b.mean()
    if se == 0:
        return float(diff), float(diff)
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    from scipy import stats  # here, not at import: scipy.stats costs ~1 s of every command's start

    q = stats.t.ppf(0.5 + level / 2, df)
    return float(diff - q * se), float(diff + q * se)


def welch_t(Y: np.ndarray, V: np.ndarray) -> np.ndarray:
    """Welch t statistics of visitors against skippers, for many outcome vectors at once.

    ``Y`` (B, n): outcome vectors (one per permutation); ``V`` (n, J): 0/1 visit indicators of J
    states. Returns (B, J). A state whose groups both have zero spread gets ±inf (or 0).
    """
    n = V.shape[0]
    nv = V.sum(axis=0)
    ns = n - nv
    sum_v = Y @ V
    sq_v = (Y * Y) @ V
    tot, tot_sq = Y.sum(axis=1, keepdims=True), (Y * Y).sum(axis=1, keepdims=True)
    mv, ms = sum_v / nv, (tot - sum_v) / ns
    var_v = np.maximum(sq_v - nv * mv**2, 0) / (nv - 1)
    var_s = np.maximum((tot_sq - sq_v) - ns * ms**2, 0) / (ns - 1)
    se = np.sqrt(var_v / nv + var_s / ns)
    diff = mv - ms
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(se > 0, diff / np.where(se > 0, se, 1), np.sign(diff) * np.inf)
    return np.nan_to_num(t, nan=0.0, posinf=np.inf, neginf=-np.inf)


def _less_a_hair(t: np.ndarray) -> np.ndarray:
    """``t`` lowered by a relative 1e-9, so permutations that tie it up to rounding count as at
    least as extreme; an infinite ``t`` (groups without spread) stays itself, so only infinite
    permuted statistics tie it (``inf - inf`` would be NaN and count nothing)."""
    return t - 1e-9 * np.abs(np.where(np.isfinite(t), t, 0.0))


def converging_states(run_paths, run_steps, y, converged) -> np.ndarray:
    """The state each run is in at its convergence step (its first checkpoint at or after ``y_i``);
    −1 for runs that never converge."""
    out = np.full(len(run_paths), -1)
    for i, (path, steps) in enumerate(zip(run_paths, run_steps)):
        at = np.flatnonzero(np.asarray(steps, dtype=float) >= y[i])
        if converged[i] and at.size:
            out[i] = int(np.asarray(path)[at[0]])
    return out


def detour_tests(entry, y, min_runs: int = MIN_RUNS, alpha: float = 0.05, n_perm: int = 10_000,
                 random_state: int = 0, visited_any=None, converging_in=None) -> list[dict]:
    """Test every state for a convergence delay among the runs that enter it before converging.

    Each tested state's statistic is the Welch t of visitors against skippers. Its p-value is
    one-sided (a delay) by permutation of ``y`` over runs, and its adjusted p-value is the
    Westfall–Young step-down maxT over the tested states: it holds the family-wise error at
    ``alpha`` and, unlike Holm, gains from the dependence between tests (the two branches of a
    fork are one comparison seen from both sides).

    A run *visits* a state when it enters it before converging (:func:`entry_steps`). A state is
    tested only when, besides ``min_runs`` visitors and skippers, at least ``min_runs`` skippers
    are still unconverged at the visitors' median entry (``runs_at_risk``): a state that runs
    reach only once the others have converged (a late stretch of a long plateau that only slow
    runs live to see) would otherwise look like a delay although entering it changes nothing
    (immortal-time bias).

    Parameters
    ----------
    entry : float array (N, K)
        Entry steps before convergence (:func:`entry_steps`; NaN: not entered). A boolean
        (N, K) array of visits is accepted too (every entry then counts as step 0).
    y : array (N,)
        Restricted convergence steps (:func:`restricted_times`).
    min_runs : int
        Fewest visitors and skippers for a state to be tested.
    alpha : float
        Family-wise error rate over the states tested.
    n_perm : int
        Permutations of ``y`` (one shared set for every state; seeded).
    random_state : int
    visited_any : bool array (N, K), optional
        Whether each run visits each state at all; a state visited only after convergence gets
        status ``"after_convergence"`` instead of ``"unvisited"``.
    converging_in : int array (N,), optional
        The state each run converges in (:func:`converging_states`). A state that at least half of
        its visitors converge in gets status ``"converging"``: it is where runs converge, not a
        detour they take and leave on the way (whether a run enters it just before or just after
        the threshold is crossed says how the threshold falls, not that the state slowed it).

    Returns
    -------
    list of dict, one per state
        ``state, runs_visiting, runs_skipping, runs_at_risk, runs_converging_in, status``
        (``"obligatory"``, ``"unvisited"``, ``"after_convergence"``, ``"converging"``,
        ``"not_estimable"``, ``"tested"``), ``entry_median``,
        ``delay`` (Δ_k, None if a group is empty),
        ``ci_low, ci_high`` (Welch 95 %), ``t`` (Welch), ``p_value`` (one-sided permutation),
        ``p_adjusted`` (step-down maxT), ``detour`` (tested, Δ_k > 0 and ``p_adjusted < alpha``).
    """
    entry = np.asarray(entry)
    entry = np.where(entry, 0.0, np.nan) if entry.dtype == bool else entry.astype(float)
    visited = np.isfinite(entry)
    y = np.asarray(y, dtype=float)
    n, K = visited.shape
    least = max(int(min_runs), 2)
    rows, tested = [], []
    for k in range(K):
        nv = int(visited[:, k].sum())
        n_in = None if converging_in is None else int((np.asarray(converging_in)[visited[:, k]] == k).sum())
        row = {"state": k, "runs_visiting": nv, "runs_skipping": n - nv, "runs_at_risk": None,
               "runs_converging_in": n_in, "entry_median": None,
               "delay": None, "ci_low": None, "ci_high": None, "t": None, "p_value": None, "p_adjusted": None,
               "detour": False, "reason": None}
        if nv == n:
            row["status"] = "obligatory"
        elif nv == 0:
            row["status"] = ("after_convergence" if visited_any is not None and np.asarray(visited_any)[:, k].any()
                             else "unvisited")
        else:
            row["delay"] = float(y[visited[:, k]].mean() - y[~visited[:, k]].mean())
            row["entry_median"] = float(np.median(entry[visited[:, k], k]))
            row["runs_at_risk"] = int((y[~visited[:, k]] > row["entry_median"]).sum())
            if n_in is not None and n_in * 2 >= nv:
                row["status"] = "converging"
                row["reason"] = f"{n_in} of its {nv} visitors converge in it: it is where runs converge"
            elif min(nv, n - nv) < least:
                row["status"] = "not_estimable"
                row["reason"] = f"{min(nv, n - nv)} run(s) {'enter' if nv < n - nv else 'skip'} it"
            elif row["runs_at_risk"] < least:
                row["status"] = "not_estimable"
                row["reason"] = (f"only {row['runs_at_risk']} of the {n - nv} runs that skip it are still unconverged "
                                 "when the others enter it: runs reach it because they are slow, not the reverse")
            else:
                row["status"] = "tested"
                row["ci_low"], row["ci_high"] = welch_interval(y[visited[:, k]], y[~visited[:, k]])
                tested.append(k)
        rows.append(row)
    if not tested:
        return rows
    V = visited[:, tested].astype(float)
    observed = welch_t(y[None, :], V)[0]
    order = np.argsort(-observed, kind="stable")  # most significant first
    rng = np.random.default_rng(np.random.SeedSequence(int(random_state), spawn_key=(4,)))
    exceed = np.zeros(len(tested))
    exceed_max = np.zeros(len(tested))  # step-down: successive maxima over the less significant states
    done = 0
    while done < n_perm:  # in blocks, to bound memory
        m = min(2000, n_perm - done)
        T = welch_t(rng.permuted(np.broadcast_to(y, (m, n)), axis=1), V)
        exceed += (T >= _less_a_hair(observed)).sum(axis=0)
        tail = np.maximum.accumulate(T[:, order[::-1]], axis=1)[:, ::-1]  # max over order[r:]
        thresholds = observed[order]
        exceed_max += (tail >= _less_a_hair(thresholds)).sum(axis=0)
        done += m
    p = (1 + exceed) / (1 + n_perm)
    adj_sorted = np.maximum.accumulate((1 + exceed_max) / (1 + n_perm))
    adj = np.empty(len(tested))
    adj[order] = adj_sorted
    for j, k in enumerate(tested):
        rows[k].update(t=float(observed[j]), p_value=float(p[j]), p_adjusted=float(adj[j]),
                       detour=bool(adj[j] < alpha and rows[k]["delay"] > 0))
    return rows


def paper_detours(coef, visited, converged) -> list[int]:
    """The paper's rule (reference.md E1): some converging runs skip the state, and its
    regression coefficient is positive."""
    out = []
    for k in range(visited.shape[1]):
        c = coef[k]
        if visited[:, k].any() and (converged & ~visited[:, k]).any() and c is not None and np.isfinite(c) and c > 0:
            out.append(k)
    return out


# --------------------------------------------------------------------------- regression


class OccupancyRegression:
    """OLS of convergence time on state-occupancy fractions, with bootstrap intervals.

    Parameters
    ----------
    n_boot : int, default 1000
        Bootstrap resamples of runs.
    min_runs : int, default 5
        A coefficient is estimable only for states visited by at least this many runs.
    random_state : int, default 0
        Seeds the bootstrap.

    Attributes
    ----------
    states_ : list of int
        States with any occupancy (the design's columns).
    estimable_ : ndarray of bool (K,)
        Coefficients that are reported.
    not_estimable_ : list (K,)
        Why a coefficient is not reported: ``"unvisited"``, ``"few runs"`` (fewer than
        ``min_runs`` visitors), ``"collinear"`` (its occupancy is an exact combination of others,
        e.g. the same fraction in every run, so its effect cannot be told from the mean), or None.
    reference_weights_ : ndarray (K,)
        Weights of the reference level: the mean occupancy over the states whose effects can be
        compared with each other (all visited states unless some are collinear).
    beta_ : ndarray (K,)
        No-intercept coefficients (NaN where not estimable on their own).
    coef_ : ndarray (K,)
        Occupancy-weighted contrasts β_k − Σ_j w_j β_j (NaN where not estimable).
    coef_reference_ : ndarray (K,)
        Minimum-norm coefficients of an intercept + all-K-fractions design (what the
        reference's scikit-learn ``LinearRegression`` returns).
    intercept_ : float
    ci_low_, ci_high_ : ndarray (K,)
        Bootstrap 95 % percentile interval of ``coef_`` (NaN where not estimable).
    r2_, f_stat_, p_value_ : float
    rank_, df_model_, df_resid_, n_ : int
    n_boot_used_ : int
    """

    def __init__(self, n_boot: int = 1000, min_runs: int = MIN_RUNS, random_state: int = 0):
        self.n_boot = n_boot
        self.min_runs = min_runs
        self.random_state = random_state

    @staticmethod
    def _solve(F: np.ndarray, y: np.ndarray) -> np.ndarray:
        beta, *_ = np.linalg.lstsq(F, y, rcond=None)
        return beta

    def fit(self, occupancy, y):
        occupancy = np.asarray(occupancy, dtype=float)
        y = np.asarray(y, dtype=float)
        n, K = occupancy.shape
        keep = [k for k in range(K) if occupancy[:, k].sum() > 0]
        F = occupancy[:, keep]
        beta = self._solve(F, y)
        resid = y - F @ beta
        ssr = float(resid @ resid)
        sst = float(((y - y.mean()) ** 2).sum())
        rank = int(np.linalg.matrix_rank(F)) if F.size else 0
        self.n_, self.states_, self.rank_ = n, keep, rank
        self.df_model_, self.df_resid_ = rank - 1, n - rank
        self.r2_ = 1 - ssr / sst if sst > 0 else float("nan")
        if self.df_model_ > 0 and self.df_resid_ > 0 and sst > 0:
            if ssr > 0:
                self.f_stat_ = ((sst - ssr) / self.df_model_) / (ssr / self.df_resid_)
                from scipy import stats

                self.p_value_ = float(stats.f.sf(self.f_stat_, self.df_model_, self.df_resid_))
            else:
                self.f_stat_, self.p_value_ = float("inf"), 0.0
        else:
            self.f_stat_ = self.p_value_ = float("nan")
            log.warning("regression F-test undefined: %d run(s), design rank %d, total variance %.4g",
                        n, rank, sst)
        pbar = F.mean(axis=0)
        visits = (F > 0).sum(axis=0)
        group, alone = _identifiable_group(F, pbar)
        # reference level: the occupancy-weighted mean beta over the identifiable group (all states
        # unless some occupancy is an exact combination of others, e.g. the same in every run)
        w = np.where(group, pbar, 0.0)
        w = w / w.sum()
        est = group & (visits >= self.min_runs)
        kept = np.asarray(keep, dtype=int)
        self.estimable_ = np.zeros(K, dtype=bool)
        self.estimable_[kept] = est
        self.not_estimable_ = [None] * K
        for j, k in enumerate(keep):
            if not group[j]:
                self.not_estimable_[k] = "collinear"
            elif visits[j] < self.min_runs:
                self.not_estimable_[k] = "few runs"
        for k in range(K):
            if k not in keep:
                self.not_estimable_[k] = "unvisited"
        self.reference_weights_ = np.zeros(K)
        self.reference_weights_[kept] = w
        self.intercept_ = float(w @ beta)
        self.solution_ = beta  # the least-squares solution over ``states_`` (predictions are unique)
        self.beta_ = np.full(K, np.nan)
        self.coef_ = np.full(K, np.nan)
        self.beta_[kept[alone & est]] = beta[alone & est]
        self.coef_[kept[est]] = (beta - self.intercept_)[est]
        # the reference notebook: sklearn LinearRegression on all K fractions (centred lstsq)
        Fc = occupancy - occupancy.mean(axis=0)
        self.coef_reference_ = self._solve(Fc, y - y.mean()) if n else np.full(K, np.nan)

        rng = np.random.default_rng(np.random.SeedSequence(int(self.random_state), spawn_key=(2,)))
        boots = []
        for _ in range(int(self.n_boot)):
            idx = rng.integers(0, n, n)
            Fb = F[idx]
            # a resample that loses a state, or gains a collinearity, cannot identify the contrasts
            if np.any(Fb[:, est].sum(axis=0) <= 0) or np.linalg.matrix_rank(Fb) < rank:
                continue
            b = self._solve(Fb, y[idx])
            boots.append((b - w @ b)[est])
        self.n_boot_used_ = len(boots)
        self.ci_low_ = np.full(K, np.nan)
        self.ci_high_ = np.full(K, np.nan)
        if boots and est.any():
            boots = np.array(boots)
            self.ci_low_[kept[est]] = np.percentile(boots, 2.5, axis=0)
            self.ci_high_[kept[est]] = np.percentile(boots, 97.5, axis=0)
        if self.n_boot and self.n_boot_used_ < 0.9 * self.n_boot:
            log.warning("only %d of %d bootstrap resamples visit every estimable state; "
                        "regression intervals are unreliable", self.n_boot_used_, self.n_boot)
        return self

    def predict(self, occupancy):
        """Fitted convergence time of runs with these occupancy fractions."""
        occupancy = np.asarray(occupancy, dtype=float)
        return occupancy[:, self.states_] @ self.solution_


def _identifiable_group(F: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Which states' effects can be compared on the design ``F`` (n, p).

    β_k − β_j is estimable iff states k and j have equal rows in a basis of the null space of
    ``F``. States are grouped by those rows; the group with the most ``weights`` is returned as
    a boolean mask, with a second mask of the states whose own β_k is estimable (zero rows).
    Without a null space every state is in the group.
    """
    null = _null_space(F)
    p = F.shape[1]
    if null.shape[1] == 0:
        return np.ones(p, dtype=bool), np.ones(p, dtype=bool)
    rows = np.round(null / (np.abs(null).max() or 1.0), 8)
    labels = {}
    for j in range(p):
        labels.setdefault(tuple(rows[j]), []).append(j)
    best = max(labels.values(), key=lambda g: (weights[g].sum(), -g[0]))
    group = np.zeros(p, dtype=bool)
    group[best] = True
    return group, np.all(rows == 0, axis=1)


def _null_space(F: np.ndarray, tol: float = 1e-10) -> np.ndarray:
    """Orthonormal basis of the null space of ``F`` (columns), shape (p, p − rank)."""
    if F.size == 0:
        return np.zeros((F.shape[1], 0))
    _, s, vt = np.linalg.svd(F, full_matrices=True)
    rank = int((s > tol * max(F.shape) * (s[0] if s.size else 0)).sum())
    return vt[rank:].T


# --------------------------------------------------------------------------- dissimilarity


def wasserstein(p: np.ndarray, q: np.ndarray, ground: np.ndarray) -> float:
    """Earth mover's distance between distributions ``p`` and ``q`` over K points (exact LP)."""
    from scipy.optimize import linprog

    p = np.asarray(p, dtype=float)
    q = np.asarray(q, dtype=float)
    K = len(p)
    if np.allclose(p, q):
        return 0.0
    # variables: transport plan π (K×K, row-major); rows sum to p, columns to q
    A = np.zeros((2 * K, K * K))
    for i in range(K):
        A[i, i * K : (i + 1) * K] = 1
        A[K + i, i::K] = 1
    res = linprog(ground.ravel(), A_eq=A[:-1], b_eq=np.concatenate([p, q])[:-1], bounds=(0, None), method="highs")
    if not res.success:  # pragma: no cover - the LP is always feasible for distributions
        raise RuntimeError(f"transport LP failed: {res.message}")
    return float(max(res.fun, 0.0))


def trajectory_dissimilarity(occupancy: np.ndarray, ground: np.ndarray) -> float:
    """E[W(p, q)] over pairs of runs (reference.md E1, Eq. 1): 2/(N(N−1)) Σ_{i<j} W(p_i, p_j)."""
    occupancy = np.asarray(occupancy, dtype=float)
    n = len(occupancy)
    if n < 2:
        return float("nan")
    cache: dict[tuple, float] = {}
    keys = [tuple(np.round(row, 12)) for row in occupancy]
    total = 0.0
    for i in range(n):
        for j in range(i):
            key = (keys[i], keys[j]) if keys[i] <= keys[j] else (keys[j], keys[i])
            if key not in cache:
                cache[key] = wasserstein(occupancy[i], occupancy[j], ground)
            total += cache[key]
    return 2.0 * total / (n * (n - 1))


def ground_metric(means: np.ndarray) -> np.ndarray:
    """Euclidean distance between state means (z units), shape (K, K)."""
    means = np.asarray(means, dtype=float)
    return np.sqrt(((means[:, None, :] - means[None, :, :]) ** 2).sum(-1))
