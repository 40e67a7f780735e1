"""The 14 reference columns of saved checkpoints: the compute half of ``latent import checkpoints``.

Given run directories (or one directory holding run directories), :func:`checkpoint_runs`
finds each run's saved models, computes the reference's weight statistics of each with the
state-dict rules of :mod:`latent.collect.modules` (in the metric variant asked for,
:func:`latent.collect.metrics.reference_metrics`; in parallel over checkpoints if asked), and returns
one table per run. It writes nothing; ``latent import checkpoints`` writes the study.

A path is a root when its subdirectories are runs (they hold model files other than a Hugging
Face final model, or Hugging Face model folders); its runs are those subdirectories, sorted by
name. Otherwise a path that holds checkpoints is one run. A run's name is its directory name.

What counts as a checkpoint in a run directory:

* a file ``*.safetensors`` (read with safetensors), or ``*.pt``, ``*.pth``, ``*.bin``,
  ``*.ckpt`` (read with ``torch.load(..., weights_only=True)``: never an arbitrary pickle).
  The file must hold a state dict (names to tensors), or a dict whose one entry
  ``state_dict``/``model_state_dict``/``model``/``module`` is one (Lightning ``.ckpt`` files,
  ``{"model": ..., "optimizer": ...}`` bundles);
* a folder holding a Hugging Face model: ``model.safetensors`` or ``pytorch_model.bin``, or
  their shards with ``*.index.json`` (the ``checkpoint-N/`` folders of the ``Trainer``). Its
  other files (optimizer, scheduler, RNG state, ``training_args.bin``) are never read; its
  ``trainer_state.json`` is (below).

Skipped: Hugging Face's auxiliary files (``training_args.bin``, ``optimizer.pt``,
``scheduler.pt``, ``scaler.pt``, ``rng_state*.pth``) and, in a run directory that has
checkpoint folders, its top-level final model (``model.safetensors``, ``pytorch_model.bin``:
it carries no step).

The step of a checkpoint is the last whole number in its file name (without the extension)
or folder name (``checkpoint-1500`` → 1500, ``epoch3-step200.pt`` → 200), or the one group of
``step_pattern`` searched in that name (``r"epoch(\\d+)"``).

Scalars. ``trainer_state.json`` files (in the checkpoint folders and the run directory) hold
the ``Trainer``'s ``log_history``; the numeric values logged at a checkpoint's step (``loss``,
``eval_loss``, ``eval_accuracy``, ``learning_rate``, ``epoch``, …, not timings) become
columns of its row. Values logged at other steps are dropped.
"""

from __future__ import annotations

import json
import logging
import os
import re
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import pandas as pd

from latent.errors import UserError, describe_os_error
from latent.schemas import check_artifact
from latent.store import REFERENCE_COLUMNS

log = logging.getLogger("latent")

MODEL_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt")
#: model files of a Hugging Face folder, in order of preference
HF_MODEL_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                  "pytorch_model.bin.index.json")
#: files of a Hugging Face output or checkpoint folder that are not models (and often pickles)
HF_AUX = re.compile(r"^(training_args\.bin|optimizer\.(pt|bin)|scheduler\.pt|scaler\.pt|rng_state.*\.pth)$")
#: a top-level final model of a Hugging Face output directory (or one of its shards)
HF_FINAL = re.compile(r"^(model|pytorch_model)(-\d+-of-\d+)?\.(safetensors|bin)$")
#: log_history keys that are timings or counters, not measurements of the model
_NOT_SCALARS = re.compile(r"(_runtime|_per_second|_flos|^step|^total_flos)$")
_WRAPPERS = ("state_dict", "model_state_dict", "model", "module")


@dataclass(frozen=True)
class Checkpoint:
    """One saved model of a run.

    Attributes
    ----------
    path : Path
        The file, or the Hugging Face folder.
    step : int
    files : tuple of Path
        The files to read (several for a sharded model).
    """

    path: Path
    step: int
    files: tuple[Path, ...] = field(default=())


# --------------------------------------------------------------------------- finding runs


