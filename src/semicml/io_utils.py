"""Atomic file writes: a reader never sees a half-written report, plot or checkpoint.

Every writer here writes to a temporary file in the destination's own directory (same file
system, so the final ``os.replace`` is atomic on POSIX and Windows) and then renames it over the
destination. If writing fails, the temporary file is removed and any previous file is untouched.
Temporary names are ``.<name>.<random>.tmp<suffix>``: hidden, and keeping the destination's
suffix so format-sniffing writers (``Figure.savefig``) pick the right format.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["atomic_path", "atomic_write_text", "atomic_write_json", "atomic_save_torch"]


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
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        # mkstemp creates 0600 files; give the result the permissions a plain open() would.
        mode = path.stat().st_mode & 0o7777 if path.exists() else 0o666 & ~_UMASK
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def atomic_write_text(path: str | Path, text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically (flushed and fsynced before the rename)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding=encoding, newline="") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
    return path


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
        with open(tmp, "wb") as fh:
            torch.save(obj, fh)
            fh.flush()
            os.fsync(fh.fileno())
    return path

