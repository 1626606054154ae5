"""Voxel grids in world space: spacing from the affine, in-plane resampling to a target spacing
and back, co-registration of a modality onto a reference grid, and geometry checks.

Every interpolation is scipy.ndimage's (``zoom`` with ``grid_mode=True``, ``affine_transform``):
maintained, tested implementations, nothing hand-written. Conventions:

* A NIfTI affine maps voxel *centres* (integer indices) to world millimetres.
* In-plane resampling works on axial-last arrays ``(X, Y, Z)`` and changes X and Y only (the
  networks are 2D, so slice thickness stays as stored). ``grid_mode=True`` keeps the field of
  view: the first voxel's outer edge and the last voxel's outer edge stay where they were, so the
  world position of every structure is unchanged and the way back is the same call in reverse.
* The new size is ``round(n * spacing / target)``; the realised spacing ``n * spacing / new_n``
  differs from the target by less than half a voxel over the whole field of view.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from semicml.errors import DataError

__all__ = [
    "MIN_OVERLAP",
    "InPlaneGrid",
    "axis_spacing",
    "check_affine",
    "in_plane_spacing",
    "onehot_resample",
    "overlap_fraction",
    "plan_in_plane",
    "resample_in_plane",
    "resample_to_grid",
    "restore_in_plane",
    "world_box",
]

#: A modality must cover at least this fraction of the reference modality's world box.
MIN_OVERLAP = 0.5

#: Smallest |det| of the 3x3 part of an affine (mm^3 per voxel) that is not "singular".
_MIN_VOXEL_VOLUME = 1e-6


def check_affine(affine: np.ndarray, path: str | Path | None, what: str = "image") -> None:
    """One-line DataError for an affine that cannot place voxels in space: non-finite, singular
    (two voxel axes along the same line, or a zero column), or with a zero voxel size."""
    a = np.asarray(affine, dtype=np.float64)
    if a.shape != (4, 4) or not np.isfinite(a).all():
        raise DataError(f"{what} affine is not a finite 4x4 matrix", path)
    sizes = np.linalg.norm(a[:3, :3], axis=0)
    if (sizes <= 0).any():
        raise DataError(f"{what} affine gives voxel sizes {[round(float(s), 6) for s in sizes]} mm; "
                        "a zero spacing cannot be placed in space", path)
    if abs(float(np.linalg.det(a[:3, :3]))) < _MIN_VOXEL_VOLUME:
        raise DataError(f"{what} affine is singular (its voxel axes are not independent; det "
                        f"{float(np.linalg.det(a[:3, :3])):.3g})", path)


def axis_spacing(affine: np.ndarray) -> tuple[float, float, float]:
    """Voxel size in mm along each array axis, from the affine (what world positions say)."""
    sizes = np.linalg.norm(np.asarray(affine, dtype=np.float64)[:3, :3], axis=0)
    return (float(sizes[0]), float(sizes[1]), float(sizes[2]))


def in_plane_spacing(affine: np.ndarray, axial_axis: int) -> tuple[float, float]:
    """Spacing of the two in-plane axes, in the order they have in the axial-last array."""
    sp = axis_spacing(affine)
    x, y = (sp[a] for a in range(3) if a != axial_axis)
    return (x, y)


@dataclass(frozen=True)
class InPlaneGrid:
    """How an axial-last volume's planes were resampled: ``shape`` (X, Y) before, ``resampled``
    (X', Y') after, ``spacing`` before and ``realised`` after (mm). Identity when the two shapes
    are equal (nothing is interpolated then)."""

    shape: tuple[int, int]
    resampled: tuple[int, int]
    spacing: tuple[float, float]
    realised: tuple[float, float]

    @property
    def identity(self) -> bool:
        return tuple(self.shape) == tuple(self.resampled)

    def to_json(self) -> dict:
        return {k: list(v) for k, v in asdict(self).items()}

    @classmethod
    def from_json(cls, d: dict) -> "InPlaneGrid":
        return cls(**{k: tuple(v) for k, v in d.items()})


def plan_in_plane(shape_xy: tuple[int, int], spacing_xy: tuple[float, float], target: float | None) -> InPlaneGrid:
    """The resampled plane size for ``target`` mm pixels (None: keep the grid)."""
    shape = (int(shape_xy[0]), int(shape_xy[1]))
    spacing = (float(spacing_xy[0]), float(spacing_xy[1]))
    if target is None:
        return InPlaneGrid(shape, shape, spacing, spacing)
    if not np.isfinite(target) or target <= 0:
        raise DataError(f"target in-plane spacing must be a positive number of mm, not {target!r}")
    new = tuple(max(1, int(round(n * s / float(target)))) for n, s in zip(shape, spacing))
    realised = tuple(n * s / m for n, s, m in zip(shape, spacing, new))
    return InPlaneGrid(shape, (new[0], new[1]), spacing, (realised[0], realised[1]))


def _zoom_planes(volume: np.ndarray, out_xy: tuple[int, int], order: int) -> np.ndarray:
    """(X, Y, Z) -> (X', Y', Z): every axial plane zoomed on its own (2D splines are 4x cheaper
    than 3D ones with a unit factor along Z, and nothing mixes neighbouring slices)."""
    vol = np.asarray(volume)
    factors = (out_xy[0] / vol.shape[0], out_xy[1] / vol.shape[1])
    out = np.empty((out_xy[0], out_xy[1]) + vol.shape[2:], dtype=np.float32)
    src = vol.astype(np.float32, copy=False).reshape(vol.shape[0], vol.shape[1], -1)
    dst = out.reshape(out_xy[0], out_xy[1], -1)
    for k in range(src.shape[2]):
        plane = ndimage.zoom(src[:, :, k], factors, order=order, mode="nearest", grid_mode=True)
        # zoom rounds its output size from the factors; grid_mode keeps it exact, but be safe.
        dst[:, :, k] = plane[: out_xy[0], : out_xy[1]]
    return out


def resample_in_plane(volume: np.ndarray, grid: InPlaneGrid, order: int = 3) -> np.ndarray:
    """Axial-last volume on ``grid.shape`` -> on ``grid.resampled`` (float32). ``order`` 3
    (cubic spline, nnU-Net's choice for images), 1 (linear: probabilities, masks) or 0."""
    if grid.identity:
        return volume
    return _zoom_planes(volume, grid.resampled, order)


def restore_in_plane(volume: np.ndarray, grid: InPlaneGrid, order: int = 1) -> np.ndarray:
    """Inverse of :func:`resample_in_plane`: ``grid.resampled`` -> ``grid.shape``; linear by
    default (probabilities are resampled, then thresholded, never the other way round)."""
    if grid.identity:
        return volume
    return _zoom_planes(volume, grid.shape, order)


def onehot_resample(labels: np.ndarray, n_values: int, resample) -> np.ndarray:
    """Resample an integer label map through its one-hot planes (linear), then argmax: smoother
    and more faithful than nearest neighbour for small structures (nnU-Net does the same)."""
    labels = np.asarray(labels)
    if n_values <= 1:
        return np.zeros(resample(labels.astype(np.float32)).shape, dtype=np.uint8)
    best = None
    arg = None
    for v in range(n_values):
        p = resample((labels == v).astype(np.float32))
        if best is None:
            best, arg = p, np.zeros(p.shape, dtype=np.uint8)
        else:
            better = p > best
            best = np.where(better, p, best)
            arg[better] = v
    return arg


def world_box(shape: tuple[int, ...], affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Axis-aligned world bounding box (lo, hi) of a volume's voxels, outer edges included."""
    corners = np.array([[i, j, k] for i in (-0.5, shape[0] - 0.5) for j in (-0.5, shape[1] - 0.5)
                        for k in (-0.5, shape[2] - 0.5)])
    world = corners @ np.asarray(affine, float)[:3, :3].T + np.asarray(affine, float)[:3, 3]
    return world.min(axis=0), world.max(axis=0)


def overlap_fraction(shape: tuple[int, ...], affine: np.ndarray, ref_shape: tuple[int, ...],
                     ref_affine: np.ndarray) -> float:
    """Fraction of the reference volume's world box that the other volume's world box covers."""
    lo, hi = world_box(shape, affine)
    rlo, rhi = world_box(ref_shape, ref_affine)
    inter = np.clip(np.minimum(hi, rhi) - np.maximum(lo, rlo), 0, None)
    ref_volume = float(np.prod(rhi - rlo))
    return float(np.prod(inter)) / ref_volume if ref_volume > 0 else 0.0


def resample_to_grid(volume: np.ndarray, affine: np.ndarray, ref_shape: tuple[int, ...], ref_affine: np.ndarray,
                     order: int = 1, cval: float = 0.0) -> np.ndarray:
    """``volume`` (on ``affine``) sampled at the voxel centres of the reference grid.

    Output voxel i sits at world ``ref_affine @ i``, i.e. at input index ``inv(affine) @
    ref_affine @ i``. Points up to one input voxel outside the input are given the edge value (a
    coarse PET grid's outer voxel covers that far); further out, ``cval`` (the background).
    """
    m = np.linalg.inv(np.asarray(affine, float)) @ np.asarray(ref_affine, float)
    padded = np.pad(np.asarray(volume, dtype=np.float32), 1, mode="edge")
    return ndimage.affine_transform(padded, m[:3, :3], offset=m[:3, 3] + 1.0, output_shape=tuple(ref_shape),
                                    order=order, mode="constant", cval=float(cval), prefilter=order > 1)
