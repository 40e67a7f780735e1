"""Simulated studies with a planted truth, for validating what ``latent fit`` reports.

Notation: N runs of T checkpoints, d features; the truth has K states. State 0 is where every
run starts; the last state of the main chain is where runs converge and stay.

A study is drawn from a model that looks like training:

* a **main chain** of ``n_main`` obligatory states, left to right (memorise, generalise, ...);
* optional **detours**: a state entered after main state i by a fraction ``p_take`` of runs,
  whose time *adds* to the run's convergence time (a planted detour);
* optional **symmetric forks**: after main state i a run takes branch A (probability
  ``p_take``) or branch B, both with the same duration law, so neither branch changes when a run
  converges (optional states that are *not* detours);
* durations that are geometric (``family="standard"``: an exact Gaussian HMM) or more regular
  than geometric (``"semi_markov"``); emissions Gaussian around each state's mean with
  correlated noise across features, optionally autocorrelated in time (``"autocorrelated"``),
  some features uninformative (the same mean in every state); optionally per-run shifts and
  scales of every feature, as seeds differ (``"shifted"``);
* or runs that move as real ones do (``"realistic"``, parameters measured on our default
  studies by bench/measure_dynamics.py): one AR(1) noise process per run running through its
  states (autocorrelation ``ar``, 0.9-0.999), every run its own offset of every state's mean
  (``offset`` within-state sds), and transitions that take ``ramp`` checkpoints, the mean moving
  linearly from one state's to the next (the checkpoints of a ramp belong to the state entered);
* or, as a negative control, **smooth drift** with no discrete states at all (``"drift"``).

A run converges (its ``val_acc`` column jumps from 0.5 to 0.95) when it enters the final state,
plus 0-2 checkpoints of jitter. The truth (:class:`Truth`) records every run's state path, which
optional states are detours, and each optional state's true *delay*: the restricted mean
convergence step of runs visiting it minus that of runs skipping it, computed from 200,000 extra
paths of the same model (0 for fork branches, by symmetry; so it is the estimand of :func:`latent.detours.detour_tests`).

:func:`score` compares a fit with the truth: K, the fraction of checkpoints labelled right after
Hungarian matching, detour precision/recall, and interval coverage of the true delays.

>>> from latent.simulate import SimConfig, simulate, write_study
>>> table, truth = simulate(SimConfig(n_main=3, detours=1, seed=4))
>>> write_study("data/sim", table, truth)                # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import UserError
from .schemas import TRUTH_FORMAT
from .store import REFERENCE_COLUMNS, atomic_write_json, atomic_write_parquet, run_stem

FAMILIES = ("standard", "semi_markov", "autocorrelated", "shifted", "realistic", "drift")
_TRUTH_DRAWS = 200_000  # paths drawn to compute each detour's true delay (Monte Carlo error ~1 %)


@dataclass(frozen=True)
class SimConfig:
    """One simulated study.

    Parameters
    ----------
    family : {"standard", "semi_markov", "autocorrelated", "shifted", "realistic", "drift"}
    n_main : int
        States on the obligatory chain (at least 2; the last one is "converged").
    detours : int
        Optional states whose time adds to convergence (each after a different main state).
    forks : int
        Symmetric forks (two optional states each, neither a detour).
    p_take : float
        Probability that a run takes a detour, or branch A of a fork.
    detour_scale : float
        A detour's mean duration as a multiple of the main chain's mean time to convergence.
    n_runs, n_checkpoints, n_features : int
    n_uninformative : int
        Features whose mean is the same in every state.
    separation : float
        Mahalanobis distance (under the noise covariance) between neighbouring states' means.
    correlation : float
        Correlation of the noise between every pair of features.
    ar : float
        AR(1) coefficient of the noise in time (``"autocorrelated"``, ``"realistic"``; 0 otherwise).
    offset : float
        ``"realistic"``: sd of each run's offset of each state's mean, in that state's noise sds.
    persistence : float
        ``"realistic"``: correlation of a run's offsets across its states (0: drawn afresh in each
        state; 1: one offset per run, shared by every state).
    drift : float
        ``"realistic"``: smooth drift inside states. Each state has a velocity (per feature, normal
        with this sd, in noise sds per checkpoint) that every run follows while in the state,
        centred on the visit so the visit's mean stays the state's (a state is then a regime of
        change as well as a place, as in real runs).
    ramp : int
        ``"realistic"``: checkpoints a transition takes.
    shift, scale : float
        Per-run feature shifts (sd, in noise units) and log-scales (sd) (``"shifted"``).
    progress : float
        Mean time to convergence of a run that takes every detour, as a fraction of
        ``n_checkpoints``.
    step_every : int
        ``step`` between checkpoints.
    seed : int
        Seeds everything.
    """

    family: str = "standard"
    n_main: int = 4
    detours: int = 1
    forks: int = 0
    p_take: float = 0.5
    detour_scale: float = 1.0
    n_runs: int = 40
    n_checkpoints: int = 600
    n_features: int = 14
    n_uninformative: int = 2
    separation: float = 3.0
    correlation: float = 0.3
    ar: float = 0.0
    shift: float = 0.0
    scale: float = 0.0
    offset: float = 0.0
    persistence: float = 0.0
    drift: float = 0.0
    ramp: int = 0
    progress: float = 0.45
    step_every: int = 10
    seed: int = 0

    def __post_init__(self):
        if self.family not in FAMILIES:
            raise UserError(f"unknown simulation family {self.family!r}; choose one of {', '.join(FAMILIES)}")
        if self.n_main < 2:
            raise UserError(f"n_main must be at least 2, got {self.n_main}")
        if self.detours + self.forks > self.n_main - 1:
            raise UserError(f"{self.detours} detours + {self.forks} forks need at least "
                            f"{self.detours + self.forks + 1} main states, got {self.n_main}")
        if not 0 < self.p_take < 1:
            raise UserError(f"p_take must be in (0, 1), got {self.p_take}")
        if self.n_runs < 1 or self.n_checkpoints < 2:
            raise UserError("a simulated study needs at least 1 run of 2 checkpoints")
        if not 0 <= self.n_uninformative < self.n_features:
            raise UserError("n_uninformative must leave at least one informative feature")
        if not 0 <= self.persistence <= 1:
            raise UserError(f"persistence must be in [0, 1], got {self.persistence}")
        if not self.drift >= 0:
            raise UserError(f"drift must be >= 0, got {self.drift}")

    @property
    def n_states(self) -> int | None:
        """K of the truth (None for smooth drift)."""
        if self.family == "drift":
            return None
        return self.n_main + self.detours + 2 * self.forks


@dataclass
class Truth:
    """What was planted.

    Attributes
    ----------
    config : SimConfig
    n_states : int or None
    paths : dict
        ``{seed: true state per checkpoint}`` (empty for drift).
    kinds : list of str
        Per state: ``"main"``, ``"detour"``, ``"fork"``.
    detours : list of int
        The planted detour states.
    optional : list of int
        Every state some runs skip (detours and fork branches).
    delay : dict
        ``{state: true restricted-mean delay in steps}`` for each optional state.
    convergence : dict
        ``{seed: convergence step or None}``.
    means : ndarray, shape (K, d)
        State means in the units of the noise (before per-run shifts).
    """

    config: SimConfig
    n_states: int | None
    paths: dict = field(default_factory=dict)
    kinds: list = field(default_factory=list)
    detours: list = field(default_factory=list)
    optional: list = field(default_factory=list)
    delay: dict = field(default_factory=dict)
    convergence: dict = field(default_factory=dict)
    means: np.ndarray | None = None

    def to_dict(self) -> dict:
        """Plain data for ``truth.json`` (:func:`truth_from_file` reads it back)."""
        return {
            "format": TRUTH_FORMAT, "config": asdict(self.config), "n_states": self.n_states, "kinds": self.kinds,
            "detours": self.detours, "optional": self.optional,
            "delay": {str(k): v for k, v in self.delay.items()},
            "convergence": {str(s): c for s, c in self.convergence.items()},
            "paths": {str(s): p.tolist() for s, p in self.paths.items()},
        }


def truth_from_file(path) -> "Truth | None":
    """The truth written beside a simulated study, or None when there is none.

    A truth file that fails its schema (latent.schemas) is reported in one warning and ignored:
    it only ever adds a comparison line to ``latent fit``'s summary.
    """
    import logging

    from .schemas import read_artifact

    path = Path(path)
    if not path.is_file():
        return None
    try:
        d = read_artifact("truth", path, hint="ignored (it only adds the planted-truth comparison)")
        return Truth(config=SimConfig(**d["config"]), n_states=d["n_states"], kinds=d["kinds"],
                     detours=d["detours"], optional=d["optional"],
                     delay={int(k): v for k, v in d["delay"].items()},
                     convergence={int(k): v for k, v in d["convergence"].items()},
                     paths={int(k): np.asarray(v, dtype=int) for k, v in d["paths"].items()})
    except UserError as exc:
        logging.getLogger("latent").warning("%s", exc)
    except (ValueError, TypeError) as exc:  # a config SimConfig does not know
        logging.getLogger("latent").warning("truth file %s is invalid (%s); ignored", path, exc)
    return None


def truth_mismatch(truth: "Truth", paths: pd.DataFrame) -> str | None:
    """Why ``truth`` cannot be scored against a fit's decoded ``paths`` (None when it can).

    Every fitted run needs a planted path at least as long as its decoded one, with labels in
    ``0..n_states-1`` (a study extended or edited after ``latent simulate`` wrote its truth).
    """
    if truth.n_states is None:
        return None
    lengths = paths.groupby("seed").size()
    for seed, n in lengths.items():
        planted = truth.paths.get(int(seed))
        if planted is None:
            return f"no planted path for run {int(seed)}"
        if len(planted) < n:
            return f"run {int(seed)}: {len(planted)} planted checkpoints, {int(n)} fitted"
        head = planted[:n]
        if head.size and (head.min() < 0 or head.max() >= truth.n_states):
            return f"run {int(seed)}: a planted state outside 0..{truth.n_states - 1}"
    return None


def feature_names(d: int) -> list[str]:
    """The reference's column names for up to 14 features, else ``f0, f1, ...``."""
    return list(REFERENCE_COLUMNS[:d]) if d <= len(REFERENCE_COLUMNS) else [f"f{j}" for j in range(d)]


