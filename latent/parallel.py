"""Run independent fitting jobs over a process pool, one BLAS/OpenMP thread per worker.

``pmap(func, jobs, data)`` calls ``func(data, job)`` for every job and returns the results in
job order. ``data`` (the large arrays every job reads) reaches each worker once, at start-up,
through the pool's initializer (inherited by ``fork`` where the platform has it), not with
every job. ``func`` must be a module-level function. Results do not depend on ``n_jobs``:
every job seeds itself, and each worker is pinned to one thread so that BLAS sums in the same
order as a sequential run.

Within :func:`backend` (``latent fit --scheduler/--cluster``, via :func:`latent.cluster.pool`)
the jobs go to another executor, a Dask cluster, with the same per-job guarantees.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import warnings
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager

_DATA = None
#: ``run(func, jobs, data, progress=, desc=) -> list`` that pmap hands its jobs to, when set.
_BACKEND = None


@contextmanager
def backend(run):
    """Within the block, :func:`pmap` calls ``run(func, jobs, data, progress=..., desc=...)`` instead of
    using a local process pool (``n_jobs`` is then ignored)."""
    global _BACKEND
    previous, _BACKEND = _BACKEND, run
    try:
        yield
    finally:
        _BACKEND = previous


def _load_native_libraries() -> None:
    """Import what loads OpenMP/BLAS *before* limiting threads: threadpoolctl only limits the
    libraries already loaded, and an unlimited, spinning OpenMP pool in every worker of a
    process pool oversubscribes the cores badly (tens of times slower)."""
    import hmmlearn.hmm  # noqa: F401
    import scipy.linalg  # noqa: F401
    import sklearn.cluster  # noqa: F401


def die_with_parent(parent: int | None = None) -> None:
    """Ask the kernel to kill this process when its parent dies (Linux ``PR_SET_PDEATHSIG``).

    A pool worker otherwise outlives a ``kill -9``, an OOM kill or a scheduler's hard kill of the
    command that started it, re-parented to init and holding its memory. ``parent``: the pid that
    started this worker; if it is already gone when the request is made, exit now. Elsewhere a
    no-op.
    """
    import ctypes
    import signal
    import sys

    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # not the command's SIGTERM-as-interrupt (latent.cli)
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, int(signal.SIGKILL))  # 1 = PR_SET_PDEATHSIG
    except OSError:
        return
    if parent is not None and os.getppid() != parent:  # it died before the request took effect
        os._exit(1)


def _init_worker(data, parent: int | None = None) -> None:
    """Process-pool initializer: die with the parent, hold the data, pin BLAS/OpenMP to one thread."""
    global _DATA
    die_with_parent(parent)
    _DATA = data
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = "1"
    _load_native_libraries()
    from threadpoolctl import threadpool_limits

    globals()["_LIMITS"] = threadpool_limits(1)
    logging.getLogger("hmmlearn").setLevel(logging.ERROR)
    warnings.simplefilter("ignore")


def _call(item):
    func, job = item
    return func(_DATA, job)


@contextmanager
def quiet_one_thread():
    """One BLAS/OpenMP thread, hmmlearn's convergence chatter and warnings silenced: how every
    fitting job runs (in this process, a pool worker or a Dask worker)."""
    from threadpoolctl import threadpool_limits

    hl = logging.getLogger("hmmlearn")
    level = hl.level
    hl.setLevel(logging.ERROR)
    try:
        with threadpool_limits(1), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        hl.setLevel(level)


def _sequential(func, jobs, data):
    with quiet_one_thread():
        for job in jobs:
            yield func(data, job)


def pmap(func, jobs: list, data, n_jobs: int | None = None, progress: bool = False, desc: str = "") -> list:
    """``[func(data, job) for job in jobs]``, over ``n_jobs`` processes (None: every core).

    Parameters
    ----------
    func : callable
        A module-level function ``func(data, job)``.
    jobs : list
    data : object
        Shared read-only input, sent to each worker once.
    n_jobs : int, optional
    progress : bool
        A progress bar of finished jobs on stderr.
    desc : str
        The progress bar's label.
    """
    if _BACKEND is not None:
        return list(_BACKEND(func, jobs, data, progress=progress, desc=desc))
    from tqdm import tqdm

    n = min(n_jobs or os.cpu_count() or 1, max(len(jobs), 1))
    _load_native_libraries()  # before forking and before limiting threads
    bar = tqdm(total=len(jobs), desc=desc, unit="fit", disable=not progress, dynamic_ncols=True, leave=False)
    out = []
    try:
        if n == 1:
            results = _sequential(func, jobs, data)
            for rec in results:
                out.append(rec)
                bar.update(1)
        else:
            ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else None
            with ProcessPoolExecutor(max_workers=n, mp_context=ctx, initializer=_init_worker,
                                     initargs=(data, os.getpid())) as pool:
                for rec in pool.map(_call, [(func, job) for job in jobs], chunksize=1):
                    out.append(rec)
                    bar.update(1)
    finally:
        bar.close()
    return out
