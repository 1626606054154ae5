"""Voxel-wise uncertainty of a prediction: test-time-augmentation (flip) disagreement.

Every network is run on the slice and its three in-plane mirror images (the four flips of
``--tta``); each run is a *member*. With several modalities (fused prediction) the members are
every (network, flip) pair, so the map also shows where the modalities disagree; with an ensemble
of runs, every (run, flip) pair. The map is the
**standard deviation of the members' foreground probabilities** at each voxel, on the input grid:

    u = sqrt(mean_k p_k^2 - (mean_k p_k)^2),   0 <= u <= 0.5

0: every member gives the same probability; 0.5: half of them say 1 and half 0 (the most any
set of numbers in [0, 1] can spread). The probability the mask is thresholded from is the mean of
the same members, so the map describes exactly the prediction that was written.

Why flips and not MC-dropout: the students are trained with their dropout off (as in the
reference code), so switching it on at inference would run networks that were never trained that
way; flips need no dropout and run in every engine (ONNX Runtime and OpenVINO included).
"""

from __future__ import annotations

import numpy as np
import torch

from ..data.preprocess import network_frame
from .engines import Engine
from .ensemble import EnsembleEngine
from .predictor import engine_planes

__all__ = ["FLIPS", "FlippedEngine", "MAX_STD", "Spread", "UNCERTAINTY_SUFFIX", "flip_members", "flip_spread"]

#: The in-plane flips of a (B, C, H, W) batch: identity, rows, columns, both (as ``--tta``).
FLIPS: tuple[tuple[int, ...], ...] = ((), (2,), (3,), (2, 3))
#: The largest standard deviation of numbers in [0, 1].
MAX_STD = 0.5
#: Written beside ``<case>.nii.gz``.
UNCERTAINTY_SUFFIX = "_uncertainty.nii.gz"


class FlippedEngine(Engine):
    """``engine`` seen through one flip: the input is mirrored, the logits mirrored back, so the
    output is aligned with the unflipped slice."""

    def __init__(self, engine: Engine, dims: tuple[int, ...]):
        self.engine = engine
        self.dims = tuple(dims)
        self.name = engine.name
        self.multiple = engine.multiple
        self.context = engine.context  # a 2.5D network gets its neighbour slices through the flip too

    def session(self):
        return self.engine.session()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if not self.dims:
            return self.engine(x)
        return torch.flip(self.engine(torch.flip(x, self.dims)), self.dims)


def flip_members(engine: Engine, image: np.ndarray, affine: np.ndarray, preprocessing: dict, modality: str,
                 window: str = "whole", margin: int = 0, batch_size: int = 32, channels: int = 1):
    """Yield the foreground probability of each flip member, on the image's own voxel grid; for an
    ensemble of runs (:class:`~semicml.inference.ensemble.EnsembleEngine`) of each (run, flip) pair.

    The image is normalised and resampled once (as :func:`~semicml.inference.predict.
    probabilities_on_grid` does); each member is restored to the input grid linearly, so the mean
    of the members equals the ``--tta`` probability up to float rounding. ``channels`` > 1 (region
    networks): each member is ``(C, *image.shape)``.
    """
    frame = network_frame(image, affine, preprocessing, modality, engine.multiple)
    for network in engine.members if isinstance(engine, EnsembleEngine) else [engine]:
        for dims in FLIPS:
            probs = engine_planes(FlippedEngine(network, dims), frame.planes, batch_size=batch_size, window=window,
                                  margin=margin, channels=channels)
            yield frame.restore(probs)


def flip_spread(engine: Engine, image: np.ndarray, affine: np.ndarray, preprocessing: dict, modality: str,
                window: str = "whole", margin: int = 0, channels: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """(mean probability, standard deviation) of the four flip members of one network (of every
    run x flip pair of an ensemble)."""
    spread = Spread()
    for member in flip_members(engine, image, affine, preprocessing, modality, window, margin, channels=channels):
        spread.add(member)
    return spread.mean(), spread.std()


class Spread:
    """Running mean and standard deviation of member maps (float64 sums: one pass, no stack of
    every member in memory)."""

    def __init__(self) -> None:
        self.n = 0
        self._sum: np.ndarray | None = None
        self._sq: np.ndarray | None = None

    def add(self, member: np.ndarray) -> None:
        m = np.asarray(member, dtype=np.float64)
        if self._sum is None:
            self._sum, self._sq = m.copy(), m * m
        else:
            if m.shape != self._sum.shape:
                raise ValueError(f"member of shape {m.shape} beside members of shape {self._sum.shape}")
            self._sum += m
            self._sq += m * m
        self.n += 1

    def mean(self) -> np.ndarray:
        if self._sum is None:
            raise ValueError("no member added")
        return (self._sum / self.n).astype(np.float32)

    def std(self) -> np.ndarray:
        if self._sum is None or self._sq is None:
            raise ValueError("no member added")
        mean = self._sum / self.n
        var = np.clip(self._sq / self.n - mean * mean, 0.0, None)  # rounding can dip below 0
        return np.minimum(np.sqrt(var), MAX_STD).astype(np.float32)
