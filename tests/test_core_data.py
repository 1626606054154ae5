"""Preprocessing, the two-stream sampler and paired augmentation, against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest

from semicml.data.preprocess import (
    CLIP_PERCENTILES,
    InPlaneBox,
    extract_planes,
    foreground_box,
    normalise,
    paste_planes,
    to_axial_last,
    whole_plane_box,
)
from semicml.data.sampler import AugmentOptions, TwoStreamBatchSampler, augment_pair
from semicml.data.store import PrepareOptions, SliceStore, prepare_store

from conftest import phantom_arrays, phantom_case_ids


# --------------------------------------------------------------------------- normalisation
def documented_zscore(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The formula of the docs, written out: clip the masked voxels to the 0.5 / 99.5 percentiles
    of the masked voxels, z-score them with the clipped mean and std, leave the rest at 0."""
    values = image[mask].astype(np.float64)
    low, high = np.percentile(values, [0.5, 99.5])
    clipped = np.clip(values, low, high)
    out = np.zeros(image.shape, np.float64)
    out[mask] = (clipped - clipped.mean()) / clipped.std()
    return out


def test_normalise_zscore_nonzero_by_hand():
    image = np.zeros((4, 5, 6), np.float32)
    image[1:3, 1:4, 1:5] = np.arange(24, dtype=np.float32).reshape(2, 3, 4) + 10
    image[1, 1, 1] = 1000.0  # an outlier, clipped
    out, stats = normalise(image, "zscore_nonzero")
    mask = image != 0
    assert out.dtype == np.float32 and np.all(out[~mask] == 0)
    assert np.allclose(out, documented_zscore(image, mask), atol=1e-5)
    assert CLIP_PERCENTILES == (0.5, 99.5)
    values = image[mask]
    low, high = np.percentile(values, [0.5, 99.5])
    assert stats.method == "zscore_nonzero" and stats.low == pytest.approx(low) and stats.high == pytest.approx(high)
    assert stats.mean == pytest.approx(np.clip(values, low, high).mean(), rel=1e-6)
    assert stats.std == pytest.approx(np.clip(values, low, high).std(), rel=1e-6)
    assert out[mask].mean() == pytest.approx(0, abs=1e-5) and out[mask].std() == pytest.approx(1, abs=1e-4)


def test_normalise_other_methods_and_edge_cases():
    image = np.arange(60, dtype=np.float32).reshape(3, 4, 5)
    out, stats = normalise(image, "zscore")
    assert np.allclose(out, documented_zscore(image, np.ones(image.shape, bool)), atol=1e-5)
    assert out[0, 0, 0] != 0  # zero voxels are normalised too
    same, stats = normalise(image.astype(np.int16), "none")
    assert same.dtype == np.float32 and np.array_equal(same, image) and (stats.mean, stats.std) == (0.0, 1.0)
    sparse = np.zeros((4, 4, 4), np.float32)
    sparse.flat[:9] = 5.0  # fewer than 10 non-zero voxels: all zeros
    out, stats = normalise(sparse, "zscore_nonzero")
    assert not out.any() and stats.std == 1.0
    sparse.flat[:10] = np.arange(1, 11)  # ten are enough
    assert normalise(sparse, "zscore_nonzero")[0].any()
    flat = np.zeros((4, 4, 4), np.float32)
    flat[:2] = 7.0  # constant: std 0 -> 1, the brain becomes 0
    out, stats = normalise(flat, "zscore_nonzero")
    assert stats.std == 1.0 and stats.mean == 7.0 and not out.any()
    with pytest.raises(ValueError, match="unknown normalisation"):
        normalise(image, "minmax")


@pytest.fixture(scope="module")
def store(phantom_root, tmp_path_factory) -> SliceStore:
    out = tmp_path_factory.mktemp("core-store") / "s"
    prepare_store(phantom_root, out, PrepareOptions(modalities=("T2", "T1ce"), size=64, workers=1), progress=False)
    return SliceStore(out)


def test_stored_slices_are_the_documented_normalisation_of_each_whole_modality(store, phantom_root):
    """Catches statistics computed without the tumour voxels (or with another modality's)."""
    case = phantom_case_ids(phantom_root)[0]
    arrays = phantom_arrays(phantom_root, case)
    meta = store.cases[case]
    stored = np.asarray(store.images(case), dtype=np.float32)  # (Z, M, H, W) float16 on disk
    label = to_axial_last(arrays["label"], meta.axial_axis)
    for m, name in enumerate(store.modalities):
        vol = to_axial_last(arrays[name], meta.axial_axis)
        expected = extract_planes(documented_zscore(vol, vol != 0), meta.box).transpose(2, 0, 1)
        assert np.allclose(stored[:, m], expected, atol=2e-2), name
        # the tumour is part of the statistics: without it the numbers differ by far more
        brain = (vol != 0) & (label == 0)
        without = extract_planes(documented_zscore(np.where(brain, vol, 0), brain), meta.box).transpose(2, 0, 1)
        inside = extract_planes((vol != 0) & (label == 0), meta.box).transpose(2, 0, 1)
        assert np.abs(stored[:, m][inside] - without[inside]).max() > 0.1


