"""Region-based targets (issue 11): spec resolution, the stored bit mask, the label-map round trip."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from semicml.data.phantom import write_phantom
from semicml.data.readers import open_dataset
from semicml.data.store import PrepareOptions, SliceStore, prepare_store
from semicml.data.targets import Target, apply_target, label_map_from_regions, region_masks, resolve_target
from semicml.errors import DataError

from conftest import copy_phantom, make_brats_fixture, make_msd_fixture

BRATS_REGIONS = Target("regions", ["wt", "tc", "et"], [[1, 2, 4], [1, 4], [4]], regions=True, paint=[2, 1, 4])


@pytest.fixture(scope="module")
def brats_root(phantom_root: Path, tmp_path_factory) -> Path:
    return make_brats_fixture(phantom_root, tmp_path_factory.mktemp("brats"), cases=2)


def test_regions_keyword_brats_is_wt_tc_et_painted_2_1_4(brats_root: Path) -> None:
    target = resolve_target(open_dataset(brats_root), "regions")
    assert target == BRATS_REGIONS
    assert target.channels == 3 and not target.binary
    # The explicit list is the same target (its name is the list).
    listed = resolve_target(open_dataset(brats_root), "WT, tc,et")
    assert (listed.classes, listed.values, listed.paint, listed.name) == (target.classes, target.values, [2, 1, 4],
                                                                          "wt,tc,et")


@pytest.mark.parametrize(("fixture", "values", "paint"), [
    ("phantom", [[1, 2, 3], [1, 3], [3]], [2, 1, 3]),  # necrosis 1, edema 2, enhancing 3
    ("msd", [[1, 2, 3], [2, 3], [3]], [1, 2, 3]),      # MSD: edema 1, non-enhancing 2, enhancing 3
])
def test_regions_from_label_names(fixture: str, values, paint, phantom_root: Path, tmp_path: Path) -> None:
    root = phantom_root if fixture == "phantom" else make_msd_fixture(phantom_root, tmp_path, cases=2)
    target = resolve_target(open_dataset(root), "regions")
    assert (target.classes, target.values, target.paint) == (["wt", "tc", "et"], values, paint)


def test_regions_from_nnunet_region_entries_in_declared_order(phantom_root: Path, tmp_path: Path) -> None:
    root = copy_phantom(phantom_root, tmp_path, cases=1)
    meta = json.loads((root / "dataset.json").read_text())
    meta["labels"] = {"background": 0, "whole tumor": [1, 2, 3], "tumor core": [1, 3], "enhancing tumor": 3}
    (root / "dataset.json").write_text(json.dumps(meta))
    target = resolve_target(open_dataset(root), "regions")
    assert target.classes == ["whole_tumor", "tumor_core", "enhancing_tumor"]
    assert target.values == [[1, 2, 3], [1, 3], [3]] and target.paint == [2, 1, 3]
    # nnU-Net's regions_class_order gives the painted values; one that cannot paint back is refused
    meta["regions_class_order"] = [2, 1, 3]
    (root / "dataset.json").write_text(json.dumps(meta))
    assert resolve_target(open_dataset(root), "regions").paint == [2, 1, 3]
    meta["regions_class_order"] = [1, 2]
    (root / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match=r"regions_class_order must list one integer per region \(3\)"):
        open_dataset(root)


def test_lists_that_stay_one_binary_class_and_errors(brats_root: Path) -> None:
    info = open_dataset(brats_root)
    assert resolve_target(info, "1,4") == Target("labels_1_4", ["labels_1_4"], [[1, 4]])  # as before
    assert resolve_target(info, "ed,ncr").binary
    mixed = resolve_target(info, "wt,ncr+et")  # an item may itself be a spec
    assert mixed.values == [[1, 2, 4], [1, 4]] and mixed.paint == [2, 1]
    # Regions that cannot be painted back into one label map (et first is overwritten by wt)
    assert resolve_target(info, "et,wt").paint is None
    with pytest.raises(DataError, match="a region is listed twice"):
        resolve_target(info, "wt,tc,wt")
    with pytest.raises(DataError, match="unknown target 'xx'"):
        resolve_target(info, "wt,xx")


def test_apply_target_regions_is_a_bit_mask_hand_computed() -> None:
    label = np.array([[0, 1, 2], [4, 4, 0]], dtype=np.int16)
    bits = apply_target(label, BRATS_REGIONS)
    # ncr 1 -> wt + tc = 0b011; ed 2 -> wt = 0b001; et 4 -> wt + tc + et = 0b111
    np.testing.assert_array_equal(bits, [[0, 3, 1], [7, 7, 0]])
    assert bits.dtype == np.uint8
    masks = region_masks(bits, 3)
    np.testing.assert_array_equal(masks[0], label > 0)
    np.testing.assert_array_equal(masks[1], np.isin(label, [1, 4]))
    np.testing.assert_array_equal(masks[2], label == 4)


def test_round_trip_regions_label_map_regions_is_exact() -> None:
    rng = np.random.default_rng(0)
    label = rng.choice([0, 1, 2, 4], size=(20, 21, 9))
    masks = region_masks(apply_target(label, BRATS_REGIONS), 3)
    painted = label_map_from_regions(masks, BRATS_REGIONS)
    np.testing.assert_array_equal(painted, label)  # BraTS labels come back exactly
    np.testing.assert_array_equal(region_masks(apply_target(painted, BRATS_REGIONS), 3), masks)
    # hand-computed painting: later regions overwrite earlier ones
    m = np.array([[1, 1, 1, 0], [0, 1, 1, 0], [0, 0, 1, 1]], dtype=bool)
    np.testing.assert_array_equal(label_map_from_regions(m, BRATS_REGIONS), [2, 1, 4, 4])
    with pytest.raises(ValueError, match="one mask per region"):
        label_map_from_regions(m[:2], Target("et,wt", ["et", "wt"], [[4], [1, 2, 4]], regions=True, paint=None))


def test_store_keeps_regions_as_bits_on_a_resampled_grid(tmp_path: Path) -> None:
    mods = ("T2", "T1ce", "FLAIR", "T1")
    root = write_phantom(tmp_path / "p", cases=2, seed=2, shape=(48, 48, 16), modalities=mods)
    keep = prepare_store(root, tmp_path / "keep", PrepareOptions(modalities=mods, size=48, target="regions",
                                                                 spacing="keep"), progress=False)
    store = SliceStore(keep)
    assert store.regions and store.n_classes == 3 and store.modalities == list(mods)
    assert store.target == {"name": "regions", "classes": ["wt", "tc", "et"], "values": [[1, 2, 3], [1, 3], [3]],
                            "regions": True, "paint": [2, 1, 3]}
    binary = SliceStore(prepare_store(root, tmp_path / "wt", PrepareOptions(modalities=mods, size=48, target="wt",
                                                                            spacing="keep"), progress=False))
    assert "regions" not in binary.target and binary.n_classes == 1  # binary store.json as before
    for case in store.cases:
        ch = store.label_channels(store.label(case))  # (Z, 3, H, W)
        assert ch.shape[1] == 3 and ch[:, 2].sum() > 0 and ch[:, 2].sum() < ch[:, 1].sum() < ch[:, 0].sum()
        np.testing.assert_array_equal(ch[:, 0], np.asarray(binary.label(case)) > 0)  # wt = the binary target
    # resampled to another spacing: the regions stay nested (et in tc in wt)
    store2 = SliceStore(prepare_store(root, tmp_path / "res", PrepareOptions(modalities=mods, size=48,
                        target="regions", spacing=2.0), progress=False))
    for case in store2.cases:
        ch = store2.label_channels(store2.label(case))
        assert ch[:, 2].any() and not (ch[:, 2] & ~ch[:, 1]).any() and not (ch[:, 1] & ~ch[:, 0]).any()
