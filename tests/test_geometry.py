"""Grids, resampling, body masks and normalisation schemes, on hand-made volumes (issue 10)."""

from __future__ import annotations

import numpy as np
import pytest

from semicml.data.foreground import CT_BODY_HU, body_mask, fill_holes_per_slice, is_stripped, mask_kind, otsu_threshold
from scipy import ndimage
from semicml.data.geometry import (
    check_affine,
    in_plane_spacing,
    onehot_resample,
    overlap_fraction,
    plan_in_plane,
    resample_in_plane,
    resample_to_grid,
    restore_in_plane,
)
from semicml.data.normalisation import (
    global_statistics,
    modality_normalisation,
    normalise,
    normalise_volume,
    sample_foreground,
    scheme_for_channel,
)
from semicml.errors import ConfigError, DataError


def _disc(shape_xy, spacing, centre_mm, radius_mm, z=3):
    """A disc in world mm on a grid whose voxel i has centre i * spacing."""
    x = np.arange(shape_xy[0])[:, None] * spacing
    y = np.arange(shape_xy[1])[None, :] * spacing
    plane = ((x - centre_mm[0]) ** 2 + (y - centre_mm[1]) ** 2 <= radius_mm**2).astype(np.float32)
    return np.repeat(plane[:, :, None], z, axis=2)


# --------------------------------------------------------------------------------------------
# grids
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("shape", "spacing", "target", "resampled", "realised"), [
    ((240, 240), (1.0, 1.0), 2.0, (120, 120), (2.0, 2.0)),
    ((240, 240), (1.0, 1.0), 0.7, (343, 343), (240 / 343, 240 / 343)),
    ((112, 100), (2.0, 2.2), 1.0, (224, 220), (1.0, 1.0)),
    ((182, 218), (1.0, 1.0), None, (182, 218), (1.0, 1.0)),
])
def test_plan_in_plane_by_hand(shape, spacing, target, resampled, realised):
    grid = plan_in_plane(shape, spacing, target)
    assert grid.resampled == resampled
    assert np.allclose(grid.realised, realised)
    assert grid.identity == (resampled == shape)


def test_in_plane_spacing_follows_the_axial_axis():
    affine = np.array([[0, 0, 3.0, 0], [0, 0.8, 0, 0], [-1.5, 0, 0, 0], [0, 0, 0, 1]])  # axis 0 is axial
    assert in_plane_spacing(affine, 0) == (0.8, 3.0)
    assert in_plane_spacing(np.diag([0.7, 0.9, 5.0, 1.0]), 2) == (0.7, 0.9)


def test_resampling_keeps_world_positions_and_areas():
    """A 20 mm disc at (61.3, 47.9) mm on a 1 mm grid, resampled to 2 mm and 0.7 mm: its centroid
    (voxel i of a grid_mode grid of n voxels over the same field of view sits at (i + 0.5) * fov / n
    - 0.5 * spacing) stays put within 0.1 mm, and its area within 2%."""
    vol = _disc((120, 100), 1.0, (61.3, 47.9), 20.0)
    for target in (2.0, 0.7):
        grid = plan_in_plane((120, 100), (1.0, 1.0), target)
        out = resample_in_plane(vol, grid, order=1)
        assert out.shape == (*grid.resampled, 3)
        plane = out[:, :, 1]
        sx, sy = grid.realised
        xs = (np.arange(plane.shape[0]) + 0.5) * sx - 0.5  # world mm of the resampled voxel centres
        ys = (np.arange(plane.shape[1]) + 0.5) * sy - 0.5
        mass = plane.sum()
        cx = (plane.sum(axis=1) * xs).sum() / mass
        cy = (plane.sum(axis=0) * ys).sum() / mass
        assert abs(cx - 61.3) < 0.1 and abs(cy - 47.9) < 0.1, (target, cx, cy)
        assert abs(mass * sx * sy / (np.pi * 20.0**2) - 1) < 0.02