# --------------------------------------------------------------------------- geometry
def test_foreground_box_by_hand():
    ref = np.zeros((40, 30, 5), np.float32)
    ref[10:20, 5:15, 2] = -1.0  # negative values count as non-zero
    assert foreground_box(ref, 16) == InPlaneBox("crop", x0=7, y0=2, side=16, size=16)
    assert foreground_box(ref, 32, "resize") == InPlaneBox("resize", x0=10, y0=5, side=10, size=32)
    ref[10:25, 5:12, 3] = 1.0  # x extent 15 > y extent 10: the side is the larger one
    assert foreground_box(ref, 32, "resize") == InPlaneBox("resize", x0=10, y0=3, side=15, size=32)
    empty = np.zeros((40, 30, 5))
    assert foreground_box(empty, 16) == InPlaneBox("crop", x0=12, y0=7, side=16, size=16)
    with pytest.raises(ValueError, match="in-plane mode"):
        foreground_box(ref, 16, "pad")


def test_whole_plane_box_by_hand():
    assert whole_plane_box((40, 36), 16) == InPlaneBox("crop", x0=-4, y0=-6, side=48, size=48)
    assert whole_plane_box((32, 32), 16) == InPlaneBox("crop", x0=0, y0=0, side=32, size=32)
    assert whole_plane_box((33, 10), 4) == InPlaneBox("crop", x0=-2, y0=-13, side=36, size=36)


def test_extract_and_paste_are_inverse_on_the_box():
    rng = np.random.default_rng(0)
    vol = rng.random((20, 14, 3)).astype(np.float32)
    box = InPlaneBox("crop", x0=-3, y0=4, side=16, size=16)
    planes = extract_planes(vol, box)
    assert planes.shape == (16, 16, 3)
    assert np.array_equal(planes[3:16, 0:10], vol[0:13, 4:14]) and not planes[:3].any() and not planes[:, 10:].any()
    back = paste_planes(planes, box, (20, 14))
    assert np.array_equal(back[0:13, 4:14], vol[0:13, 4:14]) and not back[13:].any() and not back[:, :4].any()
    whole = whole_plane_box((20, 14), 4)
    assert np.array_equal(paste_planes(extract_planes(vol, whole), whole, (20, 14)), vol)
    rbox = InPlaneBox("resize", x0=2, y0=1, side=8, size=16)
    up = extract_planes(np.ones((20, 14, 1), np.float32), rbox)
    assert up.shape == (16, 16, 1) and np.allclose(up, 1.0)
    down = paste_planes(up, rbox, (20, 14))
    assert np.allclose(down[2:10, 1:9], 1.0) and down.sum() == pytest.approx(64)


# --------------------------------------------------------------------------- sampler
def test_sampler_foreground_positions_hold_foreground_slices():
    fg = [2, 5, 7]
    s = TwoStreamBatchSampler(10, 5, 4, 2, seed=3, start=0, stop=30, labeled_foreground=fg, foreground_fraction=0.5)
    assert s.n_foreground == 2 and len(s) == 30
    seen_rest = set()
    for k, batch in enumerate(s):
        assert [pos for _, it, pos in batch] == list(range(6)) and {it for _, it, _ in batch} == {k}
        idx = [i for i, _, _ in batch]
        assert set(idx[:2]) <= set(fg)
        assert all(0 <= i < 10 for i in idx[2:4]) and all(10 <= i < 15 for i in idx[4:])
        seen_rest.update(idx[2:4])
    # the foreground stream is a walk through permutations of the foreground list: in 3 batches
    # (6 picks) each foreground slice comes exactly twice
    picks = [i for k in range(3) for i, _, _ in s.batch(k)[:2]]
    assert sorted(picks) == sorted(fg * 2)
    assert seen_rest == set(range(10))  # the rest of the batch still sees every labelled slice


