"""Checkpoints: written atomically (temp file + rename), loaded with ``weights_only=True``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .errors import DataError
from .io_utils import atomic_save_torch


def save_checkpoint(obj: dict[str, Any], path: Path) -> None:
    atomic_save_torch(obj, path)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise DataError("checkpoint not found", path)
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure means an unusable file
        raise DataError(f"unreadable checkpoint ({type(err).__name__})", path) from None
