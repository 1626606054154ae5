"""PReL (stage 2): soft pseudo-label re-learning from the stronger modality's teacher.

After Semi-CML one modality segments better. Its best-model-averaged teacher produces soft
labels ``y = mean_t sigmoid(f_T(x_strong + n_t))`` (MC dropout, clipped input noise, no
threshold) and every weaker network re-learns from them on ITS OWN modality of the same slice:

    (1 - alpha) * (10 BCE + 7 Dice)(p_weak, y) + alpha * ASC(y, p_weak)

The stronger network may be refined the same way on its own teacher's labels. The teacher
modality is the one with the best VALIDATION Dice after stage 1 unless the user names it; the
choice is recorded in run.json. Teachers never get gradient.

Region targets (one sigmoid channel per region): with ``prel.teacher_per_region`` each region's
soft labels come from the modality with the best validation Dice on that region (T2 sees the
oedema of the whole tumour, T1ce the enhancing rim); a network re-learns only the channels whose
teacher is another modality's, and its own channels from ``refine_teacher_from`` like the single
teacher's network. The per-region choice is recorded in run.json (``teacher.per_region``).

``semicml-prel`` runs stage 1 then stage 2 in one run (switch at ``prel.start_fraction``);
``prel`` runs stage 2 alone, starting from a stage-1 run given by ``init``.
"""

from __future__ import annotations

import torch

from ..errors import ConfigError
from ..losses import prel_loss
from .base import Batch, MethodContext, register
from .semicml import SemiCML
from .teachers import mc_soft_labels


