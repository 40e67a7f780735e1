"""``latent fit`` as a library call: config, orchestration, and the atomic write of a fit directory.

>>> from latent.store import resolve_study
>>> from latent.fit import FitConfig, fit_study, write_fit
>>> study = resolve_study("data")                       # doctest: +SKIP
>>> result = fit_study(study, FitConfig(max_states=6))  # computes everything, writes nothing
>>> write_fit(study, result)                            # data/<study>/fits/<fit-id>/

Steps: read ``study.json`` and the run tables (refusing unfinished or unequal runs unless
``allow_partial``); build scaled features (:mod:`latent.features`); select K
(:class:`latent.hmm.HMMSelector`); decode every run (Viterbi and smoothed posteriors); compute
restricted convergence times, the detour tests and the occupancy regression
(:mod:`latent.detours`), transition feature importance (:mod:`latent.importance`), the training
map (:mod:`latent.trainmap`) and the stability of states and detours under resampling
(:mod:`latent.stability`). Every warning is logged and also kept in ``analysis.json``. Every user
mistake raises :class:`UserError` before anything is written.
"""

from __future__ import annotations

import hashlib
import logging
import math
import platform
import time
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import pandas as pd

from .boundaries import boundary_sharpness
from .ppc import posterior_predictive, ppc_lines
from .boundaries import verdict as boundary_verdict
from .detours import (
    DETOUR_RULES,
    MIN_RUNS,
    NONCONVERGED_RULES,
    OccupancyRegression,
    convergence_step,
    converging_states,
    detour_tests,
    entry_steps,
    ground_metric,
    occupancy_fractions,
    paper_detours,
    restricted_times,
    trajectory_dissimilarity,
)
from .errors import UserError
from .features import (REFERENCE_FEATURES, SCALINGS, FeatureMatrix, available_features, build_features,
                       expand_feature_names, measured_rows)
from .family import DEFAULT_FAMILY, FAMILIES, FAMILY_WORDS, get_family
from .hmm import COVARIANCES, CRITERIA, INITS, SELECTIONS, HMMSelector
from .importance import transition_importance
from .phase_names import NAMING_RULE, name_states
from .artifacts import load_fit, read_fit, write_fit  # noqa: F401 - the fit's files live in latent.artifacts
from .schemas import ANALYSIS_FORMAT, MODEL_FORMAT
from .settings import command_flags, setting, token_prefix, validate_fields
from .store import Study, dumps_json
from .trainmap import (
    ENTRY_WINDOW,
    PHASE_DEFINITION,
    STEP_PERCENTILES,
    build_map,
    entry_changes,
    map_to_data,
    performance_columns,
    phase_lines,
    state_phases,
)

log = logging.getLogger("latent")

GROUND_METRIC = (
    "Euclidean distance between the HMM state means in z units (exact earth mover's distance "
    "by linear programming); invariant to state relabelling"
)


