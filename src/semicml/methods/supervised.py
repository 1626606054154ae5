"""Supervised-only baseline: each modality's network trained on the labelled slices alone.

With ``labeled_fraction=0.1`` it is the lower bound of the semi-supervised methods, with 1.0 the
upper bound (full supervision). Loss: the paper's ``10 * BCE + 7 * Dice``.
"""

from __future__ import annotations

import torch

from .base import Batch, Method, register


@register
class Supervised(Method):
    name = "supervised"
    needs_unlabeled = False

    def train_step(self, batch: Batch, iteration: int) -> dict[str, torch.Tensor]:
        y = self.target(batch["label_l"])
        losses: dict[str, torch.Tensor] = {}
        for i, m in enumerate(self.ctx.modalities):
            logits = self.students[str(i)](self.channel(batch["images_l"], i)).float()
            losses[f"sup/{m}"] = self.supervised(logits, y)
        losses["loss"] = sum(losses.values())
        return losses
