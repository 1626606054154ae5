"""A run's training log: ``log.jsonl`` (one JSON record per logged step) and, when installed,
TensorBoard events; both cut back to the checkpoint a resumed run continues from."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..io_utils import atomic_write_text

__all__ = ["append_record", "log_until", "open_tensorboard"]


def log_until(path: Path, iteration: int) -> list[dict[str, Any]]:
    """The records of ``path`` up to ``iteration``; the file is rewritten without the later ones
    (written after the checkpoint a resumed run continues from) and without lines a crash tore."""
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line torn by a crash or a full disk mid-write
    kept = [r for r in rows if isinstance(r, dict) and r.get("iteration", 1e18) <= iteration]
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in kept))
    return kept


def append_record(path: Path, record: dict[str, Any], writer) -> None:
    with open(path, "a") as fh:
        fh.write(json.dumps(record) + "\n")
    if writer is not None:
        for k, v in record.items():
            if isinstance(v, (int, float)) and k != "iteration":
                writer.add_scalar(k, v, record["iteration"])


def open_tensorboard(run_dir: Path, iteration: int):
    """A SummaryWriter for ``run_dir/tensorboard`` (None without tensorboard installed)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional at run time
        return None
    # Drop events written after the checkpoint we resume from (its own step is kept: it is in log.jsonl).
    return SummaryWriter(str(run_dir / "tensorboard"), purge_step=(iteration + 1) if iteration else None)