def test_resampling_round_trip_and_identity():
    rng = np.random.default_rng(0)
    smooth = np.cumsum(np.cumsum(rng.standard_normal((60, 50, 2)), 0), 1).astype(np.float32)
    grid = plan_in_plane((60, 50), (1.0, 1.0), 0.5)
    back = restore_in_plane(resample_in_plane(smooth, grid, order=3), grid, order=1)
    assert back.shape == smooth.shape
    assert np.abs(back - smooth)[2:-2, 2:-2].max() < 0.05 * np.abs(smooth).max()
    same = plan_in_plane((60, 50), (1.0, 1.0), 1.0)
    assert resample_in_plane(smooth, same) is smooth and restore_in_plane(smooth, same) is smooth


def test_labels_resampled_through_one_hot_maps_by_hand():
    """A 2 x 3 block of class 2 beside a 1-voxel class 1 on a 2 mm grid -> 1 mm: the block becomes
    exactly 4 x 6 voxels at the same place; the single voxel becomes its 2 x 2 footprint."""
    labels = np.zeros((6, 6, 1), np.uint8)
    labels[1:3, 2:5] = 2
    labels[4, 0] = 1
    grid = plan_in_plane((6, 6), (2.0, 2.0), 1.0)
    out = onehot_resample(labels, 3, lambda a: resample_in_plane(a, grid, order=1))
    expected = np.zeros((12, 12, 1), np.uint8)
    expected[2:6, 4:10] = 2
    expected[8:10, 0:2] = 1
    assert np.array_equal(out, expected)


def test_resample_to_grid_puts_a_hot_cube_where_it_is_in_the_world():
    """PET on a 4 mm grid, origin (-10, 6, 2) mm; CT on a 1 mm grid at the origin. A hot PET voxel
    at index (5, 2, 3) covers world x -10+20 +-2 = [8, 12), y [12, 20), z [12, 16) (edges mapped
    linearly), so the CT voxels whose centres lie well inside that box are hot."""
    pet = np.zeros((10, 8, 6), np.float32)
    pet[5, 2, 3] = 8.0
    pet_affine = np.diag([4.0, 4.0, 4.0, 1.0])
    pet_affine[:3, 3] = (-10, 6, 2)
    ct_shape = (30, 30, 30)
    out = resample_to_grid(pet, pet_affine, ct_shape, np.eye(4), order=0)
    hot = np.argwhere(out > 4)
    assert hot.min(axis=0).tolist() == [8, 12, 12] and hot.max(axis=0).tolist() == [11, 15, 15]


def test_overlap_fraction_by_hand():
    ref = (10, 10, 10)
    assert overlap_fraction(ref, np.eye(4), ref, np.eye(4)) == pytest.approx(1.0)
    half = np.eye(4)
    half[0, 3] = 5.0  # shifted by half the field of view along x
    assert overlap_fraction(ref, half, ref, np.eye(4)) == pytest.approx(0.5)
    far = np.eye(4)
    far[2, 3] = 500.0
    assert overlap_fraction(ref, far, ref, np.eye(4)) == 0.0
    coarse = np.diag([4.0, 4.0, 4.0, 1.0])  # a coarse grid that covers everything
    assert overlap_fraction((5, 5, 5), coarse, ref, np.eye(4)) == pytest.approx(1.0)


@pytest.mark.parametrize(("affine", "keyword"), [
    (np.diag([1.0, 0.0, 1.0, 1.0]), "zero spacing"),
    (np.array([[1.0, 1.0, 0, 0], [1.0, 1.0, 0, 0], [0, 0, 1.0, 0], [0, 0, 0, 1]]), "singular"),
    (np.diag([1.0, np.nan, 1.0, 1.0]), "finite"),
])
def test_check_affine_refuses_bad_geometry(affine, keyword):
    with pytest.raises(DataError, match=keyword):
        check_affine(affine, "x.nii.gz")
    check_affine(np.diag([0.5, 0.5, 3.0, 1.0]), "x.nii.gz")  # a plain one passes