def test_sampler_foreground_fraction_rounding_and_fallbacks():
    assert TwoStreamBatchSampler(10, 5, 4, 2, 0, 0, 1, [1], foreground_fraction=0.3).n_foreground == 1
    assert TwoStreamBatchSampler(10, 5, 4, 2, 0, 0, 1, [1], foreground_fraction=1.0).n_foreground == 4
    assert TwoStreamBatchSampler(10, 5, 4, 2, 0, 0, 1, [], foreground_fraction=1.0).n_foreground == 0
    assert TwoStreamBatchSampler(10, 5, 4, 2, 0, 0, 1, [1, 2]).n_foreground == 0
    assert len(TwoStreamBatchSampler(10, 5, 4, 2, 0, 5, 3)) == 0
    messages = {
        "n_labeled": r"^labelled batch requested but the labelled pool is empty$",
        "n_unlabeled": r"^unlabelled batch requested but the unlabelled pool is empty$",
        "foreground_fraction": r"^foreground_fraction must be in \[0, 1\], got ",
        "labeled_foreground": r"^labeled_foreground indices must address the labelled pool$",
    }
    for bad in (dict(n_labeled=0), dict(n_unlabeled=0), dict(foreground_fraction=1.5),
                dict(foreground_fraction=-0.1), dict(labeled_foreground=[10]), dict(labeled_foreground=[-1])):
        args = dict(n_labeled=10, n_unlabeled=5, labeled_batch=4, unlabeled_batch=2, seed=0, start=0, stop=1,
                    labeled_foreground=[1], foreground_fraction=0.5)
        args.update(bad)
        with pytest.raises(ValueError, match=messages[next(iter(bad))]):
            TwoStreamBatchSampler(**args)
    TwoStreamBatchSampler(0, 5, 0, 2, 0, 0, 1)  # no labelled batch: an empty pool is fine
    TwoStreamBatchSampler(10, 0, 4, 0, 0, 0, 1)


def test_sampler_streams_are_seeded_permutations():
    a = TwoStreamBatchSampler(7, 5, 1, 1, seed=1, start=0, stop=14)
    lab = [b[0][0] for b in a]
    assert sorted(lab[:7]) == list(range(7)) and sorted(lab[7:]) == list(range(7)) and lab[:7] != lab[7:]
    unl = [b[1][0] for b in a]
    assert sorted(unl[:5]) == list(range(7, 12)) and sorted(unl[5:10]) == list(range(7, 12))
    b = TwoStreamBatchSampler(7, 5, 1, 1, seed=2, start=0, stop=14)
    assert [x[0][0] for x in b] != lab
    assert list(TwoStreamBatchSampler(7, 5, 1, 1, seed=1, start=3, stop=5)) == [a.batch(3), a.batch(4)]


# --------------------------------------------------------------------------- paired augmentation
def l_shape(h: int = 48, w: int = 40) -> np.ndarray:
    label = np.zeros((h, w), np.uint8)
    label[6:30, 8:14] = 1
    label[24:30, 8:32] = 1  # an L: no flip or rotation maps it onto itself
    label[10:13, 25:28] = 1
    return label


FLIPS_ONLY = AugmentOptions(enabled=True, rotate_degrees=0.0, scale=(1.0, 1.0), intensity_scale=0.0,
                            intensity_shift=0.0, noise_std=0.0)
ALL_SPATIAL = AugmentOptions(enabled=True, rotate_degrees=30.0, scale=(0.8, 1.2), intensity_scale=0.0,
                             intensity_shift=0.0, noise_std=0.0)


@pytest.mark.parametrize("seed", range(12))
def test_flip_moves_label_and_every_modality_together(seed):
    """An image equal to its label: after every flip label == (image > 0.5), in each modality.
    Catches the label flipped on a different axis than the images."""
    label = l_shape()
    images = np.stack([label, label]).astype(np.float32)
    out, lab = augment_pair(images, label, np.random.default_rng(seed), FLIPS_ONLY)
    assert out.shape == images.shape and out.dtype == np.float32 and lab.shape == label.shape
    for m in range(2):
        assert np.array_equal(lab, (out[m] > 0.5).astype(np.uint8))
    assert lab.flags["C_CONTIGUOUS"]


def test_flips_cover_both_axes():
    label = l_shape()
    images = label[None].astype(np.float32)
    results = {augment_pair(images, label, np.random.default_rng(s), FLIPS_ONLY)[1].tobytes() for s in range(16)}
    expected = {label[::a, ::b].tobytes() for a in (1, -1) for b in (1, -1)}
    assert results == expected


