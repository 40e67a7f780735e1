"""Dask glue: run a collection's seed batches and a fit's restarts and resamples on a Dask cluster.

``latent collect --scheduler ADDRESS`` / ``--cluster local:N|slurm:N`` and the same options of
``latent fit`` come here. The engine is Dask's: tasks are submitted with ``retries=``, a worker
that dies mid-task is detected by the scheduler and its task runs again elsewhere (up to
``distributed.scheduler.allowed-failures`` times), and LocalCluster's nannies restart killed
workers. latent adds only what Dask cannot know: every batch of seeds leases its runs in the
store (:mod:`latent.locks`) and resumes them from their last save point, so a retried task
whose predecessor is still alive waits for it or skips what it finished, never trains a seed
twice at once.

Nothing here imports dask at module level: ``latent`` without the ``cluster`` extra never
loads it, and asking for a scheduler without it is one error line naming the install command.

The store must be one file system that the client and every worker see at the same path
(``flock`` leases included; see docs/cluster.md for NFS).
"""

from __future__ import annotations

import logging
import queue
import re
import socket
import time
import uuid
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Sequence

from .errors import UserError

log = logging.getLogger("latent.cluster")

INSTALL = 'pip install -e ".[cluster]"'
SPEC_FORMS = "local:N (N worker processes on this machine) or slurm:N (N SLURM jobs, set up in dask's jobqueue.yaml)"
#: How often a task that raised (not a user mistake, which is final) is run again by Dask.
RETRIES = 2


def require():
    """``distributed``, or one clear :class:`UserError` naming the install command.

    Returns
    -------
    module
        ``distributed``.
    """
    try:
        import distributed
    except ImportError:
        raise UserError(f"--scheduler/--cluster need dask.distributed, which is not installed; install it with "
                        f"{INSTALL}") from None
    return distributed


def parse_cluster(spec: str) -> tuple[str, int]:
    """``("local", N)`` or ``("slurm", N)`` from ``"local:N"`` / ``"slurm:N"``.

    Raises
    ------
    UserError
        For any other spec, or N below 1.
    """
    m = re.fullmatch(r"\s*(local|slurm)\s*:\s*(\d+)\s*", str(spec))
    if m is None:
        raise UserError(f"--cluster expects {SPEC_FORMS}, got {spec!r}")
    n = int(m.group(2))
    if n < 1:
        raise UserError(f"--cluster {spec}: N must be at least 1")
    return m.group(1), n


def check_address(address: str) -> str:
    """A scheduler address (``tcp://host:8786``, ``host:8786``, ``tls://...``) checked for form.

    Raises
    ------
    UserError
        For an address Dask cannot parse (no port, unknown scheme).
    """
    from distributed.comm import parse_address
    from distributed.comm.addressing import parse_host_port
    from distributed.comm.registry import get_backend

    text = str(address).strip()
    try:
        scheme, loc = parse_address(text)
        get_backend(scheme)  # an unknown scheme
        if scheme in ("tcp", "tls", "ws", "wss"):
            parse_host_port(loc)
    except (ValueError, TypeError) as exc:
        raise UserError(f"--scheduler {address!r} is not a scheduler address ({exc}); expected tcp://HOST:PORT, "
                        "as printed by `dask scheduler`") from None
    return text if "://" in text else f"{scheme}://{loc}"


def _probe(address: str, timeout: float) -> None:
    """Refuse a TCP scheduler nobody listens at, in one line (Dask's own failure is a traceback)."""
    from distributed.comm import parse_address
    from distributed.comm.addressing import parse_host_port

    scheme, loc = parse_address(address)
    if scheme not in ("tcp", "tls", "ws", "wss"):
        return
    host, port = parse_host_port(loc)
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection((host, port), timeout=max(0.1, min(2.0, deadline - time.monotonic()))).close()
            return
        except OSError as exc:
            if time.monotonic() >= deadline:
                reason = exc.strerror or type(exc).__name__
                raise UserError(f"cannot reach the Dask scheduler at {address} ({reason}, tried for {timeout:g} s); "
                                "start one with `dask scheduler`, or check the address and the firewall") from None
            time.sleep(0.2)


def _connect_timeout() -> float:
    import dask.config
    from dask.utils import parse_timedelta

    return float(parse_timedelta(dask.config.get("distributed.comm.timeouts.connect"), default="s"))


