"""Process-level settings that must be in place before torch loads, and device/thread choice.

On a shared 2-core box OpenMP's default busy-wait made 2 threads 10–100× slower than one;
``OMP_WAIT_POLICY=PASSIVE`` removes that. glibc's allocator returned the large per-step
tensors to the OS on every step; disabling mmap for big blocks and raising the trim threshold
(``mallopt``, the same knobs as ``MALLOC_MMAP_MAX_`` / ``MALLOC_TRIM_THRESHOLD_``) made batched
steps ~2.6× faster (PERF-NOTES). :func:`prepare_process` applies both and is called by
``collect/__init__.py`` before it imports torch.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_prepared = False


def prepare_process() -> dict[str, str]:
    """Set OpenMP's wait policy and glibc's malloc options for this process (idempotent).

    Returns what was applied, for the study record. A user's explicit environment wins.
    """
    global _prepared
    applied: dict[str, str] = {}
    if "torch" not in sys.modules:
        # libgomp reads this when torch first loads it; later changes have no effect.
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    applied["OMP_WAIT_POLICY"] = os.environ.get("OMP_WAIT_POLICY", "")
    if not _prepared and "MALLOC_MMAP_MAX_" not in os.environ and sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            ok = libc.mallopt(_M_MMAP_MAX, 0) and libc.mallopt(_M_TRIM_THRESHOLD, 1 << 30)
            if ok:
                applied["mallopt"] = "M_MMAP_MAX=0,M_TRIM_THRESHOLD=1GiB"
        except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to tune
            pass
    _prepared = True
    return applied


def default_threads() -> int:
    """``OMP_NUM_THREADS`` when it is set to a positive integer (a job scheduler's or the user's
    share of the machine), else every core this process may run on."""
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if env.isdigit() and int(env) > 0:
        return int(env)
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def set_threads(n: int | None) -> int:
    """Use ``n`` intra-op threads (default: :func:`default_threads`)."""
    import torch

    if n is None:
        n = default_threads()
    torch.set_num_threads(max(1, int(n)))
    return torch.get_num_threads()


def resolve_device(name: str):
    """A torch device from ``cpu`` / ``cuda`` / ``cuda:N``; CUDA without a GPU is a UserError."""
    import torch

    from latent.errors import UserError

    if name == "cpu":
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError("--device cuda was asked for but no CUDA device is available; use --device cpu")
        return torch.device(name)
    raise UserError(f"unknown device {name!r}; use cpu or cuda")