@dataclass(frozen=True)
class FitConfig:
    """Settings of one fit. ``None`` fields take the study's defaults (``study.json``).

    The defaults are the ones bench/bench_recovery.py justifies (docs/fit.md);
    :meth:`reference` gives the reference's own procedure.

    Parameters
    ----------
    features : tuple of str, optional
        Feature columns, or named groups the study records (``weights``, ``progress``,
        ``function``, ``losses``; ``all`` is every group but the losses), expanded to their columns
        (default: the study's ``features``, else the 14 reference columns).
    first_n : int
        Checkpoints per run used (the first ones by step).
    scaling : {"global", "per_run"}
        One z-scoring pooled over runs (fitted on training runs only during selection), or each
        run z-scored on its own time axis (the reference).
    max_states, restarts, n_iter : int
    family : {"gaussian", "ar"}
        The state model (:mod:`latent.family`): a state is a place (the Gaussian HMM, the
        reference's) or a linear regime of change (:mod:`latent.autoregressive`).
    covariance : {"full", "diag", "spherical", "tied"}
        Of the emission noise.
    criterion : {"loglik", "bic", "aic"}
        Held-out −2·log-likelihood, or with the BIC/AIC penalty (the reference: BIC).
    selection : {"cv", "split", "reference"}
        How held-out scores choose K (:class:`latent.hmm.HMMSelector`).
    init : {"segments", "kmeans"}
        Where EM starts: a segmentation of the runs into stretches of constant mean, or KMeans
        of checkpoints (hmmlearn 0.3.0, the reference).
    folds : int
        Folds of runs for ``selection="cv"``.
    one_se : bool
        ``"cv"``: the smallest K within one standard error of the best.
    random_state : int
    test_fraction : float
        Fraction of runs held out for ``"split"`` / ``"reference"``.
    metric, threshold, direction : optional
        Convergence rule (default: the study's ``convergence``).
    nonconverged : {"restrict", "exclude"}
        Runs that never converge count as converging at τ, the last step every run reaches
        (restricted means; the reference's rule), or are left out of the regression and tests.
    detour_rule : {"delay", "paper"}
        A detour is an optional state whose visitors converge significantly later (permutation
        test of the Welch t, Westfall–Young maxT over states), or the paper's rule (optional, positive regression coefficient).
    min_runs : int
        Fewest visitors and skippers for a state's delay or coefficient to be estimated.
    alpha : float
        Family-wise error rate of the detour tests.
    n_boot : int
        Bootstrap resamples for the regression coefficients' intervals.
    resamples : int
        Bootstrap refits measuring how often each state and detour recurs (0: skip).
    allow_partial : bool
        Fit runs that are not finished, or shorter than the others (refused otherwise).
    audit : bool
        Run the robustness audit (:mod:`latent.audit`): does each state and detour survive K ± 1,
        the other families, each feature group dropped, and change points of each run.
    """

    # Each field carries its flag, help, bounds and fit-id token (latent.settings): the CLI options,
    # the validation, the fit id and the recorded command are generated from these declarations.
    features: tuple[str, ...] | None = setting(
        None, flag="--features", kind="list",
        help="comma-separated feature columns or groups: weights (the 14 reference statistics), progress (Fourier "
             "progress measures), function (function-space observables), losses, all (every group but losses) "
             "(default: the study's, i.e. the 14 reference columns)")
    first_n: int = setting(1000, flag="--first-n", least=1, token="first", help="checkpoints per run used")
    scaling: str = setting("global", flag="--scaling", choices=SCALINGS,
                           help="global (one z-scoring, from training runs only) or per_run (the reference)")
    max_states: int = setting(8, flag="--max-states", least=1, token="max", help="fit K = 1..MAX_STATES")
    restarts: int = setting(5, flag="--restarts", least=1, token="restarts", help="random restarts per K (per fold)")
    n_iter: int = setting(32, flag="--n-iter", least=1, token="iter", help="EM iterations per restart")
    family: str = setting(DEFAULT_FAMILY, flag="--family", choices=FAMILIES,
                          help="state model: gaussian (a state is a place) or ar (a regime of change: "
                               "z_t = a z_(t-1) + b + noise per state); see docs/fit.md")
    covariance: str = setting("full", flag="--covariance", choices=COVARIANCES,
                              help="full, diag, spherical or tied (of the emission noise)")
    criterion: str = setting("loglik", flag="--criterion", choices=CRITERIA,
                             help="loglik (-2 held-out log-likelihood), bic or aic (with the penalty)")
    selection: str = setting("cv", flag="--selection", choices=SELECTIONS,
                             help="cv (k-fold over runs), split (one split, best restart) or reference")
    init: str = setting("segments", flag="--init", choices=INITS,
                        help="where EM starts: segments (stretches of constant mean) or kmeans (the reference)")
    folds: int = setting(5, flag="--folds", least=2, token="folds", help="folds of runs for --selection cv")
    one_se: bool = setting(True, flag="--no-one-se", token="bestk",
                           help="--selection cv: take the best K, not the smallest within one standard error")
    random_state: int = setting(0, flag="--random-state", least=0, token="seed",
                                help="seeds the folds, restarts, tests, bootstrap and resamples")
    test_fraction: float = setting(0.2, flag="--test-fraction", between=(0, 1), token="test",
                                   help="fraction of runs held out for --selection split/reference")
    metric: str | None = setting(None, flag="--metric", kind="str",
                                 help="convergence metric column (default: the study's)")
    threshold: float | None = setting(None, flag="--threshold", kind="float",
                                      help="convergence threshold (default: the study's)")
    direction: str | None = setting(None, flag="--direction", kind="str", help="above (metric > threshold) or below")
    nonconverged: str = setting("restrict", flag="--nonconverged", choices=NONCONVERGED_RULES,
                                help="runs that never converge: restrict (count them at the last common step) or "
                                     "exclude")
    detour_rule: str = setting("delay", flag="--detour-rule", choices=DETOUR_RULES,
                               help="delay (visitors converge significantly later) or paper (optional state, "
                                    "positive coefficient)")
    min_runs: int = setting(MIN_RUNS, flag="--min-runs", least=2, token="minruns",
                            help="fewest visitors and skippers for a state's delay to be estimated")
    alpha: float = setting(0.05, flag="--alpha", between=(0, 1), token="alpha",
                           help="family-wise error rate of the detour tests")
    n_boot: int = setting(1000, flag="--n-boot", least=0, token="boot",
                          help="bootstrap resamples for the regression intervals")
    resamples: int = setting(20, flag="--resamples", least=0, token="resamples",
                             help="refits on resampled runs for stability (0 skips them)")
    allow_partial: bool = setting(False, flag="--allow-partial", token="partial",
                                  help="fit unfinished runs and runs shorter than the others (refused by default)")
    audit: bool = setting(True, flag="--no-audit", token="noaudit",
                          help="skip the robustness audit (alternative fits: K-1, K+1, other families, feature "
                               "groups dropped; change points)")

    @classmethod
    def reference(cls, **overrides) -> "FitConfig":
        """The reference's procedure (reference.md B6, C, E): per-run z-scoring, one 80/20
        split of runs, EM started from KMeans, K by the BIC averaged over 5 restarts, the paper's
        detour rule."""
        base = dict(scaling="per_run", selection="reference", init="kmeans", criterion="bic", restarts=5, n_iter=32,
                    detour_rule="paper", nonconverged="restrict")
        base.update(overrides)
        return cls(**base)

    def resolve(self, meta: dict) -> "FitConfig":
        """Fill ``None`` fields from ``study.json`` and validate every field."""
        conv = meta.get("convergence") or {}
        features = self.features
        if features is None:
            features = tuple(meta.get("features") or REFERENCE_FEATURES)
        features = expand_feature_names(features, meta)
        cfg = replace(
            self,
            features=tuple(features),
            metric=self.metric if self.metric is not None else conv.get("metric"),
            threshold=self.threshold if self.threshold is not None else conv.get("threshold"),
            direction=self.direction if self.direction is not None else conv.get("direction", "above"),
        )
        cfg.validate()
        return cfg

    def validate(self) -> None:
        """Check every field against its declared bounds and choices, then the convergence rule.

        Raises
        ------
        latent.settings.ConfigError
            A field out of bounds (the message names the field; the CLI shows its flag).
        UserError
            No convergence rule.
        """
        validate_fields(self)
        if not self.metric:
            raise UserError("no convergence metric: the study.json has no 'convergence'; pass --metric and --threshold")
        if self.threshold is None or not math.isfinite(float(self.threshold)):
            raise UserError("no convergence threshold: the study.json has none; pass --threshold")
        if self.direction not in ("above", "below"):
            raise UserError(f"unknown convergence direction {self.direction!r}; use 'above' or 'below'")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["features"] = list(self.features) if self.features is not None else None
        d["threshold"] = float(self.threshold) if self.threshold is not None else None
        d["test_fraction"] = float(self.test_fraction)
        d["alpha"] = float(self.alpha)
        return d


#: The reference's procedure (:meth:`FitConfig.reference`), named ``reference`` in fit ids.
_REFERENCE_SETTINGS = {"scaling": "per_run", "selection": "reference", "init": "kmeans", "criterion": "bic",
                       "detour_rule": "paper"}


#: settings added after the first fit format, hashed into fit ids only when not at their default
_LATER_SETTINGS = {"family": DEFAULT_FAMILY, "audit": True}


def _id_token(name: str, value) -> str:
    """How a setting that differs from its default reads in a fit id (the field's declared token)."""
    if name == "features":
        return f"{len(value)}feat"
    if isinstance(value, bool):
        return token_prefix(FitConfig, name)
    if isinstance(value, str):  # "reference" alone is kept for the reference's five settings together
        return {("selection", "reference"): "refselect"}.get((name, value), value.replace("_", ""))
    prefix = token_prefix(FitConfig, name)
    return f"{prefix}{value:g}" if isinstance(value, float) else f"{prefix}{value}"


