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

from ..data.context import context_stack
from ..hardware import Precision
from .engines import Engine, TorchEngine

WINDOWS: tuple[str, ...] = ("whole", "brain")


def predict_planes(net: nn.Module, planes: np.ndarray, device: torch.device, precision: Precision,
                   batch_size: int = 32, channels_last: bool = True, tta: bool = False,
                   channels: int = 1) -> np.ndarray:
    """planes: (Z, H, W) normalised slices of ONE modality -> (Z, H, W) float32 probabilities,
    or (Z, C, H, W) for a network with ``channels`` > 1 sigmoid outputs (one per region).

    Binary networks (1 output channel) give sigmoid probabilities of the foreground. Empty
    (all-zero) slices are skipped and predicted as background. A network with 2k + 1 input
    channels sees each slice with its k neighbours on either side (:mod:`semicml.data.context`). ``tta``: the mean of the
    probabilities of the slice and its three in-plane mirror images (flip test-time augmentation).
    """
    return engine_planes(TorchEngine(net, device, precision, channels_last), planes, batch_size, tta,
                         channels=channels)


def nonempty_slices(planes: np.ndarray) -> np.ndarray:
    """Indices of the slices with a non-zero voxel: only those are given to the network."""
    return np.flatnonzero(np.abs(planes).reshape(planes.shape[0], -1).max(axis=1) > 0)


def brain_windows(planes: np.ndarray, multiple: int, margin: int = 0) -> dict[tuple[int, int], list[tuple[int, int, int]]]:
    """Slices grouped by window size ``(h, w)`` -> ``[(z, x0, y0), ...]``: each window is the box
    of the slice's non-zero voxels widened by ``margin``, rounded up to ``2 * multiple`` (fewer
    distinct sizes: larger batches, and the engines build one kernel plan per size), centred on
    the box and kept inside the plane. The plane's sides must be multiples of ``multiple``.
    """
    step = 2 * multiple
    groups: dict[tuple[int, int], list[tuple[int, int, int]]] = defaultdict(list)
    for z in nonempty_slices(planes):
        nz = planes[z] != 0
        box = []
        for hits, side in ((np.flatnonzero(nz.any(axis=1)), planes.shape[1]),
                           (np.flatnonzero(nz.any(axis=0)), planes.shape[2])):
            lo, hi = max(int(hits[0]) - margin, 0), min(int(hits[-1]) + 1 + margin, side)
            size = min(-(-(hi - lo) // step) * step, side)
            box.append((min(max((lo + hi - size) // 2, 0), side - size), size))  # centred, inside the plane
        groups[(box[0][1], box[1][1])].append((int(z), box[0][0], box[1][0]))
    return groups


def engine_planes(engine: Engine, planes: np.ndarray, batch_size: int = 32, tta: bool = False,
                  window: str = "whole", margin: int = 0, channels: int = 1) -> np.ndarray:
    """:func:`predict_planes` with any engine and window (see the module docstring)."""
    if window not in WINDOWS:
        raise ValueError(f"unknown window {window!r} (choose from {', '.join(WINDOWS)})")
    if channels > 1:  # one sigmoid map per region: predict as (Z, C, H, W)
        z, h, w = planes.shape
        out = np.zeros((z, channels, h, w), dtype=np.float32)
    else:
        out = np.zeros(planes.shape, dtype=np.float32)
    if window == "whole":
        groups = {planes.shape[1:]: [(int(z), 0, 0) for z in nonempty_slices(planes)]}
    else:
        groups = brain_windows(planes, engine.multiple, margin)
    flips = ((), (2,), (3,), (2, 3)) if tta else ((),)
    with engine.session():
        for (h, w), members in groups.items():
            for start in range(0, len(members), batch_size):
                part = members[start : start + batch_size]
                # (N, 2k+1, h, w): slice z and its through-plane context (k = 0: slice z alone)
                batch = np.stack([context_stack(planes, z, engine.context)[:, x0 : x0 + h, y0 : y0 + w]
                                  for z, x0, y0 in part])
                x = torch.from_numpy(batch.astype(np.float32, copy=False))
                acc = torch.zeros(x.shape[0], channels, h, w)
                for dims in flips:
                    probs = torch.sigmoid(engine(torch.flip(x, dims) if dims else x))
                    if probs.shape[1] != channels:
                        raise ValueError(f"the network has {probs.shape[1]} output channels, expected {channels}")
                    acc += torch.flip(probs, dims) if dims else probs
                acc /= len(flips)
                if channels == 1:
                    acc = acc[:, 0]
                for k, (z, x0, y0) in enumerate(part):
                    out[z, ..., x0 : x0 + h, y0 : y0 + w] = acc[k].numpy()
    return out
