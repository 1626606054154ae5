"""Prepare's building blocks recomputed by hand (issue 14, survivors of the mutation run over
data/geometry.py, data/normalisation.py and data/preprocess.py): label resampling through one-hot
planes, the foreground samples and global statistics of the CT / PET schemes, ..."""

from __future__ import annotations

import numpy as np
import pytest

from semicml.data.geometry import onehot_resample
from semicml.data.normalisation import SAMPLES_PER_CASE, global_statistics, sample_foreground
from semicml.errors import ConfigError


def pairwise_mean(a: np.ndarray) -> np.ndarray:
    """A 'resampler' to half-way points: value i is the mean of inputs i and i + 1 (float32 kept)."""
    return (a[:-1] + a[1:]) / 2


# ------------------------------------------------------------------------------ onehot_resample
def test_onehot_resample_argmax_by_hand_ties_go_to_the_lower_label():
    labels = np.array([0, 0, 1, 1, 2])
    # one-hot means: 0 -> [1, .5, 0, 0], 1 -> [0, .5, 1, .5], 2 -> [0, 0, 0, .5]: the ties at
    # positions 1 and 3 go to the lower label (a strict "better than"), as np.argmax does
    out = onehot_resample(labels, 3, pairwise_mean)
    assert out.tolist() == [0, 0, 1, 1] and out.dtype == np.uint8
    assert out.tolist() == np.argmax([pairwise_mean((labels == v).astype(np.float32)) for v in range(3)], 0).tolist()
    # the best so far is kept: at position 0 label 2 (0.3) beats label 0 (0) but not label 1 (0.7)
    labels = np.array([1, 2, 2, 0, 0])  # 0 -> [0, 0, .3, 1], 1 -> [.7, 0, 0, 0], 2 -> [.3, 1, .7, 0]
    assert onehot_resample(labels, 3, lambda a: 0.7 * a[:-1] + 0.3 * a[1:]).tolist() == [1, 2, 2, 0]


def test_onehot_resample_of_a_single_value_is_background_of_the_resampled_shape():
    seen = []

    def resample(a):
        seen.append(a.dtype)
        return pairwise_mean(a)

    out = onehot_resample(np.zeros(5, np.int16), 1, resample)
    assert out.shape == (4,) and out.dtype == np.uint8 and not out.any()
    assert seen == [np.float32]  # the resampler is given float planes (linear interpolation needs them)
    assert onehot_resample(np.zeros(3, np.int16), 0, pairwise_mean).tolist() == [0, 0]


# ------------------------------------------------------------------------------ normalisation statistics
def test_sample_foreground_takes_the_masked_voxels_of_any_mask_type_as_float32():
    image = np.arange(12, dtype=np.int16).reshape(3, 4)
    mask = np.zeros((3, 4), np.uint8)  # a 0/1 integer mask means inside / outside, not indices
    mask[1, 2] = mask[2, 0] = 1
    got = sample_foreground(image, mask, 0)
    assert got.tolist() == [6.0, 8.0] and got.dtype == np.float32


def test_sample_foreground_keeps_exactly_the_budget_in_order_and_samples_without_replacement():
    exact = np.arange(SAMPLES_PER_CASE, dtype=np.float32)
    assert np.array_equal(sample_foreground(exact, np.ones(exact.shape, bool), 3), exact)  # not shuffled
    more = np.arange(3 * SAMPLES_PER_CASE, dtype=np.float32)
    got = sample_foreground(more, np.ones(more.shape, bool), 3)
    assert got.size == SAMPLES_PER_CASE and np.unique(got).size == SAMPLES_PER_CASE  # no voxel twice


def test_global_statistics_of_no_samples_is_the_one_line_error():
    with pytest.raises(ConfigError) as err:
        global_statistics("ct", [])
    assert str(err.value) == ("too few foreground voxels (0) to compute the ct normalisation statistics; give "
                              "labelled cases or choose another --normalisation")


def test_global_statistics_accumulate_in_float64():
    # float32 samples far from zero: a float32 mean / std would be off in the 4th digit
    rng = np.random.default_rng(0)
    samples = [(3000.0 + rng.normal(0, 1, 50_000)).astype(np.float32) for _ in range(4)]
    exact = np.concatenate([s.astype(np.float64) for s in samples])
    got = global_statistics("ct", samples)
    assert got["mean"] == float(exact.mean()) and got["std"] == float(exact.std())


def test_global_statistics_need_ten_voxels_and_a_constant_foreground_gets_std_1():
    with pytest.raises(ConfigError, match=r"^too few foreground voxels \(9\)"):
        global_statistics("ct", [np.arange(9.0)])
    ten = global_statistics("ct", [np.full(10, 40.0)])  # ten voxels are enough; all equal: std 0 -> 1
    assert ten == {"low": 40.0, "high": 40.0, "mean": 40.0, "std": 1.0}
    small = global_statistics("ct", [np.array([0.0, 0.5] * 5)])  # a real spread below 1 is kept
    assert small["std"] == 0.25
    tiny = global_statistics("ct", [np.array([0.0, 2e-8] * 5)])  # std 1e-8 is not above 1e-8: 1
    assert tiny["std"] == 1.0