def fit_options(config: FitConfig) -> list[str]:
    """The settings of ``config`` that differ from the defaults, as fit-id tokens, in field order.

    ``reference`` stands for the reference's five settings (:meth:`FitConfig.reference`) when all
    of them are set; features other than the 14 reference columns read ``<d>feat``; the
    convergence rule (the study's by default) is not listed. Covariance and criterion are not
    listed either: every fit id starts with them.

    Parameters
    ----------
    config : FitConfig
        A resolved config.

    Returns
    -------
    list of str
        E.g. ``[]`` for the defaults, ``["reference"]`` for ``--reference``, ``["max6",
        "resamples0"]`` for ``--max-states 6 --resamples 0``.
    """
    default = FitConfig()
    d = config.to_dict()
    base = default.to_dict()
    reference = all(d[k] == v for k, v in _REFERENCE_SETTINGS.items())
    tokens = []
    for name in d:
        if name in ("covariance", "criterion", "metric", "threshold", "direction"):
            continue
        if reference and name in _REFERENCE_SETTINGS:
            if name == "scaling":
                tokens.append("reference")
            continue
        value = d[name]
        if name == "features":
            if value is None or tuple(value) == tuple(REFERENCE_FEATURES):
                continue
        elif value == base[name]:
            continue
        tokens.append(_id_token(name, value))
    return tokens


def fit_id(config: FitConfig) -> str:
    """The id of a fit: derived from the resolved settings, and naming those that differ from the defaults.

    Parameters
    ----------
    config : FitConfig
        A resolved config.

    Returns
    -------
    str
        ``<covariance>-<criterion>[-<option>...]-<hash8>``, e.g. ``full-loglik-1a2b3c4d``
        (defaults), ``full-bic-reference-…`` (``--reference``), ``full-loglik-max6-resamples0-…``.
        The hash is over every resolved setting, so different settings never share an id;
        :func:`fit_options` gives the option tokens.
    """
    settings = config.to_dict()
    for name, default in _LATER_SETTINGS.items():  # so fits made before they existed keep their ids
        if settings.get(name) == default:
            del settings[name]
    digest = hashlib.sha256(dumps_json(settings).encode()).hexdigest()[:8]
    return "-".join([config.covariance, config.criterion, *fit_options(config), digest])


