"""Lesion copy-paste: a labelled slice receives the lesion (and a rim of its surroundings) of
another labelled tumour slice, in every modality and in the label at once.

Why: with ~10% of the slices labelled the networks see few distinct lesions (60-80 tumour slices
of a handful of patients per fold) and stay conservative (sensitivity 0.63-0.70 T2 / 0.43-0.51 T1ce
whatever the loss or sampling, benchmarks/results/brats18-cv-2mm/recall-screen/). Pasting lesions
into other slices and patients makes new lesion-in-context pairs from the same labels; this is the
idea of TumorCP (Yang et al., MICCAI 2021) and CarveMix (Zhang et al., 2021), written here for
co-registered modality pairs: the paste is the same in every modality, so the pair stays aligned.

Rules (all drawn from the caller's generator, so a resume repeats them):
- the region pasted is the donor's label > 0 grown by a random rim of 0..``margin`` pixels
  (CarveMix's lesion-aware region; the rim carries the lesion's own border tissue);
- the donor may be mirrored along either in-plane axis (a lesion of the left hemisphere becomes
  one of the right); it keeps its position otherwise (stores box every case around its body);
- the region is clipped to the recipient's body (where any modality differs from the slice's
  border value: zero for skull-stripped MRI, the normalised air for CT / PET); when the clip keeps
  less than ``min_kept`` of the donor's lesion the paste is skipped (a lesion in the air teaches
  nothing real);
- inside the region the recipient takes the donor's images and label, outside it stays itself.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage


@dataclass(frozen=True)
class PasteOptions:
    probability: float = 0.0  # per labelled slice; 0 = off
    margin: int = 4  # largest rim (pixels) added around the donor's lesion
    min_kept: float = 0.5  # share of the donor's lesion that must land inside the recipient's body


def body_mask(images: np.ndarray) -> np.ndarray:
    """images: (C, H, W) -> (H, W) bool: where any channel differs from its own border value
    (the most common value on the slice's outer ring: the padding / background)."""
    ring = np.concatenate([images[:, 0, :], images[:, -1, :], images[:, :, 0], images[:, :, -1]], axis=1)
    body = np.zeros(images.shape[1:], dtype=bool)
    for channel, border in zip(images, ring):
        values, counts = np.unique(border, return_counts=True)
        body |= channel != values[np.argmax(counts)]
    return body


def paste_lesion(images: np.ndarray, label: np.ndarray, donor_images: np.ndarray, donor_label: np.ndarray,
                 rng: np.random.Generator, opts: PasteOptions) -> tuple[np.ndarray, np.ndarray, bool]:
    """images / donor_images: (C, H, W) float32 (every modality and its context slices);
    label / donor_label: (H, W) integer. -> (images, label, pasted). The inputs are not changed."""
    if images.shape != donor_images.shape or label.shape != donor_label.shape:
        raise ValueError(f"recipient {images.shape} / {label.shape} and donor {donor_images.shape} / "
                         f"{donor_label.shape} differ in shape")
    for axis in (1, 2):  # mirror the donor (both arrays) along each in-plane axis with probability 1/2
        if rng.random() < 0.5:
            donor_images = np.flip(donor_images, axis=axis)
            donor_label = np.flip(donor_label, axis=axis - 1)
    rim = int(rng.integers(0, opts.margin + 1))
    lesion = donor_label > 0
    if not lesion.any():
        return images, label, False
    region = ndimage.distance_transform_edt(~lesion) <= rim if rim else lesion.copy()
    region &= body_mask(images)
    if (region & lesion).sum() < opts.min_kept * lesion.sum():
        return images, label, False
    out_images = np.where(region[None], donor_images, images).astype(np.float32)
    out_label = np.where(region, donor_label, label).astype(label.dtype)
    return out_images, out_label, True
