"""Validation scores and the post-processing choice, per output channel (region targets).

A binary target has one channel: the foreground. A region target has one sigmoid channel per
region (nested BraTS regions: wt, tc, et); each is scored and post-processed on its own, and
model selection uses the mean Dice over the regions.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import nn

from ..data.store import SliceStore
from ..evaluation.metrics import dice_score
from ..hardware import Precision
from ..inference.fusion import choose_fused_postprocessing
from ..inference.postprocess import check_spec, choose_postprocess
from ..inference.predictor import predict_planes

__all__ = ["case_channel_dice", "channel_probabilities", "choose_channel_postprocess", "choose_postprocessing",
           "region_means", "val_probabilities"]


def channel_probabilities(net: nn.Module, planes: np.ndarray, channels: int, device: torch.device,
                          precision: Precision, channels_last: bool) -> np.ndarray:
    """(Z, H, W) slices of one modality -> (Z, C, H, W) probabilities (C = 1 for a binary target)."""
    probs = predict_planes(net, planes, device, precision, channels_last=channels_last, channels=channels)
    return probs[:, None] if channels == 1 else probs


def case_channel_dice(store: SliceStore, case: str, predictors: Mapping[str, nn.Module], device: torch.device,
                      precision: Precision, channels_last: bool) -> dict[str, list[float]]:
    """Modality -> 3D Dice of every output channel on one val case, in the stored slice frame."""
    images = store.images(case)
    ref = store.label_channels(store.label(case))  # (Z, C, H, W) bool
    out: dict[str, list[float]] = {}
    for m, net in predictors.items():
        probs = channel_probabilities(net, images[:, store.modality_index(m)], store.n_classes, device, precision,
                                      channels_last)
        out[m] = [dice_score(probs[:, c] > 0.5, ref[:, c]) for c in range(ref.shape[1])]
    return out


def region_means(per_case: Mapping[str, Mapping[str, Sequence[float]]], cases: Sequence[str],
                 modalities: Sequence[str], regions: Sequence[str]) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """Per-case channel Dice -> (modality -> mean over cases and channels, modality -> region ->
    mean over cases; empty for a binary target). Means in the order of ``cases``, so the number
    does not depend on how the cases were shared among ranks."""
    mean: dict[str, float] = {}
    by_region: dict[str, dict[str, float]] = {}
    for m in modalities:
        table = np.asarray([per_case[c][m] for c in cases], dtype=np.float64)  # (cases, C)
        if table.shape[1] == 1:
            mean[m] = float(np.mean(table[:, 0]))  # a binary target: exactly the previous number
            continue
        per_region = table.mean(axis=0)
        mean[m] = float(per_region.mean())
        by_region[m] = {r: float(d) for r, d in zip(regions, per_region)}
    return mean, by_region


def choose_channel_postprocess(probs: Sequence[np.ndarray], labels: Sequence[np.ndarray],
                               spacings: Sequence[Sequence[float]], regions: Sequence[str]) -> dict:
    """Post-processing chosen on validation for each channel: ``probs`` / ``labels`` per case
    (Z, C, H, W). Binary (no ``regions``): :func:`choose_postprocess` as it always was. Regions:
    ``{"choice": {region: spec}, "candidates": {region: scores}}``."""
    if not regions:
        return choose_postprocess([p[:, 0] for p in probs], [y[:, 0] for y in labels], spacings)
    picks = {r: choose_postprocess([p[:, c] for p in probs], [y[:, c] for y in labels], spacings)
             for c, r in enumerate(regions)}
    return {"choice": {r: v["choice"] for r, v in picks.items()},
            "candidates": {r: v["candidates"] for r, v in picks.items()}}


def val_probabilities(store: SliceStore, cases: Sequence[str], nets: Mapping[str, nn.Module], device: torch.device,
                      precision: Precision) -> tuple[dict[str, list[np.ndarray]], list[np.ndarray], list[tuple]]:
    """Every network on every val case, in the stored frame: (modality -> (Z, C, H, W)
    probabilities per case, labels (Z, C, H, W) per case, stored spacing per case in mm)."""
    labels = [store.label_channels(store.label(c)) for c in cases]
    spacings = [store.cases[c].stored_spacing for c in cases]  # of the stored planes (resampled, resized)
    probs: dict[str, list[np.ndarray]] = {m: [] for m in nets}
    for case in cases:  # one case's volume in memory at a time
        images = store.images(case)
        for m, net in nets.items():
            probs[m].append(channel_probabilities(net, images[:, store.modality_index(m)], store.n_classes, device,
                                                  precision, False))
    return probs, labels, spacings


def choose_postprocessing(store: SliceStore, cases: Sequence[str], nets: Mapping[str, nn.Module | None], device: torch.device,
                          precision: Precision, regions: Sequence[str], fixed: str | None = None,
                          fusion_weights: bool = True) -> tuple[dict[str, dict], dict[str, dict]]:
    """The end-of-training choices, nnU-Net style, on the val ``cases`` with the saved networks:
    (modality -> ``{"choice", "candidates", "chosen_by"}``, the fused prediction's record per set
    of modalities). ``fixed``: the configured post-processing instead of a search (no network is
    run: ``nets`` may map to None); ``fusion_weights=False``: the plain mean for the fused map (as before weights existed)."""
    if fixed is not None:
        spec = check_spec(fixed)
        choices = {m: {"choice": {r: spec for r in regions} if regions else spec, "chosen_by": "config"}
                   for m in nets}
        return choices, choose_fused_postprocessing(dict.fromkeys(nets, []), [], [], fixed=fixed)
    probs, labels, spacings = val_probabilities(store, cases, nets, device, precision)
    choices = {m: {**choose_channel_postprocess(probs[m], labels, spacings, regions), "chosen_by": "validation"}
               for m in nets}
    if not labels:
        return choices, {}
    fused = choose_fused_postprocessing(probs, labels, spacings, weights=fusion_weights,
                                        choose=lambda p, y, sp: choose_channel_postprocess(p, y, sp, regions))
    return choices, fused
