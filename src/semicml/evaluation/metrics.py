"""Per-case 3D segmentation metrics: Dice, Jaccard, HD95, ASD, precision, sensitivity.

Shape contract
--------------
``case_metrics(pred, ref, spacing)`` takes two 3D masks of the same shape (nonzero = foreground)
and the voxel spacing in millimetres, one value per array axis, in array-axis order. Distances
are returned in millimetres.

``components`` is the number of 26-connected components of the prediction: a 2D network that
fires on healthy slices leaves islands far from the tumour, which Dice barely sees.

Overlap metrics (counted on voxels)::

    dice        = 2 |P & R| / (|P| + |R|)
    jaccard     = |P & R| / |P | R|
    precision   = TP / (TP + FP)      (positive predictive value)
    sensitivity = TP / (TP + FN)      (recall)

Surface-distance metrics use MONAI's maintained implementation
(``monai.metrics.compute_hausdorff_distance`` / ``compute_average_surface_distance``) with
Euclidean distance scaled by ``spacing``. MONAI's conventions, which this module inherits:

- The surface of a mask is its set of *surface voxels*: foreground voxels removed by one binary
  erosion with the 6-connected cross (a foreground voxel on the volume border is a surface voxel).
  Distances are measured between the centres of surface voxels, so a solid object shifted by
  ``k`` voxels along axis ``i`` has HD95 = ``k * spacing[i]``, and two single voxels have
  HD95 = ASD = the Euclidean distance between their centres in mm.
- HD95 = max(q95(d(P->R)), q95(d(R->P))), where q95 is ``torch.quantile`` with linear
  interpolation over the directed distances of each surface voxel. It is not the 95th
  percentile of the pooled distances.
- ASD is symmetric: the mean of the pooled directed distances of both surfaces,
  ``(sum d(P->R) + sum d(R->P)) / (|dP| + |dR|)``, not the average of the two directed means.

Empty masks
-----------
One rule, chosen so that an empty mask can never flatter a model (the reference code scored an
empty prediction as HD95 = 0, the best value). It is :data:`EMPTY_MASK_RULE`:

- both masks empty (correctly predicted absence): dice = jaccard = precision = sensitivity = 1,
  hd95 = asd = 0;
- exactly one mask empty: dice = jaccard = precision = sensitivity = 0, and hd95 = asd = the
  diagonal of the volume in mm, ``sqrt(sum((shape_i * spacing_i) ** 2))``, an upper bound on any
  distance inside the volume. Precision is undefined for an empty prediction and sensitivity is
  undefined for an empty reference; both are scored 0.

Such cases are always counted in means; they are never dropped or turned into NaN.
``dice_score`` (the fast numpy Dice used for validation during training) follows the same rule.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence

import numpy as np
from scipy import ndimage

METRICS: tuple[str, ...] = ("dice", "jaccard", "hd95", "asd", "precision", "sensitivity", "components")

# Direction of improvement, for reports, model ranking and plots.
HIGHER_IS_BETTER: Mapping[str, bool] = {
    "dice": True,
    "jaccard": True,
    "hd95": False,
    "asd": False,
    "precision": True,
    "sensitivity": True,
    "components": False,
}

# Metrics measured in millimetres; the others are unitless fractions in [0, 1].
DISTANCE_METRICS: frozenset[str] = frozenset({"hd95", "asd"})

EMPTY_MASK_RULE: str = (
    "both masks empty: dice=jaccard=precision=sensitivity=1, hd95=asd=0; "
    "exactly one mask empty: dice=jaccard=precision=sensitivity=0, hd95=asd=volume diagonal in mm "
    "(sqrt(sum((shape_i*spacing_i)^2))); such cases are counted, never dropped"
)

# The two halves of the rule as data, so code and docs cannot drift apart. ``None`` marks the
# distance metrics whose one-empty value depends on the volume (its diagonal).
_BOTH_EMPTY: Mapping[str, float] = {
    "dice": 1.0,
    "jaccard": 1.0,
    "hd95": 0.0,
    "asd": 0.0,
    "precision": 1.0,
    "sensitivity": 1.0,
    "components": 0.0,
}
_ONE_EMPTY_OVERLAP: Mapping[str, float] = {
    "dice": 0.0,
    "jaccard": 0.0,
    "precision": 0.0,
    "sensitivity": 0.0,
}


def _as_bool(mask: np.ndarray) -> np.ndarray:
    mask = np.asarray(mask)
    return mask if mask.dtype == np.bool_ else mask != 0


def _check_pair(pred: np.ndarray, ref: np.ndarray, ndim: int | None) -> tuple[np.ndarray, np.ndarray]:
    pred, ref = _as_bool(pred), _as_bool(ref)
    if pred.shape != ref.shape:
        raise ValueError(f"pred and ref must have the same shape, got {pred.shape} and {ref.shape}")
    if ndim is not None and pred.ndim != ndim:
        raise ValueError(f"expected {ndim}D masks, got shape {pred.shape}")
    return pred, ref


def _check_spacing(spacing: Sequence[float], ndim: int) -> tuple[float, ...]:
    try:
        values = tuple(float(s) for s in spacing)
    except TypeError as err:
        raise ValueError(f"spacing must be a sequence of {ndim} numbers, got {spacing!r}") from err
    if len(values) != ndim:
        raise ValueError(f"spacing must have {ndim} values (one per axis), got {len(values)}")
    if not all(math.isfinite(s) and s > 0 for s in values):
        raise ValueError(f"spacing values must be finite and > 0, got {values}")
    return values


def volume_diagonal_mm(shape: Sequence[int], spacing: Sequence[float]) -> float:
    """Length of the volume's diagonal in mm: the distance assigned when exactly one mask is empty."""
    return float(math.sqrt(sum((n * s) ** 2 for n, s in zip(shape, spacing, strict=True))))


