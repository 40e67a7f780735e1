"""Collecting a study: validate the request, create or resume the study, train batches of seeds.

:func:`collect_study` is what ``latent collect`` calls. It validates everything before it
touches the store, refuses to mix configs in one study, trains only the seeds that are not
done, resumes unfinished ones from their saved state, and reports a summary.
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
import platform
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from latent.errors import UserError
from latent.store import STUDY_FORMAT, Study, check_study_name

from .config import config_to_dict, parse_overrides, resolve_config
from .metrics import REFERENCE_COLUMNS
from .runtime import resolve_device, set_threads
from .seeds import RunSeeds
from .tasks import get_task
from .trainer import LOSS_COLUMNS, Checkpoint, train
from .writer import StudyWriter, existing_rows, load_state

log = logging.getLogger("latent.collect")


def parse_seeds(text: str | int | Sequence[int]) -> list[int]:
    """Seeds from ``"40"`` (0..39), ``"5-9"`` (inclusive), ``"1,3,8"`` or a mix like ``"0-9,20"``.

    Raises
    ------
    UserError
        For a count below 1, a negative seed, or anything that is not a number.
    """
    if isinstance(text, int):
        text = str(text)
    if not isinstance(text, str):
        seeds = [int(s) for s in text]
    else:
        t = text.strip()
        if t.isdigit():
            n = int(t)
            if n < 1:
                raise UserError(f"--seeds must be at least 1, got {text!r}")
            return list(range(n))
        seeds = []
        for part in t.split(","):
            part = part.strip()
            if not part:
                continue
            lo, sep, hi = part.partition("-")
            if sep and lo.isdigit() and hi.isdigit():
                if int(hi) < int(lo):
                    raise UserError(f"--seeds range {part!r} is empty (end before start)")
                seeds.extend(range(int(lo), int(hi) + 1))
            elif not sep and part.isdigit():
                seeds.append(int(part))
            else:
                raise UserError(
                    f"--seeds expects a count (40), a range (0-39) or a list (1,5,9) of non-negative integers, got {text!r}"
                )
    if not seeds:
        raise UserError(f"--seeds selects no seeds: {text!r}")
    if any(s < 0 for s in seeds):
        raise UserError(f"seeds must be non-negative, got {text!r}")
    return sorted(set(seeds))


def _versions() -> dict[str, str]:
    import pandas
    import torch

    from latent import __version__

    return {
        "latent": __version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "pandas": pandas.__version__,
        "python": platform.python_version(),
    }


def _check_store_writable(store: Path) -> None:
    try:
        store.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=store, prefix=".write-test.")
        os.close(fd)
        os.unlink(tmp)
    except OSError as exc:
        raise UserError(f"store path {store} is not writable ({exc.strerror or exc}); pass --store DIR") from None


@dataclass
class CollectResult:
    """What a collection did, for the summary line."""

    study: Path
    task: str
    seeds_total: int
    seeds_trained: list[int]
    converged: int
    convergence_median: float | None
    convergence_unit: str
    wall_seconds: float
    nothing_to_do: bool = False
    timings: dict[str, float] = field(default_factory=dict)


def collect_study(
    task: str,
    seeds: str | int | Sequence[int] = 40,
    *,
    preset: str = "default",
    overrides: Mapping[str, Any] | Sequence[str] = (),
    study: str | None = None,
    store: str | os.PathLike = "data",
    device: str = "cpu",
    threads: int | None = None,
    overwrite: bool = False,
    seed_batch: int = 0,
    save_every: float = 30.0,
    progress: bool = True,
    command: str | None = None,
) -> CollectResult:
    """Train ``seeds`` of ``task`` into a study, resuming or extending it if it exists.

    Parameters
    ----------
    task : str
        Task name (``modadd``).
    seeds : int, str or sequence of int
        A count (seeds 0..n-1), a range/list string (``"0-9,20"``) or explicit seeds.
    preset : str
        Named preset of the task config.
    overrides : mapping or list of "key=value"
        Config fields to change after the preset (typed; unknown keys are errors).
    study : str, optional
        Study name (default: the task name, plus ``-<preset>`` for non-default presets).
    store : path
        Store directory.
    device : {"cpu", "cuda", "cuda:N"}
    threads : int, optional
        Intra-op threads (default: the task's ``default_threads``, else all cores).
    overwrite : bool
        Replace an existing study of the same name whose config differs.
    seed_batch : int
        Most seeds trained together in one batched model (0: all of them).
    save_every : float
        Seconds between save points (resume state and tables); 0 saves after every epoch.
    progress : bool
        Show a progress bar on stderr.
    command : str, optional
        The command line to record in ``study.json``.

    Returns
    -------
    CollectResult
    """
    t_start = time.time()
    task_obj = get_task(task)
    if not isinstance(overrides, Mapping):
        overrides = parse_overrides(task_obj.config_class, list(overrides))
    cfg = resolve_config(task_obj.config_class, task_obj.presets, preset, overrides)
    seed_list = parse_seeds(seeds)
    name = check_study_name(study or (task if preset == "default" else f"{task}-{preset}"))
    dev = resolve_device(device)
    if seed_batch < 0:
        raise UserError(f"--seed-batch must be >= 0 (0 = all seeds at once), got {seed_batch}")
    store = Path(store)
    _check_store_writable(store)

    config = config_to_dict(cfg)
    convergence = task_obj.convergence(cfg)
    study_obj = Study(store / name)
    split_seed = config.get("split_seed")
    if study_obj.exists():
        meta = study_obj.read_meta()
        if meta.get("task") != task or meta.get("config") != config:
            if not overwrite:
                diff = sorted(
                    k for k in set(config) | set(meta.get("config", {}))
                    if config.get(k) != meta.get("config", {}).get(k)
                )
                what = f"task {meta.get('task')!r}" if meta.get("task") != task else f"config differs in: {', '.join(diff)}"
                raise UserError(
                    f"study {name!r} in {store} was collected with another setup ({what}); "
                    "pick another name with --study NAME or replace it with --overwrite"
                )
            shutil.rmtree(study_obj.root)
            meta = None
    else:
        meta = None

    all_seeds = sorted(set(seed_list) | set(meta.get("seeds", []) if meta else []))
    if meta is None:
        new_meta = {
            "format": STUDY_FORMAT,
            "name": name,
            "task": task,
            "preset": preset,
            "config": config,
            "seeds": all_seeds,
            "step_unit": task_obj.step_unit,
            "convergence": convergence.as_dict(),
            "features": list(REFERENCE_COLUMNS),
            "metrics": list(REFERENCE_COLUMNS) + list(LOSS_COLUMNS),
            "split": {"mode": "per_run"} if split_seed is None else {"mode": "shared", "seed": split_seed},
            "data": task_obj.describe_data(cfg),
            "versions": _versions(),
            "command": command,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        }
    else:
        # Same task and config: extend the seed list, remember any new command line.
        new_meta = {**meta, "seeds": all_seeds}
        if command and command != meta.get("command") and command not in meta.get("commands", []):
            new_meta["commands"] = list(meta.get("commands", [])) + [command]

    # Which requested seeds still need work, and from where.
    pending: dict[int, list[int]] = {}
    for s in seed_list:
        manifest = study_obj.read_manifest(s)  # None when the run has not started
        if manifest and manifest.get("status") == "done":
            continue
        state_path = study_obj.run_state_path(s)
        start = int(load_state(state_path)["meta/step"]) if state_path.exists() else 0
        pending.setdefault(start, []).append(s)

    if meta is None or new_meta != meta:
        study_obj.write_meta(new_meta)
    if not pending:
        return _summarise(study_obj, task, all_seeds, [], t_start, convergence, nothing_to_do=True)

    set_threads(threads if threads is not None else task_obj.default_threads)
    timings: dict[str, float] = {}
    trained: list[int] = []
    batches = []
    for start, group in sorted(pending.items()):
        size = seed_batch or len(group)
        batches += [(start, group[i : i + size]) for i in range(0, len(group), size)]
    for b, (start, group) in enumerate(batches):
        label = f"{task} seeds {_seed_label(group)}" + (f" [{b + 1}/{len(batches)}]" if len(batches) > 1 else "")
        _train_batch(task_obj, cfg, study_obj, group, start, dev, split_seed, convergence, save_every, progress, label, timings)
        trained += group
    return _summarise(study_obj, task, all_seeds, trained, t_start, convergence, timings=timings)


def _seed_label(seeds: list[int]) -> str:
    if seeds == list(range(seeds[0], seeds[-1] + 1)):
        return f"{seeds[0]}-{seeds[-1]}" if len(seeds) > 1 else str(seeds[0])
    return ",".join(map(str, seeds[:6])) + ("…" if len(seeds) > 6 else "")


def _train_batch(task_obj, cfg, study_obj: Study, seeds: list[int], start: int, dev, split_seed, convergence,
                 save_every: float, progress: bool, label: str, timings: dict[str, float]) -> None:
    from tqdm import tqdm

    run_seeds = [RunSeeds.derive(s, split_seed) for s in seeds]
    problem = task_obj.build(cfg, run_seeds, dev)
    if start > 0:
        problem.load_seed_states([load_state(study_obj.run_state_path(s)) for s in seeds])
    spe = problem.steps_per_epoch
    unit = task_obj.step_unit
    existing = {s: existing_rows(study_obj, s, start, spe, unit) for s in seeds}
    existing = {s: f for s, f in existing.items() if f is not None}
    writer = StudyWriter(study_obj, run_seeds, existing, step_unit=unit)

    converged = np.zeros(len(seeds), dtype=bool)
    for i, s in enumerate(seeds):
        frame = existing.get(s)
        if frame is not None and convergence.metric in frame:
            converged[i] = bool(convergence.reached(_tensor(frame[convergence.metric].to_numpy())).any())

    # The bar counts the study's step unit: epochs for epoch-logged tasks, optimiser steps otherwise.
    per_tick = spe if unit == "epoch" else 1
    bar = tqdm(total=cfg.epochs * spe // per_tick, initial=start // per_tick, unit=unit, desc=label,
               disable=not progress, file=sys.stderr, dynamic_ncols=True, mininterval=0.5)
    bar.set_postfix_str(f"converged {int(converged.sum())}/{len(seeds)}")
    last_save = time.monotonic()
    total = cfg.epochs * spe

    def on_checkpoint(ck: Checkpoint) -> None:
        writer.add(ck)
        if convergence.metric in ck.values:
            converged[:] |= convergence.reached(_tensor(ck.values[convergence.metric])).numpy()
            bar.set_postfix_str(f"converged {int(converged.sum())}/{len(seeds)}", refresh=False)

    def on_step(step: int) -> None:
        nonlocal last_save
        if step // per_tick > bar.n:
            bar.update(step // per_tick - bar.n)
        if start < step < total and time.monotonic() - last_save >= save_every:
            t0 = time.perf_counter()
            writer.save(step, [problem.seed_state(i) for i in range(len(seeds))])
            timings["save"] = timings.get("save", 0.0) + time.perf_counter() - t0
            last_save = time.monotonic()

    try:
        train(problem, start_step=start, epochs=cfg.epochs, log_every=cfg.log_every, unit=unit,
              on_checkpoint=on_checkpoint, on_step=on_step, timings=timings)
    finally:
        bar.close()
    writer.save(total, None, done=True, info={k: round(v, 3) for k, v in timings.items()})


def _tensor(values):
    import torch

    return torch.as_tensor(np.asarray(values, dtype=np.float64))


def convergence_epochs(study: Study, seeds: list[int], convergence) -> dict[int, float | None]:
    """First checkpoint (in the study's step unit) where each done run crosses the threshold."""
    out: dict[int, float | None] = {}
    for s in seeds:
        if not study.run_table_path(s).exists():
            continue
        frame = study.read_run(s)
        values = frame[convergence.metric].to_numpy(dtype=float)
        hit = values > convergence.threshold if convergence.direction == "above" else values < convergence.threshold
        out[s] = float(frame["step"].to_numpy()[hit.argmax()]) if hit.any() else None
    return out


def _summarise(study: Study, task: str, all_seeds: list[int], trained: list[int], t_start: float,
               convergence, nothing_to_do: bool = False, timings: dict[str, float] | None = None) -> CollectResult:
    done = [s for s in all_seeds if (m := study.read_manifest(s)) and m.get("status") == "done"]
    times = convergence_epochs(study, done, convergence)
    hit = [t for t in times.values() if t is not None]
    meta = study.read_meta()
    return CollectResult(
        study=study.root,
        task=task,
        seeds_total=len(all_seeds),
        seeds_trained=trained,
        converged=len(hit),
        convergence_median=float(np.median(hit)) if hit else None,
        convergence_unit=meta.get("step_unit", "step"),
        wall_seconds=time.time() - t_start,
        nothing_to_do=nothing_to_do,
        timings=timings or {},
    )