#: separation (Mahalanobis distance between neighbouring states) of each difficulty level
LEVELS = {"easy": 4.0, "medium": 3.0, "hard": 2.0}
#: the families of random studies (bench/bench_recovery.py, tests) and their settings; "rare" is
#: the standard family with optional states taken by 3-15 % of runs instead of 15-60 %
RANDOM_FAMILIES = {
    "standard": {},
    "rare": {},
    "semi_markov": {},
    "autocorrelated": {"ar": 0.5},
    "shifted": {"shift": 1.0, "scale": 0.1},
    "drift": {},
    # last, so the other families' draws keep their seeds; ar and offset drawn per study
    "realistic": {"ramp": 5},
}


def random_config(family: str, level: str, i: int, n_checkpoints: int = 300, n_runs: int = 40) -> SimConfig:
    """The i-th random study of a family and level (the recovery benchmark's draws).

    2-5 main states, 0-2 detours (2 draws in 5 have none), 0-1 symmetric fork, K from 2 to 8;
    each optional state taken by 15-60 % of runs (``"rare"``: 3-15 %); a detour adds 0.5-1.5x
    the main chain's time. Seeded by (family, level, n_checkpoints, n_runs, i).
    """
    if family not in RANDOM_FAMILIES or level not in LEVELS:
        raise UserError(f"unknown family/level {family!r}/{level!r}; families: {', '.join(RANDOM_FAMILIES)}, "
                        f"levels: {', '.join(LEVELS)}")
    code = (list(RANDOM_FAMILIES).index(family), list(LEVELS).index(level), n_checkpoints, n_runs, i)
    rng = np.random.default_rng(np.random.SeedSequence(list(code)))
    while True:
        n_main = int(rng.integers(2, 6))
        detours = int(rng.choice([0, 0, 1, 1, 2]))
        forks = int(rng.integers(0, 2))
        if detours + forks <= n_main - 1 and 2 <= n_main + detours + 2 * forks <= 8:
            break
    cfg = SimConfig(
        family="standard" if family == "rare" else family, n_main=n_main, detours=detours, forks=forks,
        p_take=float(rng.uniform(*((0.03, 0.15) if family == "rare" else (0.15, 0.6)))),
        detour_scale=float(rng.uniform(0.5, 1.5)), n_runs=n_runs, n_checkpoints=n_checkpoints,
        separation=LEVELS[level], seed=int(rng.integers(2**31)), **RANDOM_FAMILIES[family],
    )
    if family == "realistic":  # ranges whose draws measure as the real studies do (bench/measure_dynamics.py)
        cfg = replace(cfg, ar=float(1 - np.exp(rng.uniform(np.log(1e-2), np.log(0.1)))),
                      offset=float(rng.uniform(0.3, 1.5)), persistence=float(rng.uniform(0.5, 0.99)),
                      drift=float(np.exp(rng.uniform(np.log(0.05), np.log(0.3)))))
    return cfg


