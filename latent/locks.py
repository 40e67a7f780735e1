"""Advisory file locks for the store: a short-held study lock and one lease per run.

A lock is ``flock`` on a small file. The kernel drops it when the holder closes the file,
exits or is killed (``kill -9`` included), so a crash never leaves a stale lock behind and no
lock ever needs breaking by hand. A lease file may carry a note (pid, host, command) that
tells a waiting process who holds it. Lock files are never deleted: deleting a lock file
while another process has it open would let two processes lock two different files.

POSIX only (Linux, macOS); ``flock`` on a network file system works where the server
supports it.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import time
from pathlib import Path

from .errors import UserError, store_error


def _fcntl():
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        raise UserError("latent collect needs POSIX file locks (Linux or macOS)") from None
    return fcntl


class Lock:
    """A held lock; :meth:`release` (or leaving the ``with`` block) gives it back."""

    def __init__(self, path: Path, fd: int):
        self.path = path
        self._fd: int | None = fd
        self._noted = False

    def note(self, info: dict) -> None:
        """Write ``info`` into the lock file for processes that wait on it (best effort)."""
        if self._fd is None:
            return
        try:
            os.ftruncate(self._fd, 0)
            os.pwrite(self._fd, json.dumps(info, sort_keys=True).encode(), 0)
            self._noted = True
        except OSError:
            pass  # the note is a courtesy; the lock itself is what matters

    def release(self) -> None:
        if self._fd is None:
            return
        if self._noted:
            try:
                os.ftruncate(self._fd, 0)  # the note must not outlive the lock
            except OSError:
                pass
        os.close(self._fd)  # closing drops the flock
        self._fd = None

    def __enter__(self) -> "Lock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def acquire(path: str | os.PathLike, blocking: bool = True) -> Lock | None:
    """Lock ``path`` exclusively (creating it and its directory if needed).

    Returns the :class:`Lock`, or ``None`` when ``blocking`` is False and another process
    holds it.

    Raises
    ------
    StoreError
        If the lock file cannot be created or locked (read-only store, disk full, ...).
    """
    fcntl = _fcntl()
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise store_error(exc, "create lock file", path) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES) and not blocking:
            return None
        raise store_error(exc, "lock", path) from None
    return Lock(path, fd)


def try_acquire(path: str | os.PathLike, attempts: int = 3, pause: float = 0.02) -> Lock | None:
    """Non-blocking :func:`acquire`, retried briefly: a reader's momentary probe is not a holder."""
    for i in range(attempts):
        lock = acquire(path, blocking=False)
        if lock is not None or i == attempts - 1:
            return lock
        time.sleep(pause)
    return None


def holder(path: str | os.PathLike) -> dict | None:
    """Who holds the lock on ``path``: its note (``{}`` if it left none), or None if nobody does.

    Never creates a file and never blocks, so readers of a read-only store can call it.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: no collector can hold a lock there
        return None
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None  # no lock file: nobody has ever held it
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                return None
            try:
                raw = os.pread(fd, 4096, 0)
                info = json.loads(raw.decode()) if raw else {}
            except (OSError, ValueError):
                info = {}  # a note being rewritten right now
            return info if isinstance(info, dict) else {}
        return None
    finally:
        os.close(fd)


def holder_note(command: str | None = None) -> dict:
    """The note a collector leaves in the leases it holds."""
    return {"pid": os.getpid(), "host": socket.gethostname(), "command": command or "",
            "since": time.strftime("%Y-%m-%d %H:%M:%S")}


def _alive(pid) -> bool:
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (OSError, ValueError, TypeError):
        return True  # exists but not ours, or not a pid we can check
    return True


def describe_holder(info: dict | None) -> str:
    """``"pid 123 on host (latent collect ...) since ..."`` or ``"another process"``."""
    if not info or "pid" not in info:
        return "another process"
    local = info.get("host") in (None, socket.gethostname())
    if local and not _alive(info["pid"]):
        return "another process"  # a note left by a holder killed with kill -9; someone else holds it now
    text = f"pid {info['pid']}"
    if not local:
        text += f" on {info['host']}"
    if info.get("command"):
        text += f" (`{info['command']}`)"
    if info.get("since"):
        text += f" since {info['since']}"
    return text


def move_study_aside(root: Path, name: str, aside: Path) -> None:
    """Rename the study directory ``root`` to ``aside`` (``--overwrite``), refusing while anyone
    holds one of its run leases; the leases are held across the rename, so no collection can
    start on the old runs in between."""
    held = []
    lock_dir = Path(root) / "locks"
    try:
        for path in sorted(lock_dir.glob("*.lock")) if lock_dir.is_dir() else []:
            lease = try_acquire(path)
            if lease is None:
                raise UserError(f"study {name!r} is being collected by {describe_holder(holder(path))}; let it "
                                "finish (or stop it) before replacing the study with --overwrite")
            held.append(lease)
        try:
            os.replace(root, aside)
        except OSError as exc:
            raise store_error(exc, "move aside", root) from None
    finally:
        for lease in held:
            lease.release()
