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


# ------------------------------------------------------------------------------ world geometry
def test_world_box_by_hand_outer_voxel_edges_included():
    from semicml.data.geometry import world_box

    affine = np.diag([2.0, 3.0, 4.0, 1.0])
    affine[:3, 3] = [10, 20, 30]
    lo, hi = world_box((2, 3, 4), affine)
    # voxel centres 0..n-1, edges half a voxel further: 10 + 2 * (-0.5 .. 1.5), ...
    assert lo.tolist() == [9.0, 18.5, 28.0] and hi.tolist() == [13.0, 27.5, 44.0]
    # axes swapped and one flipped: array axis 0 runs along world -y, axis 1 along x, axis 2 along z
    swapped = np.array([[0, 1.0, 0, 5], [-2.0, 0, 0, 0], [0, 0, 1.0, 0], [0, 0, 0, 1]])
    lo, hi = world_box((2, 3, 4), swapped)
    assert lo.tolist() == [4.5, -3.0, -0.5] and hi.tolist() == [7.5, 1.0, 3.5]


def test_overlap_fraction_by_hand_and_for_an_empty_reference():
    from semicml.data.geometry import overlap_fraction

    ref = np.diag([0.5, 0.5, 0.5, 1.0])  # a 1 x 1 x 1 mm reference box of 2^3 voxels: volume 1 mm^3 ...
    half = np.diag([0.5, 0.5, 0.5, 1.0])
    half[0, 3] = 0.5  # ... and the same box moved by half its width along x
    assert overlap_fraction((2, 2, 2), half, (2, 2, 2), ref) == 0.5
    small = np.diag([0.25, 0.25, 0.25, 1.0])  # a reference of 0.125 mm^3, inside the other box
    assert overlap_fraction((2, 2, 2), ref, (2, 2, 2), small) == 1.0
    assert overlap_fraction((2, 2, 2), ref, (0, 2, 2), ref) == 0.0  # no reference volume: nothing covered


def test_resample_to_grid_defaults_linear_background_zero_edge_padded_float32():
    from semicml.data.geometry import resample_to_grid

    vol = np.zeros((4, 1, 1), np.int16)
    vol[:, 0, 0] = [10, 20, 30, 40]
    # the reference grid: the same voxels shifted by half a voxel, and 2 more past each end
    ref = np.eye(4)
    ref[0, 3] = -2.5
    got = resample_to_grid(vol, np.eye(4), (9, 1, 1), ref)
    assert got.dtype == np.float32
    # world x: -2.5 -1.5 -0.5 0.5 1.5 2.5 3.5 4.5 5.5. Within one voxel of the first / last voxel
    # centre: its edge value (not blended with the background); further out: the background
    assert got[:, 0, 0].tolist() == [0.0, 0.0, 10.0, 15.0, 25.0, 35.0, 40.0, 0.0, 0.0]
    air = resample_to_grid(vol, np.eye(4), (9, 1, 1), ref, cval=-1000.0)
    assert air[0, 0, 0] == -1000.0 and air[8, 0, 0] == -1000.0 and air[4, 0, 0] == 25.0


@pytest.mark.parametrize("order", [2, 3])
def test_resample_to_grid_splines_interpolate_the_samples(order):
    """On its own grid a spline of order 2 or 3 gives the samples back (they are prefiltered)."""
    from semicml.data.geometry import resample_to_grid

    vol = np.random.default_rng(0).random((6, 5, 4)).astype(np.float32)
    affine = np.diag([1.5, 1.5, 3.0, 1.0])
    np.testing.assert_allclose(resample_to_grid(vol, affine, vol.shape, affine, order=order), vol, atol=1e-5)