def _hf_files(folder: Path) -> tuple[Path, ...] | None:
    """The model files of a Hugging Face folder, or None if it holds none."""
    for name in HF_MODEL_FILES:
        path = folder / name
        if not path.is_file():
            continue
        if not name.endswith(".index.json"):
            return (path,)
        try:
            index = json.loads(path.read_text())
            shards = sorted(set(index["weight_map"].values()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise UserError(f"cannot read the shard index {path} ({type(exc).__name__}); restore the file") from None
        return tuple(folder / s for s in shards)
    return None


def _model_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and p.suffix in MODEL_SUFFIXES and not HF_AUX.match(p.name))


def _subdirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir())


def _holds_checkpoints(folder: Path) -> bool:
    """Model files, or Hugging Face model folders, directly inside ``folder``."""
    return bool(_model_files(folder)) or any(_hf_files(p) for p in _subdirs(folder))


def _is_run(folder: Path) -> bool:
    """A directory that is a run and not itself one checkpoint: model files other than a Hugging
    Face final model, or Hugging Face model folders, directly inside."""
    return (any(not HF_FINAL.match(p.name) for p in _model_files(folder))
            or any(_hf_files(p) for p in _subdirs(folder)))


def find_runs(paths: Sequence[str | os.PathLike] | str | os.PathLike) -> dict[str, Path]:
    """Run directories by name.

    A path whose subdirectories are runs (they hold model files other than a Hugging Face
    final model, or Hugging Face model folders) is a root: those subdirectories are its runs,
    sorted by name. Otherwise a path holding checkpoints is a run.

    Raises
    ------
    UserError
        If a path is missing or not a directory, holds no checkpoints at either level, or two
        runs share a name.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    runs: dict[str, Path] = {}
    for raw in paths:
        path = Path(raw)
        if not path.is_dir():
            raise UserError(f"{path} is not a directory; pass run directories (or one directory holding them)")
        try:
            found = [d for d in _subdirs(path) if _is_run(d)]
            if not found and _holds_checkpoints(path):
                found = [path]
        except OSError as exc:
            raise UserError(f"cannot list {path}: {exc.strerror or exc}") from None
        if not found:
            raise UserError(f"no checkpoints found in {path} or its subdirectories (looked for "
                            f"{', '.join('*' + s for s in MODEL_SUFFIXES)} files and Hugging Face "
                            "checkpoint-N/ folders)")
        for run in found:
            if run.name in runs:
                raise UserError(f"two runs are named {run.name!r} ({runs[run.name]} and {run}); "
                                "rename one directory")
            runs[run.name] = run
    if not runs:
        raise UserError("no run directories given")
    return runs


def _step_of(path: Path, pattern: re.Pattern | None) -> int:
    name = path.name if path.is_dir() else path.name[: -len(path.suffix)] if path.suffix else path.name
    if pattern is not None:
        match = pattern.search(path.name)
        if match is None:
            raise UserError(f"cannot tell the step of {path}: its name does not match step_pattern "
                            f"{pattern.pattern!r}; fix the pattern or move the file away")
        text = match.group(1)
        if text is None or not text.strip().isdigit():
            raise UserError(f"step_pattern {pattern.pattern!r} captures {text!r} from {path.name}, not a whole number")
        return int(text)
    numbers = re.findall(r"\d+", name)
    if not numbers:
        raise UserError(f"cannot tell the step of {path}: its name has no number; rename it (e.g. step-100"
                        f"{path.suffix}) or pass step_pattern")
    return int(numbers[-1])


def _compile_step_pattern(step_pattern) -> re.Pattern | None:
    if step_pattern is None:
        return None
    try:
        pattern = step_pattern if isinstance(step_pattern, re.Pattern) else re.compile(step_pattern)
    except (re.error, TypeError) as exc:
        raise UserError(f"step_pattern {step_pattern!r} is not a valid regular expression ({exc})") from None
    if pattern.groups != 1:
        raise UserError(f"step_pattern {pattern.pattern!r} must have exactly one group (the step), "
                        f"e.g. r'step(\\d+)'; it has {pattern.groups}")
    return pattern


def find_checkpoints(run: Path, step_pattern=None) -> list[Checkpoint]:
    """A run directory's checkpoints, sorted by step (rules: module docstring).

    Raises
    ------
    UserError
        If it has none, a step cannot be read from a name, or two checkpoints share a step.
    """
    pattern = _compile_step_pattern(step_pattern)
    run = Path(run)
    folders = []
    for p in sorted(run.iterdir()):
        if p.is_dir():
            files = _hf_files(p)
            if files:
                folders.append(Checkpoint(p, _step_of(p, pattern), files))
    singles = []
    for p in _model_files(run):
        if folders and HF_FINAL.match(p.name):
            continue  # the final model beside checkpoint-N/ folders: no step of its own
        singles.append(Checkpoint(p, _step_of(p, pattern), (p,)))
    found = sorted(folders + singles, key=lambda c: (c.step, str(c.path)))
    if not found:
        raise UserError(f"no checkpoints found in {run}")
    for a, b in zip(found, found[1:]):
        if a.step == b.step:
            raise UserError(f"{a.path} and {b.path} both have step {a.step}; remove one, or pass a step_pattern "
                            "that tells them apart")
    return found


# --------------------------------------------------------------------------- trainer_state.json


def log_scalars(entry: Mapping, skipped: list | None = None) -> dict[str, float]:
    """The numeric measurements of one Hugging Face log entry (no timings, counters or ``step``).

    A measurement logged as something other than a number (text, a list) is left out, and its
    key is appended to ``skipped`` so the caller can say so."""
    out = {}
    for key, value in entry.items():
        if _NOT_SCALARS.search(str(key)):
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            if skipped is not None and value is not None:
                skipped.append(str(key))
            continue
        out[str(key)] = float(value)
    return out


def trainer_scalars(run: Path, checkpoints: Iterable[Checkpoint]) -> dict[int, dict[str, float]]:
    """Values logged at each step in the run's ``trainer_state.json`` files (later files win)."""
    states = [c.path / "trainer_state.json" for c in checkpoints if c.path.is_dir()] + [run / "trainer_state.json"]
    by_step: dict[int, dict[str, float]] = {}
    for path in states:
        if not path.is_file():
            continue
        try:
            state = json.loads(path.read_text())
        except (OSError, ValueError, RecursionError) as exc:  # RecursionError: absurdly deep JSON
            raise UserError(f"cannot read {path} ({type(exc).__name__}); restore or delete it") from None
        history = check_artifact("trainer_state", state, path, hint="restore or delete it").get("log_history", [])
        skipped: list[str] = []
        for entry in history:
            if entry.get("step") is not None:  # the schema holds it to a non-negative integer
                by_step.setdefault(entry["step"], {}).update(log_scalars(entry, skipped))
        if skipped:
            keys = sorted(set(skipped))
            log.warning("%s: %d logged value(s) of %s are not numbers; left out (those checkpoints lack them)",
                        path, len(skipped), ", ".join(keys[:5]) + (" …" if len(keys) > 5 else ""))
    return by_step


