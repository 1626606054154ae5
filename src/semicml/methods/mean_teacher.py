"""Mean Teacher (Tarvainen & Valpola, NeurIPS 2017), single-modality baseline as in SSL4MIS.

Each modality has its own student and its own EMA teacher; the modalities never interact (one run
trains them side by side; their losses are summed, they share no parameters, so this equals
separate runs)::

    L = Lsup(student(x_l), y) + w(t) * mean (sigmoid(student(x_u + n)) - sigmoid(teacher(x_u + n')))^2
    w(t) = consistency * sigmoid_rampup(t, rampup_fraction * total_iterations)
    teacher <- a * teacher + (1 - a) * student after every optimiser step, a = min(1 - 1/(t + 1), ema_decay)

Defaults (``cfg.mean_teacher``) and where they come from:

* ``ema_decay=0.99``, ``consistency=0.1``, input noise ``clamp(0.1 * randn, -0.2, 0.2)`` and the EMA
  warm-up ``a = min(1 - 1/(step + 1), decay)`` (step = 0-based index of the step just taken, so the
  first update copies the student): SSL4MIS, Luo et al., github.com/HiLab-git/SSL4MIS,
  ``train_mean_teacher_2D.py``; the sigmoid ramp-up ``exp(-5 (1 - t)^2)``: Laine & Aila 2017 via
  Tarvainen & Valpola 2017. The ramp LENGTH is ``rampup_fraction`` of the run (SSL4MIS ramps over
  200 "epochs" of 150 iterations = its whole 30k-iteration run, and also zeroes the term for the
  first 1000 iterations; neither is reproduced here).
* Supervised part: ``supervised_loss`` with ``cfg.semicml`` bce/dice weights (the paper's
  10 BCE + 7 Dice), so every baseline uses the same supervised loss as Semi-CML.
* Noise on both student and teacher inputs, independently drawn (Tarvainen & Valpola; SSL4MIS
  feeds the student the clean batch). Labelled and noisy unlabelled slices go through the student
  in one forward pass (shared BatchNorm batch statistics, as in SSL4MIS).

Teacher mode: SSL4MIS runs its EMA teacher in train mode (dropout on AND BatchNorm on batch
statistics, which also overwrites the teacher's running statistics at every forward). Here the
teacher runs with ``enable_mc_dropout`` (dropout on, BatchNorm on running statistics) under
``no_grad``, so its forward changes nothing; its running statistics are the EMA of the student's,
because ``blend_`` averages float buffers as well as parameters.

Prediction: ``predictors()`` returns the students (``predict_with_teacher = False``), as SSL4MIS
validates and saves the student. The EMA teacher is often slightly better; a subclass with
``predict_with_teacher = True`` evaluates the teachers instead.

Engine contract: ``after_step(iteration)`` must be called after every ``optimizer.step()`` with the
0-based index of that step (the ``iteration`` given to ``train_step``); it performs the EMA update.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn

from ..losses import mutual_mse, sigmoid_rampup
from .base import Batch, Method, MethodContext, register
from ..models.modes import enable_mc_dropout, modes_restored
from .teachers import blend_, frozen_copy


@contextmanager
def mc_dropout_mode(net: nn.Module) -> Iterator[nn.Module]:
    """Dropout on, BatchNorm frozen (running stats) inside the block; the previous mode after it."""
    with modes_restored(net):
        enable_mc_dropout(net)
        yield net


@register
class MeanTeacher(Method):
    name = "mean-teacher"
    multi_modal = False
    predict_with_teacher = False

    def __init__(self, ctx: MethodContext):
        super().__init__(ctx)
        # Outside ``students``: no optimiser, no gradient (frozen_copy sets requires_grad=False).
        self.teachers = nn.ModuleDict({k: frozen_copy(net) for k, net in self.students.items()})

    # -- pieces shared with UA-MT -------------------------------------------------------------
    def noisy(self, x: torch.Tensor) -> torch.Tensor:
        mt = self.cfg.mean_teacher
        return x + torch.clamp(torch.randn_like(x) * mt.noise_std, -mt.noise_clip, mt.noise_clip)

    def consistency_weight(self, iteration: int) -> float:
        mt = self.cfg.mean_teacher
        return mt.consistency * sigmoid_rampup(iteration, mt.rampup_fraction * self.ctx.total_iterations)

    @torch.no_grad()
    def teacher_probs(self, key: str, x_u: torch.Tensor) -> torch.Tensor:
        """sigmoid(teacher(x_u + noise)) in MC-dropout mode, detached, float32."""
        teacher = self.teachers[key]
        with mc_dropout_mode(teacher):
            return torch.sigmoid(teacher(self.noisy(x_u)).float())

    def consistency(self, key: str, x_u: torch.Tensor, p_student: torch.Tensor,
                    iteration: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Unsupervised term of one modality and diagnostics to log (UA-MT overrides this)."""
        return mutual_mse(p_student, self.teacher_probs(key, x_u)), {}

    # -- the interface ------------------------------------------------------------------------
    def train_step(self, batch: Batch, iteration: int) -> dict[str, torch.Tensor]:
        y = self.target(batch["label_l"])
        n_lab = y.shape[0]
        weight = self.consistency_weight(iteration)
        losses: dict[str, torch.Tensor] = {}
        total = 0.0
        for i, m in enumerate(self.ctx.modalities):
            key = str(i)
            x_l, x_u = self.channel(batch["images_l"], i), self.channel(batch["images_u"], i)
            logits = self.students[key](torch.cat([x_l, self.noisy(x_u)])).float()
            losses[f"sup/{m}"] = self.supervised(logits[:n_lab], y)
            p_student = torch.sigmoid(logits[n_lab:])
            losses[f"consistency/{m}"], extras = self.consistency(key, x_u, p_student, iteration)
            losses.update({f"{name}/{m}": value.detach() for name, value in extras.items()})
            total = total + losses[f"sup/{m}"] + weight * losses[f"consistency/{m}"]
        losses["consistency_weight"] = torch.tensor(weight)
        losses["loss"] = total
        return losses

    @torch.no_grad()
    def after_step(self, iteration: int) -> None:
        alpha = self.ema_alpha(iteration)
        for key, student in self.students.items():
            blend_(self.teachers[key], student, alpha)

    def ema_alpha(self, iteration: int) -> float:
        return min(1.0 - 1.0 / (iteration + 1), self.cfg.mean_teacher.ema_decay)

    def predictors(self) -> dict[str, nn.Module]:
        nets = self.teachers if self.predict_with_teacher else self.students
        return {m: nets[str(i)] for i, m in enumerate(self.ctx.modalities)}