def build_cluster(kind: str, n: int):
    """A new, unscaled cluster object for ``--cluster kind:n``.

    ``local``: a ``distributed.LocalCluster`` of ``n`` worker processes with one thread each
    (nannies restart a killed worker). ``slurm``: a ``dask_jobqueue.SLURMCluster`` whose cores,
    memory, walltime, queue, account and extra directives come from dask's configuration
    (``~/.config/dask/jobqueue.yaml``, key ``jobqueue.slurm``, or ``DASK_JOBQUEUE__SLURM__*``);
    :func:`connect` scales it to ``n`` jobs.
    """
    if kind == "local":
        distributed = require()
        return distributed.LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                                        dashboard_address=":0")  # any free port: never clash with another
    if kind == "slurm":
        try:
            from dask_jobqueue import SLURMCluster
        except ImportError:
            raise UserError(f"--cluster slurm:N needs dask-jobqueue, which is not installed; install it with "
                            f"{INSTALL}") from None
        try:
            return SLURMCluster()
        except ValueError as exc:  # e.g. no cores/memory configured
            raise UserError(f"--cluster slurm: {' '.join(str(exc).split())}; set jobqueue.slurm.cores and "
                            ".memory in ~/.config/dask/jobqueue.yaml (docs/cluster.md)") from None
    raise UserError(f"--cluster expects {SPEC_FORMS}, got {kind}:{n}")


@contextmanager
def connect(scheduler: Any = None, cluster: str | None = None) -> Iterator[Any]:
    """A ``distributed.Client`` for ``--scheduler`` or ``--cluster``, closed (with any cluster it started) on exit.

    Parameters
    ----------
    scheduler : str or distributed.Client, optional
        A running scheduler's address, or a client to use as it is (not closed on exit).
    cluster : str, optional
        ``"local:N"`` or ``"slurm:N"``: start that cluster for the duration.

    Raises
    ------
    UserError
        Neither or both given, dask not installed, a bad spec or address, or no scheduler there.
    """
    if (scheduler is None) == (cluster is None):
        raise UserError("give one of --scheduler ADDRESS and --cluster local:N|slurm:N")
    if cluster is not None:
        kind, n = parse_cluster(cluster)
    distributed = require()
    if scheduler is not None and isinstance(scheduler, distributed.Client):
        yield scheduler
        return
    if cluster is not None:
        started = build_cluster(kind, n)
        try:
            if kind == "slurm":
                started.scale(jobs=n)
            client = distributed.Client(started, set_as_default=False)
        except BaseException:
            started.close()
            raise
        try:
            yield client
        finally:
            client.close()
            started.close()
        return
    address = check_address(scheduler)
    timeout = _connect_timeout()
    _probe(address, timeout)
    try:
        client = distributed.Client(address, timeout=timeout, set_as_default=False)
    except (OSError, TimeoutError) as exc:
        raise UserError(f"cannot connect to the Dask scheduler at {address} ({' '.join(str(exc).split())}); "
                        "is it a `dask scheduler`?") from None
    try:
        yield client
    finally:
        client.close()


def worker_threads(client) -> int:
    """Threads over all the workers the scheduler knows now (0 while none has joined)."""
    return sum(int(w.get("nthreads", 0)) for w in client.scheduler_info().get("workers", {}).values())


# --------------------------------------------------------------------------- tasks


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-")[:80]


def run_tasks(client, func: Callable, args: Sequence[tuple], labels: Sequence[str], *, retries: int = RETRIES,
              topic: str | None = None, on_event: Callable[[Any], None] | None = None,
              on_result: Callable[[int, Any], None] | None = None) -> list:
    """``[func(*a) for a in args]`` as Dask tasks; results in the order of ``args``.

    Parameters
    ----------
    client : distributed.Client
    func : callable
        A module-level function (workers import it by name).
    args : sequence of tuple
        One task per tuple.
    labels : sequence of str
        What each task is, for its key and for error messages.
    retries : int
        Times Dask runs a task again after it raised. A task whose worker died is run again
        by the scheduler on its own (``distributed.scheduler.allowed-failures``).
    topic : str, optional
        Events that tasks send with :func:`emit` under this topic go to ``on_event``, on the
        calling thread, while the tasks run.
    on_event, on_result : callable, optional
        ``on_event(msg)``; ``on_result(i, result)`` as each task finishes (it may raise, which
        cancels the tasks not yet finished).

    Raises
    ------
    UserError
        A task's worker died too often (``KilledWorker``) or the task was cancelled.
    Exception
        Whatever a task raised, after its retries, with the remote traceback.
    """
    distributed = require()
    events: queue.SimpleQueue = queue.SimpleQueue()
    if topic is not None:
        client.subscribe_topic(topic, lambda event: events.put(event[1]))

    def drain():
        while on_event is not None:
            try:
                msg = events.get_nowait()
            except queue.Empty:
                return
            on_event(msg)

    token = uuid.uuid4().hex[:10]
    futures = [client.submit(func, *a, key=f"latent-{_slug(label)}-{i}-{token}", pure=False, retries=retries)
               for i, (a, label) in enumerate(zip(args, labels))]
    results: list = [None] * len(futures)
    pending = {f.key: (i, f) for i, f in enumerate(futures)}
    try:
        while pending:
            done = [(i, f) for i, f in pending.values() if f.done()]
            drain()
            if not done:
                time.sleep(0.1)
            for i, f in done:
                del pending[f.key]
                results[i] = _result(distributed, f, labels[i])
                if on_result is not None:
                    on_result(i, results[i])
        time.sleep(0.05)  # the last events travel with the last results; let them land
        drain()
    finally:
        left = [f for _, f in pending.values()]
        if left:
            client.cancel(left)
        if topic is not None:
            try:
                client.unsubscribe_topic(topic)
            except (ValueError, KeyError):
                pass
    return results


