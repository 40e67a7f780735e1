"""What every artifact in the store must hold, declared once (pydantic) and checked on every read.

Each JSON artifact (``study.json``, run manifests, ``model.json``, ``analysis.json``,
``truth.json``, and the ``trainer_state.json`` files ``latent import checkpoints`` reads) has one
schema here; readers call :func:`read_artifact` (or :func:`check_artifact` on JSON already
parsed) and get back the parsed dict, or a :class:`~latent.errors.UserError` whose one line names
the file, the field and what it must be::

    study file data/m/study.json is invalid: 'seeds' must be a list of integers (got 'all');
    fix it or delete the study

The schemas are strict (no coercion: ``"3"`` is not an integer, ``true`` is not a number) and let
unknown keys through (artifacts grow fields; older readers must not refuse newer files).
Numerical invariants are part of the schema: a fit's probabilities are non-negative and rows sum
to 1, its covariances are symmetric positive definite, its global scaling has positive finite
standard deviations, and the arrays agree with ``n_states`` and the feature list. Cross-file
invariants (an analysis's states against the model's K, decoded paths against K) are
:func:`check_fit`. docs/artifacts.md describes every field.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal, Mapping

import numpy as np
from pydantic import (AllowInfNan, BaseModel, ConfigDict, Field, StringConstraints, ValidationError,
                      field_validator, model_validator)

from .errors import UserError

STUDY_FORMAT = "latent.study/1"
RUN_FORMAT = "latent.run/1"
MODEL_FORMAT = "latent.fit/1"
ANALYSIS_FORMAT = "latent.analysis/1"
TRUTH_FORMAT = "latent.truth/1"

#: what a state's detour test concluded (``analysis.json`` ``states[].status``)
STATE_STATUSES = ("obligatory", "unvisited", "after_convergence", "converging", "not_estimable", "tested")
#: hmmlearn covariance types a fit may use
COVARIANCE_TYPES = ("full", "diag", "spherical", "tied")
#: state families a fit may name (latent.family.FAMILY_MODULES; kept here so reading needs no model code)
FAMILY_NAMES = ("gaussian", "ar", "hamilton")
#: parameters beyond startprob/transmat/means/covars, per family, and their shapes in (K, d)
FAMILY_EXTRAS = {"gaussian": {}, "ar": {"coef": "kd", "intercept": "kd", "rate": "kd"},
                 "hamilton": {"phi": "d", "start_var": "d"}}
#: how far a probability row may sum from 1 (JSON round-trips floats exactly; this is fit rounding)
ROW_SUM_TOLERANCE = 1e-6

Name = Annotated[str, StringConstraints(min_length=1)]
Finite = Annotated[float, AllowInfNan(False)]
Probability = Annotated[float, AllowInfNan(False), Field(ge=0.0, le=1.0)]
Count = Annotated[int, Field(ge=0)]
Positive = Annotated[int, Field(ge=1)]


class Artifact(BaseModel):
    """Strict types, unknown keys kept (artifacts grow; a reader never refuses a newer field)."""

    model_config = ConfigDict(strict=True, extra="allow")


# --------------------------------------------------------------------------- study.json


class ConvergenceRule(Artifact):
    metric: Name
    threshold: Finite
    direction: Literal["above", "below"] = "above"


class Schedule(Artifact):
    every: Positive
    last: Count
    steps_per_epoch: Positive | None = None


class SnapshotPlan(Artifact):
    """``study.json``'s ``snapshots``: the checkpoints whose embedding and unembedding every run
    stores (``snapshots/seed-NNN.npz``, :mod:`latent.snapshots`), and the axes of those arrays."""

    count: Positive
    steps: list[Count]
    axes: dict[str, list[Name]] | None = None

    @model_validator(mode="after")
    def _consistent(self):
        if len(self.steps) != self.count:
            raise ValueError(f"lists {len(self.steps)} steps but its count is {self.count}")
        if any(b <= a for a, b in zip(self.steps, self.steps[1:])):
            raise ValueError("must list its steps in strictly increasing order")
        return self


class StudyFile(Artifact):
    """``study.json``: only ``task`` is required to list a study; ``latent fit`` also needs
    ``convergence`` and ``features`` (it says so when they are absent)."""

    format: str | None = None
    task: Name
    name: str | None = None
    preset: str | None = None
    command: str | None = None
    commands: list[str] | None = None
    created: str | None = None
    config: dict[str, Any] | None = None
    seeds: list[Count] | None = None
    step_unit: Name = "step"
    convergence: ConvergenceRule | None = None
    features: Annotated[list[Name], Field(min_length=1)] | None = None
    metrics: list[Name] | None = None
    split: dict[str, Any] | None = None
    schedule: Schedule | None = None
    data: dict[str, Any] | None = None
    versions: dict[str, Any] | None = None
    metric_variant: Literal["reference", "paper"] | None = None
    metric_groups: list[Name] | None = None
    groups: dict[str, list[Name]] | None = None
    llc: dict[str, Any] | None = None
    snapshots: SnapshotPlan | None = None
    runs: dict[str, str] | None = None
    source: dict[str, Any] | None = None

    @field_validator("seeds")
    @classmethod
    def _unique_seeds(cls, seeds):
        if seeds is not None and len(set(seeds)) != len(seeds):
            raise ValueError("must not list a seed twice")
        return seeds


# --------------------------------------------------------------------------- runs/seed-NNN.json


class RunManifest(Artifact):
    format: str | None = None
    seed: Count | None = None  # hand-made manifests may leave it to the file name
    status: Literal["running", "done"]
    opt_steps: Count | None = None
    last_step: Count | None = None
    rows: Count | None = None
    streams: dict[str, Any] | None = None
    timings: dict[str, Any] | None = None


# --------------------------------------------------------------------------- model.json


class RunScaling(Artifact):
    mean: list[Finite]
    std: list[Annotated[float, AllowInfNan(False), Field(gt=0.0)]]


class Scaling(Artifact):
    kind: Literal["global", "per_run"]
    mean: list[Finite] | None = None
    std: list[Annotated[float, AllowInfNan(False), Field(gt=0.0)]] | None = None
    per_run: dict[str, RunScaling] | None = None

    @model_validator(mode="after")
    def _complete(self):
        if self.kind == "global" and (self.mean is None or self.std is None):
            raise ValueError("global scaling must hold 'mean' and 'std'")
        return self


class ModelSeeds(Artifact):
    """Which runs a fit used, held out and left out (``model.json`` ``seeds``)."""

    used: Annotated[list[Count], Field(min_length=1)]
    train: list[Count] | None = None
    test: list[Count] | None = None
    folds: list[list[Count]] | None = None
    excluded: dict[str, str] = {}

    @model_validator(mode="after")
    def _consistent(self):
        if len(set(self.used)) != len(self.used):
            raise ValueError("'used' must not list a run twice")
        used = set(self.used)
        for name in ("train", "test"):
            extra = sorted(set(getattr(self, name) or ()) - used)
            if extra:
                raise ValueError(f"'{name}' names run {extra[0]}, which 'used' does not list")
        for fold in self.folds or ():
            if set(fold) - used:
                raise ValueError(f"'folds' names run {sorted(set(fold) - used)[0]}, which 'used' does not list")
        bad = [k for k in self.excluded if not re.fullmatch(r"\d+", k)]
        if bad:
            raise ValueError(f"'excluded' must be keyed by run seeds (got {bad[0]!r})")
        return self


def _shape(value: Any) -> tuple[int, ...]:
    arr = np.asarray(value, dtype=float)
    return arr.shape


class ModelFile(Artifact):
    """``model.json``: the fitted HMM and how the features were scaled for it."""

    format: Literal["latent.fit/1"] = MODEL_FORMAT
    fit_id: Name
    study: str | None = None
    config: dict[str, Any]
    n_states: Positive
    criterion: str | None = None
    features: Annotated[list[Name], Field(min_length=1)]
    covariance_type: Literal["full", "diag", "spherical", "tied"]
    family: Literal["gaussian", "ar", "hamilton"] = "gaussian"
    startprob: list[Probability]
    transmat: list[list[Probability]]
    means: list[list[Finite]]
    covars: list[list[list[Finite]]]
    scaling: Scaling
    selection: list[dict[str, Any]]
    seeds: ModelSeeds | None = None
    command: str | None = None

    @model_validator(mode="after")
    def _invariants(self):
        k, d = self.n_states, len(self.features)
        if len(set(self.features)) != d:
            raise ValueError("'features' must not name a feature twice")
        want = {"startprob": (k,), "transmat": (k, k), "means": (k, d), "covars": (k, d, d)}
        for name, shape in want.items():
            try:
                got = _shape(getattr(self, name))
            except ValueError:  # ragged nested lists
                got = None
            if got != shape:
                raise ValueError(f"'{name}' must have shape {shape} for n_states={k} and {d} features "
                                 f"(it is {'ragged' if got is None else got})")
        start = np.asarray(self.startprob)
        trans = np.asarray(self.transmat)
        if abs(start.sum() - 1) > ROW_SUM_TOLERANCE:
            raise ValueError(f"'startprob' must sum to 1 (it sums to {start.sum():.6g})")
        bad = np.flatnonzero(np.abs(trans.sum(axis=1) - 1) > ROW_SUM_TOLERANCE)
        if bad.size:
            raise ValueError(f"every row of 'transmat' must sum to 1 (row {bad[0]} sums to "
                             f"{trans[bad[0]].sum():.6g})")
        for h, cv in enumerate(np.asarray(self.covars)):
            scale = max(float(np.abs(cv).max()), 1e-300)
            if np.abs(cv - cv.T).max() > 1e-9 * scale:
                raise ValueError(f"'covars[{h}]' must be symmetric")
            try:
                np.linalg.cholesky(cv)
            except np.linalg.LinAlgError:
                raise ValueError(f"'covars[{h}]' must be positive definite") from None
        extra = self.model_extra or {}
        for name, dims in FAMILY_EXTRAS[self.family].items():
            shape = tuple(k if c == "k" else d for c in dims)
            if name not in extra:
                raise ValueError(f"a {self.family} fit must hold '{name}' (shape {shape})")
            try:
                arr = np.asarray(extra[name], dtype=float)
            except (TypeError, ValueError):
                raise ValueError(f"'{name}' must be an array of numbers of shape {shape}") from None
            if arr.shape != shape or not np.all(np.isfinite(arr)):
                raise ValueError(f"'{name}' must be an array of finite numbers of shape {shape}")
        if "start_var" in FAMILY_EXTRAS[self.family] and np.any(np.asarray(extra["start_var"], float) <= 0):
            raise ValueError("'start_var' must be positive")
        sc = self.scaling
        if sc.kind == "global" and (len(sc.mean) != d or len(sc.std) != d):
            raise ValueError(f"'scaling' must hold {d} means and standard deviations, one per feature")
        for seed, run in (sc.per_run or {}).items():
            if len(run.mean) != d or len(run.std) != d:
                raise ValueError(f"'scaling.per_run.{seed}' must hold {d} means and standard deviations")
        return self


# --------------------------------------------------------------------------- analysis.json


class ConvergenceResult(Artifact):
    metric: Name
    threshold: Finite
    direction: Literal["above", "below"] = "above"
    step_unit: Name = "step"
    times: dict[str, float | None]
    tau: float | None = None
    never_converged: list[int] | None = None


class StateRow(Artifact):
    state: Count
    status: Literal[STATE_STATUSES] | None = None  # type: ignore[valid-type]


class DetourRow(Artifact):
    state: Count
    delay: float | None = None
    significant: bool = True


class Regression(Artifact):
    coef: list[float | None]
    ci_low: list[float | None]
    ci_high: list[float | None]
    r2: float | None = None
    p_value: float | None = None
    f_stat: float | None = None
    n_runs: Count | None = None


class Dissimilarity(Artifact):
    value: float | None = None
    ground_metric: str | None = None


class MapNode(Artifact):
    """A state on the training map (networkx node-link data; the other keys: docs/artifacts.md)."""

    id: Count
    n_runs: Count | None = None
    occupancy: Probability | None = None
    self_prob: Probability | None = None


class MapEdge(Artifact):
    source: Count
    target: Count
    prob: Probability | None = None
    runs: Count | None = None


class TrainingMap(Artifact):
    nodes: list[MapNode]
    edges: list[MapEdge] | None = None

    @model_validator(mode="after")
    def _edges_join_nodes(self):
        ids = [n.id for n in self.nodes]
        if len(set(ids)) != len(ids):
            raise ValueError("'nodes' must not hold a state twice")
        for e in self.edges or ():
            if e.source not in ids or e.target not in ids:
                raise ValueError(f"an edge {e.source} -> {e.target} names a state that is not a node")
        return self


OptionalNumber = Annotated[float, AllowInfNan(True)] | None  # NaN/None where a value is undefined
DigitKey = Annotated[str, StringConstraints(pattern=r"^\d+$")]


class PhaseRow(Artifact):
    """A state's row of the phase table (``analysis.json`` ``phases.states``)."""

    state: Count
    checkpoints: Count | None = None
    runs: Count | None = None
    entries: Count | None = None
    metrics: dict[str, OptionalNumber] | None = None
    steps: dict[str, OptionalNumber] | None = None
    entered_from: dict[DigitKey, Count] | None = None
    moving: list[dict[str, Any]] | None = None
    entry_change: list[dict[str, Any]] | None = None
    name: str | None = None