# --------------------------------------------------------------------------- structure


@dataclass
class _Structure:
    kinds: list  # per state
    mean_duration: np.ndarray  # per non-final state (final: inf)
    branches: list  # per main position i: list of (kind, states) after main state i
    main: list  # state ids of the main chain in order
    transmat: np.ndarray
    startprob: np.ndarray


def _structure(cfg: SimConfig, rng: np.random.Generator) -> _Structure:
    n_main = cfg.n_main
    main = list(range(n_main))
    kinds = ["main"] * n_main
    positions = rng.choice(n_main - 1, size=cfg.detours + cfg.forks, replace=False)
    branches: list[list] = [[] for _ in range(n_main)]
    next_id = n_main
    for b, pos in enumerate(positions):
        if b < cfg.detours:
            branches[pos].append(("detour", [next_id]))
            kinds.append("detour")
            next_id += 1
        else:
            branches[pos].append(("fork", [next_id, next_id + 1]))
            kinds += ["fork", "fork"]
            next_id += 2
    K = next_id
    # mean durations: a run taking every detour needs progress·T checkpoints on average to
    # converge; each detour lasts detour_scale times the main chain's own time (fork branches
    # count as main states)
    main_time = cfg.progress * cfg.n_checkpoints / (1 + cfg.detours * cfg.detour_scale)
    per_main = max(main_time / (n_main - 1 + cfg.forks), 1.5)
    dur = np.full(K, per_main)
    dur[main[-1]] = np.inf
    for kind, states in (b for bs in branches for b in bs):
        if kind == "detour":
            dur[states[0]] = max(cfg.detour_scale * main_time, 1.5)
    # the equivalent Markov chain (exact for geometric durations)
    A = np.zeros((K, K))
    for i in range(n_main - 1):
        stay = 1 - 1 / dur[i]
        A[i, i] = stay
        targets = _exits(branches[i], main[i + 1], cfg.p_take)
        for target, prob in targets:
            A[i, target] += (1 - stay) * prob
    A[main[-1], main[-1]] = 1
    for i in range(n_main - 1):
        for kind, states in branches[i]:
            for s in states:
                stay = 1 - 1 / dur[s]
                A[s, s] = stay
                A[s, main[i + 1]] = 1 - stay
    start = np.zeros(K)
    start[0] = 1
    return _Structure(kinds, dur, branches, main, A, start)