# --------------------------------------------------------------------------------------------
# body masks
# --------------------------------------------------------------------------------------------


def _ct_neck(shape=(64, 64, 6)):
    """Air -1000, a neck (muscle 40 HU) with an airway (-1000) inside, a table (100 HU) below."""
    x, y = np.mgrid[: shape[0], : shape[1]]
    neck = (x - 30) ** 2 + (y - 32) ** 2 <= 20**2
    airway = (x - 24) ** 2 + (y - 32) ** 2 <= 4**2
    ct = np.full(shape, -1000.0, np.float32)
    ct[neck] = 40.0
    ct[airway] = -1000.0
    ct[57:60, 5:59] = 100.0  # the table: a separate slab
    return ct + np.random.default_rng(1).normal(0, 10, shape).astype(np.float32), np.repeat(neck[:, :, None], shape[2], 2)


def test_ct_body_mask_keeps_the_neck_with_its_airway_and_drops_air_and_table():
    ct, neck = _ct_neck()
    mask = body_mask(ct, "ct")
    assert np.array_equal(mask, neck)
    assert CT_BODY_HU == -500.0


def test_pet_and_unstripped_mri_masks_by_otsu():
    rng = np.random.default_rng(2)
    x, y = np.mgrid[:64, :64]
    body = np.repeat(((x - 32) ** 2 / 26**2 + (y - 30) ** 2 / 20**2 <= 1)[:, :, None], 5, 2)
    pet = np.abs(rng.normal(0, 0.05, body.shape)).astype(np.float32)  # air: ~0, never exactly 0
    pet[body] += 1.0
    pet[30:34, 28:32] = 12.0  # a hot spot inside the body (brain, tumour) must not move the threshold
    assert not is_stripped(pet) and mask_kind("pet", pet) == "otsu"
    assert np.array_equal(body_mask(pet, "otsu"), body)
    mri = np.abs(rng.normal(0, 4, body.shape) + 1j * rng.normal(0, 4, body.shape)).astype(np.float32)  # Rician air
    mri[body] = 100.0 + rng.normal(0, 5, int(body.sum()))
    mri[(x - 32) ** 2 + (y - 30) ** 2 <= 5**2] = 15.0  # a dark ventricle inside: filled as a hole
    assert mask_kind("mri", mri) == "otsu" and np.array_equal(body_mask(mri, "otsu"), body)


def test_stripped_mri_is_the_nonzero_region():
    vol = np.zeros((20, 20, 4), np.float32)
    vol[5:15, 4:16] = 50.0
    assert is_stripped(vol) and mask_kind("mri", vol) == "nonzero"
    assert np.array_equal(body_mask(vol, "nonzero"), vol != 0)


def test_hole_filling_equals_scipy_slice_by_slice():
    rng = np.random.default_rng(5)
    mask = rng.random((40, 30, 6)) > 0.35  # dense random blobs: many enclosed background pixels
    expected = np.stack([ndimage.binary_fill_holes(mask[:, :, k]) for k in range(6)], axis=2)
    assert np.array_equal(fill_holes_per_slice(mask), expected) and not np.array_equal(expected, mask)


def test_otsu_threshold_separates_two_populations():
    values = np.concatenate([np.full(1000, 10.0), np.full(500, 90.0)])
    t = otsu_threshold(values)
    assert 10 < t < 90


# --------------------------------------------------------------------------------------------
# normalisation
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "scheme"), [
    ("CT", "ct"), ("ct", "ct"), ("CT_HU", "ct"), ("PT", "pet"), ("PET", "pet"), ("pet_suv", "pet"),
    ("FDG-PET", "pet"), ("T2", "mri"), ("T1ce", "mri"), ("flair", "mri"), ("CTA-like", "mri"),
])
def test_scheme_by_channel_name(name, scheme):
    assert scheme_for_channel(name) == scheme