class Phases(Artifact):
    states: list[PhaseRow]
    metrics: list[str] | None = None
    percentiles: list[Finite] | None = None
    scaling: str | None = None
    step_unit: str | None = None
    window: Count | None = None
    naming: str | None = None


class Selection(Artifact):
    """How K was chosen (``analysis.json`` ``selection``)."""

    criterion: str | None = None
    procedure: str | None = None
    fold_choice: dict[DigitKey, Count] | None = None
    folds: list[list[Count]] | None = None
    fragile: bool | None = None
    one_se: bool | None = None
    runner_up: Count | None = None


class AnalysisFile(Artifact):
    """``analysis.json``: the parts every reader relies on; the rest is described in docs/artifacts.md."""

    format: Literal["latent.analysis/1"] = ANALYSIS_FORMAT
    convergence: ConvergenceResult
    occupancy: dict[str, list[float]]
    map: TrainingMap
    regression: Regression
    detours: list[DetourRow]
    importance: list[dict[str, Any]]
    dissimilarity: Dissimilarity | None = None
    states: list[StateRow] | None = None
    phases: Phases | None = None
    selection: Selection | None = None
    detour_rule: dict[str, Any] | None = None
    stability: dict[str, Any] | None = None
    boundaries: dict[str, Any] | None = None
    ppc: dict[str, Any] | None = None
    audit: dict[str, Any] | None = None
    warnings: list[str] | None = None


