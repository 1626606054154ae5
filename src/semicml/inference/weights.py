"""The trained network of one modality, from a run directory or a weights file."""

from __future__ import annotations

from pathlib import Path

import torch

from ..checkpoint import load_checkpoint
from ..errors import DataError
from ..models import build_network


def weights_path(run: str | Path, modality: str) -> Path:
    """``run/weights/<modality>.pt`` (modality matched case-insensitively), or ``run`` if it is a file."""
    run = Path(run)
    if run.is_file():
        return run
    if not run.is_dir():
        raise DataError("run directory not found", run)
    weights = {p.stem.lower(): p for p in (run / "weights").glob("*.pt")}
    if modality.lower() not in weights:
        have = ", ".join(sorted(p.stem for p in weights.values())) or "none"
        raise DataError(f"no network for modality {modality!r} in this run (has: {have})", run)
    return weights[modality.lower()]


def load_weights(run: str | Path, modality: str, device: torch.device):
    """Network of ``modality`` from a run directory (or a weights file) -> (net, payload)."""
    path = weights_path(run, modality)
    payload = load_checkpoint(path, "cpu")
    if payload.get("format") != "semicml-weights-v1":
        raise DataError("not a semicml weights file", path)
    net = build_network(payload["network"])
    net.load_state_dict(payload["state_dict"])
    return net.to(device).eval(), payload
