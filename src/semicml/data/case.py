"""The one in-memory case type every reader produces."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass
class Case:
    """One patient: co-registered 3D modalities, an optional label volume and the source geometry.

    Attributes:
        case_id: identifier, unique within a dataset.
        images: ordered mapping modality name -> 3D float32 array (voxel order of the file).
        label: 3D integer array of raw label values, or ``None`` for an unlabelled case.
        affine: 4x4 voxel-to-world matrix of the source (shared by all modalities).
        header: the source NIfTI header (copied onto predictions), or ``None``.
        spacing: voxel size in mm along the three array axes.
        sources: modality name (and ``"label"``) -> file it was read from, for error messages.
        resampled: modality name (and ``"label"``) -> how it was brought onto the reference grid
            (co-registration at prepare time); empty when every volume was on that grid already.
    """

    case_id: str
    images: dict[str, np.ndarray]
    label: np.ndarray | None
    affine: np.ndarray
    header: object | None = None
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    sources: dict[str, Path] = field(default_factory=dict)
    resampled: dict[str, dict] = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(next(iter(self.images.values())).shape)  # type: ignore[return-value]

    @property
    def modalities(self) -> list[str]:
        return list(self.images)
