"""Slice store, splits, labelled subsets and the two-stream sampler."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from semicml.data.preprocess import from_axial_last, paste_planes
from semicml.data.readers import open_dataset, read_case
from semicml.data.sampler import (
    AugmentOptions,
    PairedSliceDataset,
    TwoStreamBatchSampler,
    collate_two_stream,
    make_loader,
)
from semicml.data.splits import Splits, load_or_make_subset, load_splits, make_splits, select_labeled
from semicml.data.store import PrepareOptions, SliceStore, prepare_store
from semicml.data.targets import apply_target, resolve_target
from semicml.errors import DataError


@pytest.fixture(scope="module")
def store(phantom_root, tmp_path_factory) -> SliceStore:
    out = tmp_path_factory.mktemp("store") / "s"
    prepare_store(phantom_root, out, PrepareOptions(modalities=("T2", "T1ce"), size=80, workers=2), progress=False)
    return SliceStore(out)


def _round_trip(store: SliceStore, dataset: Path, case_id: str) -> tuple[np.ndarray, np.ndarray]:
    """Stored label planes mapped back to the original grid, and the original target volume."""
    info = open_dataset(dataset)
    case = read_case(info, case_id, info.modalities[:1])
    expected = apply_target(case.label, resolve_target(info, store.target["name"]))
    meta = store.cases[case_id]
    planes = np.asarray(store.label(case_id)).transpose(1, 2, 0).astype(np.float32)  # (H, W, Z)
    axial_last_shape = np.moveaxis(np.empty(meta.shape), meta.axial_axis, -1).shape
    back = from_axial_last(paste_planes(planes, meta.box, axial_last_shape[:2]), meta.axial_axis)
    return back.round().astype(np.uint8), expected


def test_store_layout_and_manifest(store, phantom_root):
    info = open_dataset(phantom_root)
    assert store.modalities == ["T2", "T1ce"]
    assert set(store.cases) == set(info.case_ids)
    for cid, meta in store.cases.items():
        images = store.images(cid)
        assert images.dtype == np.float16 and images.shape == (meta.n_slices, 2, 80, 80)
        assert isinstance(images, np.memmap)  # bounded memory: never loaded whole
        label = store.label(cid)
        assert label.shape == (meta.n_slices, 80, 80) and set(np.unique(label)) <= {0, 1}
        # foreground slices are exactly the slices with target voxels
        assert meta.foreground_slices == np.flatnonzero(label.reshape(meta.n_slices, -1).max(1)).tolist()
        # z-scored inside the brain: roughly zero mean, unit std over non-zero voxels
        t2 = np.asarray(images[:, 0], dtype=np.float32)
        assert abs(t2[t2 != 0].mean()) < 0.2 and 0.7 < t2[t2 != 0].std() < 1.3


def test_round_trip_reproduces_label_voxel_for_voxel(store, phantom_root):
    for cid in store.cases:
        back, expected = _round_trip(store, phantom_root, cid)
        assert back.shape == expected.shape
        assert np.array_equal(back, expected), cid


def test_incomplete_store_is_rejected(store, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(store.root, copy)
    manifest = json.loads((copy / "store.json").read_text())
    manifest["complete"] = False
    (copy / "store.json").write_text(json.dumps(manifest))
    with pytest.raises(DataError, match="incomplete"):
        SliceStore(copy)
    (copy / "store.json").unlink()
    with pytest.raises(DataError, match="store.json missing"):
        SliceStore(copy)


def test_existing_output_needs_overwrite(store, phantom_root):
    with pytest.raises(DataError, match="exists"):
        prepare_store(phantom_root, store.root, PrepareOptions(modalities=("T2",)), progress=False)


def test_splits_are_disjoint_and_reproducible(store, tmp_path):
    a = make_splits(store, seed=3, val_fraction=0.2, test_fraction=0.2)
    b = make_splits(store, seed=3, val_fraction=0.2, test_fraction=0.2)
    c = make_splits(store, seed=4, val_fraction=0.2, test_fraction=0.2)
    assert a == b
    assert a.to_json() != c.to_json() or len(store.cases) < 4
    sets = [set(a.train), set(a.val), set(a.test)]
    assert not (sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2])
    assert set().union(*sets) == set(store.cases)
    path = tmp_path / "splits.json"
    path.write_text(json.dumps(a.to_json()))
    assert load_splits(path, store) == a
    bad = dict(a.to_json(), test=a.test + a.train[:1])
    path.write_text(json.dumps(bad))
    with pytest.raises(DataError, match="both"):
        load_splits(path, store)


def test_labelled_subset_slice_and_case_level(store):
    splits = make_splits(store, seed=0, val_fraction=0.2, test_fraction=0.2)
    sub = select_labeled(store, splits.train, 0.1, "slice", seed=1)
    pool = sum(len(store.cases[c].foreground_slices) for c in splits.train)
    assert len(sub.labeled) == int(np.ceil(0.1 * pool))
    assert len(sub.labeled) + len(sub.unlabeled) == pool
    assert not set(sub.labeled) & set(sub.unlabeled)
    assert {c for c, _ in sub.labeled} <= set(splits.train)
    again = select_labeled(store, splits.train, 0.1, "slice", seed=1)
    other = select_labeled(store, splits.train, 0.1, "slice", seed=2)
    assert again.labeled == sub.labeled and other.labeled != sub.labeled
    assert len(select_labeled(store, splits.train, 0.1, "slice", seed=1, min_labeled=30).labeled) == min(30, pool)
    by_case = select_labeled(store, splits.train, 0.3, "case", seed=0)
    labelled_cases = {c for c, _ in by_case.labeled}
    assert len(labelled_cases) == int(np.ceil(0.3 * len(splits.train)))
    assert not labelled_cases & {c for c, _ in by_case.unlabeled}  # whole cases


def test_subset_is_persisted_next_to_store_and_reused(store):
    splits = make_splits(store, seed=0, val_fraction=0.2, test_fraction=0.2)
    first, path = load_or_make_subset(store, splits, 0.2, "slice", seed=5)
    assert path is not None and path.is_file() and path.parent == store.root / "subsets"
    saved = json.loads(path.read_text())
    assert saved["n_labeled"] == len(first.labeled)
    second, path2 = load_or_make_subset(store, splits, 0.2, "slice", seed=5)
    assert path2 == path and second.labeled == first.labeled


def test_unlabelled_cases_are_always_unlabelled(phantom_root, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(phantom_root, data)
    victim = sorted((data / "labelsTr").iterdir())[0]
    victim_id = victim.name.removesuffix(".nii.gz")
    victim.unlink()
    out = tmp_path / "store"
    prepare_store(data, out, PrepareOptions(modalities=("T2", "T1ce"), size=80, workers=1), progress=False)
    s = SliceStore(out)
    assert not s.cases[victim_id].labeled and s.label(victim_id) is None
    splits = make_splits(s, seed=0, val_fraction=0.2, test_fraction=0.2)
    assert victim_id in splits.train
    sub = select_labeled(s, splits.train, 1.0, "slice", seed=0)
    assert victim_id not in {c for c, _ in sub.labeled}
    assert victim_id in {c for c, _ in sub.unlabeled}


def test_sampler_yields_configured_mix_and_is_resumable(store):
    splits = make_splits(store, seed=0, val_fraction=0.2, test_fraction=0.2)
    sub = select_labeled(store, splits.train, 0.2, "slice", seed=0)
    ds = PairedSliceDataset(store, sub.labeled, sub.unlabeled, ["T1ce", "T2"])
    sampler = TwoStreamBatchSampler(len(sub.labeled), len(sub.unlabeled), 3, 5, seed=0, start=0, stop=6)
    batches = list(make_loader(ds, sampler, num_workers=0))
    assert len(batches) == 6
    for b in batches:
        assert b["images_l"].shape == (3, 2, 80, 80) and b["images_u"].shape == (5, 2, 80, 80)
        assert b["label_l"].shape == (3, 80, 80)
    # channel order follows the requested modalities, not the store's
    first = sampler.batch(0)[0][0]
    case, z = ds.keys[first]
    assert np.allclose(batches[0]["images_l"][0, 0].numpy(), np.asarray(store.images(case)[z, 1], dtype=np.float32))
    # labelled indices come from the labelled pool only, unlabelled from the other
    for k in range(6):
        idx = [i for i, _, _ in sampler.batch(k)]
        assert all(i < len(sub.labeled) for i in idx[:3]) and all(i >= len(sub.labeled) for i in idx[3:])
    # a sampler started at iteration 4 yields exactly the batches 4 and 5 of the full run
    resumed = TwoStreamBatchSampler(len(sub.labeled), len(sub.unlabeled), 3, 5, seed=0, start=4, stop=6)
    assert list(resumed) == [sampler.batch(4), sampler.batch(5)]
    # an epoch of the labelled stream visits every labelled slice once
    n = len(sub.labeled)
    long = TwoStreamBatchSampler(n, len(sub.unlabeled), 1, 1, seed=0, start=0, stop=n)
    assert sorted(b[0][0] for b in long) == list(range(n))


def test_augmentation_is_paired_and_deterministic(store):
    splits = make_splits(store, seed=0, val_fraction=0.2, test_fraction=0.2)
    sub = select_labeled(store, splits.train, 0.5, "slice", seed=0)
    opts = AugmentOptions(enabled=True, noise_std=0.0, intensity_scale=0.0, intensity_shift=0.0)
    ds = PairedSliceDataset(store, sub.labeled, sub.unlabeled, augment=opts, seed=0)
    plain = PairedSliceDataset(store, sub.labeled, sub.unlabeled, seed=0)
    a, b = ds[(0, 3, 1)], ds[(0, 3, 1)]
    assert np.array_equal(a["images"], b["images"]) and np.array_equal(a["label"], b["label"])
    c = ds[(0, 4, 1)]
    assert not np.array_equal(a["images"], c["images"])
    # the same spatial transform moves label and both modalities: the brain (non-zero) region
    # of each modality and the label stay inside one another as in the unaugmented slice
    assert not np.array_equal(a["images"], plain[0]["images"])
    brain = [(a["images"][m].abs() > 0) for m in range(2)]
    assert (brain[0] ^ brain[1]).float().mean() < 0.02
    assert a["label"].sum() == 0 or (brain[0][a["label"] > 0]).float().mean() > 0.95
    batch = collate_two_stream([a, ds[(len(sub.labeled), 3, 2)]])
    assert batch["images_l"].shape[0] == 1 and batch["images_u"].shape[0] == 1