def _exits(branches, nxt, p):
    if not branches:
        return [(nxt, 1.0)]
    kind, states = branches[0]
    if kind == "detour":
        return [(states[0], p), (nxt, 1 - p)]
    return [(states[0], p), (states[1], 1 - p)]


def _duration(mean: float, family: str, rng: np.random.Generator, size=None) -> np.ndarray:
    """Checkpoints spent in a state: geometric (an HMM), or gamma-shaped (cv 0.4) for semi-Markov."""
    if family == "semi_markov":
        shape = 6.0
        return 1 + np.round(rng.gamma(shape, max(mean - 1, 1e-9) / shape, size=size)).astype(int)
    return rng.geometric(1 / mean, size=size)


def _sample_visits(st: _Structure, cfg: SimConfig, rng: np.random.Generator):
    """One run's ``[(state, duration), ...]`` up to (not including) the final state."""
    visits = []
    for i in range(cfg.n_main - 1):
        visits.append((st.main[i], int(_duration(st.mean_duration[st.main[i]], cfg.family, rng))))
        for kind, states in st.branches[i]:
            if kind == "detour":
                if rng.random() < cfg.p_take:
                    visits.append((states[0], int(_duration(st.mean_duration[states[0]], cfg.family, rng))))
            else:
                s = states[0] if rng.random() < cfg.p_take else states[1]
                visits.append((s, int(_duration(st.mean_duration[s], cfg.family, rng))))
    return visits


def _path(visits, final: int, T: int) -> np.ndarray:
    out = np.full(T, final, dtype=int)
    t = 0
    for s, d in visits:
        out[t : t + d] = s
        t += d
        if t >= T:
            break
    return out


# --------------------------------------------------------------------------- emissions


def _noise_cov(d: int, rho: float) -> np.ndarray:
    return (1 - rho) * np.eye(d) + rho * np.ones((d, d))


