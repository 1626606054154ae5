"""Paired two-stream batches: L labelled + U unlabelled slices, every modality of each slice.

Determinism: the content of batch ``k`` (which slices, which augmentation) is a pure function
of (seed, k). Nothing depends on worker count or on how many batches were drawn before, so a
resumed run sees exactly the batches an uninterrupted run would have seen.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import torch
from scipy import ndimage
from torch.utils.data import DataLoader, Dataset, Sampler

from .context import context_stack, group_size
from .lesion_paste import PasteOptions, paste_lesion
from .splits import SliceKey
from .store import SliceStore


def _stream_element(n: int, position: int, seed: int, stream: int) -> int:
    """Element ``position`` of an endless sequence of seeded permutations of range(n)."""
    epoch, offset = divmod(position, n)
    perm = np.random.default_rng([seed, stream, epoch]).permutation(n)
    return int(perm[offset])


class TwoStreamBatchSampler(Sampler[list[tuple[int, int, int]]]):
    """Yields, for iterations ``start .. stop-1``, lists of (slice index, iteration, position).

    Indices ``< n_labeled`` address the labelled pool, the rest the unlabelled pool (offset by
    ``n_labeled``). Each pool is walked through seeded permutations, epoch after epoch.

    Foreground oversampling (nnU-Net's rule): the first ``round(foreground_fraction * labeled_batch)``
    labelled positions of every batch are drawn from ``labeled_foreground`` (indices into the
    labelled pool of slices that contain target), the rest from the whole labelled pool, so the
    network sees healthy slices without the tumour slices becoming rare. The unlabelled stream
    never looks at labels.

    Distributed (``world_size > 1``): :meth:`batch` is still the global batch, and the sampler
    yields rank ``rank``'s contiguous slice of each stream (labelled, unlabelled) of it. The ranks'
    slices, concatenated in rank order, are the one-process batch, so the sequence of global
    batches does not depend on the number of processes.
    """

    def __init__(self, n_labeled: int, n_unlabeled: int, labeled_batch: int, unlabeled_batch: int,
                 seed: int, start: int, stop: int, labeled_foreground: Sequence[int] = (),
                 foreground_fraction: float = 0.0, rank: int = 0, world_size: int = 1):
        if labeled_batch > 0 and n_labeled == 0:
            raise ValueError("labelled batch requested but the labelled pool is empty")
        if unlabeled_batch > 0 and n_unlabeled == 0:
            raise ValueError("unlabelled batch requested but the unlabelled pool is empty")
        if not 0.0 <= foreground_fraction <= 1.0:
            raise ValueError(f"foreground_fraction must be in [0, 1], got {foreground_fraction}")
        if any(not 0 <= i < n_labeled for i in labeled_foreground):
            raise ValueError("labeled_foreground indices must address the labelled pool")
        if not 0 <= rank < world_size or labeled_batch % world_size or unlabeled_batch % world_size:
            raise ValueError(f"rank {rank} of {world_size}: labelled ({labeled_batch}) and unlabelled "
                             f"({unlabeled_batch}) batches must be divisible by the world size")
        self.rank, self.world_size = rank, world_size
        self.n_labeled, self.n_unlabeled = n_labeled, n_unlabeled
        self.labeled_batch, self.unlabeled_batch = labeled_batch, unlabeled_batch
        self.seed, self.start, self.stop = seed, start, stop
        self.labeled_foreground = [int(i) for i in labeled_foreground]
        # No foreground slice labelled (e.g. an unlabelled-only target): fall back to uniform.
        self.n_foreground = round(foreground_fraction * labeled_batch) if self.labeled_foreground else 0

    def batch(self, k: int) -> list[tuple[int, int, int]]:
        out = []
        n_fg, n_rest = self.n_foreground, self.labeled_batch - self.n_foreground
        for j in range(n_fg):
            pick = _stream_element(len(self.labeled_foreground), k * n_fg + j, self.seed, 2)
            out.append((self.labeled_foreground[pick], k, j))
        for j in range(n_rest):
            out.append((_stream_element(self.n_labeled, k * n_rest + j, self.seed, 0), k, n_fg + j))
        for j in range(self.unlabeled_batch):
            idx = _stream_element(self.n_unlabeled, k * self.unlabeled_batch + j, self.seed, 1)
            out.append((self.n_labeled + idx, k, self.labeled_batch + j))
        return out

    def shard(self, batch: list[tuple[int, int, int]]) -> list[tuple[int, int, int]]:
        """This rank's slice of each stream of a global ``batch`` (the whole batch on one process)."""
        if self.world_size == 1:
            return batch
        nl, nu = self.labeled_batch // self.world_size, self.unlabeled_batch // self.world_size
        lab = batch[self.rank * nl : (self.rank + 1) * nl]
        unl = batch[self.labeled_batch + self.rank * nu : self.labeled_batch + (self.rank + 1) * nu]
        return lab + unl

    def __iter__(self) -> Iterator[list[tuple[int, int, int]]]:
        for k in range(self.start, self.stop):
            yield self.shard(self.batch(k))

    def __len__(self) -> int:
        return max(0, self.stop - self.start)


@dataclass(frozen=True)
class AugmentOptions:
    """Paired spatial transforms (same for all modalities and the label), per-modality intensity."""

    enabled: bool = False  # off by default, as in the paper
    flip: bool = True
    rotate_degrees: float = 15.0
    scale: tuple[float, float] = (0.9, 1.1)
    # False: the spatial transforms only (the same geometry draws, so a run with and without the
    # intensity changes is a paired ablation). A tuple: one flag per modality (in the order of the
    # images); every modality's changes are still drawn, so the others' draws do not move.
    intensity: bool | tuple[bool, ...] = True
    intensity_scale: float = 0.1
    intensity_shift: float = 0.1
    noise_std: float = 0.05
    # Simulated low resolution (independent of ``enabled``): each modality of a slice is, with this
    # probability, down-sampled by a zoom from ``low_resolution_zoom`` and brought back. A scan
    # acquired on a coarser grid is resampled to the training spacing by ``predict`` and arrives
    # just as blurred; a network that never saw such an image over-segments it (issue 10).
    low_resolution: float = 0.0
    low_resolution_zoom: tuple[float, float] = (0.5, 1.0)
    # Lesion copy-paste (independent of ``enabled``; data/lesion_paste.py): each labelled slice, with
    # ``paste.probability``, receives the lesion of another labelled tumour slice.
    paste: PasteOptions = PasteOptions()


def simulate_low_resolution(images: np.ndarray, rng: np.random.Generator, prob: float,
                            zoom: tuple[float, float] = (0.5, 1.0), group: int = 1) -> np.ndarray:
    """images: (M * group, H, W) float32 -> the same shape; each modality independently, with
    ``prob``, area-averaged down to ``zoom`` x its size (a bigger voxel) and bilinearly up again
    (as ``predict`` resamples a coarse scan). ``group``: the slices of one modality (its
    through-plane context) share the draw, as the slices of one coarse scan do. MONAI's transform
    does the work; its random state is seeded from ``rng`` so the result is a function of the
    caller's seed (resumes stay exact).
    """
    from monai.transforms import RandSimulateLowResolution  # monai imports slowly; only when used

    out = np.array(images, dtype=np.float32)
    for m in range(out.shape[0] // group):
        if rng.random() >= prob:
            continue
        transform = RandSimulateLowResolution(prob=1.0, downsample_mode="area", upsample_mode="bilinear",
                                              zoom_range=zoom)
        transform.set_random_state(seed=int(rng.integers(2**31)))
        part = slice(m * group, (m + 1) * group)
        out[part] = np.asarray(transform(out[part]).as_tensor())
    return out


def augment_pair(images: np.ndarray, label: np.ndarray | None, rng: np.random.Generator,
                 opts: AugmentOptions, group: int = 1) -> tuple[np.ndarray, np.ndarray | None]:
    """images: (M * group, H, W) float32 (``group`` slices per modality: its through-plane
    context, one intensity change for all of them); label: (H, W) uint8 or None."""
    if opts.flip:
        for axis in (1, 2):
            if rng.random() < 0.5:
                images = np.flip(images, axis=axis)
                label = None if label is None else np.flip(label, axis=axis - 1)
    angle = np.deg2rad(rng.uniform(-opts.rotate_degrees, opts.rotate_degrees))
    zoom = rng.uniform(*opts.scale)
    if angle != 0 or zoom != 1:
        c, s = np.cos(angle) / zoom, np.sin(angle) / zoom
        matrix = np.array([[c, -s], [s, c]])
        centre = (np.array(images.shape[1:]) - 1) / 2
        offset = centre - matrix @ centre
        images = np.stack([ndimage.affine_transform(im, matrix, offset, order=1, mode="constant") for im in images])
        if label is not None:
            label = ndimage.affine_transform(label, matrix, offset, order=0, mode="constant")
    images = np.array(images, dtype=np.float32)
    label = None if label is None else np.ascontiguousarray(label)
    n_modalities = images.shape[0] // group
    apply = (opts.intensity,) * n_modalities if isinstance(opts.intensity, bool) else tuple(opts.intensity)
    if len(apply) != n_modalities:
        raise ValueError(f"intensity flags for {len(apply)} modalities, images hold {n_modalities}")
    if not any(apply):
        return images, label
    for m in range(n_modalities):  # intensity changes differ per modality, like real scanners
        gain = 1 + rng.uniform(-opts.intensity_scale, opts.intensity_scale)
        shift = rng.uniform(-opts.intensity_shift, opts.intensity_shift)
        part = slice(m * group, (m + 1) * group)
        noise = rng.normal(0, opts.noise_std, images[part].shape)
        if apply[m]:
            images[part] = images[part] * gain + shift + noise
    return images, label


class PairedSliceDataset(Dataset):
    """Item = one co-registered slice of every selected modality (+ its label if labelled).

    ``keys`` lists (case, z); the first ``n_labeled`` are the labelled pool. Index items are
    (index, iteration, position) triples from :class:`TwoStreamBatchSampler`, or plain ints.
    ``context`` k: each modality comes with its k neighbouring slices on either side, modality-major
    ``(M * (2k + 1), H, W)`` (:mod:`semicml.data.context`); the label is slice z's.
    ``paste_donors``: positions in the labelled pool of the slices whose lesions may be pasted
    (``augment.paste``); the tumour slices, the sampler's ``labeled_foreground``.
    """

    def __init__(self, store: SliceStore, labeled: Sequence[SliceKey], unlabeled: Sequence[SliceKey],
                 modalities: Sequence[str] | None = None, augment: AugmentOptions = AugmentOptions(), seed: int = 0,
                 context: int = 0, paste_donors: Sequence[int] = ()):
        self.store = store
        self.context = int(context)
        self.keys = list(labeled) + list(unlabeled)
        self.n_labeled = len(labeled)
        names = list(modalities) if modalities else store.modalities
        self.channels = [store.modality_index(m) for m in names]
        self.augment = augment
        self.seed = seed
        if any(not 0 <= i < self.n_labeled for i in paste_donors):
            raise ValueError("paste_donors must address the labelled pool")
        self.paste_donors = [int(i) for i in paste_donors]

    def __len__(self) -> int:
        return len(self.keys)

    def _slice(self, index: int) -> np.ndarray:
        """(M * (2k + 1), H, W) float32, modality-major."""
        case, z = self.keys[index]
        stack = context_stack(self.store.images(case), z, self.context)[:, self.channels]  # (2k+1, M, H, W)
        return np.asarray(stack, dtype=np.float32).transpose(1, 0, 2, 3).reshape(-1, *stack.shape[2:])

    def _label(self, index: int) -> np.ndarray:
        case, z = self.keys[index]
        return np.asarray(self.store.label(case)[z])

    def __getitem__(self, item) -> dict:
        index, iteration, position = item if isinstance(item, tuple) else (item, 0, 0)
        images = self._slice(index)
        group = group_size(self.context)
        is_labeled = index < self.n_labeled
        label = None
        if is_labeled:
            label = self._label(index)
            if self.augment.paste.probability > 0 and self.paste_donors:
                # its own stream: switching it on leaves the other draws unchanged
                rng = np.random.default_rng([self.seed, 13, iteration, position])
                if rng.random() < self.augment.paste.probability:
                    donor = self.paste_donors[int(rng.integers(len(self.paste_donors)))]
                    if donor != index:
                        images, label, _ = paste_lesion(images, label, self._slice(donor), self._label(donor), rng,
                                                        self.augment.paste)
        if self.augment.enabled:
            rng = np.random.default_rng([self.seed, 7, iteration, position])
            images, label = augment_pair(images, label, rng, self.augment, group)
        if self.augment.low_resolution > 0:  # its own stream: switching it on leaves the other draws unchanged
            rng = np.random.default_rng([self.seed, 11, iteration, position])
            images = simulate_low_resolution(images, rng, self.augment.low_resolution, self.augment.low_resolution_zoom,
                                             group)
        out = {"images": torch.from_numpy(np.ascontiguousarray(images)), "labeled": is_labeled}
        if label is not None:
            out["label"] = torch.from_numpy(np.ascontiguousarray(label, dtype=np.int64))
        return out


def collate_two_stream(items: list[dict]) -> dict:
    """-> {"images_l": (L,M,H,W), "label_l": (L,H,W) int64, "images_u": (U,M,H,W)}."""
    lab = [it for it in items if it["labeled"]]
    unl = [it for it in items if not it["labeled"]]
    empty = items[0]["images"].new_zeros((0, *items[0]["images"].shape))  # (0, M, H, W), same dtype
    batch = {
        "images_l": torch.stack([it["images"] for it in lab]) if lab else empty,
        "images_u": torch.stack([it["images"] for it in unl]) if unl else empty,
    }
    h, w = items[0]["images"].shape[-2:]
    batch["label_l"] = torch.stack([it["label"] for it in lab]) if lab else torch.zeros(0, h, w, dtype=torch.int64)
    return batch


def make_loader(dataset: PairedSliceDataset, sampler: TwoStreamBatchSampler, num_workers: int = 0,
                pin_memory: bool = False) -> DataLoader:
    # A private generator: creating a loader must not draw from the global torch RNG, or a resumed
    # run (which creates one more loader) would see different dropout masks than an uninterrupted one.
    generator = torch.Generator().manual_seed(dataset.seed)
    return DataLoader(dataset, batch_sampler=sampler, collate_fn=collate_two_stream, num_workers=num_workers,
                      pin_memory=pin_memory, persistent_workers=False, generator=generator)