def test_ct_scheme_by_hand():
    spec = {"scheme": "ct", "low": -100.0, "high": 200.0, "mean": 50.0, "std": 25.0}
    image = np.array([-1000.0, -100.0, 50.0, 100.0, 3000.0], np.float32).reshape(5, 1, 1)
    out = normalise_volume(image, spec)
    assert np.allclose(out.image.ravel(), [-6.0, -6.0, 0.0, 2.0, 6.0])
    assert out.fill == -6.0  # padding looks like air after the clip


def test_global_statistics_by_hand():
    samples = [np.arange(0, 100, dtype=np.float32), np.arange(100, 201, dtype=np.float32)]  # 0..200
    ct = global_statistics("ct", samples)
    assert ct["low"] == pytest.approx(1.0) and ct["high"] == pytest.approx(199.0)
    assert ct["mean"] == pytest.approx(100.0) and ct["std"] == pytest.approx(np.arange(201).std())
    pet = global_statistics("pet", [np.arange(-5, 196, dtype=np.float32)])
    assert pet["low"] == 0.0 and pet["high"] == pytest.approx(194.0)
    with pytest.raises(ConfigError, match="too few foreground voxels"):
        global_statistics("ct", [np.zeros(3)])


def test_sample_foreground_is_seeded_and_bounded():
    image = np.arange(200 * 200, dtype=np.float32).reshape(200, 200, 1)
    fg = np.ones(image.shape, bool)
    a, b = sample_foreground(image, fg, 7), sample_foreground(image, fg, 7)
    assert a.size == 10_000 and np.array_equal(a, b)
    assert sample_foreground(image, image < 5, 7).tolist() == [0, 1, 2, 3, 4]


def test_mri_scheme_on_a_stripped_volume_is_exactly_the_earlier_zscore_nonzero():
    rng = np.random.default_rng(3)
    vol = np.zeros((30, 30, 5), np.float32)
    vol[5:25, 6:24] = rng.normal(100, 20, (20, 18, 5))
    new = normalise_volume(vol, {"scheme": "mri"})
    old, _ = normalise(vol, "zscore_nonzero")
    assert np.array_equal(new.image, old) and new.fill == 0.0 and new.record["mask"] == "nonzero"


def test_mri_scheme_on_an_unstripped_volume_uses_the_head_statistics():
    rng = np.random.default_rng(4)
    x, y = np.mgrid[:48, :48]
    head = np.repeat(((x - 24) ** 2 + (y - 24) ** 2 <= 16**2)[:, :, None], 4, 2)
    vol = np.abs(rng.normal(0, 3, head.shape)).astype(np.float32) + 0.5
    vol[head] = rng.normal(200, 30, int(head.sum()))
    out = normalise_volume(vol, "mri")
    inside = vol[head]
    low, high = np.percentile(inside, (0.5, 99.5))
    clipped = np.clip(inside, low, high)
    assert np.allclose(out.image[head], (clipped - clipped.mean()) / clipped.std(), atol=1e-4)
    assert np.allclose(out.image[~head], out.fill) and out.fill == pytest.approx((low - clipped.mean()) / clipped.std())


def test_modality_normalisation_reads_old_and_new_records():
    assert modality_normalisation({"normalisation": "zscore_nonzero"}, "T2") == "zscore_nonzero"
    rec = {"normalisation": {"CT": {"scheme": "ct"}, "T1ce": {"scheme": "mri"}}}
    assert modality_normalisation(rec, "ct") == {"scheme": "ct"}
    assert modality_normalisation(rec, "t1gd") == {"scheme": "mri"}  # aliases, as everywhere
    with pytest.raises(DataError, match="no normalisation recorded for modality 'PT'"):
        modality_normalisation(rec, "PT")
    with pytest.raises(ConfigError, match="needs its training-set statistics"):
        normalise_volume(np.zeros((4, 4, 1), np.float32), {"scheme": "ct"})
