"""TwoStreamBatchSampler under several processes: which ranks and batch sizes are accepted, and
how a global batch is cut into the ranks' shards (fast, hand-computed; the DDP runs that use it
are in test_distributed.py); paired augmentation and simulated low resolution recomputed by hand."""

from __future__ import annotations

import numpy as np
import pytest

from semicml.data.sampler import AugmentOptions, PairedSliceDataset, TwoStreamBatchSampler, augment_pair

KW = dict(n_labeled=40, n_unlabeled=30, seed=7, start=2, stop=5)


@pytest.mark.parametrize("rank,world,lab,unl", [(2, 2, 4, 2), (-1, 2, 4, 2), (0, 2, 4, 3), (1, 2, 3, 2),
                                               (3, 3, 6, 3), (0, 0, 4, 2)])
def test_a_rank_outside_the_world_or_an_indivisible_stream_is_refused(rank, world, lab, unl):
    with pytest.raises(ValueError) as err:
        TwoStreamBatchSampler(**KW, labeled_batch=lab, unlabeled_batch=unl, rank=rank, world_size=world)
    assert str(err.value) == (f"rank {rank} of {world}: labelled ({lab}) and unlabelled ({unl}) batches "
                              "must be divisible by the world size")


@pytest.mark.parametrize("rank,world", [(0, 1), (0, 2), (1, 2), (2, 3), (0, 3)])
def test_every_rank_inside_the_world_with_divisible_streams_is_accepted(rank, world):
    s = TwoStreamBatchSampler(**KW, labeled_batch=6, unlabeled_batch=6, rank=rank, world_size=world)
    assert (s.rank, s.world_size) == (rank, world)


def test_shards_of_three_ranks_are_contiguous_pieces_of_each_stream():
    kw = dict(**KW, labeled_batch=6, unlabeled_batch=3, labeled_foreground=[0, 5, 9], foreground_fraction=0.5)
    one = TwoStreamBatchSampler(**kw)
    shards = [TwoStreamBatchSampler(**kw, rank=r, world_size=3) for r in range(3)]
    for k in range(2, 5):
        batch = one.batch(k)
        assert one.shard(batch) is batch  # one process: the whole batch, as it is
        lab, unl = batch[:6], batch[6:]
        for r, s in enumerate(shards):
            # 2 labelled (positions 2r, 2r+1) then 1 unlabelled (position 6 + r)
            assert s.shard(batch) == lab[2 * r : 2 * r + 2] + unl[r : r + 1]
    assert [len(list(s)) for s in shards] == [3, 3, 3]
    assert list(shards[1]) == [shards[1].shard(one.batch(k)) for k in range(2, 5)]  # iteration yields the shards


# ------------------------------------------------------------------ paired augmentation, by hand
class _Store:
    """The two calls PairedSliceDataset makes of a SliceStore, on one hand-made case."""

    modalities = ["T2", "T1ce"]

    def __init__(self, images: np.ndarray, label: np.ndarray):
        self._images, self._label = images, label  # (Z, M, H, W), (Z, H, W)

    def modality_index(self, name: str) -> int:
        return self.modalities.index(name)

    def images(self, case: str) -> np.ndarray:
        return self._images

    def label(self, case: str) -> np.ndarray:
        return self._label


def _square(size: int = 32, half: int = 4) -> np.ndarray:
    sq = np.zeros((size, size), np.uint8)
    c = size // 2
    sq[c - half : c + half, c - half : c + half] = 1
    return sq


def test_a_zoom_of_exactly_two_without_rotation_doubles_image_and_label_about_the_centre():
    opts = AugmentOptions(enabled=True, flip=False, rotate_degrees=0.0, scale=(2.0, 2.0), intensity_scale=0.0,
                          intensity_shift=0.0, noise_std=0.0)
    sq = _square()  # 8 x 8 in the middle of 32 x 32
    out, lab = augment_pair(sq[None].astype(np.float32), sq, np.random.default_rng(0), opts)
    assert lab.sum() == pytest.approx(16 * 16, abs=2 * 16 + 1)  # 16 x 16 (nearest neighbour may add a row)
    assert (out[0] > 0.5).sum() == pytest.approx(16 * 16, abs=2 * 16 + 1)
    assert lab[16, 16] == 1 and lab[9, 16] == 1 and lab[16, 9] == 1 and lab[5, 16] == 0


