"""Slice-by-slice prediction of one modality's network (shared by validation and ``predict``)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..hardware import Precision
from ..models.modes import modes_restored


@torch.no_grad()
def predict_planes(net: nn.Module, planes: np.ndarray, device: torch.device, precision: Precision,
                   batch_size: int = 32, channels_last: bool = True, tta: bool = False) -> np.ndarray:
    """planes: (Z, H, W) normalised slices of ONE modality -> (Z, H, W) float32 probabilities.

    Binary networks (1 output channel) give sigmoid probabilities of the foreground. Empty
    (all-zero) slices are skipped and predicted as background. ``tta``: the mean of the
    probabilities of the slice and its three in-plane mirror images (flip test-time augmentation).
    """
    out = np.zeros(planes.shape, dtype=np.float32)
    nonempty = np.flatnonzero(np.abs(planes).reshape(planes.shape[0], -1).max(axis=1) > 0)
    with modes_restored(net):
        net.eval()
        for start in range(0, len(nonempty), batch_size):
            idx = nonempty[start : start + batch_size]
            x = torch.from_numpy(np.asarray(planes[idx], dtype=np.float32)).unsqueeze(1).to(device)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            flips = ((), (2,), (3,), (2, 3)) if tta else ((),)
            acc = torch.zeros(x.shape[0], x.shape[2], x.shape[3])
            for dims in flips:
                xf = torch.flip(x, dims) if dims else x
                with precision.autocast():
                    logits = net(xf).float()
                probs = torch.sigmoid(logits)
                acc += (torch.flip(probs, dims) if dims else probs)[:, 0].cpu()
            out[idx] = (acc / len(flips)).numpy()
    return out