# --------------------------------------------------------------------------- reading one checkpoint


def load_state_dict(ckpt: Checkpoint) -> dict:
    """The tensors of a checkpoint, read without unpickling anything (safetensors or weights_only)."""
    import torch

    from .modules import check_state_dict

    merged: dict = {}
    for path in ckpt.files:
        if not path.is_file():
            raise UserError(f"{path} is missing (named in the shard index of {ckpt.path}); restore it")
        if path.suffix == ".safetensors":
            from safetensors import SafetensorError
            from safetensors.torch import load_file

            try:
                part = load_file(str(path), device="cpu")
            except OSError as exc:
                raise UserError(f"cannot read {path}: {describe_os_error(exc)}") from None
            except (SafetensorError, ValueError, RuntimeError) as exc:
                raise UserError(f"cannot read {path}: {_first_line(exc)} (corrupt or not safetensors)") from None
        else:
            try:
                part = torch.load(path, map_location="cpu", weights_only=True)
            except OSError as exc:
                raise UserError(f"cannot read {path}: {describe_os_error(exc)}") from None
            except Exception as exc:  # UnpicklingError (refused), EOFError/RuntimeError (truncated), ...
                why = ("it holds Python objects that weights_only loading refuses; save model.state_dict() instead"
                       if "weights_only" in str(exc) or "Unsupported global" in str(exc)
                       else f"{type(exc).__name__}: {_first_line(exc)}; the file is corrupt or not a torch file")
                raise UserError(f"cannot read {path}: {why}") from None
            part = _unwrap(part, path)
        merged.update(check_state_dict(part, str(path)))
    return merged