@pytest.mark.parametrize("seed", range(12))
def test_rotation_and_zoom_move_label_and_every_modality_together(seed):
    """Catches the label rotated (or zoomed) differently from the images. Bilinear images and a
    nearest-neighbour label may differ on boundary voxels only."""
    label = l_shape()
    images = np.stack([label, label]).astype(np.float32)
    out, lab = augment_pair(images, label, np.random.default_rng(seed), ALL_SPATIAL)
    assert lab.dtype == np.uint8 and set(np.unique(lab)) <= {0, 1}
    assert np.array_equal(out[0], out[1])
    differ = np.count_nonzero(lab != (out[0] > 0.5))
    assert differ <= 0.08 * label.sum()
    assert not np.array_equal(lab, label)  # something did move


def test_intensity_changes_differ_per_modality_and_label_is_optional():
    rng = np.random.default_rng(0)
    images = np.ones((2, 16, 16), np.float32)
    opts = AugmentOptions(enabled=True, flip=False, rotate_degrees=0.0, scale=(1.0, 1.0), intensity_scale=0.2,
                          intensity_shift=0.1, noise_std=0.0)
    out, lab = augment_pair(images, None, rng, opts)
    assert lab is None
    a, b = float(out[0].mean()), float(out[1].mean())
    assert np.allclose(out[0], a) and np.allclose(out[1], b) and a != b
    assert 0.7 <= a <= 1.3 and 0.7 <= b <= 1.3
    noisy, _ = augment_pair(images, None, np.random.default_rng(1),
                            AugmentOptions(enabled=True, flip=False, rotate_degrees=0.0, scale=(1.0, 1.0),
                                           intensity_scale=0.0, intensity_shift=0.0, noise_std=0.5))
    assert 0.3 < noisy.std() < 0.7 and abs(noisy.mean() - 1.0) < 0.1


def test_rotation_and_zoom_turn_about_the_slice_centre():
    yy, xx = np.mgrid[:41, :41]
    disk = (((yy - 20) ** 2 + (xx - 20) ** 2) < 64).astype(np.uint8)  # centred on the middle voxel
    for seed in range(6):
        out, lab = augment_pair(disk[None].astype(np.float32), disk, np.random.default_rng(seed), ALL_SPATIAL)
        for mask in (lab > 0, out[0] > 0.5):
            ys, xs = np.nonzero(mask)
            assert abs(ys.mean() - 20) < 0.3 and abs(xs.mean() - 20) < 0.3
        # the zoom of (0.8, 1.2) changes the area by at most its square
        assert 0.6 * disk.sum() < lab.sum() < 1.5 * disk.sum()


def test_intensity_gain_and_shift_are_drawn_on_both_sides():
    ones = np.ones((1, 4, 4), np.float32)
    base = dict(enabled=True, flip=False, rotate_degrees=0.0, scale=(1.0, 1.0), noise_std=0.0)
    gains = [float(augment_pair(ones, None, np.random.default_rng(s),
                                AugmentOptions(**base, intensity_scale=0.2, intensity_shift=0.0))[0].mean())
             for s in range(20)]
    shifts = [float(augment_pair(ones, None, np.random.default_rng(s),
                                 AugmentOptions(**base, intensity_scale=0.0, intensity_shift=0.1))[0].mean()) - 1
              for s in range(20)]
    assert 0.8 <= min(gains) < 1.0 < max(gains) <= 1.2
    assert -0.1 <= min(shifts) < 0.0 < max(shifts) <= 0.1
    plain, lab = augment_pair(ones, np.ones((4, 4), np.uint8), np.random.default_rng(0),
                              AugmentOptions(**base, intensity_scale=0.0, intensity_shift=0.0))
    assert np.array_equal(plain, ones) and np.array_equal(lab, np.ones((4, 4)))


def test_spatial_only_augmentation_keeps_the_geometry_and_drops_the_intensity_changes():
    """``intensity=False`` (config ``augment_intensity: false``): the same flips, rotation and zoom
    as the full augmentation from the same draw (a paired ablation), but no gain, shift or noise."""
    label = l_shape()
    images = np.stack([label, 2 * label]).astype(np.float32) + 0.5
    full = AugmentOptions(enabled=True, rotate_degrees=30.0, scale=(0.8, 1.2), noise_std=0.2)
    spatial = AugmentOptions(enabled=True, rotate_degrees=30.0, scale=(0.8, 1.2), noise_std=0.2, intensity=False)
    zero = AugmentOptions(enabled=True, rotate_degrees=30.0, scale=(0.8, 1.2), intensity_scale=0.0,
                          intensity_shift=0.0, noise_std=0.0)
    for seed in range(4):
        out_full, lab_full = augment_pair(images, label, np.random.default_rng(seed), full)
        out_sp, lab_sp = augment_pair(images, label, np.random.default_rng(seed), spatial)
        out_zero, _ = augment_pair(images, label, np.random.default_rng(seed), zero)
        assert np.array_equal(lab_sp, lab_full)
        assert np.array_equal(out_sp, out_zero)  # geometry only, bit for bit
        assert not np.allclose(out_sp, out_full, atol=0.05)  # the full one did change the intensities