def package_versions() -> dict:
    from importlib import metadata

    out = {"python": platform.python_version()}
    for name in ("latent", "numpy", "scipy", "scikit-learn", "hmmlearn", "pandas", "pyarrow", "networkx"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


@dataclass
class FitResult:
    """Everything ``latent fit`` writes, computed but not yet written.

    Attributes
    ----------
    fit_id : str
    config : FitConfig
    model : dict
        ``model.json`` content.
    paths : DataFrame
        ``paths.parquet`` content.
    analysis : dict
        ``analysis.json`` content.
    selector : HMMSelector
        The fitted selector (``model_`` is the chosen HMM in canonical order).
    features : FeatureMatrix
    summary : list of str
        Lines for the command's summary.
    timings : dict
        Wall seconds per stage (``read``, ``selection``, ``analysis``, ``stability``, ``total``);
        kept out of the artifacts, which stay byte-identical from run to run.
    """

    fit_id: str
    config: FitConfig
    model: dict
    paths: pd.DataFrame
    analysis: dict
    selector: HMMSelector
    features: FeatureMatrix
    summary: list = field(default_factory=list)
    timings: dict = field(default_factory=dict)

    @property
    def warnings(self) -> list[str]:
        return list(self.analysis.get("warnings", []))


def json_safe(x):
    """``x`` made JSON-safe, recursively: NaN/inf -> None, numpy scalars and arrays -> Python,
    tuples -> lists, keys -> str."""
    if isinstance(x, dict):
        return {str(k): json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_safe(v) for v in x]
    if isinstance(x, np.ndarray):
        return json_safe(x.tolist())
    if isinstance(x, np.bool_):
        return bool(x)
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        return float(x) if math.isfinite(x) else None
    return x


class _WarningLog(logging.Handler):
    """Keeps the text of every warning the ``latent`` logger emits during a fit."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def fit_study(study: Study, config: FitConfig | None = None, n_jobs: int | None = None,
              command: str | None = None, progress: bool = False, seeds=None) -> FitResult:
    """Fit a study; compute every artifact without writing anything.

    Parameters
    ----------
    study : Study
    config : FitConfig, optional
    n_jobs : int, optional
        Worker processes for the restarts and resamples (default ``os.cpu_count()``); does not
        change results.
    command : str, optional
        The command line to record.
    progress : bool
        Show progress bars of the HMM restarts and resamples on stderr.
    seeds : collection of int, optional
        Fit only these runs (``latent compare`` refits subsamples this way); default every run.
        The result is not a fit of the study: it is for reading, not for :func:`write_fit`.

    Raises
    ------
    UserError
        Missing or empty study, unfinished runs, unknown feature, bad setting, a convergence
        threshold no run crosses, too few runs, a corrupt file.
    """
    if not study.exists():
        raise UserError(f"no study at {study.root} (no study.json); `latent ls` lists the studies")
    meta = study.read_meta()
    cfg = (config or FitConfig()).resolve(meta)
    if n_jobs is not None and n_jobs < 1:
        raise UserError(f"--jobs must be at least 1, got {n_jobs}")
    if not study.run_seeds():
        raise UserError(f"study {study.name} has no runs ({study.runs_dir} holds no seed-*.parquet); collect first")
    handler = _WarningLog()
    log.addHandler(handler)
    try:
        result = _fit(study, meta, cfg, n_jobs, command, progress, handler, seeds)
    finally:
        log.removeHandler(handler)
    return result


def _read_runs(study: Study, cfg: FitConfig, seeds=None) -> pd.DataFrame:
    """The runs to fit: every run done; others (unfinished, being collected, damaged, not
    started) or runs with fewer checkpoints than the rest are refused by name, unless
    ``allow_partial``, which fits what is saved of them (never a damaged run) with a warning."""
    table, statuses = study.read_finished_runs(
        seeds=None if seeds is None else sorted({int(s) for s in seeds}), allow_partial=True)
    problems = []
    for kind in ("partial", "running", "pending", "damaged"):
        seeds = sorted(s for s, st in statuses.items() if st.status == kind)
        if seeds:
            example = statuses[seeds[0]].detail
            problems.append(f"{kind}: seed(s) {_fmt_seeds(seeds)}" + (f" ({example})" if example else ""))
    counts = table.groupby("seed").size().clip(upper=cfg.first_n)
    short = sorted(int(s) for s in counts.index[counts < counts.max()])
    if short:
        problems.append(f"seed(s) {_fmt_seeds(short)} have fewer checkpoints than the others "
                        f"({int(counts.min())} vs {int(counts.max())})")
    if problems:
        text = "; ".join(problems)
        if not cfg.allow_partial:
            task = study.read_meta().get("task")
            finish = {"external": "finish or re-import them", "simulated": "simulate the study again"}.get(
                task, "finish them (rerun `latent collect`; `latent ls` shows every run)")
            raise UserError(f"{text}; {finish}, or pass --allow-partial to fit what is saved "
                            "(--first-n N fits the first N checkpoints of every run)")
        log.warning("fitting a partial study (--allow-partial): %s", text)
    return table


def _check_size(fm: FeatureMatrix, cfg: FitConfig) -> None:
    """Refuse, before any fitting, a study whose training runs cannot estimate even one state's
    noise: with ``--covariance full`` a state needs d + 1 rows, and each cross-validation fit sees
    only the other folds' runs."""
    from .hmm import min_state_rows

    d = len(fm.features)
    rows = int(fm.lengths.sum())
    if len(fm.lengths) < 3:
        return  # too few runs to split at all: model selection says so, in its words
    share = 1 - 1 / cfg.folds if cfg.selection == "cv" else 1 - cfg.test_fraction
    usable = int(rows * share)
    need = min_state_rows(cfg.covariance, d)
    if usable < need:
        raise UserError(f"{d} features with --covariance {cfg.covariance} need at least {need:g} checkpoints in the "
                        f"runs each fit trains on, and these have {usable} ({rows} in all, {share:.0%} used per fit); "
                        "pass --covariance diag, fewer --features, or more runs")
    if cfg.covariance == "full" and d > 200:
        log.warning("%d features with full covariances: each state has %d noise parameters, and EM inverts %d x %d "
                    "matrices at every step, so this fit will be slow; --covariance diag is the usual choice here",
                    d, d * (d + 1) // 2, d, d)


def _fmt_seeds(seeds) -> str:
    seeds = list(seeds)
    return ", ".join(map(str, seeds[:12])) + (f" and {len(seeds) - 12} more" if len(seeds) > 12 else "")


class _Clock:
    """Seconds spent in each named stage of a fit (``FitResult.timings``)."""

    def __init__(self):
        self.marks = [time.perf_counter()]
        self.timings: dict[str, float] = {}

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.timings[name] = self.timings.get(name, 0.0) + now - self.marks[-1]
        self.marks.append(now)

    def total(self) -> dict[str, float]:
        self.timings["total"] = self.marks[-1] - self.marks[0]
        return self.timings


@dataclass
class _Data:
    """Stage ``read``: the runs as the fit sees them, and their convergence."""

    table: pd.DataFrame  # the rows the features are measured at
    full: pd.DataFrame  # every row (the convergence metric is read at all of them)
    fm: FeatureMatrix
    conv: dict
    last_step: dict
    never: list


@dataclass
class _Decoded:
    """Stage ``decode``: every run's Viterbi path and state probabilities, split per run."""

    path: np.ndarray
    paths_frame: pd.DataFrame
    run_paths: list
    run_z: list
    run_raw: list
    run_steps: list


@dataclass
class _Detours:
    """Stage ``detours``: occupancy, convergence times, the delay tests and the occupancy regression."""

    occupancy: np.ndarray
    visited: np.ndarray
    converged: np.ndarray
    y_all: np.ndarray
    tau: float
    use: np.ndarray
    rule: str
    tests: list
    reg: OccupancyRegression
    flagged: list
    regression: dict


def _fit(study, meta, cfg, n_jobs, command, progress, handler, seeds=None) -> FitResult:
    """The fit as named stages, each returning its block of the artifacts: read, selection, decode,
    detours, stability, audit, checks (map, phases, boundaries, posterior predictive), assemble."""
    clock = _Clock()
    data = _stage_read(study, cfg, seeds)
    clock.lap("read")
    selector = _stage_select(data.fm, cfg, n_jobs, progress)
    clock.lap("selection")
    dec = _stage_decode(selector, data.fm)
    det = _stage_detours(data, dec, selector.n_states_, cfg, meta)
    clock.lap("analysis")
    stability = _stage_stability(data, dec, det, selector, cfg, n_jobs, progress)
    detours = _detour_rows(det, cfg)
    clock.lap("stability")
    audit = _stage_audit(data, dec, det, selector.n_states_, cfg, n_jobs, progress)
    clock.lap("audit")
    checks = _stage_checks(data, dec, det, selector, cfg, meta)
    clock.lap("checks")
    analysis, model = _assemble(study, meta, cfg, command, handler, data, dec, det, selector, stability, detours,
                                audit, checks)
    clock.lap("analysis")
    result = FitResult(model["fit_id"], cfg, model, dec.paths_frame, analysis, selector, data.fm,
                       timings=clock.total())
    result.summary = _summary(result, det.visited, det.reg, det.tests, detours, data.never, stability)
    truth = _truth_line(study, result)
    if truth:
        result.summary.append(truth)
    return result


def _stage_read(study, cfg: FitConfig, seeds) -> _Data:
    table = _read_runs(study, cfg, seeds)
    if cfg.metric not in table.columns:
        raise UserError(
            f"convergence metric {cfg.metric!r} is not a column of the run tables; pass --metric "
            f"(columns: {', '.join(c for c in table.columns if c not in ('seed', 'step', 'epoch'))})"
        )
    full, table = table, measured_rows(table, cfg.features)
    if len(table) < len(full):
        log.info("llc is estimated at thinned checkpoints: the fit uses the %d of %d checkpoints where it was "
                 "measured", len(table), len(full))
    fm = build_features(table, cfg.features, cfg.first_n, cfg.scaling)
    _check_size(fm, cfg)
    conv, last_step = _convergence(full, fm, cfg)
    return _Data(table, full, fm, conv, last_step, [s for s in fm.seeds if conv[s] is None])


def _stage_select(fm: FeatureMatrix, cfg: FitConfig, n_jobs, progress) -> HMMSelector:
    selector = HMMSelector(
        max_states=cfg.max_states, restarts=cfg.restarts, n_iter=cfg.n_iter, covariance_type=cfg.covariance,
        criterion=cfg.criterion, selection=cfg.selection, folds=cfg.folds, one_se=cfg.one_se,
        test_fraction=cfg.test_fraction, standardize=cfg.scaling == "global", init=cfg.init,
        random_state=cfg.random_state, family=cfg.family,
        n_jobs=n_jobs, progress=progress,
    ).fit(fm.X, fm.lengths)
    _warn_selection(selector, cfg)
    return selector


def _stage_decode(selector: HMMSelector, fm: FeatureMatrix) -> _Decoded:
    path = selector.predict(fm.X, fm.lengths)
    post = selector.predict_proba(fm.X, fm.lengths)
    cols = {"state": path.astype(np.int64)}
    for k in range(selector.n_states_):
        cols[f"p_state_{k}"] = post[:, k]
    return _Decoded(path, fm.to_frame(cols), fm.split(path), fm.split(fm.X), fm.split(fm.raw), fm.split(fm.steps))


def _stage_detours(data: _Data, dec: _Decoded, K: int, cfg: FitConfig, meta: dict) -> _Detours:
    fm, conv = data.fm, data.conv
    occupancy = np.array([occupancy_fractions(p, K) for p in dec.run_paths])
    visited = occupancy > 0
    converged = np.array([conv[s] is not None for s in fm.seeds])
    y_all, tau = restricted_times([conv[s] for s in fm.seeds], [data.last_step[s] for s in fm.seeds])
    if cfg.nonconverged == "exclude":
        use = converged
        rule = "runs that never converge are left out of the detour tests and the regression"
    else:
        use = np.ones(len(fm.seeds), dtype=bool)
        rule = (f"convergence steps are restricted at tau = {tau:g} (the last step every run reaches): "
                "a run that never converges counts as tau, and means are restricted means")
    y = y_all[use]

    entry = entry_steps(dec.run_paths, dec.run_steps, y_all, K, converged)  # states entered before converging
    conv_in = converging_states(dec.run_paths, dec.run_steps, y_all, converged)
    tests = detour_tests(entry[use], y, cfg.min_runs, cfg.alpha, random_state=cfg.random_state,
                         visited_any=visited[use], converging_in=conv_in[use])
    reg = OccupancyRegression(n_boot=cfg.n_boot, min_runs=cfg.min_runs, random_state=cfg.random_state).fit(
        occupancy[use], y)
    paper = paper_detours(reg.coef_, visited[use], converged[use])
    for row in tests:
        k = row["state"]
        row.update(paper_rule=k in paper, coef=reg.coef_[k], coef_ci_low=reg.ci_low_[k],
                   coef_ci_high=reg.ci_high_[k], coef_note=reg.not_estimable_[k],
                   coef_reference=reg.coef_reference_[k])
    flagged = [r["state"] for r in tests if r["detour"]] if cfg.detour_rule == "delay" else paper
    for row in tests:
        if row["status"] == "not_estimable" and row["delay"] is not None and row["delay"] > 0:
            log.warning("state %d: entered before converging by %d and skipped by %d run(s); whether it delays "
                        "convergence cannot be tested (%s; observed delay %+.4g)", row["state"],
                        row["runs_visiting"], row["runs_skipping"], row.get("reason") or
                        f"--min-runs {cfg.min_runs}", row["delay"])

    regression = {
        "target": f"convergence step ({meta.get('step_unit', 'step')}) of {cfg.metric} "
                  f"{'>' if cfg.direction == 'above' else '<'} {cfg.threshold}",
        "design": "OLS without intercept on the fraction of checkpoints in each visited state; "
                  "coef = beta_k - intercept, intercept = mean-occupancy-weighted beta (reference_weights); "
                  "null coefficients: see not_estimable ('few runs': fewer than min_runs visitors; 'collinear': "
                  "the state's share is an exact combination of others', e.g. the same in every run)",
        "states": list(range(K)),
        "coef": reg.coef_, "beta": reg.beta_, "ci_low": reg.ci_low_, "ci_high": reg.ci_high_,
        "estimable": reg.estimable_, "not_estimable": reg.not_estimable_,
        "reference_weights": reg.reference_weights_, "coef_reference": reg.coef_reference_,
        "intercept": reg.intercept_, "r2": reg.r2_, "f_stat": reg.f_stat_, "p_value": reg.p_value_,
        "n_runs": reg.n_, "rank": reg.rank_, "df_model": reg.df_model_, "df_resid": reg.df_resid_,
        "n_boot": cfg.n_boot, "n_boot_used": reg.n_boot_used_, "boot_seed": cfg.random_state,
        "min_runs": cfg.min_runs, "note": rule,
    }
    return _Detours(occupancy, visited, converged, y_all, tau, use, rule, tests, reg, flagged, regression)


def _stage_stability(data: _Data, dec: _Decoded, det: _Detours, selector: HMMSelector, cfg: FitConfig, n_jobs,
                     progress) -> dict | None:
    """Refits on resampled runs (``--resamples``); also writes each state test's ``stability``."""
    stability = None
    if cfg.resamples:
        from .stability import resample_stability

        keep = np.flatnonzero(det.use)
        X_use, len_use = data.fm.subset(keep)
        stability = resample_stability(
            X_use, len_use, selector.params_, cfg.covariance, det.y_all[keep], det.converged[keep], det.flagged,
            steps=np.concatenate([dec.run_steps[i] for i in keep]),
            rule=cfg.detour_rule, min_runs=cfg.min_runs, alpha=cfg.alpha, resamples=cfg.resamples,
            n_iter=cfg.n_iter, random_state=cfg.random_state, n_jobs=n_jobs, progress=progress,
            family=cfg.family,
        )
        stability["k_folds"] = {str(k): v for k, v in selector.fold_choice_.items()}
        _warn_stability(stability, selector.n_states_, det.flagged)
    for row in det.tests:
        k = row["state"]
        row["stability"] = None if stability is None else {
            "found": stability["state_found"][k], "of": stability["used"],
            "detour_found": stability["detour_found"].get(k, stability["new_detours"].get(k, 0))}
    return stability


def _detour_rows(det: _Detours, cfg: FitConfig) -> list[dict]:
    """``analysis.detours``: one row per flagged state."""
    detours = []
    for k in det.flagged:
        row = det.tests[k]
        reg = det.reg
        detours.append({
            "state": k, "rule": cfg.detour_rule, "delay": row["delay"], "ci_low": row["ci_low"],
            "ci_high": row["ci_high"], "p_value": row["p_value"], "p_adjusted": row["p_adjusted"],
            "significant": bool(row["detour"]) if cfg.detour_rule == "delay" else bool(
                np.isfinite(reg.ci_low_[k]) and reg.ci_low_[k] > 0),
            "coef": reg.coef_[k], "coef_ci_low": reg.ci_low_[k], "coef_ci_high": reg.ci_high_[k],
            "runs_visiting": row["runs_visiting"], "runs_skipping": row["runs_skipping"],
            "stability": row["stability"],
        })
    return detours


def _stage_audit(data: _Data, dec: _Decoded, det: _Detours, K: int, cfg: FitConfig, n_jobs, progress) -> dict | None:
    if not cfg.audit:
        return None
    from .audit import audit_fit

    fm = data.fm
    audit = audit_fit(fm.X, fm.lengths, dec.path, fm.features, K, cfg.family, cfg.covariance, fm.steps,
                      det.y_all[det.use], det.flagged if cfg.detour_rule == "delay" else [],
                      converged=det.converged[det.use], use=np.flatnonzero(det.use),
                      min_runs=cfg.min_runs, alpha=cfg.alpha, n_iter=cfg.n_iter,
                      random_state=cfg.random_state, n_jobs=n_jobs, progress=progress)
    _warn_audit(audit)
    return audit


def _stage_checks(data: _Data, dec: _Decoded, det: _Detours, selector: HMMSelector, cfg: FitConfig,
                  meta: dict) -> dict:
    """What each state means and whether to believe it: dissimilarity, transition importance, phases,
    boundary sharpness, the training map and the posterior predictive check."""
    fm, K, params = data.fm, selector.n_states_, selector.params_
    dissim = trajectory_dissimilarity(det.occupancy, ground_metric(params["means"]))
    importance = transition_importance(dec.run_z, dec.run_paths, params, fm.features, cfg.family)
    # each arrow's change is the data's change on that move, as the state table's (one definition)
    moves = entry_changes(dec.run_paths, dec.run_z, ENTRY_WINDOW)
    for edge in importance:
        total, n = moves[(edge["source"], edge["target"])]
        for f in edge["features"]:
            f["change_z"] = float(total[fm.features.index(f["feature"])] / n)
    conv_list = [data.conv[s] for s in fm.seeds]
    phases = _phases(data.table, fm, cfg, dec.run_paths, dec.run_z, K, meta)
    boundaries = boundary_sharpness(dec.run_z, dec.run_paths, params["means"], params["covars"])
    boundaries["verdict"] = boundary_verdict(boundaries)
    if boundaries["judged_transitions"] and not boundaries["discrete_transitions"]:
        log.warning("no discrete transitions: at every boundary the runs move no more abruptly than they do "
                    "inside the states (%d transitions judged); nothing shows the %d states to be phases rather "
                    "than stretches of continuous change, so read them as a discretisation (docs/fit.md, "
                    "'Discrete transitions')", boundaries["judged_transitions"], K)
    G = build_map(dec.run_paths, dec.run_raw, params, fm.features, conv_list, importance, phases=phases["states"],
                  boundaries=boundaries["transitions"])
    ppc = posterior_predictive(params, cfg.family, cfg.covariance, dec.run_z, dec.run_paths,
                               random_state=cfg.random_state)
    if ppc["outside_names"]:
        words = {r["name"]: r for r in ppc["statistics"]}
        log.warning("posterior predictive check: the fitted %s model does not produce runs like these (%s); its "
                    "states and detours rest on a model the data contradict there (docs/fit.md, 'Posterior "
                    "predictive checks'; try another --family)", cfg.family,
                    "; ".join(f"{words[n]['description'].split(' (')[0]}: data {words[n]['data']:.3g}, model "
                              f"{words[n]['low']:.3g} to {words[n]['high']:.3g}" for n in ppc["outside_names"]))
    return {"dissimilarity": dissim, "importance": importance, "phases": phases, "boundaries": boundaries,
            "map": G, "ppc": ppc}


def _assemble(study, meta, cfg, command, handler, data: _Data, dec: _Decoded, det: _Detours, selector, stability,
              detours, audit, checks) -> tuple[dict, dict]:
    """``analysis.json`` and ``model.json`` from the stages' blocks."""
    fm, K, conv = data.fm, selector.n_states_, data.conv
    selection_info = {
        "procedure": cfg.selection, "criterion": cfg.criterion, "one_se": cfg.one_se,
        "folds": selector.folds_ if cfg.selection == "cv" else None,
        "fold_choice": {str(k): v for k, v in selector.fold_choice_.items()},
        "fragile": selector.fragile_, "runner_up": selector.runner_up_,
    }
    analysis = json_safe({
        "format": ANALYSIS_FORMAT,
        "convergence": {
            "metric": cfg.metric, "threshold": float(cfg.threshold), "direction": cfg.direction,
            "step_unit": meta.get("step_unit", "step"),
            "times": {str(s): conv[s] for s in fm.seeds}, "tau": det.tau,
            "never_converged": data.never, "rule": det.rule,
        },
        "occupancy": {str(s): det.occupancy[i] for i, s in enumerate(fm.seeds)},
        "map": map_to_data(checks["map"]),
        "phases": checks["phases"],
        "states": det.tests,
        "regression": det.regression,
        "detours": detours,
        "detour_rule": {"rule": cfg.detour_rule, "min_runs": cfg.min_runs, "alpha": cfg.alpha},
        "selection": selection_info,
        "stability": stability,
        "audit": audit,
        "boundaries": checks["boundaries"],
        "ppc": checks["ppc"],
        "dissimilarity": {"value": checks["dissimilarity"], "ground_metric": GROUND_METRIC},
        "importance": checks["importance"],
        "warnings": list(handler.messages),
    })
    seeds = fm.seeds
    model = json_safe({
        "format": MODEL_FORMAT,
        "fit_id": fit_id(cfg),
        "study": study.name,
        "config": cfg.to_dict(),
        "n_states": K,
        "criterion": cfg.criterion,
        "features": fm.features,
        "covariance_type": cfg.covariance,
        "family": cfg.family,
        **get_family(cfg.family).payload(selector.params_),
        "scaling": fm.scaling,
        "selection": selector.selection_,
        "restarts": selector.restarts_,
        "final_restarts": selector.final_restarts_,
        "seeds": {
            "train": [seeds[i] for i in selector.train_runs_],
            "test": [seeds[i] for i in selector.test_runs_],
            "folds": [[seeds[i] for i in g] for g in selector.folds_],
            "used": seeds,
            "excluded": {str(s): r for s, r in sorted(fm.excluded.items())},
        },
        "state_order": selector.state_order_,
        "versions": package_versions(),
        "command": command or _default_command(study, cfg),
    })
    return analysis, model


def _phases(table: pd.DataFrame, fm: FeatureMatrix, cfg: FitConfig, run_paths, run_z, K: int, meta: dict) -> dict:
    """The ``phases`` block of ``analysis.json``: what each state means (:func:`latent.trainmap.state_phases`),
    from the study's performance columns at the decoded checkpoints, HMM features or not."""
    columns = performance_columns(available_features(table), cfg.metric)
    run_steps = fm.split(fm.steps)
    by_seed = {int(s): g for s, g in table.sort_values(["seed", "step"], kind="stable").groupby("seed", sort=True)}
    metrics: dict[str, list[np.ndarray]] = {c: [] for c in columns}
    for seed, steps in zip(fm.seeds, run_steps):
        run = by_seed[seed].head(len(steps))  # the rows build_features decoded: the first ones by step
        for c in columns:
            metrics[c].append(pd.to_numeric(run[c], errors="coerce").to_numpy(dtype=float))
    states = state_phases(run_paths, run_steps, metrics, run_z, fm.features, K, window=ENTRY_WINDOW)
    progress = "excluded_loss" in fm.features or "sum_sq_weights" in fm.features
    rule = {"metric": cfg.metric, "threshold": cfg.threshold, "direction": cfg.direction}
    for row, name in zip(states, name_states(states, rule, progress)):
        row["name"] = name
    return {"metrics": columns, "step_unit": meta.get("step_unit", "step"), "window": ENTRY_WINDOW,
            "percentiles": list(STEP_PERCENTILES), "scaling": cfg.scaling, "definition": dict(PHASE_DEFINITION),
            "naming": NAMING_RULE, "states": states}


def _truth_line(study: Study, result: FitResult) -> str | None:
    """For a study written by ``latent simulate``: what the fit found against the planted truth."""
    from .simulate import score, truth_from_file, truth_mismatch

    truth = truth_from_file(study.root / "truth.json")
    if truth is None:
        return None
    problem = truth_mismatch(truth, result.paths)
    if problem is not None:
        log.warning("truth file %s does not describe the fitted runs (%s); ignored", study.root / "truth.json", problem)
        return None
    s = score(truth, result.paths, result.analysis, result.config.min_runs)
    if truth.n_states is None:
        return (f"planted truth: smooth drift, no states; K = {s['k_fit']} found; "
                f"{len(s['flagged'])} state(s) flagged as detours (none planted)")
    planted = ", ".join(map(str, truth.detours)) or "none"
    k_text = "found" if s["k_ok"] else f"found K = {s['k_fit']}"
    return (f"planted truth: K = {truth.n_states} ({k_text}); {s['state_accuracy']:.1%} of checkpoints labelled "
            f"right; planted detours {planted}: {s['detours_found']} of {s['detours_true']} testable found, "
            f"{s['false_detours']} false")


def _convergence(table: pd.DataFrame, fm: FeatureMatrix, cfg: FitConfig) -> tuple[dict, dict]:
    """Each kept run's convergence step (None if never) and last step, over its whole table (not
    only the ``first_n`` checkpoints the HMM sees). Warns about runs that never converge; raises
    when none does."""
    conv: dict[int, int | None] = {}
    last_step: dict[int, int] = {}
    for seed, run in table.groupby("seed", sort=True):
        if int(seed) not in fm.seeds:
            continue
        run = run.sort_values("step", kind="stable")
        conv[int(seed)] = convergence_step(run["step"].to_numpy(), run[cfg.metric].to_numpy(),
                                           float(cfg.threshold), cfg.direction)
        last_step[int(seed)] = int(run["step"].iloc[-1])
    never = [s for s in fm.seeds if conv[s] is None]
    rel = ">" if cfg.direction == "above" else "<"
    if len(never) == len(fm.seeds):
        raise UserError(
            f"no run ever has {cfg.metric} {rel} {cfg.threshold} (best value "
            f"{_extreme(table[cfg.metric], cfg.direction)}); pass a reachable --threshold"
        )
    if never:
        log.warning("%d of %d run(s) never reach %s %s %s: seeds %s (rule: %s)", len(never), len(fm.seeds),
                    cfg.metric, rel, cfg.threshold, _fmt_seeds(never), cfg.nonconverged)
    return conv, last_step


def _warn_selection(sel: HMMSelector, cfg: FitConfig) -> None:
    K = sel.n_states_
    if K == cfg.max_states and cfg.max_states > 1:
        log.warning("K = %d is the largest number of states searched: the criterion may still fall beyond it; "
                    "raise --max-states. If it keeps falling, the runs change smoothly rather than in phases, "
                    "and the states are a discretisation of that change (docs/fit.md, 'smooth drift')", K)
    if K == 1:
        log.warning("K = 1: one state describes held-out runs best, so there is no map to draw. With few runs this "
                    "usually means the runs differ from each other more than their phases do: try more runs, "
                    "--covariance diag (fewer parameters per state) or --scaling per_run (docs/fit.md, 'few runs')")
    if sel.fragile_:
        rows = {r["k"]: r for r in sel.selection_}
        log.warning("K = %d is fragile: its %s differs from K = %d's by %.4g, within the spread over restarts "
                    "(%.4g); try more --restarts", K, cfg.criterion.upper(), sel.runner_up_,
                    rows[K].get("gap_to_runner_up", float("nan")),
                    max(rows[K]["spread"] or 0, rows[sel.runner_up_]["spread"] or 0))
    choice = sel.fold_choice_
    if choice:
        agree = choice.get(K, 0)
        total = sum(choice.values())
        if agree < total / 2:
            log.warning("K = %d is unstable: only %d of %d folds choose it on their own held-out runs (%s)", K,
                        agree, total, ", ".join(f"K={k}: {v}" for k, v in choice.items()))


def _warn_stability(stability: dict, K: int, flagged: list[int]) -> None:
    used = stability["used"]
    if stability["failures"]:
        why: dict[str, int] = {}
        for failure in stability["failures"]:
            reason = failure.split(": ", 1)[-1]
            why[reason] = why.get(reason, 0) + 1
        log.warning("%d of %d stability resamples could not be refitted (%s); the stability counts use the %d "
                    "that could", len(stability["failures"]), stability["resamples"],
                    "; ".join(f"{reason}: {n}" for reason, n in why.items()), used)
    if not used:
        return
    for k in range(K):
        if stability["state_found"][k] < 0.5 * used:
            log.warning("state %d reappears in only %d of %d resamples of the runs: treat it with care", k,
                        stability["state_found"][k], used)
    for k in flagged:
        if stability["detour_found"].get(k, 0) < 0.5 * used:
            log.warning("detour state %d is a detour again in only %d of %d resamples of the runs", k,
                        stability["detour_found"].get(k, 0), used)


def _extreme(values: pd.Series, direction: str):
    v = pd.to_numeric(values, errors="coerce")
    x = v.max() if direction == "above" else v.min()
    return f"{x:.4g}" if pd.notna(x) else "none"


def _default_command(study: Study, cfg: FitConfig) -> str:
    """The ``latent fit`` command that spells out every setting of ``cfg`` (from the fields' flags)."""
    return " ".join([f"latent fit --study {study.root}", *command_flags(cfg)])


def _summary(result: FitResult, visited, reg, tests, detours, never, stability) -> list[str]:
    sel = result.selector
    cfg = result.config
    K = sel.n_states_
    rows = {r["k"]: r for r in sel.selection_}
    how = {"cv": f"{len(sel.folds_)}-fold cross-validated", "split": "held-out (best restart)",
           "reference": "held-out (mean over restarts, the reference)"}[cfg.selection]
    crit = {"bic": "BIC", "aic": "AIC", "loglik": "-2 log-likelihood"}[cfg.criterion]
    best = rows[K]["score"]
    others = [f"K={k}: {r['score'] - best:+.4g}" for k, r in rows.items() if k != K and r["score"] is not None]
    lines = [f"K = {K}: {how} {crit} {_fmt(best, 7)} "
             f"({'others, as differences: ' + ', '.join(others) if others else 'no other K'})"]
    notes = []
    if cfg.selection == "cv":
        if cfg.one_se:
            notes.append("smallest K within one standard error of the best")
        choice = sel.fold_choice_
        if choice:
            notes.append(f"{choice.get(K, 0)}/{sum(choice.values())} folds choose it on their own")
    else:
        notes.append(f"{len(sel.train_runs_)} training / {len(sel.test_runs_)} held-out runs")
    if sel.fragile_:
        notes.append(f"fragile: within the restart spread of K = {sel.runner_up_}")
    if cfg.family != DEFAULT_FAMILY:
        notes.append(f"state family {cfg.family}: {FAMILY_WORDS[cfg.family]}")
    lines.append("  " + "; ".join(notes))
    failed = [k for k, r in rows.items() if r["score"] is None]
    if failed:
        lines.append(f"no restart succeeded for K = {', '.join(map(str, failed))}")
    n_runs = len(visited)
    total = result.features.lengths.sum()
    counts = np.bincount(result.paths["state"].to_numpy(), minlength=K)
    for k in range(K):
        t = tests[k]
        extra = ""
        if t["status"] == "tested":
            extra = (f", delay {t['delay']:+.4g} [{_fmt(t['ci_low'])}, {_fmt(t['ci_high'])}], "
                     f"adjusted p {_fmt(t['p_adjusted'], 2)}")
        elif t["status"] == "not_estimable":
            extra = f", delay not estimable ({t.get('reason') or f'< {cfg.min_runs} runs on one side'})"
        elif t["status"] == "after_convergence":
            extra = ", entered only after converging (cannot delay it)"
        elif t["status"] == "converging":
            extra = f", where runs converge ({t['runs_converging_in']} of its {t['runs_visiting']} visitors)"
        if stability is not None and stability["used"]:
            extra += f", reappears in {stability['state_found'][k]}/{stability['used']} resamples"
            iv = (stability.get("entry_interval") or [None] * K)[k]
            if iv is not None and k > 0:
                unit = result.analysis["convergence"]["step_unit"]
                extra += f", entered at {unit} {iv['low']:.4g}–{iv['high']:.4g} (median over runs, 95% of resamples)"
        lines.append(f"  state {k}: occupancy {counts[k] / total:6.1%}, visited by "
                     f"{int(visited[:, k].sum())}/{n_runs} runs{extra}")
    lines += phase_lines(result.analysis["phases"], result.analysis["convergence"]["step_unit"])
    b = result.analysis.get("boundaries")
    if b:
        lines.append(f"transitions (a boundary is a jump when the runs move more abruptly there than at 95% of the "
                     f"checkpoints inside states): {b['verdict']}")
    if detours:
        parts = []
        for d in detours:
            text = f"{d['state']} (delay {d['delay']:+.4g} {result.analysis['convergence']['step_unit']}s"
            if d["rule"] == "delay":
                text += f", 95% CI [{_fmt(d['ci_low'])}, {_fmt(d['ci_high'])}], adjusted p {_fmt(d['p_adjusted'], 2)}"
            else:
                text += f"; paper rule: coef {_fmt(d['coef'])}"
            if d["stability"] is not None and stability and stability["used"]:
                text += f"; a detour again in {d['stability']['detour_found']}/{stability['used']} resamples"
            entry = next((r for r in (b or {}).get("states", []) if r["state"] == d["state"]), None)
            if entry is not None and entry["discrete"] is False:
                text += "; NOT a discrete phase: runs drift into it, no jump at its entries"
            parts.append(text + ")")
        lines.append(f"detour states ({cfg.detour_rule} rule): " + ", ".join(parts))
    else:
        lines.append(f"detour states ({cfg.detour_rule} rule): none")
    lines.append(f"convergence regression: R² = {_fmt(reg.r2_)}, p = {_fmt(reg.p_value_)} "
                 f"({reg.n_} runs; {len(never)} never converged, rule: {cfg.nonconverged})")
    from .audit import audit_lines

    lines += audit_lines(result.analysis.get("audit"))
    lines += ppc_lines(result.analysis.get("ppc"))
    return lines


def _warn_audit(audit: dict) -> None:
    """A warning for each detour, and for the fit as a whole, that does not survive a change of method."""
    for row in audit["detours"]:
        if not row["robust"]:
            lost = [name for name, ok in row["survives"].items() if not ok]
            log.warning("detour state %d does not survive a change of method: it is a detour in only %d of %d "
                        "alternative fits (not: %s); read it as fragile", row["state"], row["survived"], row["of"],
                        ", ".join(lost))
    fragile = [row["state"] for row in audit["states"] if not row["robust"]]
    if fragile and len(fragile) * 2 >= len(audit["states"]):
        log.warning("%d of %d states do not survive a change of method (state(s) %s; see the robustness "
                    "lines): the phases depend on the model as much as on the runs", len(fragile),
                    len(audit["states"]), ", ".join(map(str, fragile)))


def _fmt(x, digits: int = 4) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    return f"{x:.{digits}g}"