def test_resample_in_plane_zooms_every_plane_linearly_with_edge_values_as_float32():
    from semicml.data.geometry import InPlaneGrid, resample_in_plane, restore_in_plane

    vol = np.zeros((5, 1, 2, 3), np.int16)  # extra trailing axes are carried along
    vol[:, 0, 1, 2] = [0, 0, 4, 0, 0]
    grid = InPlaneGrid((5, 1), (10, 1), (2.0, 1.0), (1.0, 1.0))
    got = resample_in_plane(vol, grid, order=1)
    assert got.shape == (10, 1, 2, 3) and got.dtype == np.float32
    # output x' sits at input x = (x' + 0.5) / 2 - 0.5; linear, clamped at the ends
    x = (np.arange(10) + 0.5) / 2 - 0.5
    np.testing.assert_allclose(got[:, 0, 1, 2], np.interp(x, np.arange(5), [0, 0, 4, 0, 0]), atol=1e-6)
    assert not got[:, 0, 0].any() and not got[:, 0, 1, :2].any()
    back = restore_in_plane(got, grid)  # linear by default
    assert back.shape == vol.shape and back.dtype == np.float32
    cubic = resample_in_plane(vol.astype(np.float32), grid)  # default: cubic spline (nnU-Net's), overshoots
    assert cubic[:, 0, 1, 2].min() < -0.05
    assert np.array_equal(cubic, resample_in_plane(vol.astype(np.float32), grid, order=3))
    assert not np.allclose(cubic, resample_in_plane(vol.astype(np.float32), grid, order=4))


# ------------------------------------------------------------------------------ boxes and frames
def _plane(shape, rows, cols) -> np.ndarray:
    plane = np.zeros(shape, bool)
    plane[rows[0] : rows[1], cols[0] : cols[1]] = True
    return plane


@pytest.mark.parametrize(("rows", "cols", "start", "side", "want"), [
    ((11, 14), (12, 15), (10, 11), 6, (10, 11)),  # inside already: no shift (either axis)
    ((4, 7), (12, 15), (10, 11), 6, (4, 11)),  # rows start above the window: start at the first row
    ((11, 14), (20, 23), (10, 11), 6, (10, 17)),  # columns end past the window: end at the last column
    ((3, 14), (12, 15), (0, 11), 7, (5, 11)),  # 11 rows in a 7-window: centred, (3 + 14) // 2 - 7 // 2
    ((11, 14), (2, 13), (10, 0), 7, (10, 4)),  # the same along the columns: (2 + 13) // 2 - 3
])
def test_shift_to_contain_by_hand(rows, cols, start, side, want):
    from semicml.data.preprocess import _shift_to_contain

    got = _shift_to_contain(_plane((30, 30), rows, cols), start[0], start[1], side)
    assert got == want and all(type(v) is int for v in got)


def test_whole_plane_box_covers_the_longer_side():
    from semicml.data.preprocess import whole_plane_box

    box = whole_plane_box((20, 40), 16)  # 40 -> 48, centred on both axes
    assert (box.side, box.size, box.x0, box.y0, box.mode) == (48, 48, -14, -4, "crop")


def test_target_spacing_reads_only_a_recorded_mapping():
    from semicml.data.preprocess import target_spacing

    assert target_spacing({"spacing": {"in_plane_mm": 0.8, "rule": "median"}}) == 0.8
    assert target_spacing({"spacing": None}) is None and target_spacing({}) is None
    assert target_spacing({"spacing": "keep"}) is None  # not a record of a spacing