def test_intensity_changes_for_listed_modalities_only_keep_the_paired_draws():
    """``intensity=(False, True)`` (config ``augment_intensity: [t1ce]`` on t2, t1ce): the first
    modality comes out exactly as spatial-only, the second exactly as the full augmentation from
    the same draw (its gain, shift and noise do not move when the first one's are not applied)."""
    label = l_shape()
    images = np.stack([label, 2 * label]).astype(np.float32) + 0.5
    common = dict(enabled=True, rotate_degrees=30.0, scale=(0.8, 1.2), noise_std=0.2)
    for seed in range(4):
        out_full, lab_full = augment_pair(images, label, np.random.default_rng(seed), AugmentOptions(**common))
        out_sp, _ = augment_pair(images, label, np.random.default_rng(seed), AugmentOptions(**common, intensity=False))
        out_one, lab_one = augment_pair(images, label, np.random.default_rng(seed),
                                        AugmentOptions(**common, intensity=(False, True)))
        assert np.array_equal(lab_one, lab_full)
        assert np.array_equal(out_one[0], out_sp[0]) and not np.allclose(out_one[0], out_full[0], atol=0.05)
        assert np.array_equal(out_one[1], out_full[1]) and not np.allclose(out_one[1], out_sp[1], atol=0.05)
        none, _ = augment_pair(images, label, np.random.default_rng(seed), AugmentOptions(**common, intensity=(False, False)))
        assert np.array_equal(none, out_sp)
    with pytest.raises(ValueError, match="1 modalities, images hold 2"):
        augment_pair(images, label, np.random.default_rng(0), AugmentOptions(**common, intensity=(True,)))


def test_augment_intensity_list_maps_run_modalities_and_rejects_unknown_names():
    from semicml.config import build_config
    from semicml.engine.augmentation import augment_options
    from semicml.errors import ConfigError

    cfg = build_config(overrides={"augment": True, "augment_intensity": ["T1ce"]})
    assert augment_options(cfg, ["t2", "t1ce"]).intensity == (False, True)
    assert augment_options(cfg, ["t1ce", "t2", "flair"]).intensity == (True, False, False)
    assert build_config(overrides={"augment_intensity": "t2, t1ce"}).augment_intensity == ["t2", "t1ce"]
    assert build_config(overrides={"augment_intensity": "no"}).augment_intensity is False
    with pytest.raises(ConfigError, match="augment_intensity names T1ce, not a modality of this run"):
        augment_options(cfg, ["t2", "flair"])
    for bad in ([], ["t2", "T2"], [""]):
        with pytest.raises(ConfigError, match="distinct modalities"):
            build_config(overrides={"augment_intensity": bad})


def test_training_config_reaches_the_sampler_augmentation():
    from semicml.config import build_config
    from semicml.engine.augmentation import augment_options

    default = augment_options(build_config())
    assert (default.enabled, default.intensity, default.low_resolution) == (False, True, 0.25)
    spatial = augment_options(build_config(overrides={"augment": True, "augment_intensity": False,
                                                      "low_resolution": 0.5}))
    assert (spatial.enabled, spatial.intensity, spatial.low_resolution) == (True, False, 0.5)


def test_collate_two_stream_shapes_and_empty_streams():
    import torch

    from semicml.data.sampler import collate_two_stream

    lab = {"images": torch.ones(2, 8, 6), "labeled": True, "label": torch.ones(8, 6, dtype=torch.int64)}
    unl = {"images": torch.zeros(2, 8, 6), "labeled": False}
    batch = collate_two_stream([lab, unl, unl])
    assert batch["images_l"].shape == (1, 2, 8, 6) and batch["images_u"].shape == (2, 2, 8, 6)
    assert batch["label_l"].shape == (1, 8, 6) and torch.all(batch["images_l"] == 1)
    only_u = collate_two_stream([unl])
    assert only_u["images_l"].shape == (0, 2, 8, 6) and only_u["label_l"].shape == (0, 8, 6)
    assert only_u["label_l"].dtype == torch.int64 and only_u["images_l"].dtype == torch.float32
    only_l = collate_two_stream([lab])
    assert only_l["images_u"].shape == (0, 2, 8, 6)
    # methods concatenate the two streams (unlabelled_batch = 0 is a valid setting)
    assert torch.cat([only_l["images_l"], only_l["images_u"]]).shape == (1, 2, 8, 6)


