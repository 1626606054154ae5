"""User-facing errors: one line naming the file and the problem, no traceback."""

from __future__ import annotations

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