def test_network_frame_restores_region_channels_linearly_to_the_input_grid():
    from semicml.data.preprocess import network_frame

    vol = np.zeros((5, 4, 3), np.float32)  # axial last, 2 mm in plane
    vol[1:4, 1:3] = 5.0
    prep = {"in_plane": "crop", "size": 8, "normalisation": {"T2": {"scheme": "none"}},
            "spacing": {"in_plane_mm": 1.0}}
    frame = network_frame(vol, np.diag([2.0, 2.0, 3.0, 1.0]), prep, "T2", 4)
    assert frame.planes.shape == (3, 12, 12)  # 10 x 8 at 1 mm, padded to a square multiple of 4
    # a probability map that rises along x by 0.1 per 1-mm pixel, and its complement
    ramp = np.broadcast_to((np.arange(12, dtype=np.float32) * 0.1)[None, :, None], (3, 12, 12))
    two = np.stack([ramp, 1 - ramp], axis=1)  # (Z, C, H, W)
    back = frame.restore(two)
    assert back.shape == (2, 5, 4, 3)
    one = frame.restore(ramp)
    np.testing.assert_array_equal(back[0], one)
    np.testing.assert_allclose(back[1], 1 - one, atol=1e-6)
    # linear, not a higher-order spline: the 2-mm voxel x sits between 1-mm pixels 2x and 2x + 1,
    # so it gets their mean (the ramp is shifted by the padding: pixel p of the plane holds 0.1 p)
    x0 = frame.box.x0
    want = np.array([0.1 * (2 * x - x0 + 0.5) for x in range(5)], np.float32)
    np.testing.assert_allclose(one[:, 0, 0], want, atol=1e-5)


def test_network_frame_resize_box_comes_from_the_body_mask_not_the_normalised_background():
    from semicml.data.preprocess import network_frame

    ct = np.full((40, 40, 2), -1000.0, np.float32)  # air ...
    ct[10:30, 14:26] = 40.0  # ... around a 20 x 12 body
    prep = {"in_plane": "resize", "size": 16,
            "normalisation": {"CT": {"scheme": "ct", "low": -1000.0, "high": 1000.0, "mean": 0.0, "std": 100.0}}}
    frame = network_frame(ct, np.eye(4), prep, "CT", 16)
    assert (frame.box.x0, frame.box.y0, frame.box.side) == (10, 10, 20)  # the body's box, not the plane's
    empty = network_frame(np.zeros((8, 6, 2), np.float32), np.eye(4),
                          {"in_plane": "resize", "size": 16, "normalisation": "zscore_nonzero"}, "T2", 16)
    assert (empty.box.x0, empty.box.y0, empty.box.side) == (0, -1, 8)  # an empty image: centred on itself


def test_global_scheme_applies_clip_and_zscore_with_a_zero_std_read_as_one():
    from semicml.data.normalisation import normalise_volume

    image = np.array([-50.0, 0.0, 10.0, 30.0], np.float32).reshape(4, 1, 1)
    spec = {"scheme": "ct", "low": -20.0, "high": 20.0, "mean": 4.0, "std": 0.5}
    out = normalise_volume(image, spec)
    assert out.image.dtype == np.float32 and out.image.ravel().tolist() == [-48.0, -8.0, 12.0, 32.0]
    for std in (0.0, 1e-8):  # no spread recorded: divide by 1, not by (almost) 0
        flat = normalise_volume(image, {**spec, "std": std})
        assert flat.image.ravel().tolist() == [-24.0, -4.0, 6.0, 16.0] and flat.fill == -24.0


@pytest.mark.parametrize(("name", "scheme"), [
    ("CT", "ct"), (" ct ", "ct"), ("CT_contrast", "ct"), ("ct-low-dose", "ct"), ("CT venous", "ct"), ("ctx", "mri"),
    ("PT", "pet"), ("pet", "pet"), ("PET-CT", "pet"), ("FDG", "pet"), ("pt_suv", "pet"), ("PT-AC", "pet"),
    ("ptx", "mri"), ("T2", "mri"), ("FLAIR", "mri"),
])
def test_scheme_for_channel_names(name, scheme):
    from semicml.data.normalisation import scheme_for_channel

    assert scheme_for_channel(name) == scheme


def test_modality_normalisation_lists_what_the_run_recorded():
    from semicml.data.normalisation import modality_normalisation
    from semicml.errors import DataError

    prep = {"normalisation": {"T2": {"scheme": "mri"}, "T1ce": {"scheme": "mri"}}}
    assert modality_normalisation(prep, "t1ce") == {"scheme": "mri"}
    with pytest.raises(DataError) as err:
        modality_normalisation(prep, "flair")
    assert str(err.value) == "no normalisation recorded for modality 'flair' (has: T2, T1ce)"