@register
class SemiCMLPReL(SemiCML):
    name = "semicml-prel"
    uses_every_network = False  # the teacher modality's student rests until prel.refine_teacher_from

    def __init__(self, ctx: MethodContext):
        super().__init__(ctx)
        self.start_iteration = int(round(self.cfg.prel.start_fraction * ctx.total_iterations))
        self.teacher_index: int | None = None
        self.region_teachers: list[int] | None = None  # per output channel, when chosen per region

    def phase(self, iteration: int) -> str:
        return "prel" if iteration >= self.start_iteration else "semicml"

    def lr_scale(self, iteration: int) -> float:
        return self.cfg.prel.lr_scale if iteration >= self.start_iteration else 1.0

    def offer_to_bma(self, iteration: int) -> bool:
        # The teacher is frozen once PReL starts (reference): a teacher that kept averaging the
        # students it teaches would feed their mistakes back. The validation AT the boundary
        # (iteration == start) still scores the end of stage 1.
        return iteration <= self.start_iteration and super().offer_to_bma(iteration)

    def keeps_best_states(self) -> bool:
        return self.cfg.prel.from_best and self.teacher_index is None  # stage 1 only

    def start_from_best(self) -> None:
        """``prel.from_best``: every student resumes from its best-validation stage-1 weights (a
        network never validated keeps its current ones); the copies are then dropped."""
        for key, state in self.best_states.items():
            self.students[key].load_state_dict(state)
        # in the teacher record: saved with it in checkpoints and run.json
        self.ctx.info["teacher"]["students_started_from"] = {
            m: ("best validation" if str(i) in self.best_states else "last") for i, m in enumerate(self.ctx.modalities)}
        self.best_states = {}

    def refines(self, index: int, iteration: int) -> bool:
        """Whether network ``index`` re-learns at ``iteration``: every weaker one always, the
        teacher's own modality only late (reference: from epoch 75 of 81) if enabled."""
        if index != self.teacher_index:
            return True
        return self.refines_own(iteration)

    def refines_own(self, iteration: int) -> bool:
        """Whether a network re-learns the channels its own modality's teacher labels."""
        pc = self.cfg.prel
        return pc.refine_teacher_modality and self.ctx.progress(iteration) >= pc.refine_teacher_from

    def channel_teachers(self) -> list[int]:
        """Teacher modality index of every output channel."""
        return self.region_teachers or [self.teacher_index] * self.ctx.out_channels

    def relearned_channels(self, index: int, iteration: int) -> list[int]:
        """Output channels network ``index`` re-learns at ``iteration`` (one teacher: all or none)."""
        own = self.refines_own(iteration)
        return [c for c, t in enumerate(self.channel_teachers()) if t != index or own]

    def choose_region_teachers(self) -> list[int] | None:
        """Per region, the modality with the best validation Dice on it (``prel.teacher_per_region``
        with a region target and no named teacher); None: one teacher for every channel."""
        regions, mods = self.ctx.regions, self.ctx.modalities
        if not (self.cfg.prel.teacher_per_region and regions and self.cfg.prel.teacher is None):
            return None
        if not all(r in self.best_val_regions.get(m, {}) for m in mods for r in regions):
            return None  # a modality or region never validated: the single teacher decides
        return [max(range(len(mods)), key=lambda i: self.best_val_regions[mods[i]][r]) for r in regions]

    def choose_teacher(self) -> int:
        """Index of the teacher modality: the user's choice, else best validation Dice so far."""
        mods = self.ctx.modalities
        named = self.cfg.prel.teacher
        if named is not None:
            lowered = [m.lower() for m in mods]
            if named.lower() not in lowered:
                raise ConfigError(f"prel.teacher {named!r} is not a trained modality ({', '.join(mods)})")
            index, how = lowered.index(named.lower()), "user"
        elif self.best_val:
            index, how = max(range(len(mods)), key=lambda i: self.best_val.get(mods[i], float("-inf"))), "validation"
        else:
            raise ConfigError("cannot choose the PReL teacher: no validation score yet (validate more often, "
                              "give a val split, or name prel.teacher)")
        for key, bma in self.bma.items():
            if not bma.started:  # never validated: start the teacher from the current weights
                self.teachers[key].load_state_dict(self.students[key].state_dict())
                bma.started = True
        self.ctx.info["teacher"] = {"modality": mods[index], "chosen_by": how,
                                    "val_dice_after_stage1": {m: self.best_val.get(m) for m in mods}}
        if self.ctx.regions:
            self.region_teachers = self.choose_region_teachers()
            per_region = self.region_teachers or [index] * len(self.ctx.regions)
            self.ctx.info["teacher"].update(
                per_region={r: mods[t] for r, t in zip(self.ctx.regions, per_region)},
                per_region_chosen_by="validation, per region" if self.region_teachers else "one teacher",
                val_dice_per_region_after_stage1={m: dict(self.best_val_regions.get(m, {})) for m in mods})
        return index

    def prel_losses(self, batch: Batch, iteration: int) -> dict[str, torch.Tensor]:
        pc, sc = self.cfg.prel, self.cfg.semicml
        x = torch.cat([batch["images_l"], batch["images_u"]])
        teachers = self.channel_teachers()
        soft_of = {t: mc_soft_labels(self.teachers[str(t)], self.channel(x, t), pc.mc_samples, pc.noise_std,
                                     pc.noise_clip) for t in dict.fromkeys(teachers)}
        soft = (soft_of[teachers[0]] if len(soft_of) == 1 else
                torch.cat([soft_of[t][:, c : c + 1] for c, t in enumerate(teachers)], dim=1))
        losses: dict[str, torch.Tensor] = {}
        for i, m in enumerate(self.ctx.modalities):
            chans = self.relearned_channels(i, iteration)
            if not chans:
                continue
            logits = self.students[str(i)](self.channel(x, i)).float()
            mine, target = ((logits, soft) if len(chans) == len(teachers) else
                            (logits[:, chans], soft[:, chans]))
            losses[f"prel/{m}"] = prel_loss(mine, target, alpha=pc.alpha, bce_weight=sc.bce_weight,
                                            dice_weight=sc.dice_weight, similarity=sc.similarity,
                                            temperature=sc.temperature, dice_reduction=sc.dice_reduction,
                                            asc_channels=sc.asc_channels, pos_weight=sc.bce_pos_weight)
            if pc.keep_supervised and batch["images_l"].shape[0] > 0:
                n_lab = batch["images_l"].shape[0]
                losses[f"sup/{m}"] = self.supervised(logits[:n_lab], self.target(batch["label_l"]))
        losses["loss"] = sum(losses.values())  # never empty: every weaker network always re-learns
        return losses

    def train_step(self, batch: Batch, iteration: int) -> dict[str, torch.Tensor]:
        if iteration < self.start_iteration:
            return self.semicml_losses(batch, iteration)
        if self.teacher_index is None:
            self.teacher_index = self.choose_teacher()
            if self.cfg.prel.from_best:
                self.start_from_best()
        return self.prel_losses(batch, iteration)

    def extra_state(self) -> dict:
        state = super().extra_state()
        state["teacher_index"] = -1 if self.teacher_index is None else self.teacher_index
        if self.region_teachers is not None:
            state["region_teachers"] = list(self.region_teachers)
        state["teacher_info"] = self.ctx.info.get("teacher", {})
        return state

    def load_extra_state(self, state: dict) -> None:
        super().load_extra_state(state)
        index = int(state.get("teacher_index", -1))
        self.teacher_index = None if index < 0 else index
        self.region_teachers = state.get("region_teachers")
        if state.get("teacher_info"):
            self.ctx.info["teacher"] = state["teacher_info"]


@register
class PReL(SemiCMLPReL):
    """Stage 2 alone, from a finished stage-1 run (``init``): networks, teachers and scores."""

    name = "prel"
    continues_schedule = True

    def __init__(self, ctx: MethodContext):
        if not ctx.cfg.init:
            raise ConfigError("method 'prel' needs --init RUN (a finished semicml run to start from)")
        super().__init__(ctx)
        self.start_iteration = 0
