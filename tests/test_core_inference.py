"""Prediction geometry and post-processing, on hand-made volumes and masks.

Every other test image has its axial axis last; here volumes are stored with the axial axis FIRST
and flipped, so a prediction that is not moved back to the input's orientation shows.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from semicml.data.preprocess import axial_axis, from_axial_last, to_axial_last
from semicml.hardware import resolve_precision
from semicml.inference.postprocess import (
    CANDIDATES,
    apply_postprocess,
    check_spec,
    choose_postprocess,
    components,
    count_components,
)
from semicml.inference.predict import probabilities_on_grid
from semicml.inference.predictor import predict_planes

CPU = torch.device("cpu")
FP32 = resolve_precision("fp32", CPU)

# Array axis 0 runs inferior (axial, flipped), axis 1 anterior, axis 2 right.
AXIAL_FIRST_FLIPPED = np.array([[0, 0, 1.0, 0], [0, 1.0, 0, 0], [-1.0, 0, 0, 0], [0, 0, 0, 1]])


class CopyNet(nn.Module):
    """Logit = 50 x: the probability is > 0.5 exactly where the (normalised) input is > 0."""

    levels = 2

    def __init__(self):
        super().__init__()
        self.seen: list[tuple[int, ...]] = []

    def forward(self, x):
        self.seen.append(tuple(x.shape))
        return 50.0 * x


def asymmetric_case(shape=(12, 40, 36)) -> tuple[np.ndarray, np.ndarray]:
    """Brain (value 1) with a small asymmetric tumour (value 3) and an empty border."""
    rng = np.random.default_rng(0)
    image = np.zeros(shape, np.float32)
    image[1:-1, 3:-5, 2:-7] = 1.0 + 0.01 * rng.random((shape[0] - 2, shape[1] - 8, shape[2] - 9))
    mask = np.zeros(shape, np.uint8)
    mask[2:5, 6:10, 4:7] = 1
    mask[3, 10:14, 4] = 1  # a tail, so that any flip or transpose moves voxels
    mask[8:10, 20:22, 15:20] = 1
    image[mask > 0] = 3.0
    return image, mask


def test_axial_axis_from_affine():
    assert axial_axis(AXIAL_FIRST_FLIPPED) == 0
    assert axial_axis(np.eye(4)) == 2
    assert axial_axis(np.array([[1.0, 0, 0, 0], [0, 0, -2.0, 0], [0, 3.0, 0, 0], [0, 0, 0, 1]])) == 1


@pytest.mark.parametrize("affine", [AXIAL_FIRST_FLIPPED, np.eye(4)], ids=["axial-first-flipped", "axial-last"])
def test_prediction_of_a_copying_network_gives_back_the_input_mask_voxel_for_voxel(affine):
    """Catches ``predict`` not moving the grid back to the input's orientation."""
    image, mask = asymmetric_case()
    net = CopyNet()
    prep = {"in_plane": "crop", "size": 16, "normalisation": "zscore_nonzero"}
    probs = probabilities_on_grid(net, image, affine, prep, CPU, FP32, channels_last=False)
    assert probs.shape == image.shape and probs.dtype == np.float32
    assert np.array_equal(probs > 0.5, mask > 0)
    # the WHOLE slice was predicted (padded to a multiple of 2**levels = 4), not a 16x16 crop
    axis = axial_axis(affine)
    plane = np.delete(np.array(image.shape), axis)
    side = -(-plane.max() // 4) * 4
    assert {s[-2:] for s in net.seen} == {(side, side)}
    nonempty = np.count_nonzero(to_axial_last(image, axis).reshape(-1, image.shape[axis]).any(axis=0))
    assert nonempty < image.shape[axis] and sum(s[0] for s in net.seen) == nonempty  # empty slices skipped


def test_prediction_with_a_resize_store_maps_back_to_the_grid():
    image, mask = asymmetric_case((40, 36, 12))
    big = np.zeros_like(mask)
    big[5:30, 8:26, 3:9] = 1  # large enough to survive a down- and up-sampling
    image[big > 0] = 3.0
    prep = {"in_plane": "resize", "size": 64, "normalisation": "zscore_nonzero"}
    probs = probabilities_on_grid(CopyNet(), image, np.eye(4), prep, CPU, FP32, channels_last=False)
    assert probs.shape == image.shape
    agree = ((probs > 0.5) == (big > 0) | (mask > 0)).mean()
    assert agree > 0.95


def test_axial_moves_round_trip():
    vol = np.arange(2 * 3 * 4).reshape(2, 3, 4)
    for axis in range(3):
        moved = to_axial_last(vol, axis)
        assert moved.shape[-1] == vol.shape[axis]
        assert np.array_equal(from_axial_last(moved, axis), vol)


def test_predict_planes_skips_empty_slices_and_averages_flips():
    planes = np.zeros((3, 8, 8), np.float32)
    planes[1, 2:5, 1:3] = 1.0
    planes[2] = np.linspace(-1, 1, 64).reshape(8, 8)
    net = CopyNet()
    out = predict_planes(net, planes, CPU, FP32, batch_size=1, channels_last=False)
    assert np.all(out[0] == 0) and [s[0] for s in net.seen] == [1, 1]  # batch size 1, two slices
    assert np.allclose(out[1:], 1 / (1 + np.exp(-50.0 * planes[1:])), atol=1e-6)

    class Shift(nn.Module):  # not flip-equivariant: TTA must un-flip each prediction
        def forward(self, x):
            return torch.roll(x, 1, dims=3) * 5.0

    tta = predict_planes(Shift(), planes, CPU, FP32, channels_last=False, tta=True)
    x = planes[2]
    manual = np.zeros_like(x)
    for flip in ((), (0,), (1,), (0, 1)):
        xf = np.flip(x, flip) if flip else x
        p = 1 / (1 + np.exp(-5.0 * np.roll(xf, 1, axis=1)))
        manual += np.flip(p, flip) if flip else p
    assert np.allclose(tta[2], manual / 4, atol=1e-6)
    net_state = nn.Sequential(nn.Dropout(0.5))
    net_state.train()
    predict_planes(net_state, planes, CPU, FP32, channels_last=False)
    assert net_state.training and net_state[0].training  # modes restored


# --------------------------------------------------------------------------- post-processing
def two_blobs() -> np.ndarray:
    mask = np.zeros((20, 20, 20), np.uint8)
    mask[2:5, 2:5, 2:5] = 1  # 27 voxels
    mask[15, 15, 15] = 1  # 1 voxel, far away
    return mask


def test_largest_keeps_the_largest_component_whatever_its_label():
    mask = np.zeros((20, 20, 20), np.uint8)
    mask[0, 0, 0] = 1  # found first: component 1
    mask[10:13, 10:13, 10:13] = 1  # component 2, the largest
    mask[18, 18, 18] = 1
    out = apply_postprocess(mask, "largest", (1, 1, 1))
    assert out.sum() == 27 and out[11, 11, 11] == 1 and out[0, 0, 0] == 0


def test_components_are_26_connected():
    mask = np.zeros((5, 5, 5), np.uint8)
    mask[1, 1, 1] = mask[2, 2, 2] = 1  # corner contact only
    assert count_components(mask) == 1
    mask[4, 4, 0] = 1
    labels, n = components(mask)
    assert n == 2 and labels[1, 1, 1] == labels[2, 2, 2] != labels[4, 4, 0]


def test_apply_postprocess_by_hand():
    mask = two_blobs()
    assert apply_postprocess(mask, "none", (1, 1, 1)) is mask
    largest = apply_postprocess(mask, "largest", (1, 1, 1))
    assert largest.dtype == np.uint8 and largest.sum() == 27 and largest[15, 15, 15] == 0
    # min-size is in mm^3: one voxel of 1 mm^3 goes, one voxel of 2x2x2 = 8 mm^3 stays
    small = apply_postprocess(mask, "min-size:5", (1.0, 1.0, 1.0))
    assert small.sum() == 27 and small[15, 15, 15] == 0
    assert np.array_equal(apply_postprocess(mask, "min-size:5", (2.0, 2.0, 2.0)), mask)
    assert np.array_equal(apply_postprocess(mask, "min-size:27", (1, 1, 1)), largest)  # >= keeps 27
    # above every size: the largest component is still kept (a prediction is never emptied)
    assert np.array_equal(apply_postprocess(mask, "min-size:28", (1, 1, 1)), largest)
    empty = np.zeros((4, 4, 4), np.uint8)
    assert apply_postprocess(empty, "largest", (1, 1, 1)).sum() == 0
    single = np.zeros((4, 4, 4), bool)
    single[1, 1, 1] = True
    assert np.array_equal(apply_postprocess(single, "min-size:100", (1, 1, 1)), single)  # one component kept
    values = mask * 7
    assert set(np.unique(apply_postprocess(values, "largest", (1, 1, 1)))) == {0, 7}


@pytest.mark.parametrize("spec", ["none", "largest", "min-size:0", "min-size:12.5"])
def test_check_spec_accepts(spec):
    assert check_spec(spec) == spec


@pytest.mark.parametrize("spec", ["", "biggest", "min-size:", "min-size:-1", "min-size:x", "minsize:10"])
def test_check_spec_rejects(spec):
    with pytest.raises(ValueError, match="post-processing"):
        check_spec(spec)
    with pytest.raises(ValueError):
        apply_postprocess(two_blobs(), spec, (1, 1, 1))


def test_choose_postprocess_removes_a_far_false_island():
    ref = np.zeros((20, 20, 20), np.uint8)
    ref[4:9, 4:9, 4:9] = 1  # 125 voxels
    prob = ref.astype(np.float32) * 0.9
    prob[15:17, 15:17, 15:17] = 0.8  # an 8-voxel false positive island
    prob[10, 10, 10] = 0.4  # below the threshold
    prob[0, 19, 0] = 0.5  # AT the threshold: not foreground (> threshold)
    out = choose_postprocess([prob], [ref], [(1.0, 1.0, 1.0)])
    scores = out["candidates"]
    assert list(scores) == list(CANDIDATES)
    assert scores["none"]["dice"] == pytest.approx(2 * 125 / (133 + 125))
    assert scores["none"]["components"] == 2 and scores["largest"]["components"] == 1
    assert scores["min-size:100"]["dice"] == pytest.approx(1.0) and scores["min-size:100"]["hd95"] == 0
    assert scores["min-size:1000"]["dice"] == pytest.approx(1.0)  # above the tumour (125 mm^3): the largest stays
    assert scores["largest"]["dice"] == pytest.approx(1.0)
    assert out["choice"] == "min-size:100"  # ties with "largest": the earlier (milder) one wins
    assert scores["none"]["hd95"] > 5


def test_choose_postprocess_prefers_lower_hd95_within_the_dice_tolerance_and_averages_cases():
    ref = np.zeros((40, 40, 40), np.uint8)
    ref[5:25, 5:25, 5:25] = 1  # 8000 voxels
    prob = ref.astype(np.float32)
    prob[35, 5:17, 5:17] = 1.0  # a far 144-voxel sheet: > 5% of the surface, < 0.005 of the mean Dice
    perfect = ref.astype(np.float32)
    out = choose_postprocess([prob, perfect, perfect], [ref] * 3, [(1, 1, 1)] * 3,
                             candidates=("none", "min-size:200"))
    none, clean = out["candidates"]["none"], out["candidates"]["min-size:200"]
    assert none["dice"] == pytest.approx((2 * 8000 / 16144 + 2.0) / 3)
    assert clean["dice"] - none["dice"] < 0.005
    assert clean["dice"] == pytest.approx(1.0) and clean["hd95"] == 0.0 and none["hd95"] > 3
    assert none["components"] == pytest.approx(4 / 3)
    assert out["choice"] == "min-size:200"
    # nothing above the threshold: every candidate scores the same, the first one wins
    assert choose_postprocess([prob * 0.4], [ref], [(1, 1, 1)], candidates=("none", "largest"))["choice"] == "none"


def test_choose_postprocess_without_validation_cases():
    assert choose_postprocess([], [], []) == {"choice": "none", "candidates": {}, "reason": "no validation case"}