def _state_means(st: _Structure, cfg: SimConfig, cov: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Means: each state a step of Mahalanobis length ``separation`` from the state it leaves."""
    d = cfg.n_features
    informative = d - cfg.n_uninformative
    prec = np.linalg.inv(cov)

    def step():
        v = np.zeros(d)
        v[:informative] = rng.standard_normal(informative)
        return v * cfg.separation / np.sqrt(v @ prec @ v)

    K = len(st.kinds)
    means = np.zeros((K, d))
    for i in range(1, cfg.n_main):
        means[st.main[i]] = means[st.main[i - 1]] + step()
    for i in range(cfg.n_main - 1):
        for _, states in st.branches[i]:
            for s in states:
                means[s] = means[st.main[i]] + step()
    return means


def _noise(T: int, chol: np.ndarray, ar: float, rng: np.random.Generator) -> np.ndarray:
    e = rng.standard_normal((T, chol.shape[0])) @ chol.T
    if ar:
        out = np.empty_like(e)
        out[0] = e[0]
        c = np.sqrt(1 - ar**2)
        for t in range(1, T):
            out[t] = ar * out[t - 1] + c * e[t]
        return out
    return e


def _realistic_run(path: np.ndarray, means: np.ndarray, chols, cfg: SimConfig, rng: np.random.Generator,
                   velocity: np.ndarray | None = None) -> np.ndarray:
    """One run of the ``"realistic"`` family: per-run state offsets (``persistence`` of them shared
    across states), each state's drift ``velocity`` (K, d) inside its visits, linear ramps between
    states, and one AR(1) noise process through the whole run (each step's innovation in its state's
    covariance, scaled so the stationary noise has that covariance)."""
    T, d = len(path), means.shape[1]
    K = len(means)
    if cfg.persistence > 0:  # a run effect shared by every state, plus each state's own
        shared = rng.standard_normal(d)
        draws = [np.sqrt(cfg.persistence) * shared + np.sqrt(1 - cfg.persistence) * rng.standard_normal(d)
                 for _ in range(K)]
    else:
        draws = [rng.standard_normal(d) for _ in range(K)]
    offsets = np.array([cfg.offset * (chols[k] @ draws[k]) for k in range(K)])
    level = means[path] + offsets[path]
    if velocity is not None:  # each visit moves at its state's velocity, centred on the visit
        starts = np.flatnonzero(np.r_[True, path[1:] != path[:-1]])
        stops = np.r_[starts[1:], T]
        for a, b in zip(starts, stops):
            level[a:b] += velocity[path[a]] * (np.arange(b - a) - (b - a - 1) / 2)[:, None]
    if cfg.ramp > 0:  # a causal moving average turns every jump into a linear ramp of ``ramp`` steps
        w = cfg.ramp + 1
        padded = np.vstack([np.repeat(level[:1], w - 1, axis=0), level])
        c = np.cumsum(np.vstack([np.zeros((1, d)), padded]), axis=0)
        level = (c[w:] - c[:-w]) / w
    eta = rng.standard_normal((T, d))
    noise = np.empty((T, d))
    noise[0] = chols[path[0]] @ eta[0]
    c = np.sqrt(1 - cfg.ar**2)
    for t in range(1, T):
        noise[t] = cfg.ar * noise[t - 1] + c * (chols[path[t]] @ eta[t])
    return level + noise


# --------------------------------------------------------------------------- simulate


def simulate(config: SimConfig) -> tuple[pd.DataFrame, Truth]:
    """Draw one study.

    Returns
    -------
    table : DataFrame
        Long trajectory table: ``seed, step, epoch``, the features, ``val_acc``.
    truth : Truth
    """
    cfg = config
    rng = np.random.default_rng(np.random.SeedSequence(cfg.seed, spawn_key=(7,)))
    names = feature_names(cfg.n_features)
    if cfg.family == "drift":
        return _simulate_drift(cfg, rng, names)
    st = _structure(cfg, rng)
    K = len(st.kinds)
    cov = _noise_cov(cfg.n_features, cfg.correlation)
    means = _state_means(st, cfg, cov, rng)
    var_scale = np.exp(rng.uniform(np.log(0.5), np.log(2.0), K))  # states differ in spread
    chols = [np.linalg.cholesky(c * cov) for c in var_scale]
    ar = cfg.ar if cfg.family in ("autocorrelated", "realistic") else 0.0
    shifted = cfg.family == "shifted"
    realistic = cfg.family == "realistic"
    T, final = cfg.n_checkpoints, st.main[-1]
    velocity = None
    if realistic and cfg.drift > 0:  # per state, in its noise metric; drawn only then, so drift 0 draws as before
        velocity = np.array([cfg.drift * (chols[k] @ rng.standard_normal(cfg.n_features)) for k in range(K)])
    frames, paths, conv = [], {}, {}
    for seed in range(cfg.n_runs):
        visits = _sample_visits(st, cfg, rng)
        path = _path(visits, final, T)
        if realistic:
            x = _realistic_run(path, means, chols, cfg, rng, velocity)
        else:
            x = means[path].copy()
            for k in range(K):
                rows = np.flatnonzero(path == k)
                if rows.size:
                    x[rows] += _noise(rows.size, chols[k], ar, rng)
        if shifted:
            x = rng.normal(0, cfg.shift, cfg.n_features) + np.exp(rng.normal(0, cfg.scale, cfg.n_features)) * x
        entered = int(np.argmax(path == final)) if np.any(path == final) else None
        conv_idx = None if entered is None else entered + int(rng.integers(0, 3))
        if conv_idx is not None and conv_idx >= T:
            conv_idx = None
        paths[seed] = path
        conv[seed] = None if conv_idx is None else conv_idx * cfg.step_every
        frames.append(_frame(seed, x, names, conv_idx, cfg))
    optional = [k for k, kind in enumerate(st.kinds) if kind != "main"]
    truth = Truth(
        config=cfg, n_states=K, paths=paths, kinds=list(st.kinds),
        detours=[k for k, kind in enumerate(st.kinds) if kind == "detour"],
        optional=optional, delay=_true_delays(st, cfg, optional), convergence=conv, means=means,
    )
    return pd.concat(frames, ignore_index=True), truth


def _frame(seed, x, names, conv_idx, cfg) -> pd.DataFrame:
    T = len(x)
    frame = pd.DataFrame({"seed": seed, "step": np.arange(T, dtype=np.int64) * cfg.step_every,
                          "epoch": np.arange(T, dtype=float) * cfg.step_every})
    for j, name in enumerate(names):
        frame[name] = x[:, j]
    acc = np.full(T, 0.5)
    if conv_idx is not None:
        acc[conv_idx:] = 0.95
    frame["val_acc"] = acc
    return frame


def _true_delays(st: _Structure, cfg: SimConfig, optional: list[int]) -> dict:
    """E[min(y, τ) | visit k] − E[min(y, τ) | skip k] over many paths (τ = the last step)."""
    rng = np.random.default_rng(np.random.SeedSequence(cfg.seed, spawn_key=(8,)))
    T = cfg.n_checkpoints
    n = _TRUTH_DRAWS
    # durations of every state for every draw, then which optional states each draw takes
    dur = {k: _duration(st.mean_duration[k], cfg.family, rng, size=n) for k in range(len(st.kinds))
           if np.isfinite(st.mean_duration[k])}
    total = np.zeros(n)
    visit = {k: np.zeros(n, dtype=bool) for k in optional}
    for i in range(cfg.n_main - 1):
        total += dur[st.main[i]]
        for kind, states in st.branches[i]:
            u = rng.random(n) < cfg.p_take
            if kind == "detour":
                visit[states[0]] = u
                total += np.where(u, dur[states[0]], 0)
            else:
                visit[states[0]], visit[states[1]] = u, ~u
                total += np.where(u, dur[states[0]], dur[states[1]])
    conv = total + rng.integers(0, 3, n)  # the same 0-2 checkpoints of jitter as the runs
    y = np.minimum(conv, T - 1) * cfg.step_every
    # a fork's branches share one duration law: their delay is exactly 0 by symmetry
    return {k: (float(y[visit[k]].mean() - y[~visit[k]].mean()) if st.kinds[k] == "detour" else 0.0)
            for k in optional}


def _simulate_drift(cfg: SimConfig, rng: np.random.Generator, names) -> tuple[pd.DataFrame, Truth]:
    """Smooth drift, no states: each feature follows a run-specific sigmoid plus a slow trend."""
    T, d = cfg.n_checkpoints, cfg.n_features
    cov = _noise_cov(d, cfg.correlation)
    chol = np.linalg.cholesky(cov)
    informative = d - cfg.n_uninformative
    amp = np.zeros(d)
    amp[:informative] = rng.normal(0, cfg.separation * 2, informative)
    trend = np.zeros(d)
    trend[:informative] = rng.normal(0, cfg.separation, informative)
    t = np.arange(T) / T
    frames, conv = [], {}
    for seed in range(cfg.n_runs):
        mid = rng.uniform(0.5, 1.5) * cfg.progress
        width = rng.uniform(0.03, 0.1)
        u = 1 / (1 + np.exp(-(t - mid) / width))
        x = u[:, None] * amp + (t ** 2)[:, None] * trend + _noise(T, chol, 0.0, rng)
        hit = np.flatnonzero(u > 0.9)
        conv_idx = int(hit[0]) if hit.size else None
        conv[seed] = None if conv_idx is None else conv_idx * cfg.step_every
        frames.append(_frame(seed, x, names, conv_idx, cfg))
    truth = Truth(config=cfg, n_states=None, convergence=conv)
    return pd.concat(frames, ignore_index=True), truth


def write_study(root: str | Path, table: pd.DataFrame, truth: Truth | None = None, *,
                threshold: float = 0.9) -> Path:
    """Write a simulated table as a study ``latent fit`` reads (``study.json`` + run tables).

    The truth, if given, goes to ``truth.json`` beside ``study.json`` (``latent fit`` ignores it).
    """
    root = Path(root)
    features = [c for c in table.columns if c not in ("seed", "step", "epoch", "val_acc")]
    seeds = sorted(int(s) for s in table["seed"].unique())
    meta = {
        "format": "latent.study/1", "name": root.name, "task": "simulated", "preset": "simulated",
        "seeds": seeds, "step_unit": "step", "features": features, "metrics": features + ["val_acc"],
        "convergence": {"metric": "val_acc", "threshold": threshold, "direction": "above"},
    }
    if truth is not None:
        meta["config"] = asdict(truth.config)
    for seed, run in table.groupby("seed", sort=True):
        atomic_write_parquet(root / "runs" / f"{run_stem(int(seed))}.parquet", run.reset_index(drop=True))
        atomic_write_json(root / "runs" / f"{run_stem(int(seed))}.json",
                          {"format": "latent.run/1", "seed": int(seed), "status": "done",
                           "last_step": int(run["step"].max()), "rows": int(len(run))})
    if truth is not None:
        atomic_write_json(root / "truth.json", truth.to_dict())
    atomic_write_json(root / "study.json", meta)
    return root


# --------------------------------------------------------------------------- scoring


def score(truth: Truth, paths: pd.DataFrame, analysis: dict, min_runs: int = 5) -> dict:
    """Compare a fit (``paths.parquet`` and ``analysis.json`` content) with the planted truth.

    True and fitted states are matched by Hungarian assignment on the checkpoint confusion
    matrix (the fit's states live in scaled units, the truth's in raw ones, so paths are the
    common ground).

    Returns
    -------
    dict
        ``k_true, k_fit, k_ok, state_accuracy`` (fraction of checkpoints whose fitted state is
        the match of the true one), ``detours_true`` (planted detours that are estimable:
        visited and skipped by at least ``min_runs`` runs), ``detours_found`` (of those, flagged;
        ``found_flagged`` their fitted states),
        ``false_detours`` (flagged states that are no planted detour), ``flagged``,
        ``rare_flagged`` (planted detours with fewer than ``min_runs`` visitors or skippers that
        were flagged anyway), ``true_flagged`` (flagged states matched to a planted detour),
        ``sign_ok`` (estimable planted detours whose estimated delay is positive), ``coverage``
        (list of (covered, runs_visiting, kind) for every estimable optional state the fit tested).
    """
    from scipy.optimize import linear_sum_assignment

    flagged = sorted(int(d["state"]) for d in analysis["detours"])
    k_fit = int(paths["state"].max()) + 1 if len(paths) else 0
    for row in analysis.get("states", []):
        k_fit = max(k_fit, int(row["state"]) + 1)
    out = {"k_true": truth.n_states, "k_fit": k_fit, "k_ok": truth.n_states == k_fit, "flagged": flagged,
           "state_accuracy": None, "detours_true": 0, "detours_found": 0, "false_detours": len(flagged),
           "rare_flagged": 0, "sign_ok": 0, "coverage": [], "true_flagged": [], "found_flagged": []}
    if truth.n_states is None:  # drift: every flagged detour is false
        return out
    K = truth.n_states
    seeds = sorted(int(s) for s in paths["seed"].unique())
    true = np.concatenate([truth.paths[s][: int((paths["seed"] == s).sum())] for s in seeds])
    fit = paths.sort_values(["seed", "step"])["state"].to_numpy()
    conf = np.zeros((K, k_fit))
    np.add.at(conf, (true, fit), 1)
    rows, cols = linear_sum_assignment(-conf)
    match = {int(r): int(c) for r, c in zip(rows, cols)}
    out["state_accuracy"] = float(conf[rows, cols].sum() / conf.sum())
    states = {int(r["state"]): r for r in analysis.get("states", [])}
    visits = {k: sum(bool(np.any(truth.paths[s] == k)) for s in seeds) for k in range(K)}
    n = len(seeds)
    matched_detours = set()
    for k in truth.optional:
        estimable = min(visits[k], n - visits[k]) >= min_runs
        j = match.get(k)
        row = states.get(j) if j is not None else None
        if k in truth.detours:
            if estimable:
                out["detours_true"] += 1
                if j in flagged:
                    out["detours_found"] += 1
                    out["found_flagged"].append(j)
                if row is not None and row.get("delay") is not None and row["delay"] > 0:
                    out["sign_ok"] += 1
            elif j in flagged:
                out["rare_flagged"] += 1
            if j is not None:
                matched_detours.add(j)
        if estimable and row is not None and row.get("status") == "tested":
            covered = row["ci_low"] <= truth.delay[k] <= row["ci_high"]
            out["coverage"].append((bool(covered), visits[k], truth.kinds[k]))
    out["false_detours"] = len([j for j in flagged if j not in matched_detours])
    out["true_flagged"] = [j for j in flagged if j in matched_detours]
    return out


# --------------------------------------------------------------------------- regimes planted into real runs

#: what a planted regime does (:func:`plant_regime`)
PLANT_KINDS = ("displaced", "pause", "slow")


@dataclass(frozen=True)
class PlantConfig:
    """A regime planted into some runs of a real study (:func:`plant_regime`).

    Parameters
    ----------
    kind : {"displaced", "pause", "slow"}
        ``"displaced"``: the run leaves its path for a place ``size`` across-run sds off it and
        wanders there (AR(1) 0.9 noise of the run's own checkpoint-to-checkpoint scale), then
        returns; ``"pause"``: the run stops moving (the features held where it was, plus that
        noise); ``"slow"``: the run moves off its path steadily (``size`` sds in total, linearly),
        the paper's "slow road", then returns.
    fraction : float
        Share of runs that get the regime (1.0: every run, a control whose state is obligatory).
    length : int
        Checkpoints of the regime.
    size : float
        How far off the run's path, in across-run sds of each feature at the insertion point.
    delay : bool
        True: the regime is inserted and the rest of the run comes after it (its convergence moves
        ``length`` checkpoints later, the run is cut at its old length); False: the regime replaces
        ``length`` checkpoints before convergence (a control: a state some runs visit that does
        not delay them).
    window : tuple of float
        Where it starts, as a fraction of the run's checkpoints before convergence.
    seed : int
    """

    kind: str = "displaced"
    fraction: float = 0.5
    length: int = 20
    size: float = 2.0
    delay: bool = True
    window: tuple = (0.3, 0.7)
    seed: int = 0

    def __post_init__(self):
        if self.kind not in PLANT_KINDS:
            raise UserError(f"unknown plant kind {self.kind!r}; choose one of {', '.join(PLANT_KINDS)}")
        if not 0 < self.fraction <= 1:
            raise UserError(f"plant fraction must be in (0, 1], got {self.fraction}")
        if self.length < 1:
            raise UserError(f"plant length must be at least 1, got {self.length}")


@dataclass
class PlantTruth:
    """What :func:`plant_regime` did: ``runs`` ``{seed: (first row, rows)}`` of the regime in the
    new table, the ``delay`` it adds to those runs' convergence (steps; 0 without delay) and the
    config."""

    config: PlantConfig
    runs: dict
    delay: float
    features: list


def plant_regime(table: pd.DataFrame, features, metric: str, threshold: float, config: PlantConfig,
                 direction: str = "above") -> tuple[pd.DataFrame, PlantTruth]:
    """Plant a regime into some runs of a real trajectory table (module docstring of
    :class:`PlantConfig`), keeping every run's length and step grid.

    The chosen runs (a seeded ``fraction`` of those that converge at least ``length + 5``
    checkpoints before their end) get the regime at a checkpoint drawn in ``window`` of their
    time before convergence. Feature columns move as the kind says; every other column (losses,
    accuracies) is held at its value where the regime starts, so convergence is delayed exactly by
    ``length`` checkpoints when ``delay`` is True and unchanged otherwise.
    """
    cfg = config
    rng = np.random.default_rng(np.random.SeedSequence(cfg.seed, spawn_key=(11,)))
    features = list(features)
    table = table.sort_values(["seed", "step"], kind="stable").reset_index(drop=True)
    runs = {int(s): g.reset_index(drop=True) for s, g in table.groupby("seed", sort=True)}
    T = min(len(g) for g in runs.values())
    stack = np.stack([g[features].to_numpy(float)[:T] for g in runs.values()])  # (N, T, d)
    spread = stack.std(axis=0)  # across-run sd per checkpoint and feature
    spread = np.where(spread > 0, spread, stack.std(axis=(0, 1)))

    def conv_index(g):
        v = g[metric].to_numpy(float)
        hit = np.flatnonzero(v > threshold if direction == "above" else v < threshold)
        return int(hit[0]) if hit.size else None

    eligible = [s for s, g in runs.items() if (c := conv_index(g)) is not None and c + cfg.length + 5 < len(g)
                and c > cfg.length + 5]
    n = int(round(cfg.fraction * len(runs)))
    if len(eligible) < n:
        raise UserError(f"only {len(eligible)} runs converge early enough to plant a regime of {cfg.length} "
                        f"checkpoints into {n}")
    chosen = sorted(rng.choice(eligible, size=n, replace=False).tolist())
    d = len(features)
    direction_vec = rng.choice([-1.0, 1.0], size=d) * (rng.random(d) < 0.5)
    if not direction_vec.any():
        direction_vec[int(rng.integers(d))] = 1.0
    frames, planted = [], {}
    for s, g in runs.items():
        if s not in chosen:
            frames.append(g)
            continue
        c = conv_index(g)
        hi = c - (0 if cfg.delay else cfg.length) - 1
        t0 = int(np.clip(round(rng.uniform(*cfg.window) * c), 1, max(hi, 1)))
        x = g[features].to_numpy(float)
        step_noise = np.median(np.abs(np.diff(x[max(t0 - 20, 0): t0 + 1], axis=0)), axis=0) + 1e-12
        L = cfg.length
        noise = np.zeros((L, d))
        for t in range(L):
            noise[t] = (0.9 * noise[t - 1] if t else 0) + step_noise * rng.standard_normal(d)
        off = cfg.size * spread[min(t0, T - 1)] * direction_vec
        if cfg.kind == "displaced":
            block = x[t0] + off + noise
        elif cfg.kind == "pause":
            block = x[t0] + noise
        else:
            block = x[t0] + np.linspace(1 / L, 1, L)[:, None] * off + noise
        regime = g.iloc[[t0] * L].reset_index(drop=True)  # the row where it starts, dtypes kept
        regime[features] = block
        rest = g.iloc[t0:len(g) - L] if cfg.delay else g.iloc[t0 + L:]
        new = pd.concat([g.iloc[:t0], regime, rest], ignore_index=True)
        for col in ("step", "epoch"):
            if col in g.columns:
                new[col] = g[col].to_numpy()[: len(new)]
        frames.append(new)
        planted[s] = (t0, L)
    steps = table.groupby("seed")["step"].apply(lambda v: float(np.median(np.diff(np.sort(v))))).median()
    truth = PlantTruth(config=cfg, runs=planted, delay=float(cfg.length * steps) if cfg.delay else 0.0,
                       features=features)
    return pd.concat(frames, ignore_index=True), truth


def score_plant(truth: PlantTruth, paths: pd.DataFrame, analysis: dict) -> dict:
    """Did a fit find the planted regime, and call it a detour?

    The regime's *state* is the fitted state holding most of the planted checkpoints; it is
    recovered when the Jaccard index of its checkpoints and the planted ones is at least 0.5.
    ``found``: it is recovered and flagged a detour; ``false``: flagged states other than it.
    """
    paths = paths.sort_values(["seed", "step"])
    planted_rows, all_rows = set(), {}
    for s, g in paths.groupby("seed", sort=True):
        states = g["state"].to_numpy()
        for t, k in enumerate(states):
            all_rows.setdefault(int(k), set()).add((int(s), t))
        if int(s) in truth.runs:
            t0, L = truth.runs[int(s)]
            planted_rows |= {(int(s), t) for t in range(t0, t0 + L)}
    flagged = sorted(int(d["state"]) for d in analysis["detours"])
    best, best_j = None, 0.0
    for k, rows in all_rows.items():
        j = len(rows & planted_rows) / len(rows | planted_rows)
        if j > best_j:
            best, best_j = k, j
    recovered = best_j >= 0.5
    return {"k_fit": len(all_rows), "state": best, "jaccard": best_j, "recovered": recovered,
            "found": recovered and best in flagged, "flagged": flagged,
            "false": [k for k in flagged if not (recovered and k == best)]}
