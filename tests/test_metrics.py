"""3D metrics against hand-computed cases (and MONAI's surface-voxel convention)."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from scipy import ndimage
from scipy.spatial.distance import cdist

from semicml.evaluation.metrics import (
    DISTANCE_METRICS,
    EMPTY_MASK_RULE,
    HIGHER_IS_BETTER,
    METRICS,
    case_metrics,
    dice_score,
    volume_diagonal_mm,
)

SPACING = (1.0, 2.0, 3.0)  # anisotropic on purpose: catches axis-order mistakes


def _vol(shape=(12, 12, 12)) -> np.ndarray:
    return np.zeros(shape, dtype=bool)


def _voxel(shape, idx) -> np.ndarray:
    m = _vol(shape)
    m[idx] = True
    return m


def _cube(shape, start, side) -> np.ndarray:
    m = _vol(shape)
    m[tuple(slice(s, s + side) for s in start)] = True
    return m


def test_metric_tables_are_consistent():
    assert set(HIGHER_IS_BETTER) == set(METRICS)
    assert DISTANCE_METRICS == {m for m in METRICS if not HIGHER_IS_BETTER[m]} - {"components"}


def test_components_counts_islands_of_the_prediction():
    ref = np.zeros((12, 12, 12), bool)
    ref[2:6, 2:6, 2:6] = True
    pred = ref.copy()
    pred[9, 9, 9] = True            # a far island
    pred[7, 7, 7] = True            # diagonal neighbour of (6, 6, 6)
    pred[6, 6, 6] = True            # diagonal neighbour of the cube's corner (5, 5, 5): joins the cube
    from semicml.evaluation.metrics import count_components
    # (6,6,6) joins the cube, (7,7,7) joins (6,6,6): one chain; (9,9,9) alone -> 2 components.
    assert count_components(pred) == 2
    assert case_metrics(pred, ref, (1, 1, 1))["components"] == 2.0
    assert case_metrics(np.zeros_like(ref), ref, (1, 1, 1))["components"] == 0.0
    assert case_metrics(pred, np.zeros_like(ref), (1, 1, 1))["components"] == 2.0
    assert "volume diagonal" in EMPTY_MASK_RULE


# --- surface distances -----------------------------------------------------------------------

@pytest.mark.parametrize(
    "a, b, expected",
    [
        # sqrt((2*1)^2 + (3*2)^2 + (1*3)^2) = sqrt(4 + 36 + 9) = 7
        ((1, 1, 1), (3, 4, 2), 7.0),
        # one step along each axis alone gives that axis' spacing
        ((2, 2, 2), (3, 2, 2), 1.0),
        ((2, 2, 2), (2, 3, 2), 2.0),
        ((2, 2, 2), (2, 2, 3), 3.0),
        # voxels on the volume border (MONAI pads before eroding: they are surface voxels)
        ((0, 0, 0), (4, 4, 4), math.sqrt(4**2 + 8**2 + 12**2)),
    ],
)
def test_single_voxels_distance_in_mm(a, b, expected):
    shape = (5, 5, 5)
    m = case_metrics(_voxel(shape, a), _voxel(shape, b), SPACING)
    assert m["hd95"] == pytest.approx(expected, rel=1e-5)
    assert m["asd"] == pytest.approx(expected, rel=1e-5)
    # disjoint, non-empty: all overlap metrics 0 by counting (not by the empty rule)
    assert m["dice"] == m["jaccard"] == m["precision"] == m["sensitivity"] == 0.0


def test_cube_shift_by_one_along_axis2_hand_computed():
    """4^3 cube shifted by 1 voxel along axis 2 (spacing 3 mm).

    Each cube has 4^3 - 2^3 = 56 surface voxels. Directed distances pred -> ref:
    - leading face (16 voxels) is 1 voxel beyond ref's last face: 3 mm;
    - side voxels in the 3 overlapping layers (3 x 12 = 36) coincide with ref side voxels: 0;
    - the 4 interior voxels of the trailing face sit inside ref; the nearest ref surface voxel is
      1 step along axis 0 (1 mm), closer than axis 1 (2 mm) or axis 2 (3 mm): 1 mm.
    The reverse direction mirrors this. HD95 = q95 of [0]*36 + [1]*4 + [3]*16 = 3 mm.
    ASD = (2 * (16 * 3 + 4 * 1)) / (2 * 56) = 104 / 112 = 13/14 mm.
    Overlap: 48 of 64 voxels -> dice 0.75, jaccard 48/80, precision = sensitivity = 0.75.
    """
    ref = _cube((12, 12, 12), (4, 4, 4), 4)
    pred = _cube((12, 12, 12), (4, 4, 5), 4)
    m = case_metrics(pred, ref, SPACING)
    assert m["hd95"] == pytest.approx(3.0, rel=1e-5)
    assert m["asd"] == pytest.approx(13 / 14, rel=1e-5)
    assert m["dice"] == pytest.approx(0.75)
    assert m["jaccard"] == pytest.approx(0.6)
    assert m["precision"] == pytest.approx(0.75)
    assert m["sensitivity"] == pytest.approx(0.75)


@pytest.mark.parametrize("axis", [0, 1, 2])
@pytest.mark.parametrize("k", [1, 2])
def test_pure_shift_of_solid_cube_gives_k_times_spacing(axis, k):
    # The leading face (36 of 152 surface voxels, > 5%) is exactly k voxels from ref's surface
    # and no surface voxel is farther, so the 95th percentile is k * spacing[axis].
    start = [3, 3, 3]
    ref = _cube((14, 14, 14), start, 6)
    start[axis] += k
    pred = _cube((14, 14, 14), start, 6)
    m = case_metrics(pred, ref, SPACING)
    assert m["hd95"] == pytest.approx(k * SPACING[axis], rel=1e-5)
    assert 0.0 < m["asd"] < m["hd95"]


def test_line_shift_documents_quantile_interpolation():
    """A 1-voxel-thick line: every voxel is a surface voxel, so distances are easy to list.

    Line of 10 voxels along axis 2, shifted along itself by 2: directed distances are
    [0]*8 + [3, 6] mm each way. torch.quantile (linear) at 0.95: position 0.95 * 9 = 8.55,
    3 + 0.55 * (6 - 3) = 4.65 mm. ASD = 2 * (3 + 6) / 20 = 0.9 mm. Dice = 2*8/20.
    """
    ref = _vol((5, 5, 20))
    pred = _vol((5, 5, 20))
    ref[2, 2, 3:13] = True
    pred[2, 2, 5:15] = True
    m = case_metrics(pred, ref, SPACING)
    assert m["hd95"] == pytest.approx(4.65, rel=1e-5)
    assert m["asd"] == pytest.approx(0.9, rel=1e-5)
    assert m["dice"] == pytest.approx(0.8)
    assert m["jaccard"] == pytest.approx(8 / 12)


def test_identical_masks():
    rng = np.random.default_rng(0)
    mask = ndimage.binary_opening(rng.random((10, 12, 8)) > 0.4)
    assert mask.any()
    m = case_metrics(mask, mask.copy(), SPACING)
    n_islands = float(ndimage.label(mask, structure=np.ones((3, 3, 3)))[1])
    assert m == {"dice": 1.0, "jaccard": 1.0, "hd95": 0.0, "asd": 0.0, "precision": 1.0, "sensitivity": 1.0,
                 "components": n_islands}


def _reference_surface_metrics(pred, ref, spacing):
    """Independent brute force of the documented convention (surface voxels, all pairs)."""
    def surface_coords(m):
        edge = m & ~ndimage.binary_erosion(m, border_value=0)
        return np.argwhere(edge) * np.asarray(spacing)

    p, r = surface_coords(pred), surface_coords(ref)
    d = cdist(p, r)
    d_pr, d_rp = d.min(axis=1), d.min(axis=0)
    hd95 = max(np.quantile(d_pr, 0.95), np.quantile(d_rp, 0.95))
    asd = np.concatenate([d_pr, d_rp]).mean()
    return hd95, asd


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_random_blobs_match_documented_convention(seed):
    rng = np.random.default_rng(seed)
    shape = (10, 11, 9)
    pred = ndimage.binary_opening(rng.random(shape) > 0.45)
    ref = ndimage.binary_opening(rng.random(shape) > 0.45)
    assert pred.any() and ref.any()
    hd95, asd = _reference_surface_metrics(pred, ref, SPACING)
    m = case_metrics(pred, ref, SPACING)
    assert m["hd95"] == pytest.approx(hd95, rel=1e-5)
    assert m["asd"] == pytest.approx(asd, rel=1e-5)


# --- overlap metrics by counting ---------------------------------------------------------------

def test_overlap_metrics_by_counting():
    ref = _vol((4, 4, 4))
    pred = _vol((4, 4, 4))
    ref[0, 0, 0:4] = True  # 4 reference voxels
    pred[0, 0, 0:3] = True  # 3 true positives
    pred[3, 3, 0:3] = True  # 3 false positives; 1 false negative
    m = case_metrics(pred, ref, SPACING)
    assert m["dice"] == pytest.approx(2 * 3 / (6 + 4))
    assert m["jaccard"] == pytest.approx(3 / 7)
    assert m["precision"] == pytest.approx(3 / 6)
    assert m["sensitivity"] == pytest.approx(3 / 4)
    assert m["dice"] == pytest.approx(dice_score(pred, ref))


def test_numeric_masks_are_thresholded_at_nonzero():
    ref = _cube((8, 8, 8), (2, 2, 2), 3)
    pred = _cube((8, 8, 8), (2, 2, 3), 3)
    as_bool = case_metrics(pred, ref, SPACING)
    as_uint8 = case_metrics(pred.astype(np.uint8), ref.astype(np.int64), SPACING)
    assert as_bool == pytest.approx(as_uint8)


def test_result_keys_and_types():
    m = case_metrics(_cube((6, 6, 6), (1, 1, 1), 2), _cube((6, 6, 6), (2, 2, 2), 2), [1, 1, 1])
    assert tuple(m) == METRICS
    assert all(type(v) is float and math.isfinite(v) for v in m.values())


# --- empty-mask rule ----------------------------------------------------------------------------

def test_both_empty():
    m = case_metrics(_vol((4, 5, 6)), _vol((4, 5, 6)), SPACING)
    assert m == {"dice": 1.0, "jaccard": 1.0, "hd95": 0.0, "asd": 0.0, "precision": 1.0, "sensitivity": 1.0,
                 "components": 0.0}


@pytest.mark.parametrize("empty", ["pred", "ref"])
def test_exactly_one_empty_scores_worst(empty):
    shape = (4, 5, 6)
    full = _voxel(shape, (1, 2, 3))
    pred, ref = (_vol(shape), full) if empty == "pred" else (full, _vol(shape))
    m = case_metrics(pred, ref, SPACING)
    diag = math.sqrt((4 * 1.0) ** 2 + (5 * 2.0) ** 2 + (6 * 3.0) ** 2)  # sqrt(440)
    assert volume_diagonal_mm(shape, SPACING) == pytest.approx(diag)
    assert m["hd95"] == pytest.approx(diag)
    assert m["asd"] == pytest.approx(diag)
    assert m["dice"] == m["jaccard"] == m["precision"] == m["sensitivity"] == 0.0


def test_no_warnings_from_monai():
    case_metrics(_cube((6, 6, 6), (1, 1, 1), 2), _cube((6, 6, 6), (1, 1, 2), 2), SPACING)  # warm import
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        case_metrics(_cube((6, 6, 6), (1, 1, 1), 2), _cube((6, 6, 6), (1, 1, 2), 2), SPACING)
        case_metrics(_vol((6, 6, 6)), _cube((6, 6, 6), (1, 1, 2), 2), SPACING)


# --- errors ----------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "pred_shape, ref_shape, spacing",
    [
        ((4, 4, 4), (4, 4, 5), SPACING),  # shape mismatch
        ((4, 4), (4, 4), (1.0, 1.0)),  # 2D
        ((1, 4, 4, 4), (1, 4, 4, 4), SPACING),  # 4D
        ((4, 4, 4), (4, 4, 4), (1.0, 1.0)),  # spacing length
        ((4, 4, 4), (4, 4, 4), (1.0, 0.0, 1.0)),  # zero spacing
        ((4, 4, 4), (4, 4, 4), (1.0, -1.0, 1.0)),  # negative spacing
        ((4, 4, 4), (4, 4, 4), (1.0, float("nan"), 1.0)),
    ],
)
def test_case_metrics_rejects_bad_input(pred_shape, ref_shape, spacing):
    with pytest.raises(ValueError):
        case_metrics(np.zeros(pred_shape, bool), np.zeros(ref_shape, bool), spacing)


# --- dice_score ----------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "pred, ref, expected",
    [
        ([1, 1, 0, 0], [1, 0, 0, 0], 2 * 1 / 3),
        ([1, 1, 1, 1], [1, 1, 1, 1], 1.0),
        ([0, 0, 0, 0], [0, 0, 0, 0], 1.0),  # both empty
        ([0, 0, 0, 0], [0, 1, 0, 0], 0.0),  # one empty
        ([1, 0, 0, 0], [0, 0, 0, 0], 0.0),
    ],
)
def test_dice_score_table(pred, ref, expected):
    assert dice_score(np.array(pred, bool), np.array(ref, bool)) == pytest.approx(expected)


def test_dice_score_any_dimensionality_and_shape_check():
    a = np.zeros((2, 3, 4, 5), bool)
    a[0, 1] = True
    assert dice_score(a, a) == 1.0
    assert dice_score(a[0, 1], a[0, 1]) == 1.0
    with pytest.raises(ValueError):
        dice_score(np.zeros((3, 3), bool), np.zeros((3, 4), bool))
