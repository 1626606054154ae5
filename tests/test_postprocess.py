"""Connected-component post-processing: each candidate on hand-made masks, and the choice rule."""

from __future__ import annotations

import numpy as np
import pytest

from semicml.inference.postprocess import CANDIDATES, apply_postprocess, check_spec, choose_postprocess


def _mask() -> np.ndarray:
    m = np.zeros((20, 20, 20), np.uint8)
    m[2:8, 2:8, 2:8] = 1      # 216 voxels: the tumour
    m[15:17, 15:17, 15:17] = 1  # 8 voxels: a far island
    m[12, 2, 2] = 1           # 1 voxel
    return m


def test_candidates_on_a_hand_made_mask():
    m = _mask()
    assert apply_postprocess(m, "none", (1, 1, 1)) is m
    largest = apply_postprocess(m, "largest", (1, 1, 1))
    assert largest.sum() == 216 and largest[2:8, 2:8, 2:8].all() and largest.dtype == m.dtype
    # min-size in mm^3: with 2 mm^3 voxels the 8-voxel island is 16 mm^3
    assert apply_postprocess(m, "min-size:10", (1, 1, 2)).sum() == 216 + 8
    assert apply_postprocess(m, "min-size:20", (1, 1, 2)).sum() == 216
    assert apply_postprocess(m, "min-size:0", (1, 1, 1)).sum() == m.sum()


def test_near_keeps_what_lies_within_the_distance_of_the_largest_component_in_world_mm():
    m = _mask()  # the 1-voxel speck is 5 voxels from the tumour (along axis 0), the island sqrt(3 * 8^2)
    assert apply_postprocess(m, "near:6", (1, 1, 1)).sum() == 216 + 1
    assert apply_postprocess(m, "near:4", (1, 1, 1)).sum() == 216
    assert apply_postprocess(m, "near:14", (1, 1, 1)).sum() == 216 + 1 + 8  # 13.86 mm away
    assert apply_postprocess(m, "near:13", (1, 1, 1)).sum() == 216 + 1
    # distances follow the spacing of each axis: 2 mm slices put the speck 10 mm away
    assert apply_postprocess(m, "near:6", (2, 1, 1)).sum() == 216
    assert apply_postprocess(m, "near:6", (1, 2, 2)).sum() == 216 + 1
    # a far component is removed whatever its size, as long as it is not the largest
    big = np.zeros((40, 20, 20), np.uint8)
    big[2:12, 2:12, 2:12] = 1   # 1000 voxels
    big[30:38, 2:12, 2:12] = 1  # 800 voxels, 18 mm away
    assert apply_postprocess(big, "near:10", (1, 1, 1)).sum() == 1000
    assert apply_postprocess(big, "near:20", (1, 1, 1)).sum() == 1800


def test_near_and_min_size_together_keep_only_what_both_keep():
    m = _mask()
    m[2:4, 10:12, 2:4] = 1  # 8 voxels, 3 mm from the tumour: a fragment beside it
    # near:13 keeps the speck and the fragment (the island is 13.86 mm away); min-size:5 keeps the
    # fragment and the island; together: the tumour and the fragment only, whichever part comes first
    assert apply_postprocess(m, "near:13", (1, 1, 1)).sum() == 216 + 1 + 8
    assert apply_postprocess(m, "min-size:5", (1, 1, 1)).sum() == 216 + 8 + 8
    for spec in ("near:13+min-size:5", "min-size:5+near:13"):
        out = apply_postprocess(m, spec, (1, 1, 1))
        assert out.sum() == 216 + 8 and out[2:4, 10:12, 2:4].all() and out[15:17, 15:17, 15:17].sum() == 0
    # the largest component survives every part, however small the volume's largest is
    tiny = np.zeros((10, 10, 10), np.uint8)
    tiny[1, 1, 1] = tiny[8, 8, 8] = tiny[8, 8, 7] = 1
    assert apply_postprocess(tiny, "near:1+min-size:1000", (1, 1, 1)).sum() == 2


def test_size_threshold_never_empties_a_prediction():
    small = np.zeros((10, 10, 10), np.uint8)
    small[4:6, 4:6, 4:6] = 1  # a small tumour, the only thing found: 8 mm^3
    small[0, 0, 0] = 1
    out = apply_postprocess(small, "min-size:1000", (1, 1, 1))
    assert out.sum() == 8 and out[4:6, 4:6, 4:6].all()


def test_bad_spec_is_refused():
    for bad in ("biggest", "min-size:", "min-size:-3", "min-size:x", "near:", "near:-1", "near:x", "near",
                "near:20+largest", "none+near:20", "near:20+", "+near:20", "near:20++min-size:5"):
        with pytest.raises(ValueError, match="post-processing"):
            check_spec(bad)


def test_config_and_inference_accept_exactly_the_same_strings():
    """One grammar: a value the config accepts is one inference can apply, and the reverse (they
    once differed: `near:inf` passed inference, not the config)."""
    from semicml.config import build_config
    from semicml.errors import ConfigError

    specs = (*CANDIDATES, "min-size:2.5", "near:7+near:3", "near:inf", "near:1e3", " near:10", "near:10 ", "near:10\n",
             "min-size:nan", "NONE", "largest+near:3", "near:+5", "auto")
    for spec in specs:
        try:
            build_config(overrides={"postprocess": spec})
            config_ok = True
        except ConfigError:
            config_ok = False
        assert config_ok == (_accepted(spec) or spec == "auto"), spec
    assert not any(_accepted(s) for s in ("near:inf", "near:1e3", " near:10", "near:10\n", "min-size:nan", "NONE"))


def _accepted(spec: str) -> bool:
    try:
        check_spec(spec)
        return True
    except ValueError:
        return False