def dice_score(pred: np.ndarray, ref: np.ndarray) -> float:
    """Dice of two masks of the same shape (any dimensionality; nonzero = foreground).

    Fast numpy version for validation during training. Both empty -> 1.0 (see module docstring).
    """
    pred, ref = _check_pair(pred, ref, ndim=None)
    size = int(np.count_nonzero(pred)) + int(np.count_nonzero(ref))
    if size == 0:
        return _BOTH_EMPTY["dice"]
    inter = int(np.count_nonzero(pred & ref))
    return 2.0 * inter / size


def _surface_distances(pred: np.ndarray, ref: np.ndarray, spacing: tuple[float, ...]) -> tuple[float, float]:
    """(hd95, asd) in mm from MONAI, for two non-empty 3D masks."""
    # Imported here: monai takes seconds to import and training only needs dice_score.
    import torch
    from monai.metrics import compute_average_surface_distance, compute_hausdorff_distance

    # MONAI wants one-hot, batch-first (B, C, H, W, D); a single foreground channel with
    # include_background=True means "use this channel as is".
    y_pred = torch.from_numpy(np.ascontiguousarray(pred))[None, None]
    y = torch.from_numpy(np.ascontiguousarray(ref))[None, None]
    with warnings.catch_warnings():
        # monai 1.5+ passes a deprecated argument to its own get_mask_edges on every call.
        warnings.simplefilter("ignore", FutureWarning)
        hd95 = compute_hausdorff_distance(
            y_pred, y, include_background=True, percentile=95, spacing=list(spacing)
        )
        asd = compute_average_surface_distance(
            y_pred, y, include_background=True, symmetric=True, spacing=list(spacing)
        )
    return float(hd95.reshape(-1)[0]), float(asd.reshape(-1)[0])


def case_metrics(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float]) -> dict[str, float]:
    """All :data:`METRICS` for one case.

    Args:
        pred: 3D predicted mask (bool, or numeric with nonzero = foreground).
        ref: 3D reference mask, same shape as ``pred``.
        spacing: voxel size in mm along each of the 3 array axes.

    Returns:
        ``{metric: value}`` in the order of :data:`METRICS`; distances in mm. Never NaN: empty
        masks follow :data:`EMPTY_MASK_RULE`.

    Raises:
        ValueError: non-3D masks, shape mismatch, or invalid spacing.
    """
    pred, ref = _check_pair(pred, ref, ndim=3)
    spacing_t = _check_spacing(spacing, 3)

    n_pred = int(np.count_nonzero(pred))
    n_ref = int(np.count_nonzero(ref))
    if n_pred == 0 and n_ref == 0:
        return {m: float(_BOTH_EMPTY[m]) for m in METRICS}
    if n_pred == 0 or n_ref == 0:
        diag = volume_diagonal_mm(pred.shape, spacing_t)
        one_empty = {**_ONE_EMPTY_OVERLAP, "components": float(count_components(pred))}
        return {m: (diag if m in DISTANCE_METRICS else one_empty[m]) for m in METRICS}

    tp = int(np.count_nonzero(pred & ref))
    union = n_pred + n_ref - tp
    hd95, asd = _surface_distances(pred, ref, spacing_t)
    values = {
        "dice": 2.0 * tp / (n_pred + n_ref),
        "jaccard": tp / union,
        "hd95": hd95,
        "asd": asd,
        "precision": tp / n_pred,
        "sensitivity": tp / n_ref,
        "components": count_components(pred),
    }
    return {m: float(values[m]) for m in METRICS}


def count_components(mask: np.ndarray) -> int:
    """Number of 26-connected components of a 3D mask (8-connected for 2D)."""
    mask = np.asarray(mask) > 0
    return int(ndimage.label(mask, structure=np.ones((3,) * mask.ndim, dtype=bool))[1])