def test_dataset_items_label_only_the_labelled_pool_and_augment_per_position(store):
    from semicml.data.sampler import PairedSliceDataset

    keys = [(c, z) for c, m in store.cases.items() if m.labeled for z in m.foreground_slices[:2]]
    ds = PairedSliceDataset(store, keys[:3], keys[3:6], ["T1ce", "T2"], augment=FLIPS_ONLY, seed=5)
    assert len(ds) == 6 and ds.n_labeled == 3 and ds.channels == [1, 0]
    plain = PairedSliceDataset(store, keys[:3], keys[3:6], ["T1ce", "T2"])
    item, raw = plain[1], np.asarray(store.images(keys[1][0])[keys[1][1]], dtype=np.float32)
    assert item["labeled"] and np.array_equal(item["images"].numpy(), raw[[1, 0]])
    assert np.array_equal(item["label"].numpy(), np.asarray(store.label(keys[1][0])[keys[1][1]]))
    assert not plain[4]["labeled"] and "label" not in plain[4]
    # the augmentation is a function of (seed, iteration, position): label and images flip together
    for it, pos in ((0, 0), (1, 0), (0, 1), (3, 2)):
        a, b = ds[(1, it, pos)], ds[(1, it, pos)]
        assert np.array_equal(a["images"], b["images"])
        flips = {(sy, sx): plain[1]["images"].numpy()[:, ::sy, ::sx] for sy in (1, -1) for sx in (1, -1)}
        match = [k for k, v in flips.items() if np.array_equal(v, a["images"].numpy())]
        assert len(match) >= 1
        sy, sx = match[0]
        assert np.array_equal(a["label"].numpy(), plain[1]["label"].numpy()[::sy, ::sx])
    draws = {ds[(1, it, 0)]["images"].numpy().tobytes() for it in range(12)}
    assert len(draws) > 1


def _moments(mask: np.ndarray) -> tuple[float, float, float, float]:
    ys, xs = np.nonzero(mask)
    cov = np.cov(np.stack([ys, xs]).astype(float))
    return float(mask.sum()), cov[0, 0], cov[1, 1], cov[0, 1]


@pytest.mark.parametrize("seed", range(6))
def test_spatial_transform_is_a_rotation_with_the_drawn_zoom(seed):
    """A disk stays a round disk scaled by the drawn zoom; a bar turns by the drawn angle."""
    opts = AugmentOptions(enabled=True, flip=False, rotate_degrees=30.0, scale=(0.7, 1.3), intensity_scale=0.0,
                          intensity_shift=0.0, noise_std=0.0)
    draw = np.random.default_rng(seed)  # the draws augment_pair makes without flips: angle, then zoom
    angle, zoom = np.deg2rad(draw.uniform(-30.0, 30.0)), draw.uniform(0.7, 1.3)
    yy, xx = np.mgrid[:61, :61]
    disk = (((yy - 30) ** 2 + (xx - 30) ** 2) <= 100).astype(np.uint8)
    _, lab = augment_pair(disk[None].astype(np.float32), disk, np.random.default_rng(seed), opts)
    area, vy, vx, cxy = _moments(lab)
    assert area == pytest.approx(disk.sum() * zoom ** 2, rel=0.06)
    assert vy == pytest.approx(vx, rel=0.08) and abs(cxy) < 0.05 * vy
    bar = ((np.abs(yy - 30) <= 2) & (np.abs(xx - 30) <= 20)).astype(np.uint8)
    out, lab = augment_pair(bar[None].astype(np.float32), bar, np.random.default_rng(seed), opts)
    for mask in (lab > 0, out[0] > 0.5):
        _, vy, vx, cxy = _moments(mask)
        turned = 0.5 * np.arctan2(2 * cxy, vx - vy)  # principal axis vs the column axis
        assert abs(abs(turned) - abs(angle)) < np.deg2rad(2.0)


def test_zoom_alone_is_applied_and_interpolation_does_not_overshoot():
    opts = AugmentOptions(enabled=True, flip=False, rotate_degrees=0.0, scale=(1.5, 1.5), intensity_scale=0.0,
                          intensity_shift=0.0, noise_std=0.0)
    label = l_shape() * 2  # class values 0 and 2 only
    images = label[None].astype(np.float32) / 2
    out, lab = augment_pair(images, label, np.random.default_rng(0), opts)
    assert lab.sum() / 2 == pytest.approx(label.sum() / 2 * 1.5 ** 2, rel=0.15)
    assert set(np.unique(lab)) == {0, 2}  # nearest neighbour: no class appears between 0 and 2
    for seed in range(4):
        out, lab = augment_pair(images, label, np.random.default_rng(seed), ALL_SPATIAL)
        assert out.min() >= 0.0 and out.max() <= 1.0  # bilinear: no spline overshoot
        assert set(np.unique(lab)) <= {0, 2}


