"""How much memory this machine has free, for refusing work that cannot fit before it starts."""

from __future__ import annotations

import os


def available_bytes() -> int | None:
    """Memory available to a new allocation without swapping, in bytes (None if unknown).

    Linux's ``MemAvailable`` (what the kernel could hand out, page cache included), capped by a
    cgroup limit when the process runs in one (containers, CI); elsewhere the free physical pages.
    """
    free = None
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    free = int(line.split()[1]) * 1024
                    break
    except (OSError, ValueError, IndexError):
        pass
    if free is None:
        try:
            free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            return None
    limit = _cgroup_room()
    return min(free, limit) if limit is not None else free


def _cgroup_room() -> int | None:
    """Bytes left under this process's cgroup (v2) memory limit, or None without one."""
    try:
        with open("/sys/fs/cgroup/memory.max") as fh:
            text = fh.read().strip()
        if text == "max":
            return None
        with open("/sys/fs/cgroup/memory.current") as fh:
            used = int(fh.read().strip())
        # memory.current counts page cache too; its inactive part is reclaimed before anything is
        # refused, so it is room (the working set, as container tools compute it)
        try:
            with open("/sys/fs/cgroup/memory.stat") as fh:
                stat = dict(line.split() for line in fh if line.strip())
            used -= int(stat.get("inactive_file", 0))
        except (OSError, ValueError):
            pass
        return max(0, int(text) - max(used, 0))
    except (OSError, ValueError):
        return None


def gib(n: float) -> str:
    """``n`` bytes as a short text in GiB (or MiB below 1 GiB)."""
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"
