"""Teachers: exponential moving average (Mean Teacher), best-model averaging (PReL), MC dropout.

Teachers are parameter averages of a student and never receive gradient.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from ..models.modes import enable_mc_dropout, modes_restored


def frozen_copy(net: nn.Module) -> nn.Module:
    teacher = copy.deepcopy(net)
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


@torch.no_grad()
def blend_(teacher: nn.Module, student: nn.Module, alpha: float) -> None:
    """teacher <- alpha * teacher + (1 - alpha) * student (float params and buffers)."""
    t_state, s_state = teacher.state_dict(), student.state_dict()
    for key, t in t_state.items():
        s = s_state[key]
        if t.dtype.is_floating_point:
            t.mul_(alpha).add_(s.detach(), alpha=1 - alpha)
        else:  # counters such as BatchNorm's num_batches_tracked
            t.copy_(s)


class BestModelAverage:
    """PReL's best-model averaging over a pool of the k best validation scores.

    When a validation score enters the pool, ``theta_T <- a theta_T + (1 - a) theta_student`` with
    ``a = min(1 - (d_new - d_poolmin) / d_new, max_alpha)``: bigger improvements pull harder.
    The teacher starts as a copy of the student at the first pool entry (a deviation, see
    docs/method-notes.md, "PReL": the reference starts it when the pool first FILLS; with short
    budgets a pool of 6 may never fill before PReL starts, and an early weak copy is soon pulled
    towards better models because alpha shrinks with improvement).
    """

    def __init__(self, pool_size: int = 6, max_alpha: float = 0.99):
        self.pool_size, self.max_alpha = pool_size, max_alpha
        self.pool: list[float] = []
        self.started = False

    def update(self, score: float, teacher: nn.Module, student: nn.Module) -> float | None:
        """Offer a validation score; returns the alpha used, or None if the pool was not entered."""
        if len(self.pool) >= self.pool_size and score <= min(self.pool):
            return None
        pool_min = min(self.pool) if self.pool else score
        self.pool.append(score)
        self.pool = sorted(self.pool, reverse=True)[: self.pool_size]
        if not self.started:
            teacher.load_state_dict(student.state_dict())
            self.started = True
            return 0.0
        alpha = self.max_alpha if score <= 0 else min(1 - (score - pool_min) / score, self.max_alpha)
        blend_(teacher, student, alpha)
        return alpha

    def state(self) -> dict:
        return {"pool": list(self.pool), "started": self.started}

    def load(self, state: dict) -> None:
        self.pool, self.started = list(state["pool"]), bool(state["started"])


@torch.no_grad()
def mc_soft_labels(net: nn.Module, x: torch.Tensor, samples: int, noise_std: float, noise_clip: float) -> torch.Tensor:
    """mean_t sigmoid(f(x + n_t)) with dropout on and clipped Gaussian input noise: x (B,1,H,W)
    -> (B,C,H,W), C = the network's output channels (one per region of a region target)."""
    acc: torch.Tensor | None = None
    with modes_restored(net):
        enable_mc_dropout(net)
        for _ in range(samples):
            noise = torch.clamp(torch.randn_like(x) * noise_std, -noise_clip, noise_clip)
            probs = torch.sigmoid(net(x + noise).float())
            acc = probs if acc is None else acc + probs
    return acc / samples
