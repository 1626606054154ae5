"""Metric contracts beyond the values of test_metrics.py: exact error messages, masks with
several non-zero values, strict lengths. Written against the surviving mutants of
benchmarks/mutation.py (evaluation/metrics.py). No surface distances here (no MONAI): fast.
"""

from __future__ import annotations

import numpy as np
import pytest

from semicml.evaluation.metrics import case_metrics, count_components, dice_score, volume_diagonal_mm


def message(fn, *args) -> str:
    with pytest.raises(ValueError) as info:
        fn(*args)
    return str(info.value)


@pytest.mark.parametrize("pred, ref, spacing, expected", [
    ((4, 4, 4), (4, 4, 5), (1, 1, 1), "pred and ref must have the same shape, got (4, 4, 4) and (4, 4, 5)"),
    ((4, 4), (4, 4), (1, 1, 1), "expected 3D masks, got shape (4, 4)"),
    ((4, 4, 4), (4, 4, 4), None, "spacing must be a sequence of 3 numbers, got None"),
    ((4, 4, 4), (4, 4, 4), 1.0, "spacing must be a sequence of 3 numbers, got 1.0"),
    ((4, 4, 4), (4, 4, 4), (1.0, 2.0), "spacing must have 3 values (one per axis), got 2"),
    ((4, 4, 4), (4, 4, 4), (1, 0, 1), "spacing values must be finite and > 0, got (1.0, 0.0, 1.0)"),
    ((4, 4, 4), (4, 4, 4), (1, float("inf"), 1), "spacing values must be finite and > 0, got (1.0, inf, 1.0)"),
])
def test_case_metrics_errors(pred, ref, spacing, expected):
    assert message(case_metrics, np.zeros(pred, bool), np.zeros(ref, bool), spacing) == expected


def test_dice_score_error_names_both_shapes():
    assert message(dice_score, np.zeros((3, 3)), np.zeros((3, 4))) == \
        "pred and ref must have the same shape, got (3, 3) and (3, 4)"


def test_masks_with_different_non_zero_values_are_the_same_foreground():
    # 2 & 1 == 0 bitwise: masks must become boolean before they are intersected
    pred = np.zeros((4, 4, 4), np.int64)
    ref = np.zeros((4, 4, 4), np.uint8)
    pred[0, 0, :2] = 2
    pred[3, 3, 3] = -1  # negative values are foreground too
    ref[0, 0, :2] = 1
    assert dice_score(pred, ref) == pytest.approx(2 * 2 / 5)
    overlap = {k: v for k, v in case_metrics(np.zeros_like(pred), ref, (1, 1, 1)).items()}
    assert overlap["dice"] == 0.0 and overlap["hd95"] == pytest.approx(volume_diagonal_mm((4, 4, 4), (1, 1, 1)))
    assert case_metrics(np.zeros_like(ref), np.zeros_like(ref), (1, 1, 1))["dice"] == 1.0
    pred[3, 3, 3] = 3
    assert count_components(pred) == 2 and count_components(np.where(pred > 0, 0.5, 0.0)) == 2


def test_volume_diagonal_needs_one_spacing_per_axis():
    assert volume_diagonal_mm((3, 4, 12), (1.0, 1.0, 1.0)) == 13.0
    with pytest.raises(ValueError):
        volume_diagonal_mm((3, 4, 12), (1.0, 1.0))


def test_count_components_in_2d_is_8_connected():
    plane = np.zeros((4, 4), bool)
    plane[0, 0] = plane[1, 1] = True  # diagonal neighbours: one component
    plane[3, 3] = True
    assert count_components(plane) == 2
