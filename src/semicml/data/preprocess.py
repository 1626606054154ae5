"""Per-case geometry and intensity preprocessing, computable from ONE modality.

Prediction later sees a single modality, so nothing here may look at the label or at another
modality: the in-plane box comes from the non-zero (brain) region of the reference image and the
normalisation of each modality from that modality alone. The same functions serve ``prepare``
(training store) and ``predict`` (single-modality inference), which keeps the two consistent.

Geometry convention: volumes are transposed so that the axial (superior-inferior) axis, found
from the affine, is the last one; slices are then ``vol[:, :, z]`` of shape (X, Y).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F

# Percentile clipping before z-scoring, as is standard for BraTS-style MRI.
CLIP_PERCENTILES = (0.5, 99.5)


def axial_axis(affine: np.ndarray) -> int:
    """Index of the array axis closest to the superior-inferior world axis."""
    codes = nib.orientations.aff2axcodes(affine)
    for axis, code in enumerate(codes):
        if code in ("S", "I"):
            return axis
    return 2  # degenerate affine: fall back to the usual last axis


def to_axial_last(volume: np.ndarray, axis: int) -> np.ndarray:
    return np.moveaxis(volume, axis, -1)


def from_axial_last(volume: np.ndarray, axis: int) -> np.ndarray:
    return np.moveaxis(volume, -1, axis)


@dataclass
class InPlaneBox:
    """Where the stored (size x size) slices sit in the (X, Y) plane of the axial-last volume.

    ``mode == "crop"``: a size x size window starting at (x0, y0), possibly reaching outside the
    volume (zero padded). ``mode == "resize"``: the square (x0, y0, side) resampled to size x size.
    """

    mode: Literal["crop", "resize"]
    x0: int
    y0: int
    side: int
    size: int

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> "InPlaneBox":
        return cls(**data)


def foreground_box(reference: np.ndarray, size: int, mode: str = "crop") -> InPlaneBox:
    """Box centred on the non-zero region of ``reference`` (axial-last 3D array)."""
    nonzero = np.abs(reference) > 0
    plane = nonzero.any(axis=2)
    if not plane.any():  # empty image: centre of the volume
        xs = np.array([0, reference.shape[0] - 1])
        ys = np.array([0, reference.shape[1] - 1])
    else:
        xs = np.where(plane.any(axis=1))[0]
        ys = np.where(plane.any(axis=0))[0]
    x_lo, x_hi, y_lo, y_hi = int(xs[0]), int(xs[-1]) + 1, int(ys[0]), int(ys[-1]) + 1
    if mode == "crop":
        side = size
    elif mode == "resize":
        side = max(x_hi - x_lo, y_hi - y_lo, 1)
    else:
        raise ValueError(f"unknown in-plane mode {mode!r} (expected 'crop' or 'resize')")
    cx, cy = (x_lo + x_hi) // 2, (y_lo + y_hi) // 2
    return InPlaneBox(mode=mode, x0=cx - side // 2, y0=cy - side // 2, side=side, size=size)


def whole_plane_box(shape_xy: tuple[int, int], multiple: int) -> InPlaneBox:
    """A crop box covering the whole (X, Y) plane, its side rounded up to ``multiple`` (the U-Net's
    down-sampling factor) and centred, so a fully convolutional network sees every voxel."""
    side = -(-max(int(shape_xy[0]), int(shape_xy[1]), 1) // multiple) * multiple
    x0 = (int(shape_xy[0]) - side) // 2
    y0 = (int(shape_xy[1]) - side) // 2
    return InPlaneBox(mode="crop", x0=x0, y0=y0, side=side, size=side)


def _window(volume: np.ndarray, x0: int, y0: int, side: int) -> np.ndarray:
    """(side, side, Z) window of an axial-last volume, zero padded where it leaves the volume."""
    out = np.zeros((side, side) + volume.shape[2:], dtype=volume.dtype)
    sx0, sy0 = max(x0, 0), max(y0, 0)
    sx1, sy1 = min(x0 + side, volume.shape[0]), min(y0 + side, volume.shape[1])
    if sx1 > sx0 and sy1 > sy0:
        out[sx0 - x0 : sx1 - x0, sy0 - y0 : sy1 - y0] = volume[sx0:sx1, sy0:sy1]
    return out


def _resample_planes(volume: np.ndarray, size: int, nearest: bool) -> np.ndarray:
    """Resample the (X, Y) planes of an (X, Y, Z) array to (size, size, Z)."""
    t = torch.from_numpy(np.ascontiguousarray(volume, dtype=np.float32)).permute(2, 0, 1)[:, None]
    if nearest:
        r = F.interpolate(t, size=(size, size), mode="nearest")
    else:
        r = F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False)
    return r[:, 0].permute(1, 2, 0).numpy()


def extract_planes(volume: np.ndarray, box: InPlaneBox, nearest: bool = False) -> np.ndarray:
    """Axial-last (X, Y, Z) volume -> (size, size, Z) array in the stored frame."""
    window = _window(volume, box.x0, box.y0, box.side)
    if box.mode == "crop":
        return window
    return _resample_planes(window, box.size, nearest)


def paste_planes(planes: np.ndarray, box: InPlaneBox, shape_xy: tuple[int, int]) -> np.ndarray:
    """Inverse of :func:`extract_planes` for float maps (e.g. probabilities): (size, size, Z) ->
    (X, Y, Z) on the axial-last grid of the original volume; outside the box is 0."""
    if box.mode == "resize":
        planes = _resample_planes(planes, box.side, nearest=False)
    out = np.zeros(tuple(shape_xy) + planes.shape[2:], dtype=planes.dtype)
    x0, y0, side = box.x0, box.y0, box.side
    sx0, sy0 = max(x0, 0), max(y0, 0)
    sx1, sy1 = min(x0 + side, shape_xy[0]), min(y0 + side, shape_xy[1])
    if sx1 > sx0 and sy1 > sy0:
        out[sx0:sx1, sy0:sy1] = planes[sx0 - x0 : sx1 - x0, sy0 - y0 : sy1 - y0]
    return out


@dataclass
class Normalisation:
    """How one modality of one case was normalised (kept for provenance)."""

    method: str
    low: float
    high: float
    mean: float
    std: float


def normalise(image: np.ndarray, method: str = "zscore_nonzero") -> tuple[np.ndarray, Normalisation]:
    """Clip to percentiles and z-score.

    ``zscore_nonzero`` (BraTS / skull-stripped MRI): statistics over non-zero voxels, the zero
    background stays 0. ``zscore``: over all voxels (e.g. CT). ``none``: unchanged.
    """
    image = image.astype(np.float32, copy=False)
    if method == "none":
        return image, Normalisation(method, 0.0, 0.0, 0.0, 1.0)
    if method == "zscore_nonzero":
        mask = image != 0
        if mask.sum() < 10:  # essentially empty: nothing to normalise against
            return np.zeros_like(image), Normalisation(method, 0.0, 0.0, 0.0, 1.0)
    elif method == "zscore":
        mask = np.ones(image.shape, dtype=bool)
    else:
        raise ValueError(f"unknown normalisation {method!r}")
    values = image[mask]
    low, high = np.percentile(values, CLIP_PERCENTILES)
    clipped = np.clip(values, low, high)
    mean, std = float(clipped.mean()), float(clipped.std())
    std = std if std > 1e-8 else 1.0
    out = np.zeros_like(image)
    out[mask] = (clipped - mean) / std
    return out, Normalisation(method, float(low), float(high), mean, std)