# --------------------------------------------------------------------------- truth.json


class TruthFile(Artifact):
    format: Literal["latent.truth/1"]
    config: dict[str, Any]
    n_states: Positive | None  # None: smooth drift, no states (``latent simulate --family drift``)
    kinds: list[Literal["main", "detour", "fork"]]
    detours: list[Count]
    optional: list[Count]
    delay: dict[str, float]
    convergence: dict[str, float | None]
    paths: dict[str, list[Count]]

    @model_validator(mode="after")
    def _states_in_range(self):
        k = self.n_states
        if k is None:
            if self.kinds or self.detours or self.optional or self.paths:
                raise ValueError("a truth without states ('n_states': null) must have no kinds, detours, "
                                 "optional states or paths")
            return self
        if len(self.kinds) != k:
            raise ValueError(f"'kinds' must name all {k} states")
        if any(s >= k for s in self.detours + self.optional):
            raise ValueError(f"'detours' and 'optional' must be states 0..{k - 1}")
        if any(s >= k for p in self.paths.values() for s in p):
            raise ValueError(f"'paths' must hold states 0..{k - 1}")
        return self


# --------------------------------------------------------------------------- trainer_state.json


class LogEntry(Artifact):
    step: Count | None = None


class TrainerState(Artifact):
    """A Hugging Face ``trainer_state.json``: what ``latent import checkpoints`` reads of it."""

    log_history: list[LogEntry] = []
    global_step: Count | None = None