def _unwrap(obj, path: Path):
    """A state dict found in a loaded object: itself, or its one wrapped entry (``state_dict``, ``model``...)."""
    import torch

    if isinstance(obj, Mapping):
        inner = [k for k in _WRAPPERS if isinstance(obj.get(k), Mapping)]
        if len(inner) == 1:
            return obj[inner[0]]
        if any(isinstance(v, torch.Tensor) for v in obj.values()):
            return obj  # a state dict, perhaps with a stray entry that check_state_dict names
        keys = ", ".join(map(str, list(obj)[:6]))
        raise UserError(f"{path} holds a dict ({keys}) that is not a state dict of tensors and has no one "
                        f"entry named {'/'.join(_WRAPPERS)}; save model.state_dict() instead")
    raise UserError(f"{path} holds a {type(obj).__name__}, not a state dict of tensors; save model.state_dict()")


def _first_line(exc: BaseException) -> str:
    return (str(exc).splitlines() or [type(exc).__name__])[0][:160]


@dataclass(frozen=True)
class _Job:
    ckpt: Checkpoint
    include: tuple
    exclude: tuple
    heads: int | None
    metric_variant: str = "reference"


def _compute(job: _Job):
    """One checkpoint's columns and its tensor names and shapes; a UserError is returned, not raised."""
    from .modules import select_state_dict

    try:
        tensors = load_state_dict(job.ckpt)
        selection = select_state_dict(tensors, job.include, job.exclude, job.heads, where=str(job.ckpt.path))
        return selection.metrics(tensors, job.metric_variant), selection.signature, None
    except UserError as exc:
        return None, None, str(exc)


def _worker_init(parent: int | None = None) -> None:
    import torch

    from latent.parallel import die_with_parent

    die_with_parent(parent)  # a killed import leaves no worker behind
    torch.set_num_threads(1)  # one process per core: threads inside would only contend


# --------------------------------------------------------------------------- the entry point


def _tuple(patterns) -> tuple:
    if patterns is None:
        return ()
    if isinstance(patterns, (str, re.Pattern)):
        return (patterns,)
    return tuple(patterns)


def _check_same_tensors(first: tuple[Path, tuple], path: Path, signature: tuple) -> None:
    """Refuse a checkpoint whose tensor names or shapes differ from the first checkpoint's."""
    ref_path, ref = first
    have, want = dict(signature), dict(ref)
    if have == want:
        return
    missing = [n for n in want if n not in have]
    extra = [n for n in have if n not in want]
    if missing or extra:
        what = (f"lacks the tensor {missing[0]} that {ref_path} has" if missing
                else f"has a tensor {extra[0]} that {ref_path} lacks")
        more = len(missing) + len(extra) - 1
        raise UserError(f"{path} {what}{f' ({more} more differences)' if more else ''}; every checkpoint of "
                        "every run must be of one model")
    name = next(n for n in want if have[n] != want[n])
    raise UserError(f"{path}: {name} has shape {have[name]} but {want[name]} in {ref_path}; "
                    "every checkpoint of every run must be of one model")


