"""Intensity normalisation, chosen by channel name (nnU-Net's scheme), recorded per modality.

Schemes (the ``scheme`` field of a modality's record in ``store.json`` / ``run.json``):

``mri`` (any channel not named CT or PET)
    Per case: clip to the 0.5 / 99.5 percentiles of the voxels inside the body/brain mask, then
    z-score with the mean / std of those (clipped) voxels. In a skull-stripped volume the mask is
    the non-zero region and the zero background stays 0 (identical to the earlier
    ``zscore_nonzero``); otherwise the mask is the head/body (Otsu, largest component, holes
    filled) and the transform is applied to every voxel, so air becomes one constant value.
``ct`` (channel named ``CT...``)
    Global, from the training set: clip to the 0.5 / 99.5 percentiles of the intensities (HU) of
    the labelled foreground voxels of the statistics cases, then subtract their mean and divide by
    their std (nnU-Net: global, not per case, so HU keep one meaning across patients).
``pet`` (``PT``, ``PET...``, ``FDG...``)
    Global, from the training set, as CT but clipped to [0, 99.5th percentile]: PET is expected in
    SUV (quantitative, comparable across patients like HU); negative values (reconstruction noise)
    become 0 and the few hottest voxels (bladder, brain) do not stretch the scale.
``zscore_nonzero`` / ``zscore`` / ``none``
    The earlier per-case schemes, kept so that stores and runs made before still predict exactly
    as they did; selectable by name.

Global statistics sample at most :data:`SAMPLES_PER_CASE` foreground voxels per case (seeded), as
nnU-Net does, and fall back to the body mask when the statistics cases hold no labelled voxel.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from semicml.data.foreground import body_mask, mask_kind
from semicml.data.readers.common import match_modality
from semicml.errors import ConfigError, DataError

__all__ = [
    "CLIP_PERCENTILES",
    "GLOBAL_SCHEMES",
    "LEGACY_SCHEMES",
    "SAMPLES_PER_CASE",
    "SCHEMES",
    "Normalisation",
    "NormalisedVolume",
    "global_statistics",
    "modality_normalisation",
    "normalise",
    "normalise_volume",
    "sample_foreground",
    "scheme_for_channel",
]

# Percentile clipping before z-scoring, as is standard for BraTS-style MRI and nnU-Net's CT.
CLIP_PERCENTILES = (0.5, 99.5)
LEGACY_SCHEMES = ("zscore_nonzero", "zscore", "none")
GLOBAL_SCHEMES = ("ct", "pet")
SCHEMES = ("mri",) + GLOBAL_SCHEMES + LEGACY_SCHEMES
SAMPLES_PER_CASE = 10_000


def scheme_for_channel(name: str) -> str:
    """nnU-Net's rule: the channel's name picks its normalisation (CT, PET, else MRI z-score)."""
    low = name.strip().lower()
    if low == "ct" or low.startswith(("ct_", "ct-", "ct ")):
        return "ct"
    if low in ("pt", "pet") or low.startswith(("pet", "fdg", "pt_", "pt-")):
        return "pet"
    return "mri"


@dataclass
class Normalisation:
    """How one modality of one case was normalised (kept for provenance)."""

    method: str
    low: float
    high: float
    mean: float
    std: float


def normalise(image: np.ndarray, method: str = "zscore_nonzero") -> tuple[np.ndarray, Normalisation]:
    """The earlier per-case schemes: clip to percentiles and z-score.

    ``zscore_nonzero`` (BraTS / skull-stripped MRI): statistics over non-zero voxels, the zero
    background stays 0. ``zscore``: over all voxels. ``none``: unchanged.
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


@dataclass
class NormalisedVolume:
    image: np.ndarray  # float32, same shape as the input
    mask: np.ndarray  # bool body/brain mask (crop box and statistics)
    fill: float  # the normalised background value, for padding outside the volume
    record: dict[str, Any]  # what was done, with its numbers
    zero_outside: bool = False  # skull-stripped: the background is exactly 0 and must stay so


def _apply(image: np.ndarray, low: float, high: float, mean: float, std: float) -> np.ndarray:
    std = std if std > 1e-8 else 1.0
    return ((np.clip(image, low, high) - mean) / std).astype(np.float32)