def _result(distributed, future, label: str):
    if future.status == "error":
        exc = future.exception()
        if isinstance(exc, distributed.KilledWorker):
            raise UserError(f"{label}: its worker died {exc.allowed_failures + 1} times while running it (Dask's "
                            "distributed.scheduler.allowed-failures); check the workers' logs and memory limits, "
                            "then rerun the same command to resume") from None
        return future.result()  # raises the task's exception with its remote traceback
    if future.status == "cancelled":
        raise UserError(f"{label}: the scheduler cancelled it (restarted, or cancelled by another client); "
                        "rerun the same command to resume")
    return future.result()


def emit(topic: str, msg: Any) -> None:
    """Send ``msg`` (plain data) from a running task to :func:`run_tasks`' ``on_event``; a no-op off a worker."""
    try:
        from distributed import get_worker

        worker = get_worker()
    except (ImportError, ValueError):
        return
    worker.log_event(topic, msg)


class EventLog(logging.Handler):
    """Forwards the records a task logs (from its own thread) to the client as events.

    On the client, :func:`relog` logs them again through the same logger, so a worker's
    warnings reach the user's terminal formatted as the local ones are.
    """

    def __init__(self, topic: str, thread: int):
        super().__init__(logging.WARNING)
        self.topic, self.thread = topic, thread

    def emit(self, record: logging.LogRecord) -> None:
        if record.thread == self.thread:
            emit(self.topic, {"kind": "log", "logger": record.name, "level": record.levelno,
                              "msg": record.getMessage()})


def relog(msg: dict) -> None:
    """Log a record that :class:`EventLog` forwarded."""
    logging.getLogger(msg.get("logger", "latent")).log(int(msg.get("level", logging.WARNING)), "%s", msg.get("msg"))


# --------------------------------------------------------------------------- fitting jobs


def _limited_call(func, data, job):
    """One fitting job on a worker, as :func:`latent.parallel.pmap` runs it: one BLAS/OpenMP thread, quiet."""
    from .parallel import _load_native_libraries, quiet_one_thread

    _load_native_libraries()  # before limiting: threadpoolctl limits only loaded libraries
    with quiet_one_thread():
        return func(data, job)


def dask_pmap(client, func, jobs: list, data, progress: bool = False, desc: str = "") -> list:
    """:func:`latent.parallel.pmap` on a Dask cluster: ``data`` scattered to the workers once.

    Every job seeds itself and runs on one BLAS thread, so the results are those of the local
    pool, bit for bit, on workers with the same BLAS build.
    """
    from tqdm import tqdm

    if not jobs:
        return []
    if not client.scheduler_info().get("workers"):
        log.warning("the Dask scheduler has no workers yet; %s wait for one to join", desc or "jobs")
        client.wait_for_workers(1)
    [shared] = client.scatter([data], broadcast=True, hash=False)
    bar = tqdm(total=len(jobs), desc=desc, unit="fit", disable=not progress, dynamic_ncols=True, leave=False)
    try:
        return run_tasks(client, _limited_call, [(func, shared, job) for job in jobs],
                         [f"{desc or func.__name__} {i}" for i in range(len(jobs))],
                         on_result=lambda i, r: bar.update(1))
    finally:
        bar.close()
        client.cancel([shared])


@contextmanager
def pool(client) -> Iterator[None]:
    """Within the block, :func:`latent.parallel.pmap` runs its jobs on ``client``'s cluster.

    >>> with connect(scheduler="tcp://head:8786") as client, pool(client):   # doctest: +SKIP
    ...     result = fit_study(study, config)
    """
    from . import parallel

    with parallel.backend(lambda func, jobs, data, progress=False, desc="":
                          dask_pmap(client, func, jobs, data, progress, desc)):
        yield


@contextmanager
def fit_pool(scheduler: Any = None, cluster: str | None = None) -> Iterator[None]:
    """``latent fit --scheduler/--cluster``: connect and run the fitting jobs there; without either,
    nothing (the local process pool, and dask is not imported)."""
    if scheduler is None and cluster is None:
        yield
        return
    with connect(scheduler, cluster) as client, pool(client):
        yield