def test_foreground_box_uses_the_given_mask_and_shifts_only_crops():
    from semicml.data.preprocess import foreground_box

    ref = np.zeros((40, 40, 2), np.float32)
    ref[2:38, 2:38] = 1.0  # the reference's non-zero region: almost the whole plane
    mask = np.zeros(ref.shape, np.uint8)
    mask[10:20, 20:30] = 1  # the body mask given: a 10 x 10 box centred at (15, 25)
    box = foreground_box(ref, 8, "resize", mask=mask)
    assert (box.x0, box.y0, box.side) == (10, 20, 10)
    keep = np.zeros(ref.shape, bool)
    keep[0:2, 0:2] = True  # a label far from the box: a crop moves to contain it, a resize box does not
    assert (foreground_box(ref, 8, "resize", mask=mask, keep=keep).x0, ) == (10,)
    crop = foreground_box(ref, 8, "crop", mask=mask, keep=keep)
    assert (crop.x0, crop.y0, crop.side) == (0, 0, 8)
    assert (foreground_box(ref, 8, "crop", mask=mask).x0, foreground_box(ref, 8, "crop", mask=mask).y0) == (11, 21)


def test_paste_planes_keeps_the_dtype_and_restore_in_plane_is_linear_by_default():
    from semicml.data.geometry import InPlaneGrid, restore_in_plane
    from semicml.data.preprocess import InPlaneBox, paste_planes

    planes = np.full((4, 4, 2), 0.5, np.float32)
    out = paste_planes(planes, InPlaneBox(mode="crop", x0=1, y0=2, side=4, size=4), (6, 8))
    assert out.dtype == np.float32 and out.shape == (6, 8, 2) and out.sum() == 0.5 * 32
    grid = InPlaneGrid((5, 1), (10, 1), (2.0, 1.0), (1.0, 1.0))
    ramp = np.zeros((10, 1, 1), np.float32)
    ramp[4:6] = 1.0
    np.testing.assert_array_equal(restore_in_plane(ramp, grid), restore_in_plane(ramp, grid, order=1))
    assert not np.allclose(restore_in_plane(ramp, grid), restore_in_plane(ramp, grid, order=2))


def test_network_frame_pads_with_the_normalised_background():
    from semicml.data.preprocess import network_frame

    ct = np.full((20, 20, 2), -1000.0, np.float32)
    ct[5:15, 5:15] = 40.0
    prep = {"in_plane": "crop", "size": 16,
            "normalisation": {"CT": {"scheme": "ct", "low": -1000.0, "high": 1000.0, "mean": 0.0, "std": 100.0}}}
    frame = network_frame(ct, np.eye(4), prep, "CT", 16)
    assert frame.planes.shape == (2, 32, 32) and frame.planes.dtype == np.float32
    assert frame.planes[0, 0, 0] == -10.0  # padding outside the 20 x 20 plane looks like air, not 0
    assert frame.planes[0, 16, 16] == pytest.approx(0.4)


# ------------------------------------------------------------------------------ normalise_volume, field by field
def _stripped() -> np.ndarray:
    vol = np.zeros((12, 12, 2), np.float32)
    vol[3:9, 2:10] = np.random.default_rng(5).normal(100, 20, (6, 8, 2))
    return vol


@pytest.mark.parametrize("scheme, zero_outside", [("zscore_nonzero", True), ("zscore", False)])
def test_legacy_scheme_names_are_the_earlier_normalise_with_the_non_zero_box(scheme, zero_outside):
    from dataclasses import asdict

    from semicml.data.normalisation import normalise, normalise_volume

    vol = _stripped()
    got = normalise_volume(vol.astype(np.float64), scheme)  # any input dtype: float32 out
    want, stats = normalise(vol, scheme)
    assert got.image.dtype == np.float32 and np.array_equal(got.image, want)
    assert np.array_equal(got.mask, vol != 0) and got.fill == 0.0 and got.zero_outside is zero_outside
    assert got.record == asdict(stats)


