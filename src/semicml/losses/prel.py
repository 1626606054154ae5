"""PReL: the pseudo-label re-learning loss (docs/method-notes.md, "PReL").

The weaker modality's network learns from the stronger modality's averaged soft labels with the
supervised loss, plus an ASC term between the soft labels and its own prediction.
"""

from __future__ import annotations

import torch
from torch import Tensor

from semicml.losses.contrastive import asc_loss
from semicml.losses.segmentation import fp32_region, supervised_loss
from semicml.losses.validation import check_pair

__all__ = ["prel_loss"]


def prel_loss(
    logits_weak: Tensor,
    soft_labels: Tensor,
    alpha: float = 0.1,
    bce_weight: float = 10.0,
    dice_weight: float = 7.0,
    similarity: str = "dice",
    temperature: float = 1.0,
    dice_reduction: str = "batch",
    asc_channels: str = "joint",
    pos_weight: float = 1.0,
) -> Tensor:
    """PReL re-learning loss ``(1 - alpha) * Lsup(logits_weak, y_soft) + alpha * ASC(y_soft, sigmoid(logits_weak))``.

    Shape contract: ``logits_weak`` (the weaker network's logits) and ``soft_labels`` (the
    teacher's averaged sigmoid maps in [0, 1]): ``(B, C, H, W)``, same shape. ``soft_labels`` is
    detached here so the teacher never receives gradient. The ASC term is 0 when ``B == 1`` (no
    negatives). ``asc_channels``: see :func:`asc_loss` (``channels``). Returns a float32 scalar.
    """
    check_pair("prel_loss", logits_weak, soft_labels, "logits_weak", "soft_labels")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"prel_loss: alpha must be in [0, 1], got {alpha}")
    y_soft = soft_labels.detach()
    sup = supervised_loss(logits_weak, y_soft, bce_weight=bce_weight, dice_weight=dice_weight,
                          dice_reduction=dice_reduction, pos_weight=pos_weight)
    with fp32_region(logits_weak):
        p_weak = torch.sigmoid(logits_weak.float())
    asc = asc_loss(y_soft, p_weak, similarity=similarity, temperature=temperature, channels=asc_channels)
    return (1.0 - alpha) * sup + alpha * asc
