"""One in-plane orientation for every slice a network sees, whatever the order the file stores.

The networks are 2D: a slice stored mirrored or transposed (an LPS BraTS file and the same scan
written in RAS, or with its in-plane axes swapped) is a different image to them. ``prepare``
records the in-plane orientation most of the dataset's cases have (world axis codes of the two
in-plane axes of the axial-last array, e.g. ``("L", "P")`` for BraTS) and turns every case to it;
``predict`` turns each input the same way and the probabilities back. Only axis swaps and flips:
no voxel is interpolated, and a case already in that orientation is untouched (so a store of
uniformly stored scans holds exactly what it held before this existed). Stores and runs that
recorded no orientation keep the old behaviour (slices in file order).

Works on axial-last arrays ``(X, Y, ...)`` (the slice axis moved last by
``preprocess.to_axial_last``); trailing axes are carried along.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import nibabel as nib
import numpy as np

__all__ = ["IDENTITY", "InPlaneOrientation", "dataset_orientation", "in_plane_codes", "orientation_to"]

_OPPOSITE = {"L": "R", "R": "L", "A": "P", "P": "A", "S": "I", "I": "S"}
_IN_PLANE = frozenset("LRAP")


@dataclass(frozen=True)
class InPlaneOrientation:
    """``transpose`` the two in-plane axes, then flip the first and/or the second."""

    transpose: bool = False
    flip: tuple[bool, bool] = (False, False)

    @property
    def identity(self) -> bool:
        return not self.transpose and not any(self.flip)

    def apply(self, volume: np.ndarray) -> np.ndarray:
        """File-order axial-last ``(X, Y, ...)`` -> the dataset orientation."""
        out = np.swapaxes(volume, 0, 1) if self.transpose else volume
        for axis, flip in enumerate(self.flip):
            if flip:
                out = np.flip(out, axis)
        return out

    def undo(self, volume: np.ndarray) -> np.ndarray:
        """The inverse of :meth:`apply` (flips first, then the transpose)."""
        out = volume
        for axis, flip in enumerate(self.flip):
            if flip:
                out = np.flip(out, axis)
        return np.swapaxes(out, 0, 1) if self.transpose else out

    def pair(self, xy: Sequence) -> tuple:
        """A per-in-plane-axis pair (shape, spacing) in file order -> in the dataset orientation."""
        a, b = xy
        return (b, a) if self.transpose else (a, b)

    def to_json(self) -> dict:
        return {"transpose": self.transpose, "flip": list(self.flip)}

    @classmethod
    def from_json(cls, d: dict | None) -> "InPlaneOrientation":
        if not d:
            return IDENTITY
        return cls(bool(d["transpose"]), (bool(d["flip"][0]), bool(d["flip"][1])))


IDENTITY = InPlaneOrientation()


def in_plane_codes(affine: np.ndarray, axial_axis: int) -> tuple[str, str] | None:
    """World codes (nibabel's, towards which each index grows) of the two in-plane axes in
    axial-last order, e.g. ``("L", "P")``; None when they are not one left-right and one
    anterior-posterior axis (an affine too oblique to name, or no axial axis)."""
    codes = nib.orientations.aff2axcodes(np.asarray(affine, dtype=np.float64))
    pair = tuple(codes[a] for a in range(3) if a != axial_axis)
    if any(c not in _IN_PLANE for c in pair) or {pair[0], _OPPOSITE[pair[0]]} == {pair[1], _OPPOSITE[pair[1]]}:
        return None
    return pair  # type: ignore[return-value]


def orientation_to(affine: np.ndarray, axial_axis: int, target: Sequence[str] | None) -> InPlaneOrientation:
    """How to turn this file's axial-last in-plane axes to ``target`` codes (identity when there
    is no target or the file's orientation cannot be named)."""
    have = in_plane_codes(affine, axial_axis)
    if not target or have is None:
        return IDENTITY
    want = tuple(target)
    transpose = have[0] not in (want[0], _OPPOSITE[want[0]])
    turned = (have[1], have[0]) if transpose else have
    return InPlaneOrientation(transpose, (turned[0] != want[0], turned[1] != want[1]))


def dataset_orientation(codes: Iterable[tuple[str, str] | None]) -> tuple[list[str] | None, int, int]:
    """(the most common in-plane codes, how many cases have them, how many could be named);
    (None, 0, 0) when no case's orientation can be named. Ties go to the first seen."""
    named = [c for c in codes if c is not None]
    if not named:
        return None, 0, 0
    best, count = Counter(named).most_common(1)[0]
    return list(best), count, len(named)