def checkpoint_runs(paths, *, step_pattern=None, include=(), exclude=(), workers: int = 1,
                    progress: bool = True, heads: int | None = None,
                    metric_variant: str = "reference") -> dict[str, pd.DataFrame]:
    """The 14 reference columns of every saved checkpoint of every run, one table per run.

    Parameters
    ----------
    paths : path or sequence of paths
        Run directories, or one directory whose subdirectories are the runs.
    step_pattern : str or re.Pattern, optional
        A regular expression with one group, searched in each checkpoint's file or folder
        name, whose match is the step. Default: the last whole number in the name.
    include, exclude : str, re.Pattern or sequence of them
        Change which tensors count (:mod:`latent.collect.modules`, state-dict rules).
    workers : int
        Processes computing checkpoints in parallel (1: in this process). Results do not
        depend on it.
    progress : bool
        Show a progress bar on stderr.
    heads : int, optional
        Attention heads of ``in_proj_weight`` tensors (``nn.MultiheadAttention``), to split them
        per head as the module rules do.
    metric_variant : {"reference", "paper"}
        The definitions of the 14 columns (:func:`latent.collect.metrics.reference_metrics`): the
        reference code's (the default) or the paper's wording (population variances, pooled
        singular values); the same as a :class:`latent.collect.recorder.Recorder` of that variant.

    Returns
    -------
    dict of str to DataFrame
        Run name (its directory name) to a table sorted by step: ``step`` (int64), the 14
        reference columns (float64), then any ``trainer_state.json`` scalars. Runs are in the
        order found (paths as given; subdirectories of a root sorted by name).

    Raises
    ------
    UserError
        An unknown ``metric_variant``; or one line naming the file: no checkpoints, a step that
        cannot be read, duplicate steps, an unreadable or corrupt file, content that is not a
        state dict of tensors, or checkpoints whose tensor names (or shapes) differ from the
        first one's.
    """
    from .recorder import check_metric_variant

    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise UserError(f"workers must be a whole number >= 1, got {workers!r}")
    metric_variant = check_metric_variant(metric_variant)
    runs = find_runs(paths)
    plan = {name: find_checkpoints(run, step_pattern) for name, run in runs.items()}
    include, exclude = _tuple(include), _tuple(exclude)
    jobs = [_Job(c, include, exclude, heads, metric_variant) for ckpts in plan.values() for c in ckpts]
    results = _run_jobs(jobs, workers, progress)

    first: tuple[Path, tuple] | None = None
    tables: dict[str, pd.DataFrame] = {}
    it = iter(results)
    for name, ckpts in plan.items():
        scalars = trainer_scalars(runs[name], ckpts)
        rows = []
        for ckpt in ckpts:
            metrics, signature, error = next(it)
            if error is not None:
                raise UserError(error)
            if first is None:
                first = (ckpt.path, signature)
            _check_same_tensors(first, ckpt.path, signature)
            rows.append({"step": ckpt.step, **metrics, **scalars.get(ckpt.step, {})})
        frame = pd.DataFrame(rows)
        extra = sorted({k for r in rows for k in r} - {"step", *REFERENCE_COLUMNS})
        frame = frame.reindex(columns=["step", *REFERENCE_COLUMNS, *extra])
        frame["step"] = frame["step"].astype("int64")
        tables[name] = frame.astype({c: "float64" for c in frame.columns if c != "step"})
    return tables


def _run_jobs(jobs: list[_Job], workers: int, progress: bool) -> list:
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(jobs), desc="checkpoints", unit="ckpt", leave=False)
    out = []
    try:
        if workers == 1 or len(jobs) == 1:
            for job in jobs:
                out.append(_compute(job))
                if bar is not None:
                    bar.update()
                if out[-1][2] is not None:
                    break  # the first error in order is the one reported
        else:
            import multiprocessing

            # fork, with one torch thread per worker (the initializer), as DataLoader workers do:
            # no re-import of torch per worker, and no re-run of an unguarded __main__ as spawn has
            methods = multiprocessing.get_all_start_methods()
            ctx = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
            with ProcessPoolExecutor(max_workers=min(workers, len(jobs)), mp_context=ctx,
                                     initializer=_worker_init, initargs=(os.getpid(),)) as pool:
                for result in pool.map(_compute, jobs):  # map keeps the order of jobs
                    out.append(result)
                    if bar is not None:
                        bar.update()
    finally:
        if bar is not None:
            bar.close()
    return out


__all__ = ["checkpoint_runs", "find_runs", "find_checkpoints", "load_state_dict", "trainer_scalars",
           "log_scalars", "Checkpoint"]
