"""Cross pseudo supervision (CPS; Chen et al., CVPR 2021), single-modality baseline.

Per modality two networks of the same architecture, initialised differently, each supervised by
the labels and by the other's hard pseudo-labels; the modalities never interact::

    L = sum_k Lsup(f_k(x_l), y) + w(t) * [BCE(f_1(x), hard(f_2(x))) + BCE(f_2(x), hard(f_1(x)))]
    hard(z) = (sigmoid(z) > 0.5), detached;   x = labelled + unlabelled slices
    w(t) = cps.weight * sigmoid_rampup(t, cps.rampup_fraction * total_iterations)

Sources and choices:

* Two nets, hard pseudo-labels both ways, cross-entropy, one summed loss: Chen et al. and SSL4MIS
  (Luo et al., github.com/HiLab-git/SSL4MIS, ``train_cross_pseudo_supervision_2D.py``). Binary
  segmentation with one sigmoid channel, so the cross-entropy is ``BCEWithLogits``.
* Pseudo supervision on labelled + unlabelled slices, as in Chen et al. (SSL4MIS's 2D script uses
  the unlabelled part only).
* Different initialisation: the second net of each modality is a second ``ctx.new_network()`` call,
  so it gets different random weights (SSL4MIS instead uses Kaiming vs Xavier init).
* ``cps.weight = 1.0`` is this project's config default (SSL4MIS: 0.1; Chen et al.: 1.5 on VOC),
  ramped with the Laine & Aila sigmoid over ``rampup_fraction`` of the run (SSL4MIS: the whole run).
* Supervised part: ``supervised_loss`` with the ``cfg.semicml`` bce/dice weights, as every baseline.

Networks: ``students["<i>"]`` (first net of modality i, used for prediction) and
``students["<i>b"]`` (second net); both are optimised.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..losses import sigmoid_rampup
from ..losses.segmentation import fp32_region
from .base import Batch, Method, MethodContext, register


def hard_label(logits: torch.Tensor) -> torch.Tensor:
    """Detached binary pseudo-label ``(sigmoid(z) > 0.5)`` as float."""
    return (torch.sigmoid(logits.detach().float()) > 0.5).float()


def pseudo_ce(logits: torch.Tensor, other_logits: torch.Tensor) -> torch.Tensor:
    """BCE of ``logits`` against the other network's hard pseudo-label (no gradient to the other)."""
    with fp32_region(logits):
        return F.binary_cross_entropy_with_logits(logits.float(), hard_label(other_logits))


@register
class CPS(Method):
    name = "cps"
    multi_modal = False

    def __init__(self, ctx: MethodContext):
        super().__init__(ctx)  # students "0", "1", ...: first net per modality
        for i in range(len(ctx.modalities)):
            self.students[self.second_key(i)] = ctx.new_network()

    @staticmethod
    def second_key(index: int) -> str:
        return f"{index}b"  # ModuleDict keys must not contain '.'

    def cps_weight(self, iteration: int) -> float:
        c = self.cfg.cps
        return c.weight * sigmoid_rampup(iteration, c.rampup_fraction * self.ctx.total_iterations)

    def train_step(self, batch: Batch, iteration: int) -> dict[str, torch.Tensor]:
        y = self.target(batch["label_l"])
        n_lab = y.shape[0]
        weight = self.cps_weight(iteration)
        x_all = torch.cat([batch["images_l"], batch["images_u"]])
        losses: dict[str, torch.Tensor] = {}
        total = 0.0
        for i, m in enumerate(self.ctx.modalities):
            x = self.channel(x_all, i)
            z1 = self.students[str(i)](x).float()
            z2 = self.students[self.second_key(i)](x).float()
            for tag, z in (("1", z1), ("2", z2)):
                losses[f"sup/{m}/{tag}"] = self.supervised(z[:n_lab], y)
            losses[f"cps/{m}/1<-2"] = pseudo_ce(z1, z2)
            losses[f"cps/{m}/2<-1"] = pseudo_ce(z2, z1)
            total = (total + losses[f"sup/{m}/1"] + losses[f"sup/{m}/2"]
                     + weight * (losses[f"cps/{m}/1<-2"] + losses[f"cps/{m}/2<-1"]))
        losses["cps_weight"] = torch.tensor(weight)
        losses["loss"] = total
        return losses

    def predictors(self) -> dict[str, nn.Module]:
        return {m: self.students[str(i)] for i, m in enumerate(self.ctx.modalities)}