def test_noise_is_per_voxel_and_per_modality():
    opts = AugmentOptions(enabled=True, flip=False, rotate_degrees=0.0, scale=(1.0, 1.0), intensity_scale=0.0,
                          intensity_shift=0.0, noise_std=0.5)
    out, _ = augment_pair(np.ones((2, 32, 32), np.float32), None, np.random.default_rng(3), opts)
    for m in range(2):
        assert out[m].std() == pytest.approx(0.5, rel=0.15) and out[m].mean() == pytest.approx(1.0, abs=0.1)
    assert not np.allclose(out[0], out[1])


def test_make_loader_uses_the_sampler_and_a_private_generator(store):
    import torch

    from semicml.data.sampler import PairedSliceDataset, make_loader

    keys = [(c, z) for c, m in store.cases.items() if m.labeled for z in m.foreground_slices[:2]]
    ds = PairedSliceDataset(store, keys[:3], keys[3:6], seed=11)
    sampler = TwoStreamBatchSampler(3, 3, 2, 1, seed=0, start=0, stop=2)
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    loader = make_loader(ds, sampler, num_workers=0, pin_memory=False)
    batches = list(loader)
    assert torch.equal(torch.random.get_rng_state(), before)  # the global torch RNG is not drawn from
    assert loader.batch_sampler is sampler and loader.num_workers == 0 and not loader.pin_memory
    assert loader.generator.initial_seed() == 11 and not loader.persistent_workers
    assert [tuple(b["images_l"].shape) for b in batches] == [(2, 2, 64, 64)] * 2
    assert batches[0]["images_u"].shape == (1, 2, 64, 64) and batches[0]["label_l"].dtype == torch.int64
    assert make_loader(ds, sampler, num_workers=1, pin_memory=True).num_workers == 1


def test_sampler_streams_follow_the_documented_seeded_permutations():
    """Batch k is a pure function of (seed, k): pinned here so that a resumed run of a later
    version still sees the same batches. Streams: 0 labelled, 1 unlabelled, 2 labelled foreground."""
    def element(n, position, seed, stream):
        epoch, offset = divmod(position, n)
        return int(np.random.default_rng([seed, stream, epoch]).permutation(n)[offset])

    fg = [0, 3, 4, 6]
    s = TwoStreamBatchSampler(7, 7, 3, 2, seed=9, start=0, stop=5, labeled_foreground=fg, foreground_fraction=0.34)
    assert s.n_foreground == 1
    for k in range(5):
        expected = [(fg[element(4, k, 9, 2)], k, 0)]
        expected += [(element(7, k * 2 + j, 9, 0), k, 1 + j) for j in range(2)]
        expected += [(7 + element(7, k * 2 + j, 9, 1), k, 3 + j) for j in range(2)]
        assert s.batch(k) == expected


def test_sampler_boundaries_of_the_argument_checks():
    with pytest.raises(ValueError, match="labelled pool is empty"):
        TwoStreamBatchSampler(0, 5, 1, 1, 0, 0, 1)
    with pytest.raises(ValueError, match="unlabelled pool is empty"):
        TwoStreamBatchSampler(5, 0, 1, 1, 0, 0, 1)
    s = TwoStreamBatchSampler(5, 5, 2, 1, 0, 0, 1, labeled_foreground=[0, 4], foreground_fraction=1.0)
    assert {i for i, _, _ in s.batch(0)[:2]} <= {0, 4}


def test_dataset_defaults_and_augmentation_seed(store):
    from semicml.data.sampler import PairedSliceDataset

    keys = [(c, z) for c, m in store.cases.items() if m.labeled for z in m.foreground_slices[:1]]
    assert PairedSliceDataset(store, keys[:2], keys[2:3]).seed == 0
    ds = PairedSliceDataset(store, keys[:2], keys[2:3], augment=ALL_SPATIAL, seed=4)
    assert np.array_equal(ds[1]["images"], ds[(1, 0, 0)]["images"])  # a plain index is (index, 0, 0)
    raw = np.asarray(store.images(keys[1][0])[keys[1][1]], dtype=np.float32)
    label = np.asarray(store.label(keys[1][0])[keys[1][1]])
    for it, pos in ((0, 0), (2, 1)):
        images, lab = augment_pair(raw, label, np.random.default_rng([4, 7, it, pos]), ALL_SPATIAL)
        item = ds[(1, it, pos)]
        assert np.array_equal(item["images"].numpy(), images) and np.array_equal(item["label"].numpy(), lab)


