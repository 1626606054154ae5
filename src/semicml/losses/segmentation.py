"""Supervised and soft-label segmentation losses (binary / multi-label, sigmoid outputs).

All functions compute in float32 with autocast disabled, because training may run under bf16
autocast where sums over whole maps and ``log`` lose too much precision.
"""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from semicml.losses.validation import check_pair, zero_with_graph
from semicml.parallel import global_sum

__all__ = [
    "SupervisedLoss",
    "dice_loss",
    "fp32_region",
    "mutual_mse",
    "sigmoid_rampup",
    "soft_dice_similarity",
    "supervised_loss",
]


def fp32_region(t: Tensor) -> contextlib.AbstractContextManager:
    """Context that disables autocast on ``t``'s device (no-op where autocast is unsupported)."""
    try:
        return torch.autocast(device_type=t.device.type, enabled=False)
    except RuntimeError:  # device type without autocast support
        return contextlib.nullcontext()


def soft_dice_similarity(u: Tensor, v: Tensor, eps: float = 1e-5) -> Tensor:
    """Soft Dice similarity ``s(u, v) = (2 sum(u v) + eps) / (sum(u^2) + sum(v^2) + eps)`` per sample.

    Shape contract: ``u``, ``v``: ``(B, C, H, W)``, same shape. Returns ``(B,)`` float32; sums run
    over ``C, H, W``. Two all-zero maps have similarity 1.
    """
    check_pair("soft_dice_similarity", u, v, "u", "v")
    with fp32_region(u):
        u32 = u.float().flatten(1)
        v32 = v.float().flatten(1)
        num = 2.0 * (u32 * v32).sum(1) + eps
        den = (u32 * u32).sum(1) + (v32 * v32).sum(1) + eps
        return num / den


def dice_loss(probs: Tensor, target: Tensor, eps: float = 1e-5, reduction: str = "batch") -> Tensor:
    """Soft Dice loss ``1 - (2 sum(p y) + eps) / (sum(p^2) + sum(y^2) + eps)``.

    ``reduction="batch"`` (the reference): one Dice per channel with the sums over every pixel of
    every slice of the batch, then the mean over channels. A tumour-free slice then costs only
    what it adds to the batch's false positives, instead of a loss near 1 for any faint
    prediction. ``reduction="slice"``: the mean over samples of per-sample Dice over ``(C, H, W)``.
    Under DDP (``semicml.parallel.sharded_batch``) the batch sums are those of the global batch.

    Shape contract: ``probs`` (probabilities, not logits) and ``target`` (hard or soft labels in
    [0, 1]): ``(B, C, H, W)``, same shape. Returns a float32 scalar; an empty batch gives 0.
    """
    check_pair("dice_loss", probs, target, "probs", "target")
    if probs.shape[0] == 0:
        return zero_with_graph(probs, target)
    if reduction == "slice":
        return (1.0 - soft_dice_similarity(probs, target, eps)).mean()
    if reduction != "batch":
        raise ValueError(f"dice_loss: reduction must be 'batch' or 'slice', got {reduction!r}")
    with fp32_region(probs):
        p = probs.float().transpose(0, 1).flatten(1)  # (C, B*H*W)
        y = target.float().transpose(0, 1).flatten(1)
        # Under DDP the sums cover the global batch (one all-reduce; identity on one process).
        py, pp, yy = global_sum(torch.stack([(p * y).sum(1), (p * p).sum(1), (y * y).sum(1)]))
        num = 2.0 * py + eps
        den = pp + yy + eps
        return (1.0 - num / den).mean()


def supervised_loss(
    logits: Tensor, target: Tensor, bce_weight: float = 10.0, dice_weight: float = 7.0, dice_reduction: str = "batch",
    pos_weight: float = 1.0,
) -> Tensor:
    """``bce_weight * BCEWithLogits(logits, target) + dice_weight * dice_loss(sigmoid(logits), target)``.

    Shape contract: ``logits`` and ``target``: ``(B, C, H, W)``, same shape. ``target`` may be
    soft in [0, 1], so the same loss serves soft pseudo-labels. Takes logits (not probabilities)
    for a numerically stable BCE. BCE is the mean over all elements. ``pos_weight`` scales the
    foreground term of the BCE, ``-(w y log p + (1 - y) log(1 - p))``: above 1 a missed tumour
    pixel costs more than a false one (1: the plain BCE). Returns a float32 scalar; an empty
    batch gives 0.
    """
    if not pos_weight > 0:
        raise ValueError(f"supervised_loss: pos_weight must be > 0, got {pos_weight}")
    check_pair("supervised_loss", logits, target, "logits", "target")
    if logits.shape[0] == 0:
        return zero_with_graph(logits, target)
    with fp32_region(logits):
        z = logits.float()
        y = target.float()
        # 1 takes torch's plain path, so a default run stays bit-identical to runs before the setting
        weight = None if pos_weight == 1.0 else z.new_tensor(pos_weight)
        bce = F.binary_cross_entropy_with_logits(z, y, pos_weight=weight)
        return bce_weight * bce + dice_weight * dice_loss(torch.sigmoid(z), y, reduction=dice_reduction)


def mutual_mse(p_a: Tensor, p_b: Tensor) -> Tensor:
    """Mean squared error between two probability maps (mutual consistency; both sides get gradient).

    Shape contract: ``p_a``, ``p_b``: ``(B, C, H, W)``, same shape. Returns a float32 scalar (mean
    over all elements); an empty batch gives 0.
    """
    check_pair("mutual_mse", p_a, p_b, "p_a", "p_b")
    if p_a.numel() == 0:
        return zero_with_graph(p_a, p_b)
    with fp32_region(p_a):
        return F.mse_loss(p_a.float(), p_b.float())


def sigmoid_rampup(step: float, length: float) -> float:
    """Ramp-up weight ``exp(-5 (1 - t)^2)`` with ``t = clip(step / length, 0, 1)``; ``length == 0`` gives 1."""
    if length < 0:
        raise ValueError(f"sigmoid_rampup: length must be >= 0, got {length}")
    if length == 0:
        return 1.0
    t = min(max(float(step) / float(length), 0.0), 1.0)
    return math.exp(-5.0 * (1.0 - t) ** 2)


class SupervisedLoss(nn.Module):
    """Module wrapper of :func:`supervised_loss` (``forward(logits, target)``)."""

    def __init__(self, bce_weight: float = 10.0, dice_weight: float = 7.0, dice_reduction: str = "batch",
                 pos_weight: float = 1.0):
        super().__init__()
        self.bce_weight = bce_weight
        self.dice_weight = dice_weight
        self.dice_reduction = dice_reduction
        self.pos_weight = pos_weight

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        return supervised_loss(logits, target, self.bce_weight, self.dice_weight, self.dice_reduction,
                               self.pos_weight)
