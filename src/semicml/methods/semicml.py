"""Semi-CML (stage 1): contrastive mutual learning between the modalities' networks.

    L1 = sum_m Lsup(p_m^lab, y) + lambda_asc * ASC(p^unl of every modality pair)
         + w(t) * MSE(p^unl of every modality pair),   w(t) = exp(-5 (1 - t/T)^2)

ASC (area-similarity contrastive loss) pulls the modalities' predictions of the same slice
together and pushes predictions of different slices apart, so the networks cannot agree on a
trivial map. Each modality also keeps a best-model-averaged teacher (BMA, driven by VALIDATION
Dice) so that PReL can start from this stage, in the same run or from a saved one.
"""

from __future__ import annotations

from itertools import combinations

import torch
from torch import nn

from ..losses import multi_asc_loss, mutual_mse, sigmoid_rampup
from .base import Batch, Method, MethodContext, register
from .teachers import BestModelAverage, frozen_copy


@register
class SemiCML(Method):
    name = "semicml"
    multi_modal = True
    use_asc = True
    use_mse = True
    similarity: str | None = None  # None: from config

    def __init__(self, ctx: MethodContext):
        super().__init__(ctx)
        if len(ctx.modalities) < 2:
            raise ValueError(f"{self.name} needs at least two modalities")
        self.teachers = nn.ModuleDict({k: frozen_copy(net) for k, net in self.students.items()})
        self.bma = {k: BestModelAverage(self.cfg.prel.pool_size, self.cfg.prel.max_alpha) for k in self.students}
        self.best_val: dict[str, float] = {}
        # prel.from_best: each student's best-validation weights (CPU copies), for PReL to start from
        self.best_states: dict[str, dict[str, torch.Tensor]] = {}
        self.best_val_regions: dict[str, dict[str, float]] = {}  # region targets: modality -> region -> Dice

    def forward_all(self, batch: Batch) -> tuple[list[torch.Tensor], int]:
        """Logits of every modality's network on labelled + unlabelled slices in one pass."""
        x = torch.cat([batch["images_l"], batch["images_u"]])
        logits = [self.students[str(i)](self.channel(x, i)).float() for i in range(len(self.ctx.modalities))]
        return logits, batch["images_l"].shape[0]

    def semicml_losses(self, batch: Batch, iteration: int) -> dict[str, torch.Tensor]:
        sc = self.cfg.semicml
        logits, n_lab = self.forward_all(batch)
        y = self.target(batch["label_l"])
        losses: dict[str, torch.Tensor] = {}
        for m, lg in zip(self.ctx.modalities, logits):
            losses[f"sup/{m}"] = self.supervised(lg[:n_lab], y)
        total = sum(losses.values())
        probs_u = [torch.sigmoid(lg[n_lab:]) for lg in logits]
        if self.use_asc and sc.asc_weight > 0:
            losses["asc"] = multi_asc_loss(probs_u, similarity=self.similarity or sc.similarity,
                                           temperature=sc.temperature, channels=sc.asc_channels)
            total = total + sc.asc_weight * losses["asc"]
        if self.use_mse and sc.mse_weight > 0:
            epoch = iteration / self.ctx.iterations_per_epoch
            weight = sc.mse_weight * sigmoid_rampup(epoch, sc.mse_rampup_epochs)
            pairs = list(combinations(probs_u, 2))
            losses["mse"] = sum(mutual_mse(a, b) for a, b in pairs) / len(pairs)
            total = total + weight * losses["mse"]
        losses["loss"] = total
        return losses

    def train_step(self, batch: Batch, iteration: int) -> dict[str, torch.Tensor]:
        return self.semicml_losses(batch, iteration)

    def offer_to_bma(self, iteration: int) -> bool:
        """Early, still-chaotic models are kept out of the teacher (reference: epochs <= 10 of 81)."""
        return self.ctx.progress(iteration) >= self.cfg.prel.bma_from

    def on_validation(self, iteration: int, val_dice: dict[str, float],
                      region_dice: dict[str, dict[str, float]] | None = None) -> None:
        offer = self.offer_to_bma(iteration)
        for i, m in enumerate(self.ctx.modalities):
            if m in val_dice:
                key = str(i)
                if offer:
                    self.bma[key].update(val_dice[m], self.teachers[key], self.students[key])
                if self.keeps_best_states() and val_dice[m] > self.best_val.get(m, float("-inf")):
                    # strictly better, as the trainer's saved weights: the same network
                    self.best_states[key] = {k: v.detach().to("cpu", copy=True)
                                             for k, v in self.students[key].state_dict().items()}
                self.best_val[m] = max(self.best_val.get(m, float("-inf")), val_dice[m])
            for r, d in (region_dice or {}).get(m, {}).items():
                best = self.best_val_regions.setdefault(m, {})
                best[r] = max(best.get(r, float("-inf")), d)

    def keeps_best_states(self) -> bool:
        """Whether the students' best-validation weights are kept (only semicml-prel's stage 1 needs them)."""
        return False

    def extra_state(self) -> dict:
        state = {"bma": {k: b.state() for k, b in self.bma.items()}, "best_val": dict(self.best_val)}
        if self.best_val_regions:
            state["best_val_regions"] = {m: dict(d) for m, d in self.best_val_regions.items()}
        if self.best_states:
            state["best_states"] = self.best_states
        return state

    def load_extra_state(self, state: dict) -> None:
        for k, s in state.get("bma", {}).items():
            self.bma[k].load(s)
        self.best_val = dict(state.get("best_val", {}))
        self.best_val_regions = {m: dict(d) for m, d in state.get("best_val_regions", {}).items()}
        self.best_states = {k: dict(v) for k, v in state.get("best_states", {}).items()}


# Ablations of the paper (each differs from Semi-CML in one switch).
@register
class SemiCMLMSEOnly(SemiCML):
    """Mutual MSE term only, no ASC."""

    name = "semicml-mse-only"
    use_asc = False


@register
class SemiCMLASCOnly(SemiCML):
    """ASC only, no MSE mutual term."""

    name = "semicml-asc-only"
    use_mse = False


@register
class SemiCMLCosine(SemiCML):
    """ASC with cosine instead of soft-Dice similarity."""

    name = "semicml-cosine"
    similarity = "cosine"
