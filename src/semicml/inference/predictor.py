"""Slice-by-slice prediction of one modality's network (shared by validation and ``predict``)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..hardware import Precision


@torch.no_grad()
def predict_planes(net: nn.Module, planes: np.ndarray, device: torch.device, precision: Precision,
                   batch_size: int = 32, channels_last: bool = True) -> np.ndarray:
    """planes: (Z, H, W) normalised slices of ONE modality -> (Z, H, W) float32 probabilities.

    Binary networks (1 output channel) give sigmoid probabilities of the foreground. Empty
    (all-zero) slices are skipped and predicted as background.
    """
    was_training = net.training
    net.eval()
    out = np.zeros(planes.shape, dtype=np.float32)
    nonempty = np.flatnonzero(np.abs(planes).reshape(planes.shape[0], -1).max(axis=1) > 0)
    for start in range(0, len(nonempty), batch_size):
        idx = nonempty[start : start + batch_size]
        x = torch.from_numpy(np.asarray(planes[idx], dtype=np.float32)).unsqueeze(1).to(device)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with precision.autocast():
            logits = net(x)
        out[idx] = torch.sigmoid(logits.float())[:, 0].cpu().numpy()
    net.train(was_training)
    return out
