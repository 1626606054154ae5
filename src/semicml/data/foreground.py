"""Where the patient is: a body (or brain) mask per modality, for the crop box and the
normalisation statistics.

"Non-zero" is the patient only in skull-stripped MRI. CT air is -1000 HU, the noisy background of
an MRI that is not skull-stripped is not zero, and PET air is close to but not exactly zero. So:

* ``nonzero``: the voxels that are not exactly zero (skull-stripped MRI, BraTS).
* ``ct``: voxels above -500 HU (air and lung are below, fat/water/soft tissue/bone above).
* ``otsu``: voxels above the Otsu threshold of the intensities clipped to their 99th percentile
  (the clip keeps a few very hot or bright voxels from pulling the threshold up), for MRI that is
  not skull-stripped and for PET (air ~0 vs body uptake).

then, for ``ct`` and ``otsu``, the largest 3D connected component (drops the CT table, noise
specks, a second object) with the holes of every axial slice filled (airway, sinuses, dark
ventricles, lungs enclosed by the body), and a one-voxel dilation so the skin line is kept.

``mask_kind`` picks the rule from the normalisation scheme: MRI is ``nonzero`` when a large
part of the volume (:data:`STRIPPED_ZERO_FRACTION`) is exactly zero (the signature of skull
stripping), else ``otsu``.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

__all__ = ["CT_BODY_HU", "STRIPPED_ZERO_FRACTION", "body_mask", "fill_holes_per_slice", "is_stripped", "mask_kind",
           "otsu_threshold"]

#: CT body threshold in HU: between air/lung (-1000..-500) and fat (-100).
CT_BODY_HU = -500.0
#: An MRI whose voxels are exactly zero in at least this fraction is taken as skull-stripped.
STRIPPED_ZERO_FRACTION = 0.2
_OTSU_BINS = 256


def is_stripped(volume: np.ndarray) -> bool:
    """Exactly-zero background covering a large part of the volume: skull-stripped (or masked)."""
    return float(np.count_nonzero(volume == 0)) >= STRIPPED_ZERO_FRACTION * volume.size


def mask_kind(scheme: str, volume: np.ndarray) -> str:
    """The body-mask rule for a normalisation scheme (see the module docstring)."""
    if scheme == "ct":
        return "ct"
    if scheme == "pet":
        return "otsu"
    if scheme in ("zscore_nonzero",):
        return "nonzero"
    return "nonzero" if is_stripped(volume) else "otsu"


def otsu_threshold(values: np.ndarray) -> float:
    """Otsu's threshold (maximum between-class variance) over a 256-bin histogram."""
    values = np.asarray(values, dtype=np.float64).ravel()
    lo, hi = float(values.min()), float(values.max())
    if hi <= lo:
        return lo
    counts, edges = np.histogram(values, bins=_OTSU_BINS, range=(lo, hi))
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(counts)[:-1].astype(np.float64)
    w1 = counts.sum() - w0
    m = np.cumsum(counts * centres)[:-1]
    mu0 = m / np.maximum(w0, 1)
    mu1 = (float((counts * centres).sum()) - m) / np.maximum(w1, 1)
    between = w0 * w1 * (mu0 - mu1) ** 2
    return float(edges[1:-1][int(np.argmax(between))])


def _largest_filled(mask: np.ndarray) -> np.ndarray:
    labels, n = ndimage.label(mask)
    if n == 0:
        return mask
    if n > 1:
        sizes = np.bincount(labels.ravel())
        sizes[0] = 0
        mask = labels == int(np.argmax(sizes))
    return fill_holes_per_slice(mask)


def fill_holes_per_slice(mask: np.ndarray) -> np.ndarray:
    """``ndimage.binary_fill_holes`` of every axial slice, in one labelling pass: background
    regions (4-connected within a slice) that do not touch the slice's border are holes."""
    in_plane = np.zeros((3, 3, 3), dtype=bool)
    in_plane[:, :, 1] = ndimage.generate_binary_structure(2, 1)
    background, n = ndimage.label(~mask, structure=in_plane)
    outside = np.zeros(n + 1, dtype=bool)
    for edge in (background[0], background[-1], background[:, 0], background[:, -1]):
        outside[np.unique(edge)] = True
    outside[0] = True  # label 0 is the mask itself
    return mask | ~outside[background]


def body_mask(volume: np.ndarray, kind: str) -> np.ndarray:
    """Boolean mask of an axial-last (X, Y, Z) volume for ``kind`` in nonzero | ct | otsu."""
    volume = np.asarray(volume)
    if kind == "nonzero":
        return volume != 0
    if kind == "ct":
        return _largest_filled(volume > CT_BODY_HU)
    if kind == "otsu":
        sample = volume[:: max(1, volume.shape[0] // 64), :: max(1, volume.shape[1] // 64)]
        top = float(np.percentile(sample, 99))
        t = otsu_threshold(np.minimum(sample, top))
        return _largest_filled(volume > t)
    raise ValueError(f"unknown body-mask rule {kind!r} (nonzero | ct | otsu)")
