"""In-plane boxes and resampling on tiny hand-made arrays (test_core_data.py covers normalisation
and the crop round trip). Written against the surviving mutants of benchmarks/mutation.py
(data/preprocess.py).
"""

from __future__ import annotations

import numpy as np
import pytest

from semicml.data.preprocess import (
    InPlaneBox,
    Normalisation,
    extract_planes,
    foreground_box,
    normalise,
    paste_planes,
)


def test_empty_image_box_is_centred_on_the_whole_plane_odd_sizes_too():
    empty = np.zeros((41, 31, 3))
    assert foreground_box(empty, 16) == InPlaneBox("crop", x0=12, y0=7, side=16, size=16)  # centre (20, 15)
    assert foreground_box(empty, 16, "resize") == InPlaneBox("resize", x0=0, y0=-5, side=41, size=16)


def test_resize_box_side_is_the_larger_extent_either_way():
    ref = np.zeros((30, 40, 2))
    ref[5:9, 10:30, 1] = 2.0  # x extent 4, y extent 20
    assert foreground_box(ref, 8, "resize") == InPlaneBox("resize", x0=-3, y0=10, side=20, size=8)
    one = np.zeros((30, 40, 2))
    one[7, 9, 0] = 1.0  # a single voxel: a box of side 1 at that voxel
    assert foreground_box(one, 8, "resize") == InPlaneBox("resize", x0=7, y0=9, side=1, size=8)


def test_resize_upsamples_bilinearly_with_pixel_centres():
    """2 x 2 -> 4 x 4 (align_corners=False): output i samples (i + 0.5) / 2 - 0.5 = -0.25, 0.25,
    0.75, 1.25, clamped to [0, 1]: rows weigh the inputs 1, 3/4 : 1/4, 1/4 : 3/4, 1."""
    vol = np.array([[0.0, 4.0], [8.0, 12.0]], np.float32)[:, :, None]
    box = InPlaneBox("resize", x0=0, y0=0, side=2, size=4)
    out = extract_planes(vol, box)
    w = np.array([[1, 0], [0.75, 0.25], [0.25, 0.75], [0, 1]])
    assert out.dtype == np.float32 and out.shape == (4, 4, 1)
    assert np.allclose(out[:, :, 0], w @ vol[:, :, 0] @ w.T)


def test_nearest_resampling_keeps_label_values():
    label = np.array([[0, 1], [2, 0]], np.uint8)[:, :, None]
    box = InPlaneBox("resize", x0=0, y0=0, side=2, size=4)
    out = extract_planes(label, box, nearest=True)
    assert out.dtype == np.float32
    assert np.array_equal(out[:, :, 0], np.kron(label[:, :, 0], np.ones((2, 2))))
    wide = extract_planes(np.zeros((6, 6, 1), np.float64), InPlaneBox("resize", 1, 1, 4, 8))
    assert wide.dtype == np.float32  # resampled planes are float32 whatever the input


@pytest.mark.parametrize("nearest", [False, True])
def test_resize_round_trip_of_a_box_inside_the_volume(nearest):
    vol = np.zeros((10, 12, 2), np.float32)
    vol[3:7, 4:8] = 1.0
    box = InPlaneBox("resize", x0=3, y0=4, side=4, size=8)
    planes = extract_planes(vol, box, nearest=nearest)
    assert planes.shape == (8, 8, 2) and np.allclose(planes, 1.0)
    back = paste_planes(planes, box, (10, 12))
    assert np.allclose(back, vol)


def test_resize_paste_downsamples_bilinearly():
    """4 x 4 -> 2 x 2 (align_corners=False): output i samples 2 (i + 0.5) - 0.5 = 0.5, 2.5, the mean
    of input pixels (0, 1) and (2, 3); nearest-neighbour would pick pixels 0 and 2 instead."""
    planes = np.arange(16, dtype=np.float32).reshape(4, 4, 1)
    box = InPlaneBox("resize", x0=1, y0=2, side=2, size=4)
    out = paste_planes(planes, box, (4, 5))
    w = np.array([[0.5, 0.5, 0, 0], [0, 0, 0.5, 0.5]])
    expected = np.zeros((4, 5))
    expected[1:3, 2:4] = w @ planes[:, :, 0] @ w.T
    assert np.allclose(out[:, :, 0], expected)


@pytest.mark.parametrize("x0, y0", [(25, 0), (0, 20), (-30, 2)])
def test_a_box_outside_the_volume_along_one_axis_is_all_zeros(x0, y0):
    vol = np.ones((20, 14, 1), np.float32)
    box = InPlaneBox("crop", x0=x0, y0=y0, side=8, size=8)
    assert not extract_planes(vol, box).any()
    assert not paste_planes(np.ones((8, 8, 1), np.float32), box, (20, 14)).any()


def test_degenerate_affine_falls_back_to_the_last_axis():
    from semicml.data.preprocess import axial_axis

    flat = np.zeros((4, 4))
    flat[3, 3] = 1.0  # no direction at all: aff2axcodes gives (None, None, None)
    assert axial_axis(flat) == 2


def test_whole_plane_box_of_an_empty_plane_has_one_pixel_at_least():
    from semicml.data.preprocess import whole_plane_box

    assert whole_plane_box((0, 0), 1).side == 1
    assert whole_plane_box((0, 0), 4).side == 4


# ------------------------------------------------------------------------------ normalisation records
def test_normalise_defaults_to_zscore_nonzero():
    image = np.zeros((4, 4, 4), np.float32)
    image[1:3, 1:3, :] = np.arange(16, dtype=np.float32).reshape(2, 2, 4) + 1
    out, stats = normalise(image)
    ref, ref_stats = normalise(image, "zscore_nonzero")
    assert np.array_equal(out, ref) and stats == ref_stats and stats.method == "zscore_nonzero"


def test_normalisation_records_of_the_shortcuts():
    image = np.arange(27, dtype=np.int16).reshape(3, 3, 3)
    out, stats = normalise(image, "none")
    assert stats == Normalisation("none", 0.0, 0.0, 0.0, 1.0) and out.dtype == np.float32
    sparse = np.zeros((3, 3, 3), np.float32)
    sparse[0, 0, :3] = 5.0
    out, stats = normalise(sparse)
    assert stats == Normalisation("zscore_nonzero", 0.0, 0.0, 0.0, 1.0)
    assert out.shape == sparse.shape and out.dtype == np.float32 and not out.any()


def test_small_spread_is_still_scaled_to_unit_std():
    image = np.linspace(0.0, 0.2, 64, dtype=np.float32).reshape(4, 4, 4)  # std ~ 0.06 < 1
    out, stats = normalise(image, "zscore")
    assert stats.std < 0.1 and out.std() == pytest.approx(1.0, rel=1e-3)
