"""Uncertainty-aware Mean Teacher (UA-MT; Yu et al., MICCAI 2019), single-modality baseline.

Mean Teacher (see ``mean_teacher.py``: EMA teacher, noise, ramp-up, ``after_step`` contract) whose
consistency term only counts pixels where the teacher is confident::

    p_bar = mean_t sigmoid(teacher(x_u + n_t)),  t = 1..T   (MC dropout, T = uncertainty_samples)
    u     = -(p_bar ln p_bar + (1 - p_bar) ln(1 - p_bar))     (binary predictive entropy, max ln 2)
    mask  = u < tau(t),  tau(t) = (0.75 + 0.25 * sigmoid_rampup(t, total_iterations)) * ln 2
    L_u   = sum(mask * (p_s - p_t)^2) / (sum(mask) + 1e-16)

Defaults and sources: T = 8, the threshold ramp from 0.75 ln 2 to ln 2 over the WHOLE run and the
1e-16 guard: SSL4MIS (Luo et al., github.com/HiLab-git/SSL4MIS,
``train_uncertainty_aware_mean_teacher_2D.py``) following Yu et al.; the consistency weight, its
ramp-up, EMA decay and noise are Mean Teacher's (``cfg.mean_teacher``).

Choices:

* ``p_t`` (the consistency target) is the teacher's single noisy MC-dropout pass, exactly Mean
  Teacher's target (SSL4MIS likewise uses one separate noisy teacher pass, not ``p_bar``); ``p_bar``
  only decides the mask. So with every pixel confident UA-MT's term equals Mean Teacher's.
* Normaliser ``sum(mask)``, not SSL4MIS's ``2 * sum(mask)``: there the squared error is summed over
  the 2 softmax channels of a binary problem, and both channels carry the same error
  (``(p1 - q1)^2 = (p0 - q0)^2``), so its value is the masked MEAN of ``(p1 - q1)^2``. With one
  sigmoid channel that mean is ``sum(mask d) / sum(mask)``; dividing by 2 again would halve it.
* The T passes run as one batched forward of the T noisy copies (BatchNorm is in eval mode, so this
  equals T separate passes; SSL4MIS runs T/2 passes on a doubled batch).
"""

from __future__ import annotations

import math

import torch

from ..losses import sigmoid_rampup
from ..losses.segmentation import fp32_region
from ..parallel import global_sum
from .base import register
from .mean_teacher import MeanTeacher, mc_dropout_mode

LN2 = math.log(2.0)


def binary_entropy(p: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Elementwise ``-(p ln p + (1 - p) ln(1 - p))`` in nats (0 at p in {0, 1}, ln 2 at p = 0.5)."""
    p = p.float()
    return -(p * torch.log(p + eps) + (1.0 - p) * torch.log(1.0 - p + eps))


def masked_mse(p_student: torch.Tensor, p_teacher: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``sum(mask * (p_s - p_t)^2) / (sum(mask) + 1e-16)``; 0 when the mask is empty."""
    with fp32_region(p_student):
        dist = (p_student.float() - p_teacher.float()) ** 2
        # Both sums over the global batch under DDP (identity on one process).
        masked, count = global_sum(torch.stack([(mask * dist).sum(), mask.sum()]))
        return masked / (count + 1e-16)


@register
class UAMT(MeanTeacher):
    name = "uamt"

    def threshold(self, iteration: int) -> float:
        return (0.75 + 0.25 * sigmoid_rampup(iteration, self.ctx.total_iterations)) * LN2

    @torch.no_grad()
    def mc_mean(self, key: str, x_u: torch.Tensor) -> torch.Tensor:
        """p_bar: mean over T noisy MC-dropout teacher passes, (U, 1, H, W) float32."""
        samples = self.cfg.mean_teacher.uncertainty_samples
        teacher = self.teachers[key]
        with mc_dropout_mode(teacher):
            probs = torch.sigmoid(teacher(self.noisy(x_u.repeat(samples, 1, 1, 1))).float())
        return probs.reshape(samples, *x_u.shape[:1], *probs.shape[1:]).mean(0)

    def consistency(self, key: str, x_u: torch.Tensor, p_student: torch.Tensor,
                    iteration: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        p_teacher = self.teacher_probs(key, x_u)
        uncertainty = binary_entropy(self.mc_mean(key, x_u))
        threshold = self.threshold(iteration)
        mask = (uncertainty < threshold).float()
        loss = masked_mse(p_student, p_teacher, mask)
        mask_fraction = mask.mean() if mask.numel() else mask.sum()
        return loss, {"mask_fraction": mask_fraction, "threshold": torch.tensor(threshold)}