def normalise_volume(image: np.ndarray, spec: dict[str, Any] | str) -> NormalisedVolume:
    """Normalise an axial-last volume by a modality's recorded spec (or a legacy scheme name)."""
    image = np.asarray(image, dtype=np.float32)
    if isinstance(spec, str):
        spec = {"scheme": spec}
    scheme = spec.get("scheme")
    if scheme in LEGACY_SCHEMES:
        out, stats = normalise(image, scheme)
        mask = image != 0  # the box comes from the non-zero region, as before per-modality records
        return NormalisedVolume(out, mask, 0.0, asdict(stats), zero_outside=scheme == "zscore_nonzero")
    if scheme == "mri":
        kind = mask_kind("mri", image)
        if kind == "nonzero":  # skull-stripped: exactly the earlier zscore_nonzero
            out, stats = normalise(image, "zscore_nonzero")
            return NormalisedVolume(out, image != 0, 0.0, {**asdict(stats), "method": "mri", "mask": kind},
                                    zero_outside=True)
        mask = body_mask(image, kind)
        if mask.sum() < 10:
            mask = np.ones(image.shape, dtype=bool)
        values = image[mask]
        low, high = (float(v) for v in np.percentile(values, CLIP_PERCENTILES))
        clipped = np.clip(values, low, high)
        mean, std = float(clipped.mean()), float(clipped.std())
        out = _apply(image, low, high, mean, std)
        return NormalisedVolume(out, mask, float(_apply(np.float32(low), low, high, mean, std)),
                                {"method": "mri", "mask": kind, "low": low, "high": high, "mean": mean,
                                 "std": std if std > 1e-8 else 1.0})
    if scheme in GLOBAL_SCHEMES:
        try:
            low, high, mean, std = (float(spec[k]) for k in ("low", "high", "mean", "std"))
        except (KeyError, TypeError, ValueError):
            raise ConfigError(f"normalisation {scheme!r} needs its training-set statistics (low, high, mean, std); "
                              f"got {spec}") from None
        out = _apply(image, low, high, mean, std)
        mask = body_mask(image, mask_kind(scheme, image))
        return NormalisedVolume(out, mask, float(_apply(np.float32(low), low, high, mean, std)),
                                {"method": scheme, "mask": mask_kind(scheme, image)})
    raise ConfigError(f"unknown normalisation {scheme!r}; choose one of {', '.join(SCHEMES)}")


def sample_foreground(image: np.ndarray, foreground: np.ndarray, seed: int) -> np.ndarray:
    """At most SAMPLES_PER_CASE intensities of ``image`` inside ``foreground`` (seeded)."""
    values = np.asarray(image)[np.asarray(foreground, dtype=bool)]
    if values.size > SAMPLES_PER_CASE:
        values = np.random.default_rng(seed).choice(values, SAMPLES_PER_CASE, replace=False)
    return values.astype(np.float32)


def global_statistics(scheme: str, samples: list[np.ndarray]) -> dict[str, float]:
    """low / high / mean / std of a global scheme from the statistics cases' samples."""
    values = np.concatenate([np.asarray(s, np.float64).ravel() for s in samples]) if samples else np.zeros(0)
    if values.size < 10:
        raise ConfigError(f"too few foreground voxels ({values.size}) to compute the {scheme} normalisation "
                          "statistics; give labelled cases or choose another --normalisation")
    low, high = (float(v) for v in np.percentile(values, CLIP_PERCENTILES))
    if scheme == "pet":
        low = 0.0
    mean, std = float(values.mean()), float(values.std())
    return {"low": low, "high": high, "mean": mean, "std": std if std > 1e-8 else 1.0}


def modality_normalisation(preprocessing: dict, modality: str) -> dict[str, Any] | str:
    """The normalisation recorded for ``modality`` in a store's / run's preprocessing: a scheme
    name for stores made before per-modality records (one scheme for all), else its record."""
    recorded = preprocessing["normalisation"]
    if isinstance(recorded, str):
        return recorded
    hit = match_modality(modality, list(recorded))
    if hit is None:
        raise DataError(f"no normalisation recorded for modality {modality!r} (has: {', '.join(recorded)})")
    return recorded[hit]
