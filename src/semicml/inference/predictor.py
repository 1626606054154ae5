"""Slice-by-slice prediction of one modality's network (shared by validation and ``predict``).

Two windows:

    whole   every slice as given (``predict`` gives the whole plane, padded to the network's
            down-sampling factor): the reference result.
    brain   each slice cut to the bounding box of its non-zero voxels plus ``margin`` pixels,
            rounded up to the down-sampling factor. On BraTS this is ~0.3 of the pixels of the
            whole plane, so ~3x less work; outside the box the probability is 0. The network then
            sees zero padding where it would have seen zero background, which moves probabilities
            slightly (measured in README "Inference speed"), so it is an option, not the default.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import torch
from torch import nn

from ..hardware import Precision
from .engines import Engine, TorchEngine

WINDOWS: tuple[str, ...] = ("whole", "brain")


def predict_planes(net: nn.Module, planes: np.ndarray, device: torch.device, precision: Precision,
                   batch_size: int = 32, channels_last: bool = True, tta: bool = False) -> np.ndarray:
    """planes: (Z, H, W) normalised slices of ONE modality -> (Z, H, W) float32 probabilities.

    Binary networks (1 output channel) give sigmoid probabilities of the foreground. Empty
    (all-zero) slices are skipped and predicted as background. ``tta``: the mean of the
    probabilities of the slice and its three in-plane mirror images (flip test-time augmentation).
    """
    return engine_planes(TorchEngine(net, device, precision, channels_last), planes, batch_size, tta)


def nonempty_slices(planes: np.ndarray) -> np.ndarray:
    """Indices of the slices with a non-zero voxel: only those are given to the network."""
    return np.flatnonzero(np.abs(planes).reshape(planes.shape[0], -1).max(axis=1) > 0)


def brain_windows(planes: np.ndarray, multiple: int, margin: int = 0) -> dict[tuple[int, int, int, int], list[int]]:
    """Slices grouped by their window ``(x0, y0, h, w)``: the box of the slice's non-zero voxels
    widened by ``margin`` and rounded up to ``multiple``, kept inside the plane.

    The plane's sides must be multiples of ``multiple`` (``predict`` pads them so). Slices are
    grouped by window size AND place only when identical, so each group is one batch shape.
    """
    height, width = planes.shape[1:]
    groups: dict[tuple[int, int, int, int], list[int]] = defaultdict(list)
    for z in nonempty_slices(planes):
        nz = planes[z] != 0
        xs, ys = np.flatnonzero(nz.any(axis=1)), np.flatnonzero(nz.any(axis=0))
        box = []
        for lo, hi, side in ((int(xs[0]), int(xs[-1]) + 1, height), (int(ys[0]), int(ys[-1]) + 1, width)):
            lo, hi = max(lo - margin, 0), min(hi + margin, side)
            size = min(-(-(hi - lo) // multiple) * multiple, side)
            start = min(max((lo + hi - size) // 2, 0), side - size)  # centred, inside the plane
            box += [start, size]
        groups[(box[0], box[2], box[1], box[3])].append(int(z))
    return groups


def engine_planes(engine: Engine, planes: np.ndarray, batch_size: int = 32, tta: bool = False,
                  window: str = "whole", margin: int = 0) -> np.ndarray:
    """:func:`predict_planes` with any engine and window (see the module docstring)."""
    if window not in WINDOWS:
        raise ValueError(f"unknown window {window!r} (choose from {', '.join(WINDOWS)})")
    out = np.zeros(planes.shape, dtype=np.float32)
    if window == "whole":
        groups = {(0, 0, planes.shape[1], planes.shape[2]): list(nonempty_slices(planes))}
    else:
        groups = brain_windows(planes, engine.multiple, margin)
    flips = ((), (2,), (3,), (2, 3)) if tta else ((),)
    with engine.session():
        for (x0, y0, h, w), members in groups.items():
            for start in range(0, len(members), batch_size):
                idx = members[start : start + batch_size]
                x = torch.from_numpy(np.ascontiguousarray(planes[idx, x0 : x0 + h, y0 : y0 + w],
                                                          dtype=np.float32)).unsqueeze(1)
                acc = torch.zeros(x.shape[0], h, w)
                for dims in flips:
                    probs = torch.sigmoid(engine(torch.flip(x, dims) if dims else x))
                    acc += (torch.flip(probs, dims) if dims else probs)[:, 0]
                out[idx, x0 : x0 + h, y0 : y0 + w] = (acc / len(flips)).numpy()
    return out
