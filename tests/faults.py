"""Helpers for the fault, concurrency and hostile-input tests (imported by those test files).

Disk faults are simulated by replacing :func:`semicml.io_utils.open_for_write`, the one function
through which semicml opens every file it writes (reports, JSON, checkpoints, masks, store
arrays): the replacement writes up to ``budget`` bytes of a matching file for real, then raises
``OSError(ENOSPC)`` (disk full) or fails at open with ``OSError(EROFS)`` (read-only disk).
"""

from __future__ import annotations

import errno
import os
import sys
from pathlib import Path
from typing import Callable

from semicml import io_utils
from semicml.cli import main


def run_cli(args: list[str], monkeypatch, capsys) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["semicml", *[str(a) for a in args]])
    code = 0
    try:
        main()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


class _FullFile:
    """A real file that accepts ``budget`` bytes, then fails like a full disk."""

    def __init__(self, fh, budget: int):
        self._fh, self._left = fh, budget

    def write(self, data) -> int:
        data = bytes(data)
        if len(data) > self._left:
            self._fh.write(data[: self._left])  # a partial write, as a real full disk does
            self._left = 0
            self._fh.flush()
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self._left -= len(data)
        return self._fh.write(data)

    def __getattr__(self, name):
        return getattr(self._fh, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._fh.close()
        return False


def fail_writes(monkeypatch, code: int = errno.ENOSPC, match: Callable[[Path], bool] = lambda p: True,
                budget: int = 100, skip: int = 0) -> list[Path]:
    """Make semicml's writes of files matching ``match`` fail (after the first ``skip`` of them).

    ENOSPC: ``budget`` bytes are really written to the (temporary) file first. EROFS/EACCES: the
    open itself fails. Returns the list of paths whose writes failed.
    """
    real = io_utils.open_for_write
    failed: list[Path] = []
    seen = [0]

    def fake(path):
        path = Path(path)
        if not match(path):
            return real(path)
        seen[0] += 1
        if seen[0] <= skip:
            return real(path)
        failed.append(path)
        if code == errno.ENOSPC:
            return _FullFile(real(path), budget)
        raise OSError(code, os.strerror(code), str(path))

    monkeypatch.setattr(io_utils, "open_for_write", fake)
    return failed


def tree(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` (relative path -> bytes), hidden files included."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(Path(root).rglob("*")) if p.is_file()}


def temporaries(root: Path) -> list[str]:
    """Leftovers of an interrupted write: temporary files and partial/old store folders."""
    return sorted(str(p) for p in Path(root).rglob("*")
                  if ".tmp" in p.name or ".partial-" in p.name or ".old-" in p.name or p.name.endswith(".lock"))
