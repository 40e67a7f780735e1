"""``latent compare`` as a library call: fits found or made, studies summarised, convergence compared.

>>> from latent.fit import FitConfig
>>> from latent.store import resolve_study
>>> from latent.compare import plan_fits, ensure_fits, summarize_fit, compare_studies
>>> studies = [resolve_study("data", "modadd"), resolve_study("data", "modadd-ln")]   # doctest: +SKIP
>>> plans = ensure_fits(plan_fits(studies, FitConfig()))  # reuses fits/<fit-id>/, fits the missing ones
>>> summaries = [summarize_fit(p.study.name, p.study.read_meta(), *read_fit(p.fit_dir), fit_id=p.fit_id)
...              for p in plans]
>>> comparison = compare_studies(summaries)               # pairwise tests, Holm-adjusted

Everything here is plain data: numbers, strings, tuples and frozen dataclasses, no matplotlib.
The page is drawn by :mod:`latent.reports.compare`.

What is compared
----------------
Each study is summarised from its saved fit (``analysis.json``, ``model.json``): K, the detour
states with their stability, R² and p of the occupancy regression, the trajectory
dissimilarity, whether the training map forks, and its convergence times.

The convergence times are the ones the fit used (``analysis.convergence``): with the default
``--nonconverged restrict`` every time is restricted at τ, the last step every run of *that*
study reaches, and a run that never converges counts as τ (a *censored* time); with
``exclude`` such runs are left out. Per study: median, quartiles (numpy's default linear
interpolation), IQR, mean, standard deviation (``ddof=1``) and the coefficient of variation
``CV = sd / mean``.

For every pair of studies whose times are in the same unit (``step_unit``: epochs or optimizer
steps), two-sided tests of the difference:

- location: the Mann–Whitney U test (``scipy.stats.mannwhitneyu``, ``alternative="two-sided"``,
  scipy's default method: exact for small samples without ties, else the normal approximation
  with continuity correction), with the probability of superiority ``U / (n_a n_b)``
  (P(a later than b) + ½ P(tie));
- spread: the Brown–Forsythe test, i.e. Levene's test centred on the median
  (``scipy.stats.levene(center="median")``).

With more than two studies each family of p-values (location, spread) is adjusted over the tested
pairs by Holm's step-down procedure, which holds the family-wise error rate. Pairs in different
units are not tested (their times count different things); the CV, which has no unit, can still
be read across them.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .errors import UserError
from .artifacts import read_fit  # noqa: F401 - the documented reader of a fit (docs/compare.md)
from .fit import FitConfig, fit_id, json_safe
from .settings import ConfigError

COMPARE_FORMAT = "latent.compare/1"
CORRECTION = "holm"
CORRECTION_TEXT = ("Holm's step-down adjustment over the tested pairs, separately for the location (Mann–Whitney) "
                   "and the spread (Brown–Forsythe) tests")


# --------------------------------------------------------------------------- fits


@dataclass(frozen=True)
class FitPlan:
    """Where one study's fit is, for the settings asked for.

    Attributes
    ----------
    study : Study
        The study.
    config : FitConfig
        The settings resolved against the study's ``study.json`` (what ``latent fit`` would use).
    fit_id : str
        :func:`latent.fit.fit_id` of ``config``.
    fit_dir : Path
        ``<study>/fits/<fit_id>``.
    exists : bool
        Whether a fit with these settings was already on disk when the plan was made.
    fitted_now : bool
        Whether :func:`ensure_fits` fitted it.
    """

    study: object
    config: FitConfig
    fit_id: str
    fit_dir: Path
    exists: bool
    fitted_now: bool = False


def plan_fits(studies: Sequence, config: FitConfig) -> list[FitPlan]:
    """Resolve ``config`` for every study and find its fit directory.

    Parameters
    ----------
    studies : sequence of Study
        At least two different studies.
    config : FitConfig
        The settings, as ``latent fit`` takes them (``None`` fields come from each study).

    Returns
    -------
    list of FitPlan

    Raises
    ------
    UserError
        Fewer than two studies, a study given twice, a study that does not exist, or a setting
        that is invalid for one of them (the message names the study).
    """
    studies = list(studies)
    if len(studies) < 2:
        raise UserError("compare needs at least two studies, e.g. `latent compare modadd modadd-ln`")
    seen: dict[Path, str] = {}
    for st in studies:
        if not st.exists():
            raise UserError(f"no study at {st.root} (no study.json); `latent ls` lists the studies")
        key = Path(st.root).resolve()
        if key in seen:
            raise UserError(f"study {st.name!r} is given twice ({seen[key]} and {st.root}); "
                            "compare different studies")
        seen[key] = str(st.root)
    plans = []
    for st in studies:
        try:
            cfg = config.resolve(st.read_meta())
        except ConfigError as exc:
            raise ConfigError(exc.field, exc.flag, f"study {st.name}: {exc.text}") from None
        except UserError as exc:
            raise UserError(f"study {st.name}: {exc}") from None
        fid = fit_id(cfg)
        fdir = st.fits_dir / fid
        plans.append(FitPlan(st, cfg, fid, fdir, (fdir / "model.json").is_file()))
    return plans


def ensure_fits(plans: Sequence[FitPlan], allow_fit: bool = True, n_jobs: int | None = None,
                progress: bool = False, say: Callable[[str], None] | None = None) -> list[FitPlan]:
    """Fit the studies that have no fit with these settings; reuse the others untouched.

    Parameters
    ----------
    plans : sequence of FitPlan
        From :func:`plan_fits`.
    allow_fit : bool
        If False, a missing fit is an error instead of being fitted.
    n_jobs : int, optional
        Worker processes for the fits (does not change results).
    progress : bool
        Progress bars of the HMM restarts on stderr.
    say : callable, optional
        Receives one line per study: reused, or being fitted, or fitted.

    Returns
    -------
    list of FitPlan
        With ``fitted_now`` set for the fits made here.

    Raises
    ------
    UserError
        ``allow_fit=False`` and some fit is missing (all of them are named), or a fit failed for
        a reason the user can fix (the message names the study).
    """
    say = say or (lambda line: None)
    missing = [p for p in plans if not p.exists]
    if missing and not allow_fit:
        names = "; ".join(f"{p.study.name} (no {p.fit_dir})" for p in missing)
        others = {p.study.name: p.study.fit_ids() for p in missing}
        have = "; ".join(f"{n} has {', '.join(ids)}" for n, ids in others.items() if ids)
        raise UserError(f"--no-fit: no fit with these settings for {names}"
                        + (f" ({have}, made with other settings)" if have else "")
                        + "; run `latent fit` on them with the same flags, or drop --no-fit")
    out = []
    for p in plans:
        if p.exists:
            say(f"study {p.study.name}: reusing fit {p.fit_id} ({p.fit_dir})")
            out.append(p)
            continue
        from .artifacts import write_fit
        from .fit import fit_study

        say(f"study {p.study.name}: no fit with these settings yet ({p.fit_id}); fitting it now")
        try:
            result = fit_study(p.study, p.config, n_jobs=n_jobs, progress=progress)
        except UserError as exc:
            raise UserError(f"study {p.study.name}: {exc}") from None
        if result.fit_id != p.fit_id:  # pragma: no cover - resolve() is idempotent
            raise RuntimeError(f"fit id changed on fitting: {p.fit_id} -> {result.fit_id}")
        written = write_fit(p.study, result)
        say(f"study {p.study.name}: wrote {written} (K = {result.model['n_states']}, "
            f"{result.timings.get('total', float('nan')):.1f} s)")
        out.append(FitPlan(p.study, p.config, p.fit_id, written, True, fitted_now=True))
    return out


# --------------------------------------------------------------------------- convergence


@dataclass(frozen=True)
class ConvergenceStats:
    """Summary of one study's convergence times (in its ``step_unit``).

    Attributes
    ----------
    times : tuple of float
        The times compared, sorted by seed (restricted at ``tau`` under the ``restrict`` rule).
    seeds : tuple of int
        The seed of each time.
    censored : tuple of int
        Seeds whose time is censored: they never converged (counted at ``tau``) or converged after it.
    excluded : tuple of int
        Seeds left out (never converged, ``exclude`` rule).
    tau : float or None
        The restriction point: the last step every run of the study reaches.
    rule : str
        ``"restrict"`` or ``"exclude"``.
    n, median, q1, q3, iqr, mean, std, cv
        Count, median, 25th and 75th percentiles (linear interpolation), their difference, mean,
        sample standard deviation (``ddof=1``; None with one time) and ``std / mean`` (None when
        the mean is not positive or there is one time).
    """

    times: tuple
    seeds: tuple
    censored: tuple
    excluded: tuple
    tau: float | None
    rule: str
    n: int
    median: float | None
    q1: float | None
    q3: float | None
    iqr: float | None
    mean: float | None
    std: float | None
    cv: float | None


def describe_times(times: Sequence[float]) -> dict:
    """Median, quartiles, IQR, mean, sample sd and CV of ``times`` (None where undefined).

    Parameters
    ----------
    times : sequence of float

    Returns
    -------
    dict
        ``n, median, q1, q3, iqr, mean, std, cv``.
    """
    y = np.asarray(times, dtype=float)
    n = int(y.size)
    if n == 0:
        return {"n": 0, "median": None, "q1": None, "q3": None, "iqr": None, "mean": None, "std": None, "cv": None}
    q1, med, q3 = (float(v) for v in np.percentile(y, [25, 50, 75]))
    mean = float(y.mean())
    std = float(y.std(ddof=1)) if n > 1 else None
    cv = std / mean if std is not None and mean > 0 else None
    return {"n": n, "median": med, "q1": q1, "q3": q3, "iqr": q3 - q1, "mean": mean, "std": std, "cv": cv}


def convergence_stats(convergence: dict, rule: str = "restrict") -> ConvergenceStats:
    """The convergence times a fit used, and their summary.

    Parameters
    ----------
    convergence : dict
        ``analysis.json``'s ``convergence``: ``times`` (``{"<seed>": step or null}``) and ``tau``.
    rule : {"restrict", "exclude"}
        The fit's ``nonconverged`` rule: a run that never converges counts as ``tau``, or is left out.

    Returns
    -------
    ConvergenceStats
    """
    raw = convergence.get("times") or {}
    tau = convergence.get("tau")
    tau = None if tau is None else float(tau)
    seeds, times, censored, excluded = [], [], [], []
    for key in sorted(raw, key=lambda s: int(s)):
        seed, t = int(key), raw[key]
        t = None if t is None or not math.isfinite(float(t)) else float(t)
        if t is None and (rule == "exclude" or tau is None):
            excluded.append(seed)
            continue
        if t is None or (tau is not None and t > tau):
            censored.append(seed)
        y = tau if t is None else (min(t, tau) if tau is not None else t)
        seeds.append(seed)
        times.append(float(y))
    d = describe_times(times)
    return ConvergenceStats(times=tuple(times), seeds=tuple(seeds), censored=tuple(censored),
                            excluded=tuple(excluded), tau=tau, rule=rule, **d)


# --------------------------------------------------------------------------- one study


@dataclass(frozen=True)
class StudySummary:
    """One study, as the comparison sees it (everything read from its saved fit).

    Attributes
    ----------
    name, root : str
        Study name and directory.
    fit_id : str
    fitted_now : bool
        Fitted by this comparison (else an existing fit was reused).
    task, preset : str or None
        From ``study.json``.
    step_unit : str
        ``"epoch"`` or ``"step"``: the unit of every time of this study.
    n_runs : int
        Runs decoded by the fit.
    n_states : int
        K.
    selection : str
        How K was chosen, e.g. ``"5-fold CV −2 log-likelihood, 4/5 folds agree"``.
    detours : tuple of dict
        ``analysis.detours`` (state, rule, delay, ci_low, ci_high, p_adjusted, significant,
        runs_visiting, runs_skipping, stability, ...).
    detour_rule : str
        ``"delay"`` or ``"paper"``.
    resamples_used : int
        Stability resamples behind the detours' stability (0: none were run).
    r2, r2_p, f_stat : float or None
        The occupancy regression (the paper's Table 1).
    regression_runs : int or None
    dissimilarity : float or None
        Trajectory dissimilarity (reference.md Eq. 1) with the fit's ground metric.
    forking : bool
        The training map forks: some state has at least two outgoing transitions, to different
        states, each taken by at least ``min_runs`` runs.
    forks : tuple of dict
        ``{"state", "branches": ((target, runs), ...)}`` for each such state.
    minor_branches : tuple of dict
        States with two or more outgoing transitions that do not reach ``min_runs`` runs each.
    min_runs : int
    convergence : ConvergenceStats
    convergence_rule : dict
        ``{"metric", "threshold", "direction"}``.
    features : tuple of str
    warnings : tuple of str
        The fit's warnings (``analysis.warnings``).
    stale : str or None
        Why the fit may be out of date (the study holds runs the fit never saw), else None.
    """

    name: str
    root: str
    fit_id: str
    fitted_now: bool
    task: str | None
    preset: str | None
    step_unit: str
    n_runs: int
    n_states: int
    selection: str
    detours: tuple
    detour_rule: str
    resamples_used: int
    r2: float | None
    r2_p: float | None
    f_stat: float | None
    regression_runs: int | None
    dissimilarity: float | None
    forking: bool
    forks: tuple
    minor_branches: tuple
    min_runs: int
    convergence: ConvergenceStats
    convergence_rule: dict = field(default_factory=dict)
    features: tuple = ()
    warnings: tuple = ()
    stale: str | None = None
    metric_variant: str | None = "reference"
    #: what makes two studies' runs the same runs: task, config and metric variant (latent's runs are
    #: deterministic in their seed); None for imported studies, whose runs cannot be matched
    run_identity: str | None = None
    seeds: tuple = ()
    #: the fit's settings that change K, R² and the map (model.json ``config``)
    fit_settings: tuple = ()
    #: checkpoints per run the fit sees (the study's schedule, capped at the fit's first_n); None if unknown
    checkpoints: int | None = None


def _opt_float(x) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


_CRITERIA = {"bic": "BIC", "aic": "AIC", "loglik": "−2 log-likelihood"}


def _selection_text(model: dict, analysis: dict) -> str:
    sel = analysis.get("selection") or {}
    crit = _CRITERIA.get(str(sel.get("criterion") or model.get("criterion")), str(model.get("criterion", "?")))
    proc = sel.get("procedure")
    folds = sel.get("folds")
    if proc == "cv":
        text = f"{len(folds)}-fold CV {crit}" if folds else f"cross-validated {crit}"
    elif proc == "split":
        text = f"held-out {crit} (one split)"
    elif proc == "reference":
        text = f"held-out {crit} (the reference's procedure)"
    else:
        text = crit
    choice = sel.get("fold_choice") or {}
    if choice:
        k = str(model.get("n_states"))
        text += f", {int(choice.get(k, 0))}/{sum(int(v) for v in choice.values())} folds agree"
    if sel.get("fragile"):
        text += f", fragile (K = {sel.get('runner_up')} is as good within the restart spread)"
    return text


def map_forks(map_data: dict, min_runs: int) -> tuple[list[dict], list[dict]]:
    """States where the training map branches.

    Parameters
    ----------
    map_data : dict
        ``analysis.map`` (node-link data; edges under ``edges`` or ``links``, each with
        ``source``, ``target`` and ``runs``).
    min_runs : int
        Fewest runs a branch needs to count.

    Returns
    -------
    forks : list of dict
        ``{"state", "branches": [(target, runs), ...]}``: states with two or more outgoing
        transitions to other states taken by at least ``min_runs`` runs each.
    minor : list of dict
        The same for states with two or more outgoing transitions that are not forks.
    """
    out: dict[int, list[tuple[int, int]]] = {}
    for e in map_data.get("edges", map_data.get("links")) or []:
        a, b = int(e["source"]), int(e["target"])
        if a == b:
            continue
        out.setdefault(a, []).append((b, int(e.get("runs") or 0)))
    forks, minor = [], []
    for a in sorted(out):
        branches = sorted(out[a], key=lambda tb: (-tb[1], tb[0]))
        if len(branches) < 2:
            continue
        row = {"state": a, "branches": tuple(branches)}
        (forks if sum(r >= min_runs for _, r in branches) >= 2 else minor).append(row)
    return forks, minor


def _stale(study, model: dict) -> str | None:
    seeds = model.get("seeds") or {}
    seen = {int(s) for s in seeds.get("used") or []} | {int(s) for s in (seeds.get("excluded") or {})}
    try:
        on_disk = set(study.run_seeds())
    except OSError:  # pragma: no cover - unreadable runs directory: the fit is what we have
        return None
    new = sorted(on_disk - seen)
    if not new or not seen:
        return None
    shown = ", ".join(map(str, new[:8])) + (f" and {len(new) - 8} more" if len(new) > 8 else "")
    return (f"the study now holds {len(new)} run(s) the fit never saw (seeds {shown}); rerun `latent fit` "
            "with the same flags to include them (compare reuses the existing fit)")


def summarize_fit(name: str, meta: dict, model: dict, analysis: dict, *, fit_id: str, root: str = "",
                  fitted_now: bool = False, study=None) -> StudySummary:
    """Summarise one saved fit for the comparison.

    Parameters
    ----------
    name : str
        Study name.
    meta, model, analysis : dict
        ``study.json``, ``model.json`` and ``analysis.json``.
    fit_id : str
    root : str
        The study directory, for display.
    fitted_now : bool
        Whether the comparison fitted it.
    study : Study, optional
        When given, checked for runs the fit never saw (``stale``).

    Returns
    -------
    StudySummary
    """
    config = model.get("config") or {}
    conv = analysis.get("convergence") or {}
    reg = analysis.get("regression") or {}
    rule = analysis.get("detour_rule") or {}
    min_runs = int(rule.get("min_runs") or config.get("min_runs") or reg.get("min_runs") or 5)
    forks, minor = map_forks(analysis.get("map") or {}, min_runs)
    stability = analysis.get("stability") or {}
    diss = analysis.get("dissimilarity") or {}
    seeds_used = (model.get("seeds") or {}).get("used") or list((conv.get("times") or {}).keys())
    return StudySummary(
        name=name, root=str(root), fit_id=fit_id, fitted_now=bool(fitted_now),
        task=meta.get("task"), preset=meta.get("preset"),
        step_unit=str(conv.get("step_unit") or meta.get("step_unit") or "step"),
        n_runs=len(seeds_used), n_states=int(model["n_states"]),
        selection=_selection_text(model, analysis),
        detours=tuple(sorted((dict(d) for d in analysis.get("detours") or []), key=lambda d: int(d["state"]))),
        detour_rule=str(rule.get("rule") or config.get("detour_rule") or "?"),
        resamples_used=int(stability.get("used") or 0),
        r2=_opt_float(reg.get("r2")), r2_p=_opt_float(reg.get("p_value")), f_stat=_opt_float(reg.get("f_stat")),
        regression_runs=None if reg.get("n_runs") is None else int(reg["n_runs"]),
        dissimilarity=_opt_float(diss.get("value")),
        forking=bool(forks), forks=tuple(forks), minor_branches=tuple(minor), min_runs=min_runs,
        convergence=convergence_stats(conv, str(config.get("nonconverged") or "restrict")),
        convergence_rule={"metric": conv.get("metric"), "threshold": conv.get("threshold"),
                          "direction": conv.get("direction", "above")},
        features=tuple(model.get("features") or ()),
        warnings=tuple(str(w) for w in analysis.get("warnings") or ()),
        stale=_stale(study, model) if study is not None else None,
        metric_variant=_metric_variant(meta),
        run_identity=(json.dumps([meta.get("task"), meta.get("config"), _metric_variant(meta)], sort_keys=True)
                      if meta.get("task") and meta.get("config") is not None and not meta.get("source") else None),
        seeds=tuple(sorted(int(x) for x in seeds_used)),
        fit_settings=tuple(sorted((k, json.dumps(v, sort_keys=True)) for k, v in config.items())),
        checkpoints=_checkpoints(meta, config),
    )


def _checkpoints(meta: dict, config: dict) -> int | None:
    """Checkpoints per finished run from the study's schedule, capped at the fit's ``first_n``."""
    sched = meta.get("schedule") or {}
    try:
        n = int(sched["last"]) // int(sched["every"]) + 1 + (int(sched["last"]) % int(sched["every"]) > 0)
    except (KeyError, TypeError, ValueError, ZeroDivisionError):
        return None
    first_n = config.get("first_n")
    return min(n, int(first_n)) if isinstance(first_n, int) else n


def _metric_variant(meta: dict) -> str | None:
    """How latent computed the study's weight statistics; None for metrics imported as logged."""
    if meta.get("metric_variant"):
        return str(meta["metric_variant"])
    # a collected study without the key predates variants ("reference"); a table or TensorBoard
    # import has none: its columns are whatever the user's code logged
    return None if meta.get("task") == "external" else "reference"


# --------------------------------------------------------------------------- tests


def holm(pvalues: Sequence[float | None]) -> list[float | None]:
    """Holm's step-down adjusted p-values; ``None`` entries stay ``None`` and do not count.

    Parameters
    ----------
    pvalues : sequence of float or None

    Returns
    -------
    list of float or None
        ``p_adj(i) = max_{j <= i} min(1, (m - j + 1) p_(j))`` over the m non-None p-values in
        ascending order, put back in the input order.
    """
    idx = [i for i, p in enumerate(pvalues) if p is not None]
    m = len(idx)
    out: list[float | None] = [None] * len(pvalues)
    running = 0.0
    for rank, i in enumerate(sorted(idx, key=lambda i: (pvalues[i], i))):
        running = max(running, min(1.0, (m - rank) * float(pvalues[i])))
        out[i] = running
    return out


@dataclass(frozen=True)
class PairTest:
    """Two studies' convergence times compared (``b`` against ``a``).

    Attributes
    ----------
    a, b : str
        Study names.
    unit : str or None
        The common step unit; None when the units differ.
    tested : bool
        Whether the tests ran.
    reason : str or None
        Why not, when they did not.
    n_a, n_b : int
    median_diff : float or None
        ``median(b) - median(a)``.
    iqr_ratio, cv_ratio : float or None
        ``IQR(b) / IQR(a)`` and ``CV(b) / CV(a)`` (the CV ratio is given even across units).
    mw_u : float or None
        Mann–Whitney U of ``a`` (pairs with a later than b, ties counted ½).
    prob_superiority : float or None
        ``mw_u / (n_a n_b)``: P(a's time > b's) + ½ P(tie).
    mw_p, mw_p_adjusted : float or None
        Two-sided p, and after Holm's adjustment over the tested pairs.
    bf_w, bf_p, bf_p_adjusted : float or None
        Brown–Forsythe statistic W, its p, and after Holm's adjustment.
    """

    a: str
    b: str
    unit: str | None
    tested: bool
    reason: str | None
    n_a: int
    n_b: int
    median_diff: float | None = None
    iqr_ratio: float | None = None
    cv_ratio: float | None = None
    mw_u: float | None = None
    prob_superiority: float | None = None
    mw_p: float | None = None
    mw_p_adjusted: float | None = None
    bf_w: float | None = None
    bf_p: float | None = None
    bf_p_adjusted: float | None = None


def _ratio(x, y) -> float | None:
    return None if x is None or y is None or x == 0 else float(y) / float(x)


def pair_test(a: StudySummary, b: StudySummary) -> PairTest:
    """Mann–Whitney U and Brown–Forsythe tests of ``b``'s convergence times against ``a``'s (unadjusted).

    Parameters
    ----------
    a, b : StudySummary

    Returns
    -------
    PairTest
        ``tested=False`` with a reason when the units differ or a study has fewer than two times.
    """
    from scipy import stats

    ca, cb = a.convergence, b.convergence
    base = dict(a=a.name, b=b.name, n_a=ca.n, n_b=cb.n, cv_ratio=_ratio(ca.cv, cb.cv))
    if a.step_unit != b.step_unit:
        return PairTest(unit=None, tested=False, reason=(
            f"different units: {a.name} counts {a.step_unit}s, {b.name} counts {b.step_unit}s"), **base)
    base.update(unit=a.step_unit, median_diff=None if ca.median is None or cb.median is None else cb.median - ca.median,
                iqr_ratio=_ratio(ca.iqr, cb.iqr))
    if ca.n < 2 or cb.n < 2:
        return PairTest(tested=False, reason="fewer than two convergence times in a study", **base)
    x, y = np.asarray(ca.times, float), np.asarray(cb.times, float)
    mw = stats.mannwhitneyu(x, y, alternative="two-sided")
    mw_p = _opt_float(mw.pvalue)
    with np.errstate(divide="ignore", invalid="ignore"):
        bf = stats.levene(x, y, center="median")
    bf_p = _opt_float(bf.pvalue)
    reason = None if bf_p is not None else "no spread around the median in either study: Brown–Forsythe undefined"
    return PairTest(tested=True, reason=reason, mw_u=float(mw.statistic),
                    prob_superiority=float(mw.statistic) / (ca.n * cb.n), mw_p=mw_p,
                    bf_w=_opt_float(bf.statistic) if bf_p is not None else None, bf_p=bf_p, **base)


# --------------------------------------------------------------------------- many studies


@dataclass(frozen=True)
class Comparison:
    """Studies side by side and their pairwise tests.

    Attributes
    ----------
    studies : tuple of StudySummary
        In the order given.
    pairs : tuple of PairTest
        Every pair ``(i, j)``, ``i < j``, in order; p-values Holm-adjusted over the tested pairs.
    correction : str
        ``"holm"`` (with two studies there is one pair and the adjustment changes nothing).
    notes : tuple of str
        What the reader must know: different units, different convergence rules, censored runs
        at different τ, different features, stale fits.
    equal_n, spreads, equal, subsamples
        The comparison at equal size (:mod:`latent.equal_size`): the common run count, the larger
        studies' subsample refits, the tests, and the subsamples asked per study.
    """

    studies: tuple
    pairs: tuple
    correction: str
    notes: tuple
    #: the common size K, R², dissimilarity and detours are compared at (None: not compared at equal size)
    equal_n: int | None = None
    #: :class:`latent.equal_size.SubsampleSpread` of every study larger than ``equal_n``
    spreads: tuple = ()
    #: :class:`latent.equal_size.EqualTest` of every pair and quantity
    equal: tuple = ()
    #: subsamples asked per larger study (0 with ``--all-runs``)
    subsamples: int = 0
    #: the level the equal-size tests call a difference at (the fits' ``--alpha``)
    alpha: float = 0.05

    @property
    def n_tested(self) -> int:
        """Pairs whose location test ran (the size of the Holm family)."""
        return sum(p.mw_p is not None for p in self.pairs)

    @property
    def units(self) -> list[str]:
        """The distinct step units, in order of first appearance."""
        return list(dict.fromkeys(s.step_unit for s in self.studies))

    def to_dict(self) -> dict:
        """JSON-ready content of ``comparison.json`` (NaN and inf as null)."""
        return json_safe({
            "format": COMPARE_FORMAT,
            "correction": self.correction,
            "correction_text": CORRECTION_TEXT if self.n_tested > 1 else "at most one tested pair: no adjustment",
            "notes": list(self.notes),
            "studies": [asdict(s) for s in self.studies],
            "pairs": [asdict(p) for p in self.pairs],
            "equal_size": None if self.equal_n is None else {
                "n_runs": self.equal_n, "subsamples": self.subsamples,
                "spreads": [sp.to_dict() for sp in self.spreads],
                "tests": [asdict(t) for t in self.equal],
                "method": "each larger study refitted on random subsamples of n_runs of its runs; the smaller "
                          "value read against their spread by a two-sided Monte Carlo p, Holm-adjusted over "
                          "every pair and quantity (latent/equal_size.py)",
            },
        })


def _fmt(x, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    return f"{x:.{digits}g}"


def compare_studies(summaries: Sequence[StudySummary], spreads: Sequence = (), subsamples: int | None = None,
                    alpha: float = 0.05) -> Comparison:
    """Pairwise tests of every pair of studies, Holm-adjusted, and the notes a reader needs.

    Parameters
    ----------
    summaries : sequence of StudySummary
        At least two.
    spreads : sequence of SubsampleSpread
        The larger studies refitted on subsamples of the smallest study's size
        (:func:`latent.equal_size.refit_subsamples`); empty when the sizes are equal.
    subsamples : int, optional
        The subsamples asked per larger study; None or 0 when the comparison uses all runs
        (``--all-runs``), which leaves the equal-size comparison out.
    alpha : float
        Level of the equal-size tests (after Holm's adjustment).

    Returns
    -------
    Comparison
    """
    from .equal_size import equal_tests

    summaries = tuple(summaries)
    if len(summaries) < 2:
        raise UserError("compare needs at least two studies")
    raw = [pair_test(a, b) for a, b in combinations(summaries, 2)]
    mw_adj = holm([p.mw_p if p.tested else None for p in raw])
    bf_adj = holm([p.bf_p if p.tested else None for p in raw])
    pairs = tuple(PairTest(**{**asdict(p), "mw_p_adjusted": m, "bf_p_adjusted": b})
                  for p, m, b in zip(raw, mw_adj, bf_adj))
    spreads = tuple(spreads)
    equal_n = min(s.n_runs for s in summaries) if subsamples else None
    tests = equal_tests(summaries, {sp.study: sp for sp in spreads}, alpha) if subsamples else ()
    return Comparison(studies=summaries, pairs=pairs, correction=CORRECTION,
                      notes=tuple(_notes(summaries, pairs, bool(subsamples))), equal_n=equal_n, spreads=spreads,
                      equal=tests, subsamples=int(subsamples or 0), alpha=float(alpha))


def _notes(summaries: Sequence[StudySummary], pairs: Sequence[PairTest], equal: bool = False) -> list[str]:
    notes = []
    units: dict[str, list[str]] = {}
    for s in summaries:
        units.setdefault(s.step_unit, []).append(s.name)
    if len(units) > 1:
        groups = "; ".join(f"{', '.join(names)} in {u}s" for u, names in units.items())
        skipped = ", ".join(f"{p.a}–{p.b}" for p in pairs if p.unit is None)
        notes.append(f"The studies count time in different units ({groups}). Convergence times are compared "
                     f"only within a unit: the pairs {skipped} are not tested, and their medians and IQRs "
                     "are not comparable. The coefficient of variation has no unit and can be read across them.")
    rules = {(s.convergence_rule.get("metric"), s.convergence_rule.get("threshold"),
              s.convergence_rule.get("direction")) for s in summaries}
    if len(rules) > 1:
        text = "; ".join(f"{s.name}: {_rule_text(s)}" for s in summaries)
        notes.append(f"Convergence is defined differently ({text}), so the times measure different events.")
    censored = [s for s in summaries if s.convergence.censored]
    if censored:
        taus = {s.convergence.tau for s in summaries}
        text = "; ".join(f"{s.name}: {len(s.convergence.censored)} of {s.convergence.n} at τ = "
                         f"{_fmt(s.convergence.tau, 6)} {s.step_unit}s" for s in censored)
        notes.append("Some runs never converge and count as τ, the last step every run of their study reaches "
                     f"(restricted times: {text})"
                     + ("; τ differs between the studies, so these censored times sit at different places."
                        if len(taus) > 1 else "."))
    excluded = [s for s in summaries if s.convergence.excluded]
    if excluded:
        notes.append("Runs that never converge are left out (--nonconverged exclude): "
                     + "; ".join(f"{s.name}: {len(s.convergence.excluded)}" for s in excluded) + ".")
    if len({s.metric_variant for s in summaries if s.metric_variant}) > 1:
        text = "; ".join(f"{s.name}: {s.metric_variant}" for s in summaries if s.metric_variant)
        notes.append(f"The weight statistics were collected with different --metric-variant ({text}): "
                     "mean_lambda, variance_lambda, var_w and var_b measure different things across them.")
    if len({s.features for s in summaries}) > 1:
        notes.append("The HMMs use different features, so K, the maps and the dissimilarities describe "
                     "different measurements.")
    if len({s.n_runs for s in summaries}) > 1:
        text = "; ".join(f"{s.name}: {s.n_runs}" for s in summaries)
        n = min(s.n_runs for s in summaries)
        notes.append(f"The studies have different numbers of runs ({text}). K, R², the dissimilarity and the detours "
                     "depend on the number of runs (more runs support more states and a tighter regression), so a "
                     "difference in them can come from the run count alone. "
                     + (f"They are also compared at {n} runs ('at equal size'), each larger study refitted on subsamples "
                        f"of {n} of its runs; the full-study values are not comparable across sizes."
                        if equal else
                        "This comparison uses all runs, without equal-size refits: read the full-study values as describing "
                        "studies of different sizes, not a difference in dynamics."))
    counts = {s.name: s.checkpoints for s in summaries if s.checkpoints is not None}
    if len(set(counts.values())) > 1:
        notes.append("Runs have different numbers of checkpoints ("
                     + "; ".join(f"{n}: {c}" for n, c in counts.items()) + " per finished run, as fitted), so states "
                     "and dwell times are measured at different resolutions.")
    if len({s.fit_settings for s in summaries}) > 1:
        keys = sorted({k for s in summaries for k, _ in s.fit_settings})
        differ = [k for k in keys if len({dict(s.fit_settings).get(k) for s in summaries}) > 1]
        notes.append(f"The fits differ in their settings ({', '.join(differ)}), which can change K and the map "
                     "by themselves.")
    for i, a in enumerate(summaries):
        for b in summaries[i + 1:]:
            if a.run_identity is None or a.run_identity != b.run_identity:
                continue
            shared = sorted(set(a.seeds) & set(b.seeds))
            if not shared:
                continue
            subset = (a.name if len(a.seeds) <= len(b.seeds) else b.name) if (
                set(a.seeds) <= set(b.seeds) or set(b.seeds) <= set(a.seeds)) else None
            notes.append(f"{a.name} and {b.name} share {len(shared)} runs (the same task, config, metric variant and "
                         "seeds, so identical runs): they are not independent samples"
                         + (f", and {subset}'s runs are all in the other" if subset else "") + ".")
    for s in summaries:
        if s.stale:
            notes.append(f"{s.name}: {s.stale}.")
    return notes


def _r2(x) -> str:
    """R² with three decimals (it lies in [0, 1]; 2.2e-16 reads as 0.000)."""
    return "–" if x is None or not math.isfinite(x) else f"{x + 0.0:.3f}".replace("-0.000", "0.000")


def _signed(x, digits: int = 4) -> str:
    text = _fmt(x, digits)
    return "+" + text if x is not None and math.isfinite(x) and x > 0 else text


def _rule_text(s: StudySummary) -> str:
    r = s.convergence_rule
    rel = ">" if r.get("direction", "above") == "above" else "<"
    return f"{r.get('metric')} {rel} {r.get('threshold')}"


# --------------------------------------------------------------------------- text


def detour_text(s: StudySummary, prefix: str = "") -> str:
    """``"2 (20/20), 5 (14/20)"``: detour states with how often they are detours again in resamples
    (``prefix="state "``: ``"state 2 (20/20), ..."``)."""
    parts = []
    for d in s.detours:
        stab = d.get("stability") or {}
        text = f"{prefix}{d['state']}"
        if stab.get("of"):
            text += f" ({stab.get('detour_found', 0)}/{stab['of']})"
        parts.append(text)
    return ", ".join(parts) or "none"


def text_table(comparison: Comparison) -> list[str]:
    """The comparison as a compact fixed-width table plus one line per pair, for stdout."""
    head = ("study", "unit", "runs", "K", "detour states", "R²", "p", "dissim.", "fork", "median", "IQR", "CV", "fit")
    rows = [head]
    for s in comparison.studies:
        c = s.convergence
        rows.append((s.name, s.step_unit, str(s.n_runs), str(s.n_states), detour_text(s), _r2(s.r2),
                     _fmt(s.r2_p, 2), _fmt(s.dissimilarity), "yes" if s.forking else "no", _fmt(c.median, 6),
                     _fmt(c.iqr, 4), _fmt(c.cv, 3), "fitted now" if s.fitted_now else "reused"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in rows]
    adjust = comparison.n_tested > 1
    for p in comparison.pairs:
        if not p.tested:
            lines.append(f"{p.a} vs {p.b}: not tested ({p.reason})")
            continue
        adj = lambda raw, a: f"p = {_fmt(raw, 2)}" + (f", Holm {_fmt(a, 2)}" if adjust else "")  # noqa: E731
        text = (f"{p.a} vs {p.b} ({p.unit}s): median {p.b} − {p.a} = {_signed(p.median_diff)}; "
                f"Mann–Whitney U = {_fmt(p.mw_u, 6)}, {adj(p.mw_p, p.mw_p_adjusted)}; ")
        text += (f"Brown–Forsythe W = {_fmt(p.bf_w, 4)}, {adj(p.bf_p, p.bf_p_adjusted)}" if p.bf_p is not None
                 else f"Brown–Forsythe: {p.reason}")
        lines.append(text)
    if adjust:
        lines.append(f"p-values adjusted by Holm's method over the {comparison.n_tested} tested pairs "
                     "(location and spread separately)")
    return lines + equal_lines(comparison)


def _value(key: str, v) -> str:
    if v is None:
        return "–"
    return str(int(round(v))) if key in ("n_states", "detours") and float(v).is_integer() else (
        _r2(v) if key == "r2" else _fmt(v))


def equal_cell(comparison: Comparison, study: StudySummary, key: str) -> str:
    """One study's value of ``key`` at the common size: ``"3"`` or ``"3 [2–4]"`` (median [min–max])."""
    spread = {sp.study: sp for sp in comparison.spreads}.get(study.name)
    if spread is None:
        from .equal_size import fit_values

        return _value(key, fit_values(study.n_states, study.r2, study.dissimilarity, len(study.detours))[key])
    sm = spread.summary(key)
    if not sm["n"]:
        return "–"
    return f"{_value(key, sm['median'])} [{_value(key, sm['low'])}–{_value(key, sm['high'])}]"


def equal_verdicts(comparison: Comparison) -> list[str]:
    """One sentence per pair on K, R², dissimilarity and detours at the common size."""
    out = []
    n = comparison.equal_n
    for a, b in combinations(comparison.studies, 2):
        tests = [t for t in comparison.equal if t.a == a.name and t.b == b.name]
        tested = [t for t in tests if t.p is not None]
        spread = {sp.study for sp in comparison.spreads}
        if a.name not in spread and b.name not in spread:
            out.append(f"{a.name} vs {b.name}: both have {n} runs, so neither was refitted; their values are one fit "
                       "each, with no spread to read a difference against")
            continue
        if not tested:
            out.append(f"{a.name} vs {b.name} at {n} runs: not tested (no subsample refit succeeded)")
            continue
        differ = [t for t in tested if t.differs]
        outside = [t for t in tested if not t.differs and _outside(t)]
        parts = []
        for t in differ:
            parts.append(f"{t.label} differs ({_outside(t) or _value(t.quantity, t.a_value) + ' vs ' + _value(t.quantity, t.b_value)}; "
                         f"Monte Carlo p = {_fmt(t.p, 2)}, Holm {_fmt(t.p_adjusted, 2)})")
        if outside:
            parts.append("outside the subsamples' spread but not called different (smallest Holm-adjusted p "
                         f"{_fmt(min(t.p_adjusted for t in outside), 2)}): "
                         + ", ".join(f"{t.label} ({_outside(t)})" for t in outside))
        if not parts:
            top = min(t.p_adjusted for t in tested)
            parts.append(f"no difference in K, R², dissimilarity or detours beyond what {n} runs vary by "
                         f"(smallest Holm-adjusted p {_fmt(top, 2)})")
        out.append(f"{a.name} vs {b.name} at {n} runs: " + "; ".join(parts))
    need = None
    if comparison.equal and not any(t.differs for t in comparison.equal):
        from .equal_size import subsamples_for

        floor = max((t.min_p for t in comparison.equal if t.min_p is not None), default=None)
        m = sum(t.p is not None for t in comparison.equal)
        need = subsamples_for(comparison.alpha, m)
        if floor is not None and need > comparison.subsamples:
            out.append(f"{comparison.subsamples} subsamples cannot give a p below {_fmt(floor, 2)}, so no difference "
                       f"can be claimed from them; --subsamples {need} can test the {m} quantities at "
                       f"{comparison.alpha:g} after Holm's adjustment")
    return out


def _outside(t) -> str:
    """``"small 5, big 2–4"`` when a value lies outside the other study's subsample range, else ''."""
    for name, v, other, rng in ((t.b, t.b_value, t.a, t.a_range), (t.a, t.a_value, t.b, t.b_range)):
        if v is None or rng is None:
            continue
        lo, hi = rng
        if v > hi or v < lo:
            return (f"{name} {_value(t.quantity, v)}, {other} {_value(t.quantity, lo)}–{_value(t.quantity, hi)}")
    return ""


def equal_lines(comparison: Comparison) -> list[str]:
    """The equal-size block of the text output (empty when there is none)."""
    if comparison.equal_n is None or not comparison.spreads:
        return []
    n = comparison.equal_n
    which = "; ".join(f"{sp.study} refitted on {len(sp.draws)} subsamples of {n} of its {sp.of_runs} runs"
                      + (f", {len(sp.failed)} failed" if sp.failed else "") for sp in comparison.spreads)
    from .equal_size import QUANTITIES

    rows = [("study",) + tuple(label for _, label in QUANTITIES)]
    for s in comparison.studies:
        rows.append((s.name,) + tuple(equal_cell(comparison, s, key) for key, _ in QUANTITIES))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["", f"at equal size, {n} runs ({which}; median [min–max]):"]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in rows]
    return lines + equal_verdicts(comparison)