def test_mri_on_a_stripped_volume_records_its_statistics_and_keeps_the_background_zero():
    from dataclasses import asdict

    from semicml.data.normalisation import normalise, normalise_volume

    vol = _stripped()
    vol[4, 4, 0] = 1.0  # a brain voxel of exactly 1: inside the mask all the same
    got = normalise_volume(vol, {"scheme": "mri"})
    want, stats = normalise(vol, "zscore_nonzero")
    assert np.array_equal(got.image, want) and np.array_equal(got.mask, vol != 0)
    assert got.fill == 0.0 and got.zero_outside is True
    assert got.record == {**asdict(stats), "method": "mri", "mask": "nonzero"}


def _unstripped(body_voxels: int) -> np.ndarray:
    """Noisy non-zero air (not stripped) and a bright body of ``body_voxels`` voxels in one slice."""
    vol = np.abs(np.random.default_rng(6).normal(0, 1, (16, 16, 2))).astype(np.float32) + 0.5
    flat = vol[:, :, 0].reshape(-1)
    flat[100 : 100 + body_voxels] = 500.0  # consecutive in one row: one component
    return vol


def test_mri_on_an_unstripped_volume_records_the_body_statistics():
    from semicml.data.normalisation import normalise_volume

    vol = _unstripped(10)  # ten body voxels are enough for statistics of their own
    got = normalise_volume(vol, {"scheme": "mri"})
    assert got.mask.dtype == bool and got.mask.sum() == 10 and (vol[got.mask] == 500.0).all()
    assert got.record == {"method": "mri", "mask": "otsu", "low": 500.0, "high": 500.0, "mean": 500.0, "std": 1.0}
    assert got.zero_outside is False and got.fill == 0.0  # every voxel clipped to [500, 500]: (500 - 500) / 1
    few = normalise_volume(_unstripped(9), {"scheme": "mri"})  # fewer: the whole volume's statistics
    assert few.mask.dtype == bool and few.mask.shape == vol.shape and few.mask.all()
    assert few.record["mean"] == pytest.approx(float(np.clip(_unstripped(9), few.record["low"],
                                                              few.record["high"]).mean()), rel=1e-6)


def test_resample_normalised_cubic_image_nearest_mask_and_an_exactly_zero_background():
    from semicml.data.geometry import InPlaneGrid, resample_in_plane
    from semicml.data.normalisation import normalise_volume
    from semicml.data.preprocess import resample_normalised

    vol = _stripped()
    norm = normalise_volume(vol, {"scheme": "mri"})
    grid = InPlaneGrid((12, 12), (17, 17), (1.4, 1.4), (12 * 1.4 / 17, 12 * 1.4 / 17))
    image, mask = resample_normalised(norm, grid)
    # the mask by nearest neighbour: pixel i' takes input pixel floor((i' + 0.5) * 12 / 17)
    idx = np.floor((np.arange(17) + 0.5) * 12 / 17).astype(int)
    assert mask.dtype == bool and np.array_equal(mask, norm.mask[idx][:, idx])
    cubic = resample_in_plane(norm.image, grid, order=3)
    assert np.array_equal(image[mask], cubic[mask])  # the image: a cubic spline inside ...
    assert (image[~mask] == 0).all() and (cubic[~mask] != 0).any()  # ... and exactly 0 outside (no ringing)
    same = InPlaneGrid((12, 12), (12, 12), (1.0, 1.0), (1.0, 1.0))
    image, mask = resample_normalised(norm, same)
    assert image is norm.image and mask is norm.mask