def test_choice_prefers_dice_then_lower_hd95():
    ref = np.zeros((20, 20, 20), bool)
    ref[2:8, 2:8, 2:8] = True
    prob = _mask().astype(np.float32) * 0.9
    out = choose_postprocess([prob], [ref], [(1, 1, 1)])
    scores = out["candidates"]
    assert scores["none"]["dice"] < scores["largest"]["dice"] == pytest.approx(1.0)
    assert scores["none"]["components"] == 3 and scores["largest"]["components"] == 1
    # the islands (8 and 1 mm^3) go with min-size:100 already: every stronger candidate ties at
    # Dice 1 and HD95 0, and the earliest (mildest) one wins
    assert out["choice"] == "min-size:100"
    # a prediction whose largest component is FALSE: keeping the largest loses the tumour
    wrong = np.zeros((20, 20, 20), np.float32)
    wrong[10:19, 10:19, 10:19] = 0.9   # big false blob
    wrong[2:8, 2:8, 2:8] = 0.9         # the tumour
    assert choose_postprocess([wrong], [ref], [(1, 1, 1)])["choice"] != "largest"


def test_when_dice_and_hd95_tie_the_fewest_components_win():
    """A big tumour and two one-voxel specks: removing them changes Dice by < 1e-4 and HD95 not at
    all, but a reader sees three objects instead of one; the mildest candidate that removes them
    wins (the rule before counted only HD95 and kept 'none')."""
    ref = np.zeros((40, 40, 40), bool)
    ref[5:25, 5:25, 5:25] = True  # 8000 voxels
    prob = ref.astype(np.float32) * 0.9
    prob[37, 37, 37] = prob[37, 2, 37] = 0.9
    out = choose_postprocess([prob], [ref], [(1, 1, 1)])
    scores = out["candidates"]
    assert scores["none"]["dice"] > scores["min-size:100"]["dice"] - 1e-3 and scores["none"]["components"] == 3
    assert abs(scores["none"]["hd95"] - scores["min-size:100"]["hd95"]) <= 1.0
    assert out["choice"] == "min-size:100"


def test_a_component_of_exactly_the_minimum_size_is_kept():
    m = _mask()  # islands of 8 voxels and 1 voxel
    assert apply_postprocess(m, "min-size:16", (1, 1, 2)).sum() == 216 + 8  # 8 x 2 mm^3 = 16: not smaller
    assert apply_postprocess(m, "min-size:16.5", (1, 1, 2)).sum() == 216


def test_a_configured_choice_runs_no_network_and_covers_every_region_and_modality():
    """`train --postprocess largest`: the choice is the configuration's, per region, for each
    network and the fused map, without running a network (None) or reading a store (None)."""
    from semicml.engine.validation import choose_postprocessing

    choices, fused = choose_postprocessing(None, ["case_a"], {"T2": None, "T1ce": None}, None, None,
                                           ["wt", "tc"], fixed="largest")
    assert choices == {m: {"choice": {"wt": "largest", "tc": "largest"}, "chosen_by": "config"} for m in ("T2", "T1ce")}
    assert fused == {"T2+T1ce": {"choice": "largest", "chosen_by": "config"}}
    binary, _ = choose_postprocessing(None, [], {"T2": None}, None, None, [], fixed="min-size:50")
    assert binary == {"T2": {"choice": "min-size:50", "chosen_by": "config"}}
    with pytest.raises(ValueError, match="unknown post-processing"):
        choose_postprocessing(None, [], {"T2": None}, None, None, [], fixed="smallest")


def test_near_matches_a_whole_volume_distance_map_on_random_masks():
    """The distance map is cut to the largest component's box grown by D: same answer as the
    whole volume, whatever the spacing."""
    from scipy import ndimage

    from semicml.inference.postprocess import components

    rng = np.random.default_rng(1)
    for trial in range(6):
        noise = rng.random((18, 30, 26))
        # odd trials: blobs of many sizes (smoothed noise); even: scattered specks
        mask = ndimage.gaussian_filter(noise, 1.5) > 0.56 if trial % 2 else noise > 0.985
        spacing = [(1.0, 1.0, 1.0), (3.0, 0.5, 0.8), (0.7, 2.0, 1.0)][trial % 3]
        labels, n = components(mask)
        if n < 2:
            continue
        largest = 1 + int(np.argmax(np.bincount(labels.ravel())[1:]))
        distance = ndimage.distance_transform_edt(labels != largest, sampling=spacing)
        for mm in (1.5, 4.0, 9.0):
            expected = np.isin(labels, [k for k in range(1, n + 1)
                                        if k == largest or distance[labels == k].min() <= mm])
            assert np.array_equal(apply_postprocess(mask.astype(np.uint8), f"near:{mm}", spacing) > 0, expected)


def test_a_tie_goes_to_the_mildest_candidate_near_before_largest():
    """A far false island is removed by every near:D below its distance and by largest: all tie on
    validation, and the mildest of them (the largest D) is chosen, not largest (which would also
    drop a real second lobe beside the tumour on the next patient)."""
    ref = np.zeros((30, 30, 100), bool)
    ref[5:25, 5:25, 5:25] = True  # 8000 mm^3
    pred = ref.copy()
    pred[5:23, 5:23, 66:84] = True  # 5832 mm^3 (min-size keeps it), 42 mm from the tumour
    prob = pred.astype(np.float32)
    out = choose_postprocess([prob], [ref], [(1.0, 1.0, 1.0)])
    scores = out["candidates"]
    assert scores["near:30"]["dice"] == scores["largest"]["dice"] == 1.0
    assert scores["near:50"]["dice"] < 1.0 and scores["min-size:5000"]["dice"] < 1.0
    assert out["choice"] == "near:30"