@pytest.mark.parametrize("dtype", [np.int16, np.float64])
def test_augmented_images_are_float32_whatever_the_stored_dtype(dtype):
    opts = AugmentOptions(enabled=True, flip=False, rotate_degrees=0.0, scale=(1.0, 1.0))
    out, _ = augment_pair(np.ones((2, 8, 8), dtype), None, np.random.default_rng(0), opts)
    assert out.dtype == np.float32


def test_intensity_change_is_the_documented_gain_shift_and_noise_per_modality():
    """image * (1 + U(-s, s)) + U(-t, t) + N(0, sd), drawn per modality in that order after the two
    spatial draws (angle, zoom): recomputed here from the same generator."""
    opts = AugmentOptions(enabled=True, flip=False, rotate_degrees=0.0, scale=(1.0, 1.0), intensity_scale=0.2,
                          intensity_shift=0.3, noise_std=0.1)
    images = np.random.default_rng(5).normal(size=(2, 8, 8)).astype(np.float32)
    out, _ = augment_pair(images, None, np.random.default_rng(9), opts)
    rng = np.random.default_rng(9)
    rng.uniform(-0.0, 0.0), rng.uniform(1.0, 1.0)
    for m in range(2):
        gain, shift = 1 + rng.uniform(-0.2, 0.2), rng.uniform(-0.3, 0.3)
        expected = images[m] * gain + shift + rng.normal(0, 0.1, (8, 8))
        np.testing.assert_allclose(out[m], expected, rtol=1e-5, atol=1e-5)


def test_dataset_low_resolution_draws_its_zoom_from_the_seeded_stream_and_the_options_range():
    """The zoom is drawn from ``low_resolution_zoom`` by a generator seeded with (seed, 11, iteration,
    position): the same item twice is the same image, the range given is the range used (zoom 1:
    the image comes back unchanged), and the augmentation stream is left as it was."""
    from semicml.data.sampler import simulate_low_resolution

    images = np.random.default_rng(0).normal(size=(1, 2, 32, 32)).astype(np.float32)
    store = _Store(images, _square()[None])
    keys = [("a", 0)]

    def item(**opts):
        ds = PairedSliceDataset(store, keys, [], ["T2", "T1ce"], augment=AugmentOptions(**opts), seed=3)
        return ds[(0, 4, 1)]["images"].numpy()

    varied = dict(low_resolution=1.0, low_resolution_zoom=(0.3, 0.9))
    np.testing.assert_array_equal(item(**varied), item(**varied))
    expected = simulate_low_resolution(images[0], np.random.default_rng([3, 11, 4, 1]), 1.0, (0.3, 0.9))
    np.testing.assert_array_equal(item(**varied), expected)
    np.testing.assert_allclose(item(low_resolution=1.0, low_resolution_zoom=(1.0, 1.0)), images[0], atol=1e-6)
    # switching the simulation on leaves the augmentation's draws (stream 7) unchanged
    aug = dict(enabled=True, rotate_degrees=0.0, scale=(1.0, 1.0), noise_std=0.0, intensity_shift=0.0)
    plain, both = item(**aug), item(**aug, low_resolution=1.0, low_resolution_zoom=(1.0, 1.0))
    np.testing.assert_allclose(both, plain, atol=1e-5)


def test_low_resolution_down_sampling_averages_areas_so_a_single_bright_voxel_keeps_its_mass():
    """Area averaging keeps the mean of a slice (a lone voxel becomes a quarter in its 2 x 2 cell,
    then is spread back by the bilinear up-sampling); nearest-neighbour down-sampling would drop
    it or blow it up to the whole cell."""
    from semicml.data.sampler import simulate_low_resolution

    image = np.zeros((1, 8, 8), np.float32)
    image[0, 3, 3] = 1.0
    out = simulate_low_resolution(image, np.random.default_rng(0), 1.0, (0.5, 0.5))
    assert out.sum() == pytest.approx(1.0, abs=1e-5) and 0 < out.max() < 0.25
