"""Which networks a fused prediction trusts, channel by channel: chosen on the validation cases.

A plain mean of two networks is worse than the better one where the other is weak: on BraTS (issue
11) T1ce alone barely sees oedema, so the mean of T2 and T1ce lost 0.11 whole-tumour Dice against
T2 alone over 16 cross-validated patients. At training end, for every set of modalities that can
be fused and every output channel (one for a binary target, one per region), the candidates are the
mean of the set and each member alone; the best mean validation Dice (thresholded, before
post-processing) wins, and a single network must beat the mean by more than ``DICE_TOLERANCE`` (the
mean averages out more noise, and two validation patients are few). nnU-Net picks between single
configurations and their ensemble on validation the same way.

The choice is stored as one weight per modality per channel (each channel's weights sum to 1) in
``run.json: postprocessing_fused[<set>]["weights"]``; ``predict --modality a,b`` applies it. Runs
trained before that record existed fuse with the plain mean, as they always did.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from ..evaluation.metrics import dice_score
from .postprocess import DICE_TOLERANCE

__all__ = ["MEAN", "choose_weights", "weighted_sum"]

MEAN = "mean"


def weighted_sum(maps: Mapping[str, np.ndarray], weights: Mapping[str, Sequence[float]],
                 channel_axis: int | None) -> np.ndarray:
    """sum over modalities of weight x map, per channel. ``maps``: modality -> probabilities of one
    shape; ``weights``: modality -> one weight per channel; ``channel_axis``: None for a map with
    no channel axis (a binary target's single weight). float32 result."""
    total = None
    for m, p in maps.items():
        w = np.asarray(weights[m], dtype=np.float64)
        if channel_axis is None:
            if w.size != 1:
                raise ValueError(f"{m}: {w.size} channel weights for a map without channels")
            term = p.astype(np.float64) * float(w[0])
        else:
            if w.size != p.shape[channel_axis]:
                raise ValueError(f"{m}: {w.size} channel weights for {p.shape[channel_axis]} channels")
            shape = [1] * p.ndim
            shape[channel_axis] = w.size
            term = p.astype(np.float64) * w.reshape(shape)
        total = term if total is None else total + term
    if total is None:
        raise ValueError("no probability map to fuse")
    return total.astype(np.float32)


def choose_weights(val_probs: Mapping[str, Sequence[np.ndarray]], labels: Sequence[np.ndarray],
                   threshold: float = 0.5) -> dict:
    """``val_probs``: modality -> per validation case (Z, C, H, W) probabilities on one grid;
    ``labels``: per case (Z, C, H, W) masks. Returns ``{"weights": {modality: [w per channel]},
    "chosen": [candidate per channel], "dice": [{candidate: mean val Dice} per channel]}``."""
    mods = list(val_probs)
    if len(mods) < 2 or not labels:
        raise ValueError("choosing fusion weights needs two or more modalities and a validation case")
    candidates = [MEAN, *mods]
    weights: dict[str, list[float]] = {m: [] for m in mods}
    chosen: list[str] = []
    scores: list[dict[str, float]] = []
    for c in range(labels[0].shape[1]):
        dice = {}
        for cand in candidates:
            per_case = []
            for i, y in enumerate(labels):
                if cand == MEAN:
                    p = np.mean([val_probs[m][i][:, c] for m in mods], axis=0)
                else:
                    p = val_probs[cand][i][:, c]
                per_case.append(dice_score(p > threshold, y[:, c]))
            dice[cand] = float(np.mean(per_case))
        best = max(dice.values())
        pick = MEAN if dice[MEAN] >= best - DICE_TOLERANCE else max(mods, key=lambda m: dice[m])
        for m in mods:
            weights[m].append(1.0 / len(mods) if pick == MEAN else float(m == pick))
        chosen.append(pick)
        scores.append(dice)
    return {"weights": weights, "chosen": chosen, "dice": scores}