# --------------------------------------------------------------------------- reading


#: artifact kind -> (schema, words naming it in messages)
SCHEMAS: dict[str, tuple[type[Artifact], str]] = {
    "study": (StudyFile, "study file"),
    "manifest": (RunManifest, "run manifest"),
    "model": (ModelFile, "fit model"),
    "analysis": (AnalysisFile, "fit analysis"),
    "truth": (TruthFile, "truth file"),
    "trainer_state": (TrainerState, "trainer state"),
}


def _where(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("function-after", "function-before") or str(part).startswith(("list[", "dict[", "literal[")):
            continue  # pydantic's names for validators and unions, not places in the file
        else:
            out += ("." if out else "") + str(part)
    return out


def _what_wrong(err: Mapping) -> str:
    kind, msg = err.get("type", ""), str(err.get("msg", ""))
    if kind == "missing":
        return "is missing"
    if kind == "value_error":
        return msg.removeprefix("Value error, ")
    text = msg.replace("Input should be", "must be").replace("Input should have", "must have")
    text = text.replace("a valid list", "a list").replace("a valid dictionary", "an object")
    text = text.replace("a valid integer", "an integer").replace("a valid", "a")
    text = re.sub(r" or instance of \w+", "", text)
    return text if text.startswith("must") else f"is invalid: {text[0].lower()}{text[1:]}" if text else "is invalid"


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def describe(exc: ValidationError) -> str:
    """One phrase for the first problem of a validation error (``'seeds' must be ... (got 'all')``)."""
    errors = exc.errors(include_url=False)
    err = errors[0]
    where = _where(tuple(err.get("loc", ())))
    wrong = _what_wrong(err)
    text = f"'{where}' {wrong}" if where else wrong
    if err.get("type") not in ("missing", "value_error") and "input" in err:
        text += f" (got {_shown(err['input'])})"
    if len(errors) > 1:
        text += f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})"
    return text


