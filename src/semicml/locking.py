"""One writer per run, store and prediction folder: an exclusive lock that names its holder.

``exclusive(target, what)`` takes an ``fcntl.flock`` lock on the hidden file
``<parent>/.<name>.lock`` next to ``target`` (beside it, not inside: a store is built elsewhere and
renamed into place, and a run directory must stay empty until training starts). The holder writes
its PID into the file, so a second process fails at once with a :class:`BusyError` naming that
PID. The kernel drops a flock lock when its process dies, even by SIGKILL, so a lock file left by a
killed process is stale by construction: the next process simply takes it over. The file is
removed on release.

On platforms without ``fcntl`` (Windows) no lock is taken.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path

from .errors import BusyError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = ["ensure_free", "exclusive", "lock_path"]


def lock_path(target: str | Path) -> Path:
    target = Path(target).absolute()
    return target.parent / f".{target.name}.lock"


def _holder(fd: int) -> str:
    try:
        text = os.pread(fd, 200, 0).decode("utf-8", "replace").strip()
    except OSError:
        return "unknown"
    return text.split()[0] if text else "unknown"


@contextlib.contextmanager
def exclusive(target: str | Path, what: str) -> Iterator[Path]:
    """Hold the lock of ``target`` (a run, store or output folder) for the ``with`` block.

    Raises :class:`BusyError` ("... is in use by PID n") when another live process holds it.
    """
    path = lock_path(target)
    if fcntl is None:  # pragma: no cover - Windows
        yield path
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = _holder(fd)
            os.close(fd)
            raise BusyError(f"{what} is in use by another semicml process (PID {pid}, lock {path.name}); "
                            "wait for it to finish or stop it", target) from None
        # The previous holder may have removed the file between our open and our lock: then we
        # locked an orphan inode, and must retry on the file that is at ``path`` now.
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {' '.join(sys.argv[:3])}\n".encode(), 0)
        yield path
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)
        os.close(fd)  # releases the flock


def ensure_free(target: str | Path, what: str) -> None:
    """Raise :class:`BusyError` now if another process holds ``target``'s lock (takes nothing)."""
    if lock_path(target).exists():
        with exclusive(target, what):
            pass
