"""Atomic file writes: a reader never sees a half-written report, plot or checkpoint.

Every writer here writes to a temporary file in the destination's own directory (same file
system, so the final ``os.replace`` is atomic on POSIX and Windows) and then renames it over the
destination. If writing fails, the temporary file is removed and any previous file is untouched.
Temporary names are ``.<name>.<random>.tmp<suffix>``: hidden, and keeping the destination's
suffix so format-sniffing writers (``Figure.savefig``) pick the right format.

Every byte semicml writes itself (reports, JSON, checkpoints, masks, store arrays) goes through
:func:`open_for_write`; the fault-injection tests patch that one function to raise
``OSError(ENOSPC)`` / ``OSError(EROFS)`` mid-write. A failed write raises :class:`OSError` whose
``filename`` is the destination (never the hidden temporary), which the CLI prints as one line.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["atomic_path", "atomic_write_bytes", "atomic_write_text", "atomic_write_json", "atomic_save_torch",
           "open_for_write", "save_npy"]


def _current_umask() -> int:
    # os.umask can only be read by setting it; done once at import, before any threads write.
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on normal exit it replaces ``path`` atomically.

    Usage::

        with atomic_path(out / "plot.png") as tmp:
            fig.savefig(tmp)

    On an exception the temporary file is deleted and ``path`` is left as it was.
    Missing parent directories are created.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    except OSError as err:
        raise _naming(err, path) from err
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        # mkstemp creates 0600 files; give the result the permissions a plain open() would.
        mode = path.stat().st_mode & 0o7777 if path.exists() else 0o666 & ~_UMASK
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException as err:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(err, OSError):
            raise _naming(err, path) from err
        raise


def _naming(err: OSError, path: Path) -> OSError:
    """The same error, naming the destination rather than a temporary file (or nothing)."""
    if err.errno is None:
        return err
    return OSError(err.errno, err.strerror or os.strerror(err.errno), str(path))


def open_for_write(path: str | Path):
    """Open ``path`` for writing bytes: the one place semicml's own writers open files.

    Tests replace this function to simulate a full (ENOSPC) or read-only (EROFS) disk.
    """
    return open(path, "wb")


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (flushed and fsynced before the rename)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        with open_for_write(tmp) as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    return path


def save_npy(path: str | Path, array: Any) -> Path:
    """``np.save`` through :func:`open_for_write` (not atomic: used inside a not-yet-renamed folder)."""
    import numpy as np

    path = Path(path)
    try:
        with open_for_write(path) as fh:
            np.save(fh, array)
    except OSError as err:
        raise _naming(err, path) from err
    return path


def atomic_write_text(path: str | Path, text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically (flushed and fsynced before the rename)."""
    return atomic_write_bytes(path, text.encode(encoding))


def _json_default(obj: Any) -> Any:
    # numpy scalars/arrays and paths show up in summaries and configs; make them plain JSON.
    try:
        import numpy as np
    except ImportError:  # pragma: no cover - numpy is a hard dependency
        np = None  # type: ignore[assignment]
    if np is not None:
        if isinstance(obj, np.generic):
            return obj.item()
        if isinstance(obj, np.ndarray):
            return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    raise TypeError(f"object of type {type(obj).__name__} is not JSON serializable")


def atomic_write_json(path: str | Path, obj: Any, indent: int | None = 2) -> Path:
    """Write ``obj`` as JSON atomically. numpy scalars/arrays and Paths are converted.

    Non-finite floats are written as ``NaN`` / ``Infinity`` (Python's json extension), so a
    single bad value never loses a whole report.
    """
    text = json.dumps(obj, indent=indent, default=_json_default, allow_nan=True)
    return atomic_write_text(path, text + "\n")


def atomic_save_torch(obj: Any, path: str | Path) -> Path:
    """``torch.save(obj, path)`` atomically: an interrupted save never corrupts a checkpoint."""
    import torch  # local: keeps this module importable without paying torch's import time

    path = Path(path)
    with atomic_path(path) as tmp:
        with open_for_write(tmp) as fh:
            sink = _Recording(fh)
            try:
                torch.save(obj, sink)
            except RuntimeError:
                # torch's zip writer turns a failed write (ENOSPC) into a RuntimeError while
                # closing the archive: report the write error itself.
                if sink.error is not None:
                    raise sink.error from None
                raise
            fh.flush()
            os.fsync(fh.fileno())
    return path


class _Recording:
    """A file wrapper that remembers the OSError of a failed write."""

    def __init__(self, fh):
        self._fh = fh
        self.error: OSError | None = None

    def write(self, data) -> int:
        try:
            return self._fh.write(data)
        except OSError as err:
            self.error = err
            raise

    def __getattr__(self, name: str) -> Any:
        return getattr(self._fh, name)

