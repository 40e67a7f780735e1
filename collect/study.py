"""Collecting a study: validate the request, create or resume the study, train batches of seeds.

:func:`collect_study` is what ``latent collect`` calls. It validates everything before it
touches the store, refuses to mix configs or data in one study, trains only the seeds that are
not done, resumes unfinished ones from their saved state (:mod:`latent.collect.resume`), and reports a
summary.

Concurrency: a short-held study lock serialises the bookkeeping (reading and writing
``study.json``, deciding what each seed needs), and each seed being trained is leased
(:mod:`latent.locks`), so two collections of one study never train the same seed. A second
collection trains the seeds nobody holds, then waits for the others and finishes whatever
their holder left unfinished.

On Dask (``scheduler=`` / ``cluster=``, :mod:`latent.cluster`) the same bookkeeping runs on the
client, and each batch of seeds becomes one task that leases, plans (resuming from the last
save point) and trains its seeds on a worker, straight into the store; a task run again after
its worker died finds its predecessor's save points, and one whose predecessor still runs waits
for its leases.
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

from latent import locks
from latent.errors import UserError, store_error
from latent.snapshots import snapshot_steps
from latent.store import STUDY_FORMAT, Study, check_study_name, schedule_steps

from .config import config_to_dict, parse_overrides, resolve_config
from .fingerprint import data_change
from .llc import LLC_FEATURES, LLCConfig, LLCSampler, parse_llc, require_devinterp
from .metrics import METRIC_VARIANTS, REFERENCE_COLUMNS
from .resume import RunStart, plan_run
from .runtime import resolve_device, set_threads
from .seeds import RunSeeds
from .tasks import get_task
from .trainer import LOSS_COLUMNS, Checkpoint, checkpoint_steps, train
from .writer import StudyWriter, load_state, remove_state, reset_run

#: groups recorded only when named (not by default, not by ``all``): ``llc`` needs the
#: ``[devinterp]`` extra and costs far more than the others (docs/collect.md)
OPT_IN_GROUPS = ("llc",)

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
    seeds_done: int = 0
    #: Requested seeds that another collection was training; this one waited for them.
    seeds_elsewhere: list[int] = field(default_factory=list)
    #: Runs this collection resumed from a save point: seed -> optimiser steps already taken.
    seeds_resumed: dict[int, int] = field(default_factory=dict)


class _Data:
    """The study's data, loaded and described on first use only (a finished study needs none)."""

    def __init__(self, task_obj, cfg):
        self.task_obj, self.cfg = task_obj, cfg
        self.value: Any = None
        self.info: dict | None = None

    def describe(self) -> dict:
        if self.info is None:
            self.value = self.task_obj.load_data(self.cfg)
            self.info = self.task_obj.describe_data(self.cfg, self.value)
        return self.info


@dataclass
class _Claim:
    """What one pass of bookkeeping (under the study lock) found and leased."""

    meta: dict
    schedule: dict
    pending: dict[int, RunStart]
    leases: dict[int, locks.Lock]
    held: list[int]  # seeds another collection holds

    def release(self, seeds=None) -> None:
        for s in list(self.leases) if seeds is None else seeds:
            lease = self.leases.pop(s, None)
            if lease is not None:
                lease.release()


@dataclass
class _Run:
    """One collection in this process: what to collect (``request``, recorded in ``study.json``) and how
    (device, threads, batching, saving, progress), handed whole to the stages of :func:`collect_study`
    instead of a train of arguments.

    Attributes
    ----------
    task : str
    task_obj : Task
    cfg : the task's config
    study : Study
    request : dict
        Study name, task, preset, config, convergence, command, metric variant and groups, llc settings.
    data : _Data
        The task's data, loaded once.
    device
        A torch device here; a device name for Dask workers (resolved there).
    threads : int or None
    overwrite : bool
    seed_batch : int
    save_every, poll : float
    progress : bool
    timings : dict
        Seconds per activity, accumulated.
    report : callable, optional
        Progress events of a Dask task (:class:`_Progress`).
    """

    task: str
    task_obj: Any
    cfg: Any
    study: Study
    request: dict
    data: Any
    device: Any
    threads: int | None
    overwrite: bool
    seed_batch: int
    save_every: float
    progress: bool
    poll: float
    timings: dict
    report: Any = None


