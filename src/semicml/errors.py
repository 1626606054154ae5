"""User-facing errors: one line naming the file and the problem, no traceback."""

from __future__ import annotations

import errno
import os
from pathlib import Path


class SemicmlError(Exception):
    """An error caused by the user's input (data, config, arguments).

    The CLI prints ``str(err)`` on one line and exits with status 2; no traceback.
    """

    def __init__(self, message: str, path: str | Path | None = None):
        self.path = None if path is None else Path(path)
        self.problem = message
        text = f"{self.path}: {message}" if self.path is not None else message
        super().__init__(" ".join(text.split()))  # guarantee a single line


class DataError(SemicmlError):
    """Invalid or unreadable input data."""


class ConfigError(SemicmlError):
    """Invalid configuration or arguments."""


class BusyError(SemicmlError):
    """Another process holds the lock of a run, store or output folder."""


#: errno values that mean "the disk refused the write", reported as one line by the CLI.
STORAGE_ERRNOS = frozenset(
    getattr(errno, name) for name in ("ENOSPC", "EDQUOT", "EROFS", "EACCES", "EPERM", "EFBIG", "EIO")
    if hasattr(errno, name)
)


def storage_problem(err: BaseException) -> str | None:
    """One line for a disk-level write failure (disk full, read-only, no permission), else None."""
    if not isinstance(err, OSError) or err.errno not in STORAGE_ERRNOS:
        return None
    what = err.strerror or os.strerror(err.errno)
    where = f"{err.filename}: " if err.filename else ""
    return " ".join(f"{where}cannot write: {what} (errno {errno.errorcode.get(err.errno, err.errno)}); "
                    "files written before are intact".split())