def test_mri_body_statistics_keep_a_real_spread_below_one():
    from semicml.data.normalisation import normalise_volume

    vol = _unstripped(10)
    vol[:, :, 0].reshape(-1)[100:110] = 500.0 + np.array([0.0, 0.5] * 5, np.float32)  # std 0.25
    rec = normalise_volume(vol, {"scheme": "mri"}).record
    assert rec["std"] == pytest.approx(0.25) and rec["mean"] == pytest.approx(500.25)


def test_global_scheme_record_and_body_mask_follow_the_scheme():
    from semicml.data.normalisation import normalise_volume

    ct = np.full((20, 20, 2), -1000.0, np.float32)
    ct[4:16, 5:15] = 30.0
    spec = {"scheme": "ct", "low": -1000.0, "high": 1000.0, "mean": 0.0, "std": 100.0}
    got = normalise_volume(ct, spec)
    assert got.record == {"method": "ct", "mask": "ct"} and got.zero_outside is False
    assert np.array_equal(got.mask, ct > -500)  # the body above -500 HU, not the non-zero region (all of it)
    with pytest.raises(ConfigError) as err:
        normalise_volume(ct, {"scheme": "mr"})
    assert str(err.value) == "unknown normalisation 'mr'; choose one of mri, ct, pet, zscore_nonzero, zscore, none"


def test_plan_in_plane_by_hand_and_its_refusals():
    from semicml.data.geometry import InPlaneGrid, plan_in_plane
    from semicml.errors import DataError

    assert plan_in_plane((10, 7), (1.5, 2.0), None) == InPlaneGrid((10, 7), (10, 7), (1.5, 2.0), (1.5, 2.0))
    grid = plan_in_plane((10, 7), (1.5, 2.0), 1.0)
    assert grid.resampled == (15, 14) and grid.realised == (1.0, 1.0)
    # a side that rounds to 0 pixels keeps one: 1 x 0.4 mm at 1 mm
    assert plan_in_plane((1, 3), (0.4, 1.0), 1.0).resampled == (1, 3)
    for bad in (0.0, -1.0, float("inf"), float("nan")):
        with pytest.raises(DataError) as err:
            plan_in_plane((10, 7), (1.5, 2.0), bad)
        assert str(err.value) == f"target in-plane spacing must be a positive number of mm, not {bad!r}"


def test_ct_body_is_everything_above_minus_500_hu_even_when_bone_dominates():
    """Otsu would split bone from soft tissue here; the CT rule keeps the whole body (-300 HU fat)."""
    from semicml.data.normalisation import normalise_volume

    ct = np.full((20, 20, 2), -1000.0, np.float32)
    ct[2:18, 2:18] = -300.0
    ct[6:14, 6:14] = 1500.0
    spec = {"scheme": "ct", "low": -1000.0, "high": 2000.0, "mean": 0.0, "std": 500.0}
    got = normalise_volume(ct, spec)
    assert got.mask.sum() == 16 * 16 * 2 and np.array_equal(got.mask, ct > -500)


def test_resample_normalised_takes_the_mask_by_nearest_neighbour_not_a_thresholded_interpolation():
    """Two diagonal pixels zoomed 6 -> 13: linear or cubic interpolation thresholded at 0.5 loses or
    adds corner pixels that nearest neighbour keeps."""
    from semicml.data.geometry import InPlaneGrid
    from semicml.data.normalisation import NormalisedVolume
    from semicml.data.preprocess import resample_normalised

    mask = np.zeros((6, 6, 1), bool)
    mask[2, 3] = mask[3, 2] = True
    norm = NormalisedVolume(mask.astype(np.float32), mask, 0.0, {}, zero_outside=False)
    _, got = resample_normalised(norm, InPlaneGrid((6, 6), (13, 13), (1.0, 1.0), (6 / 13, 6 / 13)))
    idx = np.floor((np.arange(13) + 0.5) * 6 / 13).astype(int)
    assert np.array_equal(got, mask[idx][:, idx])