def _bar_interval() -> float:
    """Seconds between progress-bar redraws: twice a second on a terminal, once a minute in a log
    file (where every redraw stays, as a line of its own)."""
    try:
        return 0.5 if sys.stderr.isatty() else 60.0
    except (AttributeError, ValueError):  # a closed or replaced stderr
        return 60.0


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
    poll: float = 0.5,
    scheduler: Any = None,
    cluster: str | None = None,
    retries: int | None = None,
    metric_variant: str = "reference",
    metric_groups=None,
    llc=None,
    snapshots: int | None = None,
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
        Intra-op threads (default: the task's ``default_threads``, else ``$OMP_NUM_THREADS`` when set, else
        all cores).
    overwrite : bool
        Replace an existing study of the same name whose config differs.
    seed_batch : int
        Most seeds trained together in one batched model (0: all of them).
    save_every : float
        Seconds between save points (resume state and tables); 0 saves after every step.
    progress : bool
        Show a progress bar on stderr.
    command : str, optional
        The command line to record in ``study.json``.
    poll : float
        Seconds between checks while waiting for seeds another collection is training.
    scheduler : str or distributed.Client, optional
        Train the seed batches as tasks on the Dask scheduler at this address (or of this
        client). The store must be a path that the client and every worker see alike.
    cluster : str, optional
        ``"local:N"`` or ``"slurm:N"``: start that Dask cluster for this collection instead
        (:func:`latent.cluster.connect`).
    retries : int, optional
        On Dask, how often a batch that raised is run again (default
        :data:`latent.cluster.RETRIES`); a batch whose worker died is rerun by the scheduler.
        Each batch is one task of at most ``seed_batch`` seeds; on a worker, ``threads``
        defaults to the task's default, else 1 (Dask runs one task per worker thread).
    metric_variant : {"reference", "paper"}
        The weight statistics' definitions (:func:`latent.collect.metrics.reference_metrics`):
        the reference code's, or the paper's wording (population variances, pooled singular
        values). Recorded in ``study.json``; a study is resumed and extended only with its own
        variant (unless ``overwrite``). A study that records none is ``"reference"``.
    metric_groups : str or sequence of str, optional
        The optional metric groups to record besides the weight statistics and losses
        (``Task.metric_groups``: ``progress`` for modular arithmetic, ``function`` for every
        task), as names or one comma-separated string; ``"all"`` or ``"none"``. None: the groups
        an existing study records (none for a study collected before groups existed), every group
        the task has for a new one. Recorded in ``study.json`` (``metric_groups``, and each group's
        columns under ``groups``); a study is resumed and extended only with its own groups.
        ``all`` and the default leave out the opt-in groups (:data:`OPT_IN_GROUPS`: ``llc``),
        which are recorded only when named.
    llc : LLCConfig or sequence of "KEY=VALUE", optional
        Settings of the ``llc`` group (:class:`latent.collect.llc.LLCConfig`), recorded in
        ``study.json``; None: the study's own when resuming, else the defaults. A study is
        resumed and extended only with its own settings.
    snapshots : int, optional
        Store every run's token embedding and unembedding at this many checkpoints
        (``<study>/snapshots/seed-NNN.npz``, read with :func:`latent.snapshots.read_snapshots`),
        chosen from the schedule evenly by index, the first and the last always among them
        (:func:`latent.snapshots.snapshot_steps`); more than the schedule has: every checkpoint,
        with a warning. 0: none; otherwise at least 2, and only for tasks whose model has a token
        embedding and an unembedding (modadd). None: what an existing study records, none for a
        new one. Recorded in ``study.json`` (``snapshots``, only when there are some); a study is
        resumed and extended only with its own.

    Returns
    -------
    CollectResult

    Raises
    ------
    UserError
        For bad input, data that differs from what the study was collected on, unreadable run
        files (naming every file to remove together), or a refused write (disk full,
        permissions). What is already in the store stays consistent.
    """
    t_start = time.time()
    task_obj = get_task(task)
    if not isinstance(overrides, Mapping):
        overrides = parse_overrides(task_obj.config_class, list(overrides))
    cfg = resolve_config(task_obj.config_class, task_obj.presets, preset, overrides)
    if metric_variant not in METRIC_VARIANTS:
        raise UserError(f"--metric-variant must be one of {', '.join(METRIC_VARIANTS)}, got {metric_variant!r}")
    groups = _parse_groups(metric_groups, task_obj.metric_groups(cfg))
    llc_cfg = llc if isinstance(llc, LLCConfig) else parse_llc(llc)
    llc_cfg.validate()
    snapshot_count = _parse_snapshots(snapshots, task, task_obj, cfg)
    seed_list = parse_seeds(seeds)
    name = check_study_name(study or (task if preset == "default" else f"{task}-{preset}"))
    on_dask = scheduler is not None or cluster is not None
    if on_dask:
        from latent import cluster as dask_glue

        if scheduler is not None and cluster is not None:
            raise UserError("give --scheduler ADDRESS or --cluster local:N|slurm:N, not both")
        dask_glue.require()
        if cluster is not None:
            dask_glue.parse_cluster(cluster)
        elif isinstance(scheduler, str):
            dask_glue.check_address(scheduler)
        dev = _check_device_name(device)  # resolved on the workers, which may have GPUs the client lacks
    else:
        dev = resolve_device(device)
    if seed_batch < 0:
        raise UserError(f"--seed-batch must be >= 0 (0 = all seeds at once), got {seed_batch}")
    store = Path(store)
    _check_store_writable(store)

    study_obj = Study(store / name)
    request = dict(name=name, task=task, preset=preset, config=config_to_dict(cfg),
                   convergence=task_obj.convergence(cfg), command=command, metric_variant=metric_variant,
                   metric_groups=groups, group_columns=task_obj.metric_groups(cfg), llc=llc_cfg.as_dict(),
                   llc_given=llc is not None, snapshots=snapshot_count, snapshot_axes=task_obj.snapshot_axes(cfg))
    run = _Run(task=task, task_obj=task_obj, cfg=cfg, study=study_obj, request=request, data=_Data(task_obj, cfg),
               device=dev, threads=threads, overwrite=overwrite, seed_batch=seed_batch, save_every=save_every,
               progress=progress, poll=poll, timings={})
    if not on_dask:
        trained, elsewhere, resumed, meta = _collect_seeds(run, seed_list)
    else:
        with dask_glue.connect(scheduler, cluster) as client:
            trained, elsewhere, resumed, meta = _collect_on_dask(
                client, run, seed_list, dask_glue.RETRIES if retries is None else retries)
    result = _summarise(study_obj, task, meta, trained, elsewhere, t_start, request["convergence"], run.timings)
    result.seeds_resumed = resumed
    return result


def _collect_seeds(run: _Run, seeds: list[int]):
    """Train ``seeds`` in this process: claim what needs work, train it in batches, then wait for
    the seeds another collection holds and finish whatever their holder left unfinished.

    Returns (seeds trained here, seeds another collection trained meanwhile, seeds resumed ->
    their start step, the study's metadata).
    """
    trained: list[int] = []
    elsewhere: set[int] = set()
    resumed: dict[int, int] = {}
    threads_set = False
    wanted = seeds
    overwrite = run.overwrite
    while True:
        with locks.acquire(run.study.lock_path):
            claim = _claim(run.study, run.task_obj, run.cfg, run.request, wanted, run.data, overwrite)
        try:
            if claim.pending and not threads_set:
                set_threads(run.threads if run.threads is not None else run.task_obj.default_threads)
                threads_set = True
            now_resumed = {s: p.start for s, p in claim.pending.items() if p.start}
            for start, group in sorted(_by_start(now_resumed).items()):
                log.info("resuming seed(s) %s from step %s (their last save point)", seed_label(group), f"{start:,}")
            resumed.update(now_resumed)
            for label, start, group in _batches(run.task, claim.pending, run.seed_batch):
                _train_batch(run, claim.schedule, [claim.pending[s] for s in group], start, label)
                claim.release(group)
                trained += group
        finally:
            claim.release()
        overwrite = False  # replaced at most once, on the first pass
        if not claim.held:
            break
        elsewhere |= set(claim.held)
        wanted = sorted(claim.held)
        _wait_for(run.study, wanted, run.poll)
    return trained, sorted(elsewhere - set(trained)), resumed, claim.meta


def _by_start(starts: Mapping[int, int]) -> dict[int, list[int]]:
    """Seeds grouped by the step they resume from."""
    out: dict[int, list[int]] = {}
    for seed, start in sorted(starts.items()):
        out.setdefault(start, []).append(seed)
    return out


def _check_device_name(name: str) -> str:
    if name == "cpu" or name == "cuda" or (name.startswith("cuda:") and name[5:].isdigit()):
        return name
    raise UserError(f"unknown device {name!r}; use cpu or cuda")


# --------------------------------------------------------------------------- on Dask


def _collect_on_dask(client, run: _Run, seeds: list[int], retries: int):
    """:func:`_collect_seeds` with each batch a Dask task: the bookkeeping stays here, the
    leases and the training go to the workers (:func:`_dask_batch`).

    Which seeds this collection trained is read from the store at the end, not from the tasks'
    results: a task whose worker died after finishing leaves no result, and a task retried
    beside a frozen (still living) predecessor waits for seeds that are still this collection's.
    """
    ours: set[int] = set()  # seeds given to this collection's tasks
    elsewhere: set[int] = set()
    resumed: dict[int, int] = {}
    threads = run.threads if run.threads is not None else (run.task_obj.default_threads or 1)
    wanted = seeds
    overwrite = run.overwrite
    while True:
        with locks.acquire(run.study.lock_path):
            claim = _claim(run.study, run.task_obj, run.cfg, run.request, wanted, run.data, overwrite)
        claim.release()  # each task leases its own seeds on its worker
        ours |= set(claim.pending)
        batches = _batches(run.task, claim.pending, run.seed_batch)
        if batches:
            # what goes over the wire: plain values, rebuilt into a _Run on the worker (_dask_batch)
            job = dict(task=run.task, cfg=run.cfg, root=str(run.study.root.resolve()), request=run.request,
                       device=run.device, threads=threads, seed_batch=run.seed_batch, save_every=run.save_every,
                       poll=run.poll)
            for res in _run_batches(client, job, batches, claim, run.task_obj, run.cfg, run.progress, retries):
                resumed.update(res["resumed"])
                for k, v in res["timings"].items():
                    run.timings[k] = run.timings.get(k, 0.0) + v
        overwrite = False
        if not claim.held:
            break
        elsewhere |= set(claim.held)
        wanted = sorted(claim.held)
        _wait_for(run.study, wanted, run.poll)
    trained = [s for s in sorted(ours) if run.study.run_status(s, claim.meta).status == "done"]
    return trained, sorted(elsewhere - set(trained)), resumed, claim.meta


def _run_batches(client, job: dict, batches, claim: _Claim, task_obj, cfg, progress: bool, retries: int) -> list[dict]:
    """Submit one task per batch; one progress bar over all of them (seed-steps), workers' warnings relogged here."""
    import uuid

    from tqdm import tqdm

    from latent import cluster as dask_glue

    unit = task_obj.step_unit
    spe = int(claim.schedule["steps_per_epoch"])
    per_tick = spe if unit == "epoch" else 1
    ticks = cfg.epochs * spe // per_tick
    seeds = [s for _, _, group in batches for s in group]
    done = {s: claim.pending[s].start // per_tick for s in seeds}
    converged: dict[int, bool] = {}
    if len(batches) == 1 and len(seeds) > 1 and dask_glue.worker_threads(client) > 1:
        log.warning("all %d seeds are one task (--seed-batch %s), so one Dask worker trains them; pass "
                    "--seed-batch K to spread them over the workers", len(seeds), job["seed_batch"] or "0: all")
    topic = f"latent-collect-{uuid.uuid4().hex}"
    bar = tqdm(total=ticks * len(seeds), initial=sum(done.values()), unit=f"seed-{unit}", disable=not progress,
               desc=f"{job['task']} seeds {seed_label(sorted(seeds))} ({len(batches)} Dask task"
                    f"{'s' if len(batches) > 1 else ''})", file=sys.stderr, dynamic_ncols=True, mininterval=_bar_interval())

    def on_event(msg: dict) -> None:
        if msg.get("kind") == "log":
            dask_glue.relog(msg)
            return
        for s, c in zip(msg["seeds"], msg["converged"]):
            done[s], converged[s] = int(msg["n"]), bool(c)
        bar.n = sum(done.values())
        bar.set_postfix_str(f"converged {sum(converged.values())}/{len(seeds)}", refresh=False)
        bar.refresh()

    def on_result(i: int, res: dict) -> None:
        if "error" in res:
            raise UserError(res["error"])

    try:
        return dask_glue.run_tasks(client, _dask_batch, [({**job, "seeds": group, "topic": topic},)
                                                         for _, _, group in batches],
                                   [label for label, _, _ in batches], retries=retries, topic=topic,
                                   on_event=on_event, on_result=on_result)
    finally:
        bar.close()


class _Progress:
    """A batch's progress as events for the client's bar: at most every ``every`` seconds, and at the end."""

    def __init__(self, topic: str, every: float = 0.5):
        self.topic, self.every, self.last = topic, every, 0.0

    def __call__(self, seeds: list[int], tick: int, converged, final: bool = False) -> None:
        from latent.cluster import emit

        now = time.monotonic()
        if final or now - self.last >= self.every:
            self.last = now
            emit(self.topic, {"kind": "progress", "seeds": [int(s) for s in seeds], "n": int(tick),
                              "converged": [bool(c) for c in converged]})


def _dask_batch(job: dict) -> dict:
    """One Dask task: lease, plan and train ``job["seeds"]`` on this worker, straight into the store.

    The seeds are planned here, under their leases, not on the client: a task run again after
    its worker died resumes from the save points its predecessor left, and one whose
    predecessor is still alive waits for its leases, then skips what it finished.

    Returns ``{"trained", "elsewhere", "resumed", "timings"}``, or ``{"error": message}`` for a
    user mistake (final: Dask does not retry it). A refused write (:class:`StoreError`) and
    anything unexpected raise, and Dask retries them.
    """
    import threading

    from latent import cluster as dask_glue
    from latent.errors import StoreError

    handler = dask_glue.EventLog(job["topic"], threading.get_ident())
    log.addHandler(handler)
    timings: dict[str, float] = {}
    try:
        task_obj = get_task(job["task"])
        run = _Run(task=job["task"], task_obj=task_obj, cfg=job["cfg"], study=Study(job["root"]),
                   request=job["request"], data=_Data(task_obj, job["cfg"]), device=resolve_device(job["device"]),
                   threads=job["threads"], overwrite=False, seed_batch=job["seed_batch"],
                   save_every=job["save_every"], progress=False, poll=job["poll"], timings=timings,
                   report=_Progress(job["topic"]))
        trained, elsewhere, resumed, _ = _collect_seeds(run, list(job["seeds"]))
    except StoreError:
        raise
    except UserError as exc:
        return {"error": str(exc)}
    finally:
        log.removeHandler(handler)
    return {"trained": trained, "elsewhere": elsewhere, "resumed": resumed, "timings": timings}


def _claim(study_obj: Study, task_obj, cfg, request: dict, seeds: list[int], data: _Data, overwrite: bool) -> _Claim:
    """Under the study lock: check the study against the request, lease the seeds that need work."""
    name, config = study_obj.name, request["config"]
    _remove_replaced(study_obj)
    for tmp in study_obj.root.glob(f".{study_obj.study_file.name}.*.tmp"):  # the study lock is ours
        tmp.unlink(missing_ok=True)
    meta = study_obj.read_meta() if study_obj.exists() else None
    _resolve_groups(meta, request, name, study_obj, overwrite)
    variant, wanted = study_variant(meta), request["metric_variant"]
    if meta is not None and meta.get("task") == request["task"]:
        meta = _with_new_fields(meta, config, task_obj)
    snapshots_differ = _snapshots_differ(meta, request)
    if meta is not None and (meta.get("task") != request["task"] or meta.get("config") != config
                             or variant != wanted or snapshots_differ):
        if not overwrite:
            if meta.get("task") != request["task"] or meta.get("config") != config:
                recorded = meta.get("config", {})
                diff = sorted(k for k in set(config) | set(recorded) if config.get(k) != recorded.get(k))
                what = (f"task {meta.get('task')!r}" if meta.get("task") != request["task"]
                        else f"config differs in: {', '.join(diff)}")
                raise UserError(f"study {name!r} in {study_obj.root.parent} was collected with another setup "
                                f"({what}); pick another name with --study NAME or replace it with --overwrite")
            if variant not in METRIC_VARIANTS:
                raise UserError(f"{study_obj.study_file} records an unknown metric_variant {variant!r} (known: "
                                f"{', '.join(METRIC_VARIANTS)}); fix the file or replace the study with --overwrite")
            if variant == wanted:  # only the snapshots differ
                had = len((meta.get("snapshots") or {}).get("steps", []))
                raise UserError(f"study {name!r} in {study_obj.root.parent} stores "
                                f"{f'{had} weight snapshots per run' if had else 'no weight snapshots'}, not "
                                f"--snapshots {request['snapshots']}; leave --snapshots out (or pass --snapshots "
                                f"{had}) to resume or extend it, pick another name with --study NAME, or replace it "
                                "with --overwrite")
            raise UserError(f"study {name!r} in {study_obj.root.parent} was collected with --metric-variant "
                            f"{variant}, not {wanted}; pass --metric-variant {variant} to resume or extend it, "
                            "pick another name with --study NAME, or replace it with --overwrite")
        data.describe()  # bad data fails before the old study is touched
        _replace_study(study_obj)
        meta = None
    if meta is None and study_obj.runs_dir.is_dir() and any(study_obj.runs_dir.iterdir()):
        raise UserError(f"{study_obj.runs_dir} holds runs but {study_obj.study_file} is missing; restore "
                        f"study.json, or remove {study_obj.root} to start the study afresh")
    checked = False
    if meta is None or not meta.get("schedule") or not (meta.get("data") or {}).get("fingerprint"):
        _check_data(meta, data.describe(), name)  # a new study, or one recorded before schedules and fingerprints
        checked = True
    schedule = meta["schedule"] if meta is not None and meta.get("schedule") else task_obj.schedule(cfg, data.info)
    snapshot_plan = request["snapshot_plan"] = _snapshot_plan(meta, request, schedule, study_obj)

    claim = _Claim(meta={}, schedule=schedule, pending={}, leases={}, held=[])
    try:
        metrics = list(REFERENCE_COLUMNS) + list(LOSS_COLUMNS) + [
            c for g in request["metric_groups"] for c in request["group_columns"][g]]
        for s in seeds:
            lease = locks.try_acquire(study_obj.run_lease_path(s))
            if lease is None:
                claim.held.append(s)
                continue
            claim.leases[s] = lease
            _remove_temporaries(study_obj, s)
            plan = (plan_run(study_obj, s, schedule, task_obj.step_unit, metrics, snapshot_plan) if meta is not None
                    else RunStart(s))
            if plan.done:
                remove_state(study_obj, s)  # left behind by a kill just after the run finished
                claim.release([s])
                continue
            claim.pending[s] = plan
        if claim.pending and not checked:
            _check_data(meta, data.describe(), name)
        claim.meta = _updated_meta(meta, request, seeds, task_obj, data.info, schedule, snapshot_plan)
        if claim.meta != meta:
            study_obj.write_meta(claim.meta)
        split_seed = config.get("split_seed")
        for s, plan in sorted(claim.pending.items()):
            if plan.restart:
                log.warning("seed %d: %s; training it again from step 0", s, plan.restart)
                reset_run(study_obj, RunSeeds.derive(s, split_seed))
            claim.leases[s].note(locks.holder_note(request["command"]))
    except BaseException:
        claim.release()
        raise
    return claim


def _with_new_fields(meta: dict, config: dict, task_obj) -> dict:
    """``meta`` with config fields that a newer latent added (and this study predates) set to the
    value they had implicitly: a field missing from the recorded config counts as its default,
    so a study collected before the field existed resumes and extends as before. Only the copy in
    memory changes; ``study.json`` is rewritten only when it changes for another reason."""
    recorded = meta.get("config")
    if not isinstance(recorded, dict):
        return meta
    defaults = config_to_dict(task_obj.config_class())
    missing = {k: defaults[k] for k in config if k not in recorded and k in defaults}
    return {**meta, "config": {**recorded, **missing}} if missing else meta


def _remove_temporaries(study_obj: Study, seed: int) -> None:
    """Delete temporary files a killed writer of ``seed`` left (its lease is held: nobody writes them now)."""
    stem = Path(study_obj.run_table_path(seed)).stem
    for folder in (study_obj.runs_dir, study_obj.state_dir, study_obj.snapshots_dir):
        for tmp in folder.glob(f".{stem}.*.tmp") if folder.is_dir() else []:
            try:
                tmp.unlink()
            except FileNotFoundError:
                pass
            except OSError as exc:
                raise store_error(exc, "remove", tmp) from None


def _check_data(meta: dict | None, info: dict, name: str) -> None:
    """Refuse data that differs from what the study recorded (``meta`` None: a new study)."""
    recorded = (meta or {}).get("data") or {}
    if meta is None:
        return
    if not recorded.get("fingerprint"):
        log.warning("study %r records no data fingerprint (collected by an older latent); "
                    "recording the fingerprint of the data found now", name)
        return
    change = data_change(recorded, info)
    if change:
        raise UserError(f"study {name!r} was collected on {recorded.get('description') or recorded.get('source')}, "
                        f"but the data found now differs ({change}); restore that data, or collect into a new "
                        "study with --study NAME")


def _updated_meta(meta: dict | None, request: dict, seeds: list[int], task_obj, info: dict | None,
                  schedule: dict, snapshot_plan: dict | None = None) -> dict:
    all_seeds = sorted(set(seeds) | set(meta.get("seeds", []) if meta else []))
    config, command = request["config"], request["command"]
    if meta is None:
        split_seed = config.get("split_seed")
        return {
            "format": STUDY_FORMAT,
            "name": request["name"],
            "task": request["task"],
            "preset": request["preset"],
            "config": config,
            "seeds": all_seeds,
            "step_unit": task_obj.step_unit,
            "schedule": schedule,
            "convergence": request["convergence"].as_dict(),
            "features": list(REFERENCE_COLUMNS),
            "metrics": list(REFERENCE_COLUMNS) + list(LOSS_COLUMNS) + [
                c for g in request["metric_groups"] for c in request["group_columns"][g]],
            "metric_groups": list(request["metric_groups"]),
            "groups": {"weights": list(REFERENCE_COLUMNS), "losses": list(LOSS_COLUMNS),
                       **{g: feature_columns(g, request["group_columns"][g]) for g in request["metric_groups"]}},
            "split": {"mode": "per_run"} if split_seed is None else {"mode": "shared", "seed": split_seed},
            "data": info,
            "versions": _versions(),
            "command": command,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "metric_variant": request["metric_variant"],
            **({"llc": dict(request["llc"])} if "llc" in request["metric_groups"] else {}),
            # only a study with snapshots records them: without, study.json is what it was before they existed
            **({"snapshots": snapshot_plan} if snapshot_plan else {}),
        }
    # Same task and config: extend the seed list, remember any new command line, and pin the
    # schedule and data of a study recorded before latent kept them.
    new = {**meta, "seeds": all_seeds}
    if not meta.get("schedule"):
        new["schedule"] = schedule
    if not (meta.get("data") or {}).get("fingerprint") and info is not None:
        new["data"] = info
    if command and command != meta.get("command") and command not in meta.get("commands", []):
        new["commands"] = list(meta.get("commands", [])) + [command]
    if new != meta and "metric_variant" not in meta:
        # A study from before variants is "reference" (the only kind there was); record that
        # when the file is rewritten anyway, and never rewrite it for this alone.
        new["metric_variant"] = study_variant(meta)
    if new != meta and "metric_groups" not in meta:
        new["metric_groups"] = list(request["metric_groups"])  # none: what a study before groups recorded
    return new


def _supports_snapshots(task_obj) -> bool:
    from .tasks.base import Task

    return type(task_obj).snapshot_axes is not Task.snapshot_axes


def _parse_snapshots(value, task: str, task_obj, cfg) -> int | None:
    """``--snapshots``: None (decided per study) or a count, 0 or at least 2, refused in one line for
    a task whose model has no token embedding and unembedding."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise UserError(f"--snapshots must be a whole number, got {value!r}")
    count = int(value)
    if count < 0 or count == 1:
        raise UserError(f"--snapshots must be 0 (none) or at least 2 (the first and the last checkpoint are always "
                        f"among them), got {count}")
    if count and task_obj.snapshot_axes(cfg) is None:
        from .tasks import TASKS

        able = sorted(t.name for t in TASKS.values() if _supports_snapshots(t))
        raise UserError(f"--snapshots applies only to task{'s' if len(able) > 1 else ''} {', '.join(able)} (a model "
                        f"with a token embedding and an unembedding); task {task!r} has none, so leave --snapshots out")
    return count


def _recorded_snapshots(meta: dict | None) -> int | None:
    """How many snapshots per run a study records (0: none, as a study from before them); None: no study."""
    if meta is None:
        return None
    return len((meta.get("snapshots") or {}).get("steps", []))


def _snapshots_differ(meta: dict | None, request: dict) -> bool:
    """Whether an explicit ``--snapshots`` asks for other snapshots than the study stores (a count above
    the schedule's checkpoints means all of them)."""
    wanted, had = request["snapshots"], _recorded_snapshots(meta)
    if wanted is None or had is None:
        return False
    if not wanted or not had:
        return bool(wanted) != bool(had)
    schedule = meta.get("schedule")
    available = len(schedule_steps(schedule)) if schedule else wanted
    return min(wanted, available) != had


def _snapshot_plan(meta: dict | None, request: dict, schedule: dict, study_obj: Study) -> dict | None:
    """``study.json``'s ``snapshots`` for this collection: the study's own, or (a new study, or one
    replaced) ``--snapshots N`` checkpoints of ``schedule``; None for none."""
    recorded = (meta or {}).get("snapshots")
    if recorded:
        available = set(schedule_steps(schedule))
        stray = [s for s in recorded["steps"] if s not in available]
        if stray:
            raise UserError(f"{study_obj.study_file} records snapshot steps ({', '.join(map(str, stray[:4]))}) that "
                            "are not checkpoints of its schedule; fix the file, or collect into a new study with "
                            "--study NAME")
        return recorded
    count = request["snapshots"] if meta is None else 0  # an existing study without them stays without
    if not count:
        return None
    steps = schedule_steps(schedule)
    if count > len(steps) and not request.get("snapshots_noted"):
        log.warning("--snapshots %d is more than the %d checkpoints of this schedule: storing a snapshot at every "
                    "checkpoint", count, len(steps))
        request["snapshots_noted"] = True
    axes = request["snapshot_axes"]
    chosen = snapshot_steps(steps, count)
    return {"count": len(chosen), "steps": chosen, "axes": {k: list(v) for k, v in axes.items()}}


def _parse_groups(value, available: Mapping[str, list[str]]):
    """``--metric-groups``: None (decided per study), or a sorted list of group names."""
    if value is None:
        return None
    names = [v.strip() for v in (value.split(",") if isinstance(value, str) else value) if str(v).strip()]
    if names == ["all"]:
        return sorted(g for g in available if g not in OPT_IN_GROUPS)
    if names == ["none"] or not names:
        return []
    unknown = [n for n in names if n not in available]
    if unknown:
        raise UserError(f"--metric-groups: unknown group(s) {', '.join(unknown)}; this task records "
                        f"{', '.join(sorted(available)) or 'no optional group'} (or all, none)")
    return sorted(set(names))


def _resolve_groups(meta, request: dict, name: str, study_obj: Study, overwrite: bool) -> None:
    """Set ``request["metric_groups"]``: what the study records (none before groups existed), or
    every group for a new study when none is asked; an explicit request must match the study."""
    available = request["group_columns"]
    recorded = None if meta is None else sorted(meta.get("metric_groups", []))
    wanted = request["metric_groups"]
    if wanted is None:
        request["metric_groups"] = (recorded if recorded is not None
                                    else sorted(g for g in available if g not in OPT_IN_GROUPS))
    elif recorded is not None and recorded != wanted and not overwrite:
        had = ",".join(recorded) or "none"
        raise UserError(f"study {name!r} in {study_obj.root.parent} records metric groups {had}, not "
                        f"{','.join(wanted) or 'none'}; pass --metric-groups {had} (or leave it out) to resume or "
                        "extend it, pick another name with --study NAME, or replace it with --overwrite")
    if "llc" not in request["metric_groups"]:
        return
    require_devinterp()
    if recorded is None or "llc" not in recorded:
        return
    had_llc = meta.get("llc")
    try:
        LLCConfig(**had_llc).validate()
    except (TypeError, UserError) as exc:
        raise UserError(f"{study_obj.study_file} records the llc group without valid settings (llc: {had_llc!r}: "
                        f"{exc}); fix the file (the command it records shows the settings used), or collect into a new "
                        "study with --study NAME") from None
    if not request["llc_given"]:
        request["llc"] = dict(had_llc)  # resume with the study's own settings
    elif dict(had_llc) != request["llc"] and not overwrite:
        had = " ".join(f"--llc {k}={v}" for k, v in had_llc.items())
        raise UserError(f"study {name!r} in {study_obj.root.parent} records other llc settings ({had}); leave "
                        "--llc out to resume or extend it, pick another name with --study NAME, or replace it "
                        "with --overwrite")


def feature_columns(group: str, columns: list[str]) -> list[str]:
    """The columns of a metric group that are HMM features (the progress group's key frequencies
    and spectrum are recorded but are not features)."""
    if group == "progress":
        from .progress import PROGRESS_FEATURES

        return [c for c in columns if c in PROGRESS_FEATURES]
    if group == "llc":
        return [c for c in columns if c in LLC_FEATURES]
    return list(columns)


def study_variant(meta: Mapping[str, Any] | None) -> str:
    """The metric variant a study was collected with: its ``metric_variant``, else ``"reference"``.

    Parameters
    ----------
    meta : mapping or None
        The study's ``study.json`` (None: no study, which reads as ``"reference"`` too).

    Returns
    -------
    str
        ``"reference"`` or ``"paper"`` (:data:`latent.collect.metrics.METRIC_VARIANTS`).
    """
    return str((meta or {}).get("metric_variant", "reference"))


def _replaced_prefix(study_obj: Study) -> str:
    return f".{study_obj.name}.replaced-"


def _replace_study(study_obj: Study) -> None:
    """Move the old study aside in one rename (``--overwrite``), refusing while anyone collects it.

    A kill at any point leaves either the old study or none (its copy is removed on the next
    collection of that name), never a mix of old runs and a new ``study.json``.
    """
    aside = study_obj.root.parent / f"{_replaced_prefix(study_obj)}{os.getpid()}"
    locks.move_study_aside(study_obj.root, study_obj.name, aside)
    _remove_replaced(study_obj)


def _remove_replaced(study_obj: Study) -> None:
    """Delete copies of the study that ``--overwrite`` moved aside (the study lock is held)."""
    for old in study_obj.root.parent.glob(f"{_replaced_prefix(study_obj)}*"):
        try:
            shutil.rmtree(old)
        except OSError as exc:
            log.warning("could not remove %s, the replaced copy of study %r (%s); delete it by hand",
                        old, study_obj.name, exc.strerror or exc)


def _batches(task: str, pending: dict[int, RunStart], seed_batch: int) -> list[tuple[str, int, list[int]]]:
    """Pending seeds grouped by resume step, in batches of at most ``seed_batch``: (label, start, seeds)."""
    by_start: dict[int, list[int]] = {}
    for s, plan in sorted(pending.items()):
        by_start.setdefault(plan.start, []).append(s)
    batches = []
    for start, group in sorted(by_start.items()):
        size = seed_batch or len(group)
        batches += [(start, group[i : i + size]) for i in range(0, len(group), size)]
    return [(f"{task} seeds {seed_label(g)}" + (f" [{b + 1}/{len(batches)}]" if len(batches) > 1 else ""), start, g)
            for b, (start, g) in enumerate(batches)]


def _wait_for(study_obj: Study, seeds: list[int], poll: float) -> None:
    """Wait until some seed another collection holds is released (it finished, failed or was killed)."""
    notes = {s: locks.holder(study_obj.run_lease_path(s)) for s in seeds}
    still = [s for s in seeds if notes[s] is not None]
    if not still:
        return
    log.warning("seed(s) %s of study %r are being collected by %s; waiting for them (Ctrl-C stops waiting, "
                "not the other collection)", seed_label(still), study_obj.name, locks.describe_holder(notes[still[0]]))
    while all(locks.holder(study_obj.run_lease_path(s)) is not None for s in still):
        time.sleep(poll)


def seed_label(seeds: list[int]) -> str:
    """``"0-39"``, ``"5"`` or ``"1,5,9"``: a short name for a sorted list of seeds."""
    if seeds == list(range(seeds[0], seeds[-1] + 1)):
        return f"{seeds[0]}-{seeds[-1]}" if len(seeds) > 1 else str(seeds[0])
    return ",".join(map(str, seeds[:6])) + ("…" if len(seeds) > 6 else "")


def _train_batch(run: _Run, schedule: dict, plans: list[RunStart], start: int, label: str) -> None:
    """Train one batch of seeds from step ``start`` to the end, saving as it goes."""
    from tqdm import tqdm

    task_obj, cfg, study_obj, timings, report = run.task_obj, run.cfg, run.study, run.timings, run.report
    convergence, metric_groups = run.request["convergence"], run.request["metric_groups"]
    split_seed = run.request["config"].get("split_seed")

    seeds = [p.seed for p in plans]
    run_seeds = [RunSeeds.derive(s, split_seed) for s in seeds]
    problem = task_obj.build(cfg, run_seeds, run.device, run.data.value)
    sampler = LLCSampler(LLCConfig(**run.request["llc"]), seeds) if "llc" in metric_groups else None
    spe = problem.steps_per_epoch
    unit = task_obj.step_unit
    marks = [m // spe if unit == "epoch" else m for m in checkpoint_steps(cfg.epochs, cfg.log_every, spe, unit)]
    if spe != schedule["steps_per_epoch"] or marks != schedule_steps(schedule):
        raise RuntimeError(f"internal: the problem checkpoints at {marks[:5]}… with {spe} steps per epoch, "
                           f"but the study's schedule is {schedule}")
    if start > 0:
        problem.load_seed_states([load_state(study_obj.run_state_path(s), study_obj, s) for s in seeds])
    existing = {p.seed: p.rows for p in plans if p.rows is not None}
    snapshot_plan = run.request.get("snapshot_plan")
    writer = StudyWriter(study_obj, run_seeds, existing, step_unit=unit,
                         snapshots={p.seed: p.snapshots for p in plans} if snapshot_plan else None)
    # the snapshot steps as optimiser steps (the study's step unit may be epochs)
    snap_at = [int(t) * (spe if unit == "epoch" else 1) for t in (snapshot_plan or {}).get("steps", [])]

    converged = np.zeros(len(seeds), dtype=bool)
    for i, s in enumerate(seeds):
        frame = existing.get(s)
        if frame is not None and convergence.metric in frame:
            converged[i] = bool(convergence.reached(_tensor(frame[convergence.metric].to_numpy())).any())

    # The bar counts the study's step unit: epochs for epoch-logged tasks, optimiser steps otherwise.
    per_tick = spe if unit == "epoch" else 1
    bar = tqdm(total=cfg.epochs * spe // per_tick, initial=start // per_tick, unit=unit, desc=label,
               disable=not run.progress, file=sys.stderr, dynamic_ncols=True, mininterval=_bar_interval())
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
        if report is not None:
            report(seeds, step // per_tick, converged)
        if start < step < total and time.monotonic() - last_save >= run.save_every:
            t0 = time.perf_counter()
            writer.save(step, [problem.seed_state(i) for i in range(len(seeds))])
            timings["save"] = timings.get("save", 0.0) + time.perf_counter() - t0
            last_save = time.monotonic()

    try:
        train(problem, start_step=start, epochs=cfg.epochs, log_every=cfg.log_every, unit=unit,
              on_checkpoint=on_checkpoint, on_step=on_step, timings=timings,
              metric_variant=run.request["metric_variant"], groups=tuple(metric_groups), llc=sampler,
              snapshot_steps=snap_at)
    finally:
        bar.close()
    writer.save(total, None, done=True, info={k: round(v, 3) for k, v in timings.items()})
    if report is not None:
        report(seeds, total // per_tick, converged, final=True)


def _tensor(values):
    import torch

    return torch.as_tensor(np.array(values, dtype=np.float64))  # a copy: parquet arrays are read-only


def convergence_epochs(frames: Mapping[int, Any], convergence) -> dict[int, float | None]:
    """First checkpoint (in the study's step unit) where each run's table crosses the threshold."""
    out: dict[int, float | None] = {}
    for s, frame in frames.items():
        values = frame[convergence.metric].to_numpy(dtype=float)
        hit = values > convergence.threshold if convergence.direction == "above" else values < convergence.threshold
        out[s] = float(frame["step"].to_numpy()[hit.argmax()]) if hit.any() else None
    return out


def _summarise(study: Study, task: str, meta: dict, trained: list[int], elsewhere: list[int], t_start: float,
               convergence, timings: dict[str, float]) -> CollectResult:
    all_seeds = list(meta.get("seeds", []))
    try:
        table, _ = study.read_finished_runs(all_seeds)
        frames = {int(s): f for s, f in table.groupby("seed", sort=True)}
    except UserError:  # no finished run at all
        frames = {}
    hit = [t for t in convergence_epochs(frames, convergence).values() if t is not None]
    return CollectResult(
        study=study.root,
        task=task,
        seeds_total=len(all_seeds),
        seeds_trained=trained,
        converged=len(hit),
        convergence_median=float(np.median(hit)) if hit else None,
        convergence_unit=meta.get("step_unit", "step"),
        wall_seconds=time.time() - t_start,
        nothing_to_do=not trained and not elsewhere,
        timings=timings,
        seeds_done=len(frames),
        seeds_elsewhere=elsewhere,
    )