def check_artifact(kind: str, data: Any, path: str | Path, hint: str) -> dict:
    """``data`` (parsed JSON of ``path``) if it satisfies the ``kind`` schema, else a one-line UserError."""
    schema, what = SCHEMAS[kind]
    if not isinstance(data, dict):
        raise UserError(f"{what} {path} is invalid: it must be a JSON object (got {type(data).__name__}); {hint}")
    try:
        schema.model_validate(data)
    except ValidationError as exc:
        raise UserError(f"{what} {path} is invalid: {describe(exc)}; {hint}") from None
    except RecursionError:
        raise UserError(f"{what} {path} is invalid: nested absurdly deep; {hint}") from None
    return data


def read_artifact(kind: str, path: str | Path, hint: str) -> dict:
    """Read the JSON artifact at ``path`` and check it against the ``kind`` schema (see :data:`SCHEMAS`)."""
    from .store import read_json

    return check_artifact(kind, read_json(path, SCHEMAS[kind][1], hint=hint), path, hint)


def check_fit(model: dict, analysis: dict, paths=None, where: str | Path = "fit") -> None:
    """What one fit's files must agree on: the analysis's states and the decoded paths are 0..K-1.

    ``paths`` (``paths.parquet`` as a DataFrame) is checked when given: columns ``seed, step,
    state`` and states in range. Raises a one-line UserError naming the disagreement.
    """
    k = int(model["n_states"])
    hint = "rerun `latent fit`"

    def bad(what: str) -> UserError:
        return UserError(f"fit {where} is inconsistent: {what}; {hint}")

    rows = analysis.get("states")
    if rows is not None and sorted(r["state"] for r in rows) != list(range(k)):
        raise bad(f"analysis.json lists states {sorted(r['state'] for r in rows)}, model.json has {k}")
    phases = analysis.get("phases")
    if phases is not None and sorted(r["state"] for r in phases["states"]) != list(range(k)):
        raise bad(f"analysis.json's phases list states {sorted(r['state'] for r in phases['states'])}, "
                  f"model.json has {k}")
    out = [d["state"] for d in analysis["detours"] if d["state"] >= k]
    if out:
        raise bad(f"analysis.json names detour state {out[0]}, model.json has states 0..{k - 1}")
    nodes = [n["id"] for n in analysis["map"]["nodes"] if n["id"] >= k]
    if nodes:
        raise bad(f"analysis.json's map has state {nodes[0]}, model.json has states 0..{k - 1}")
    wrong = [s for s, occ in analysis["occupancy"].items() if len(occ) != k]
    if wrong:
        raise bad(f"analysis.json's occupancy of seed {wrong[0]} has {len(analysis['occupancy'][wrong[0]])} "
                  f"entries, model.json has {k} states")
    if paths is None:
        return
    missing = [c for c in ("seed", "step", "state") if c not in paths.columns]
    if missing:
        raise bad(f"paths.parquet has no column {', '.join(missing)}")
    if paths.empty:
        raise bad("paths.parquet has no rows")
    try:
        states = paths["state"].to_numpy(dtype=float)
    except (TypeError, ValueError):
        raise bad("paths.parquet's states are not numbers") from None
    if not np.all(np.isfinite(states)) or np.any(states != np.round(states)) or np.any(states < 0) or np.any(states >= k):
        raise bad(f"paths.parquet holds states outside 0..{k - 1}")
    if paths.duplicated(["seed", "step"]).any():
        raise bad("paths.parquet holds a (seed, step) twice")

