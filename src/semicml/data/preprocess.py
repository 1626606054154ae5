"""Per-case geometry and intensity preprocessing, computable from ONE modality.

Prediction later sees a single modality, so what predict repeats never looks at the label or at
another modality: the in-plane box comes from the body mask of the reference image and the
normalisation of each modality from that modality alone (plus training-set constants recorded in
the store). The same functions serve ``prepare`` (training store) and ``predict``
(single-modality inference, :func:`network_frame`), which keeps the two consistent. The one use
of the label is training-only: a crop box is shifted to keep the tumour inside it.

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

from .geometry import InPlaneGrid, in_plane_spacing, plan_in_plane, resample_in_plane, restore_in_plane
from .orientation import IDENTITY, InPlaneOrientation, orientation_to
from .normalisation import (
    CLIP_PERCENTILES,
    Normalisation,
    NormalisedVolume,
    modality_normalisation,
    normalise,
    normalise_volume,
)

__all__ = ["CLIP_PERCENTILES", "InPlaneBox", "NetworkFrame", "Normalisation", "axial_axis", "extract_planes",
           "foreground_box", "from_axial_last", "network_frame", "normalise", "paste_planes", "resample_normalised",
           "target_spacing", "to_axial_last", "whole_plane_box"]


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


def foreground_box(reference: np.ndarray, size: int, mode: str = "crop", mask: np.ndarray | None = None,
                   keep: np.ndarray | None = None) -> InPlaneBox:
    """Box centred on the body mask of ``reference`` (axial-last 3D array; default mask: its
    non-zero region). ``keep`` (crop mode, training only): a mask, e.g. the label, that the crop
    is shifted to contain when it fits, so a tumour at the edge of a large body is not cut off."""
    nonzero = np.abs(reference) > 0 if mask is None else np.asarray(mask, dtype=bool)
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
    x0, y0 = cx - side // 2, cy - side // 2
    if mode == "crop" and keep is not None and np.asarray(keep).any():
        x0, y0 = _shift_to_contain(np.asarray(keep).any(axis=2), x0, y0, side)
    return InPlaneBox(mode=mode, x0=x0, y0=y0, side=side, size=size)


def _shift_to_contain(plane: np.ndarray, x0: int, y0: int, side: int) -> tuple[int, int]:
    """Smallest shift of a side x side window at (x0, y0) that contains the True pixels of
    ``plane`` along each axis where they fit (otherwise the window is centred on them)."""
    out = []
    for start, hits in ((x0, np.flatnonzero(plane.any(axis=1))), (y0, np.flatnonzero(plane.any(axis=0)))):
        lo, hi = int(hits[0]), int(hits[-1]) + 1
        if hi - lo > side:
            start = (lo + hi) // 2 - side // 2
        elif lo < start:
            start = lo
        elif hi > start + side:
            start = hi - side
        out.append(start)
    return out[0], out[1]


def whole_plane_box(shape_xy: tuple[int, int], multiple: int) -> InPlaneBox:
    """A crop box covering the whole (X, Y) plane, its side rounded up to ``multiple`` (the U-Net's
    down-sampling factor) and centred, so a fully convolutional network sees every voxel."""
    side = -(-max(int(shape_xy[0]), int(shape_xy[1]), 1) // multiple) * multiple
    x0 = (int(shape_xy[0]) - side) // 2
    y0 = (int(shape_xy[1]) - side) // 2
    return InPlaneBox(mode="crop", x0=x0, y0=y0, side=side, size=side)


def _window(volume: np.ndarray, x0: int, y0: int, side: int, fill: float = 0.0) -> np.ndarray:
    """(side, side, Z) window of an axial-last volume, padded with ``fill`` (the normalised
    background) where it leaves the volume."""
    out = np.full((side, side) + volume.shape[2:], fill, dtype=volume.dtype)
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


def extract_planes(volume: np.ndarray, box: InPlaneBox, nearest: bool = False, fill: float = 0.0) -> np.ndarray:
    """Axial-last (X, Y, Z) volume -> (size, size, Z) array in the stored frame."""
    window = _window(volume, box.x0, box.y0, box.side, fill)
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


def resample_normalised(norm: NormalisedVolume, grid: InPlaneGrid) -> tuple[np.ndarray, np.ndarray]:
    """A normalised volume and its mask on the resampled planes: cubic spline for the image
    (nnU-Net's order), nearest for the mask. The exactly-zero background of a skull-stripped
    image is kept exactly zero (the spline would ring into it), so empty slices stay empty."""
    if grid.identity:
        return norm.image, norm.mask
    image = resample_in_plane(norm.image, grid, order=3)
    mask = resample_in_plane(norm.mask.astype(np.float32), grid, order=0) > 0.5
    if norm.zero_outside:
        image[~mask] = 0.0
    return image, mask


def target_spacing(preprocessing: dict) -> float | None:
    """The in-plane spacing (mm) the networks were trained at; None for runs made before it was
    recorded (their inputs are used on their own grid, as then)."""
    spacing = preprocessing.get("spacing") or {}
    value = spacing.get("in_plane_mm") if isinstance(spacing, dict) else None
    return None if value is None else float(value)


#: An input this many times coarser in plane than the training spacing gets a warning: resampling
#: restores the scale, not the detail (2 mm inputs to 1 mm networks lost 0.14 test Dice on average,
#: benchmarks/results/resampling/low-resolution/).
COARSE_INPUT_FACTOR = 1.5


def coarse_input_note(affine: np.ndarray, preprocessing: dict) -> str | None:
    """Why an input on ``affine``'s grid will be segmented less well than the training data, when
    its coarser in-plane spacing is more than :data:`COARSE_INPUT_FACTOR` times the training one;
    else None (also for runs that recorded no spacing)."""
    target = target_spacing(preprocessing)
    if not target:
        return None
    spacing = max(in_plane_spacing(affine, axial_axis(affine)))
    if spacing <= COARSE_INPUT_FACTOR * target:
        return None
    return f"{spacing / target:.1f}x coarser in plane ({spacing:.2f} mm) than the {target:.2f} mm the network was trained at"


@dataclass
class NetworkFrame:
    """One modality of one case as its network sees it, and the way back to the input grid."""

    planes: np.ndarray  # (Z, H, W) float32, normalised, resampled, padded
    axis: int  # the input's axial array axis
    grid: InPlaneGrid  # input planes -> resampled planes
    box: InPlaneBox  # where ``planes`` sit on the resampled axial-last grid
    turn: InPlaneOrientation = IDENTITY  # the input's in-plane axes -> the training orientation

    def restore(self, probs: np.ndarray) -> np.ndarray:
        """(Z, H, W) probabilities -> the input's voxel grid and axis order. Resampled linearly
        as probabilities; threshold afterwards. (Z, C, H, W) (one channel per region) -> (C, ...)."""
        if np.ndim(probs) == 4:
            return np.stack([self.restore(np.asarray(probs)[:, c]) for c in range(np.shape(probs)[1])])
        on_grid = paste_planes(np.asarray(probs).transpose(1, 2, 0), self.box, self.grid.resampled)
        return from_axial_last(self.turn.undo(restore_in_plane(on_grid, self.grid, order=1)), self.axis)


def network_frame(image: np.ndarray, affine: np.ndarray, preprocessing: dict, modality: str,
                  multiple: int) -> NetworkFrame:
    """Normalise ``image`` as its modality was at training (on its own grid), resample its planes
    to the training spacing, then take the whole slice padded to ``multiple`` (crop stores) or the
    body box resized (resize stores)."""
    axis = axial_axis(affine)
    turn = orientation_to(affine, axis, (preprocessing.get("orientation") or {}).get("in_plane"))
    vol = turn.apply(to_axial_last(image, axis))
    norm = normalise_volume(vol, modality_normalisation(preprocessing, modality))
    grid = plan_in_plane(vol.shape[:2], turn.pair(in_plane_spacing(affine, axis)), target_spacing(preprocessing))
    normed, mask = resample_normalised(norm, grid)
    if preprocessing["in_plane"] == "crop":
        box = whole_plane_box(grid.resampled, multiple)
    else:
        box = foreground_box(normed, int(preprocessing["size"]), preprocessing["in_plane"], mask=mask)
    planes = extract_planes(normed, box, fill=norm.fill).transpose(2, 0, 1)
    return NetworkFrame(np.ascontiguousarray(planes, dtype=np.float32), axis, grid, box, turn)