def test_make_loader_defaults(store):
    from semicml.data.sampler import PairedSliceDataset, make_loader

    keys = [(c, z) for c, m in store.cases.items() if m.labeled for z in m.foreground_slices[:1]]
    ds = PairedSliceDataset(store, keys[:2], keys[2:3])
    sampler = TwoStreamBatchSampler(2, 1, 1, 1, seed=0, start=0, stop=1)
    loader = make_loader(ds, sampler)
    assert loader.num_workers == 0 and loader.pin_memory is False and loader.persistent_workers is False
    assert make_loader(ds, sampler, pin_memory=True).pin_memory is True


def test_flips_without_a_label():
    images = l_shape()[None].astype(np.float32)
    for seed in range(4):
        out, lab = augment_pair(images, None, np.random.default_rng(seed), FLIPS_ONLY)
        assert lab is None and out.shape == images.shape


def test_rotation_alone_is_applied():
    opts = AugmentOptions(enabled=True, flip=False, rotate_degrees=30.0, scale=(1.0, 1.0), intensity_scale=0.0,
                          intensity_shift=0.0, noise_std=0.0)
    label = l_shape()
    out, lab = augment_pair(label[None].astype(np.float32), label, np.random.default_rng(0), opts)
    assert not np.array_equal(lab, label) and np.count_nonzero(lab != (out[0] > 0.5)) <= 0.08 * label.sum()


# --------------------------------------------------------------------------- simulated low resolution
def test_simulated_low_resolution_is_area_down_then_bilinear_up_per_modality():
    """A 4x4 block on an 8x8 slice at zoom 0.5: area-averaging keeps the block exact on the 4x4 grid,
    bilinear up-sampling (half-pixel centres) gives the profile 0, 1/4, 3/4, 1, 1, 3/4, 1/4, 0 along
    each axis, their outer product in 2D. Probability 0 leaves the images untouched."""
    from semicml.data.sampler import simulate_low_resolution

    block = np.zeros((8, 8), np.float32)
    block[2:6, 2:6] = 1
    profile = np.array([0, 0.25, 0.75, 1, 1, 0.75, 0.25, 0])
    images = np.stack([block, 3 * block])
    out = simulate_low_resolution(images, np.random.default_rng(0), 1.0, (0.5, 0.5))
    assert out.shape == images.shape and out.dtype == np.float32
    np.testing.assert_allclose(out[0], np.outer(profile, profile), atol=1e-6)
    np.testing.assert_allclose(out[1], 3 * np.outer(profile, profile), atol=1e-6)
    assert np.array_equal(simulate_low_resolution(images, np.random.default_rng(0), 0.0), images)
    # each modality is chosen on its own: over seeds, both "only the first" and "only the second" occur
    changed = set()
    for seed in range(40):
        o = simulate_low_resolution(images, np.random.default_rng(seed), 0.5, (0.5, 0.5))
        changed.add((not np.array_equal(o[0], images[0]), not np.array_equal(o[1], images[1])))
    assert {(True, False), (False, True), (True, True), (False, False)} <= changed


def test_low_resolution_in_the_dataset_is_seeded_by_position_and_leaves_labels(store):
    from semicml.data.sampler import PairedSliceDataset

    keys = [(c, z) for c, m in store.cases.items() if m.labeled for z in m.foreground_slices[:2]]
    plain = PairedSliceDataset(store, keys[:3], keys[3:6], ["T2", "T1ce"])
    blurred = PairedSliceDataset(store, keys[:3], keys[3:6], ["T2", "T1ce"],
                                 augment=AugmentOptions(low_resolution=1.0, low_resolution_zoom=(0.5, 0.5)), seed=5)
    a, b, ref = blurred[(1, 2, 0)], blurred[(1, 2, 0)], plain[1]
    assert np.array_equal(a["images"], b["images"])  # a function of (seed, iteration, position): resumes stay exact
    assert np.array_equal(a["label"], ref["label"])  # the label keeps its full resolution
    x, y = a["images"].numpy(), ref["images"].numpy()
    assert not np.array_equal(x, y)
    # the blurred slice carries less high-frequency energy than the stored one, with about the same mean
    grad = lambda im: float(np.abs(np.diff(im, axis=-1)).mean())
    assert all(grad(x[m]) < 0.9 * grad(y[m]) for m in range(2))
    np.testing.assert_allclose(x.mean(axis=(1, 2)), y.mean(axis=(1, 2)), atol=0.05 * np.abs(y).max())
