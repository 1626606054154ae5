"""Connected-component post-processing of a predicted 3D mask, chosen on validation.

A 2D network segments every slice on its own, so a false positive on a healthy slice becomes an
island far from the tumour. Candidates (nnU-Net decides "keep the largest component" on
validation the same way):

    none          the mask as predicted
    min-size:V    remove 3D components (26-connected) smaller than V mm^3, except the largest
    largest       keep only the largest component
    near:D        keep the largest component and every component within D mm of it (a far island
                  goes, a second lobe of the same tumour beside it stays, whatever its size)
    near:D+min-size:V   both: what lies within D mm AND holds at least V mm^3 (the largest always)

No candidate ever empties a non-empty prediction: a small tumour that is the only (or the
largest) thing found survives every size threshold.

Keeping the largest component alone is risky: when it is a false one the whole tumour is lost,
which is why the choice is made on validation data, per modality, and recorded with the weights.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from ..evaluation.metrics import case_metrics, count_components
# The grammar (which strings are candidates) is shared with the config; re-exported here.
from ..postprocess_spec import LARGEST, NEAR_PREFIX, NONE, check_spec, spec_parts

__all__ = ["CANDIDATES", "LARGEST", "NONE", "apply_postprocess", "check_spec", "choose_postprocess", "components"]

# Sizes in mm^3 (about voxels at 1 mm): a small enhancing focus is ~100 mm^3, islands seen on
# unseen BraTS scans ranged from a few voxels to a few thousand.
# Mildest first (a tie goes to the earliest): near:D keeps more the larger D, and everything it
# keeps includes the largest component, so `largest` is the harshest. near:D came from an offline
# screen of 4 CV folds (benchmarks/results/brats18-cv/postprocess-screen.txt): it cut a far island
# that size alone could not judge.
# near:D+min-size:V also drops the small fragments that near:D keeps beside the tumour: on 16
# finished 2 mm CV runs it chose the same Dice and HD95 with fewer components per volume (T2 2.16 ->
# 1.86, T1ce 1.80 -> 1.52; benchmarks/results/brats18-cv-2mm/postprocess-combo-screen/).
CANDIDATES: tuple[str, ...] = (NONE, "min-size:100", "min-size:1000", "min-size:5000",
                               *(f"near:{d}{extra}" for d in (50, 30, 20, 10)
                                 for extra in ("", "+min-size:100", "+min-size:1000")),
                               LARGEST)
# Candidates whose validation Dice is within this of the best are equal; among them the lowest
# HD95 wins (far islands cost little Dice but are what a reader sees first), HD95s within
# HD95_TOLERANCE_MM (a voxel at BraTS's 1 mm) being equal too; then the fewest components (what
# the reader counts), then the mildest candidate.
DICE_TOLERANCE = 0.005
HD95_TOLERANCE_MM = 1.0


def components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """26-connected 3D components: (labels, count)."""
    return ndimage.label(mask > 0, structure=np.ones((3, 3, 3), dtype=bool))


def apply_postprocess(mask: np.ndarray, spec: str, spacing: Sequence[float]) -> np.ndarray:
    """``mask`` (3D, nonzero = foreground) after ``spec``; the dtype and shape are kept."""
    parts = spec_parts(spec)  # validates too
    if spec == NONE or not mask.any():
        return mask
    labels, n = components(mask)
    if n <= 1:
        return mask
    sizes = np.bincount(labels.ravel())[1:]
    largest = 1 + int(np.argmax(sizes))
    keep = np.zeros(n + 1, dtype=bool)
    if spec == LARGEST:
        keep[largest] = True
    else:
        keep[1:] = True
        volumes_mm3 = sizes * float(np.prod(spacing))
        for prefix, value in parts:  # every part keeps the largest, so the order does not matter
            if prefix == NEAR_PREFIX:
                keep &= _near_largest(labels, n, largest, value, spacing)
            else:
                keep[1:] &= volumes_mm3 >= value
        keep[largest] = True
    return np.where(keep[labels], mask, np.zeros_like(mask))


def _near_largest(labels: np.ndarray, n: int, largest: int, mm: float, spacing: Sequence[float]) -> np.ndarray:
    """Per component label 0..n: kept (the largest, and every component whose nearest voxel lies
    within ``mm`` of it, in world millimetres). The distance map covers only the largest
    component's box grown by ``mm`` (nothing outside it can be that close): ~10x less work on a
    whole BraTS volume."""
    sampling = [float(s) for s in spacing]
    box = ndimage.find_objects((labels == largest).astype(np.int8))[0]
    grown = tuple(slice(max(0, s.start - int(np.ceil(mm / sp)) - 1), min(size, s.stop + int(np.ceil(mm / sp)) + 1))
                  for s, sp, size in zip(box, sampling, labels.shape))
    crop = labels[grown]
    distance = ndimage.distance_transform_edt(crop != largest, sampling=sampling)
    present = np.unique(crop)
    present = present[present > 0]
    nearest = np.full(n + 1, np.inf)
    nearest[present] = ndimage.minimum(distance, labels=crop, index=present)
    keep = nearest <= mm
    keep[0] = False
    return keep


def choose_postprocess(probabilities: Sequence[np.ndarray], references: Sequence[np.ndarray],
                       spacings: Sequence[Sequence[float]], threshold: float = 0.5,
                       candidates: Sequence[str] = CANDIDATES) -> dict:
    """Pick the candidate with the best mean validation Dice; among those within ``DICE_TOLERANCE``
    of it, the lowest mean HD95 (within ``HD95_TOLERANCE_MM`` counts as equal), then the fewest
    mean components, then the earliest, i.e. the mildest, candidate.

    Returns ``{"choice": spec, "candidates": {spec: {"dice": .., "hd95": .., "components": ..}}}``.
    """
    if not probabilities:
        return {"choice": NONE, "candidates": {}, "reason": "no validation case"}
    scores: dict[str, dict[str, float]] = {}
    for spec in candidates:
        rows = []
        for prob, ref, spacing in zip(probabilities, references, spacings):
            mask = apply_postprocess(prob > threshold, spec, spacing)
            m = case_metrics(mask, ref, spacing)
            rows.append((m["dice"], m["hd95"], m["components"]))
        dice, hd95, comps = (float(np.mean(col)) for col in zip(*rows))
        scores[spec] = {"dice": dice, "hd95": hd95, "components": comps}
    best_dice = max(s["dice"] for s in scores.values())
    close = [spec for spec in candidates if scores[spec]["dice"] >= best_dice - DICE_TOLERANCE]
    best_hd95 = min(scores[spec]["hd95"] for spec in close)
    near = [spec for spec in close if scores[spec]["hd95"] <= best_hd95 + HD95_TOLERANCE_MM]
    choice = min(near, key=lambda spec: (scores[spec]["components"], candidates.index(spec)))
    return {"choice": choice, "candidates": scores}
