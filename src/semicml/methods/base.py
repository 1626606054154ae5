"""The one interface every training method implements, and the registry of methods by name.

A method owns its networks (students, teachers) and turns a batch into losses; it never reads
files, builds optimisers or loops: the engine does that (see ``semicml.engine.trainer``).
Adding a method = one small file that subclasses :class:`Method` and calls :func:`register`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, ClassVar

import torch
from torch import nn

from ..config import TrainConfig
from ..errors import ConfigError
from ..losses import supervised_loss

Batch = dict[str, torch.Tensor]


@dataclass
class MethodContext:
    """What a method may know about the run."""

    cfg: TrainConfig
    modalities: list[str]            # trained modalities, in channel order of the batch
    out_channels: int
    total_iterations: int
    iterations_per_epoch: float      # labelled slices / labelled batch
    device: torch.device
    new_network: Callable[[], nn.Module]
    info: dict = field(default_factory=dict)  # facts a method records for run.json (teacher choice ...)
    # A stage continued from another run (``init``) sits at the end of one longer schedule:
    # iteration ``i`` here is iteration ``schedule_offset + i`` of ``schedule_total``.
    schedule_offset: int = 0
    schedule_total: int | None = None
    # Region targets: the region of each output channel (empty for a binary target).
    regions: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.cfg.compile:
            build = self.new_network

            def compiled() -> nn.Module:
                # Module.compile keeps the module and its state_dict keys (checkpoints unchanged); a
                # deepcopy (teacher) gets its own compiled forward.
                net = build()
                net.compile()
                return net

            self.new_network = compiled

    def progress(self, iteration: int) -> float:
        """Fraction of the whole schedule reached at ``iteration`` (0-based, this run's count)."""
        total = self.schedule_total or self.total_iterations
        return (self.schedule_offset + iteration) / max(total, 1)


class Method(nn.Module):
    """Base class. Subclasses set ``name`` and implement :meth:`train_step`.

    ``self.students`` (ModuleDict keyed by modality index as str) are optimised; anything kept
    outside it (teachers) gets no optimiser and must get no gradient.
    """

    name: ClassVar[str] = ""
    needs_unlabeled: ClassVar[bool] = True
    multi_modal: ClassVar[bool] = False  # True when modalities interact during training
    # With ``init``, a method that is the second stage of another's schedule (PReL) defaults to
    # the rest of that schedule; others start from the init weights with a budget of their own.
    continues_schedule: ClassVar[bool] = False
    # False when a step may leave a student without gradient (PReL: the teacher modality's network
    # until late); DDP must then search for unused parameters every step.
    uses_every_network: ClassVar[bool] = True

    def __init__(self, ctx: MethodContext):
        super().__init__()
        self.ctx = ctx
        self.cfg = ctx.cfg
        self.students = nn.ModuleDict({str(i): ctx.new_network() for i in range(len(ctx.modalities))})

    # -- helpers for subclasses --------------------------------------------------------------
    def channel(self, images: torch.Tensor, index: int) -> torch.Tensor:
        """(B, M * g, H, W) batch -> (B, g, H, W) input of modality ``index``: g = 1, or the
        2k + 1 slices of its through-plane context (modality-major, :mod:`semicml.data.context`)."""
        group = images.shape[1] // len(self.ctx.modalities)
        return images[:, index * group : (index + 1) * group]

    def target(self, label: torch.Tensor) -> torch.Tensor:
        """(B, H, W) stored label -> (B, C, H, W) float target: the foreground (one channel), or
        one channel per region of a region target (bit k of the stored label = region k)."""
        if self.ctx.out_channels == 1:
            return (label > 0).float().unsqueeze(1)
        return torch.stack([(label >> k) & 1 for k in range(self.ctx.out_channels)], dim=1).float()

    def supervised(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The configured supervised loss (10 BCE + 7 Dice by default), shared by every method."""
        sc = self.cfg.semicml
        return supervised_loss(logits, target, bce_weight=sc.bce_weight, dice_weight=sc.dice_weight,
                               dice_reduction=sc.dice_reduction, pos_weight=sc.bce_pos_weight)

    def train(self, mode: bool = True) -> "Method":
        """Train mode, with the students' dropout off unless ``model.student_dropout`` (reference).

        Teachers keep their dropout modules: their Monte-Carlo passes switch them on explicitly.
        """
        super().train(mode)
        if mode and not self.cfg.model.student_dropout:
            for module in self.students.modules():
                if isinstance(module, nn.modules.dropout._DropoutNd):
                    module.eval()
        return self

    # -- the interface -----------------------------------------------------------------------
    def train_step(self, batch: Batch, iteration: int) -> dict[str, torch.Tensor]:
        """Losses for one batch; ``"loss"`` is what the engine back-propagates."""
        raise NotImplementedError

    def forward(self, batch: Batch, iteration: int) -> dict[str, torch.Tensor]:
        """:meth:`train_step`, so that the engine can run a step through DistributedDataParallel."""
        return self.train_step(batch, iteration)

    def predictors(self) -> dict[str, nn.Module]:
        """Modality name -> the network that segments that modality alone."""
        return {m: self.students[str(i)] for i, m in enumerate(self.ctx.modalities)}

    def trainable_parameters(self) -> list[nn.Parameter]:
        return list(self.students.parameters())

    def after_step(self, iteration: int) -> None:
        """Called after each optimiser step (e.g. EMA teacher update)."""

    def on_validation(self, iteration: int, val_dice: dict[str, float],
                      region_dice: dict[str, dict[str, float]] | None = None) -> None:
        """Called after each validation (e.g. best-model averaging of teachers). ``val_dice``:
        modality -> mean Dice (over regions for a region target); ``region_dice``: modality ->
        region -> Dice (region targets only)."""

    def phase(self, iteration: int) -> str:
        return self.name

    def lr_scale(self, iteration: int) -> float:
        """Multiplier of the scheduled learning rate at ``iteration`` (a stage may train gentler)."""
        return 1.0

    def extra_state(self) -> dict:
        """Non-parameter state to checkpoint (tensors, numbers, strings, lists, dicts only)."""
        return {}

    def load_extra_state(self, state: dict) -> None:
        pass


METHODS: dict[str, type[Method]] = {}


def register(cls: type[Method]) -> type[Method]:
    METHODS[cls.name] = cls
    return cls


def get_method(name: str) -> type[Method]:
    from . import _all  # noqa: F401  (imports every method module so they register)

    if name not in METHODS:
        raise ConfigError(f"unknown method {name!r} (choose from {', '.join(sorted(METHODS))})")
    return METHODS[name]
