"""In-plane orientation: a scan stored mirrored or transposed reaches the network as the same slices.

Found by storing one BraTS patient in RAS instead of LPS: the mask changed (Dice 0.85 against the
LPS prediction), because only the slice axis was put in place. Every check here uses a network
that is NOT flip- or transpose-equivariant, so slices that reach it turned show.
"""

from __future__ import annotations

import itertools

import nibabel as nib
import numpy as np
import pytest
import torch
from torch import nn

from faults import run_cli
from semicml.data.orientation import (
    IDENTITY,
    InPlaneOrientation,
    dataset_orientation,
    in_plane_codes,
    orientation_to,
)
from semicml.data.raw_writer import save_nifti
from semicml.data.prepare import PrepareOptions
from semicml.data.store import SliceStore, prepare_store
from semicml.hardware import resolve_precision
from semicml.inference.predict import probabilities_on_grid

CPU = torch.device("cpu")
FP32 = resolve_precision("fp32", CPU)
LPS = np.diag([-1.0, -1.0, 2.0, 1.0])  # BraTS-like: index 0 grows to the left, 1 to posterior
LPS_ANISO = np.diag([-0.5, -1.0, 2.0, 1.0])  # in-plane 0.5 x 1 mm: a swapped file has 1 x 0.5


def stored_as(data: np.ndarray, affine: np.ndarray, transpose: bool, flip_x: bool, flip_y: bool):
    """The same voxels in world space, stored with the in-plane axes swapped and/or reversed."""
    ornt = np.array([[1, 1], [0, 1], [2, 1]] if transpose else [[0, 1], [1, 1], [2, 1]], dtype=float)
    ornt[0, 1] = -1 if flip_x else 1
    ornt[1, 1] = -1 if flip_y else 1
    img = nib.Nifti1Image(data, affine).as_reoriented(ornt)
    return np.asarray(img.dataobj), img.affine


VARIANTS = list(itertools.product([False, True], repeat=3))
IDS = [f"T{int(t)}x{int(a)}y{int(b)}" for t, a, b in VARIANTS]


class SkewNet(nn.Module):
    """A fixed asymmetric 3x3 filter: its output moves when its input is mirrored or transposed."""

    levels = 2

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 3, padding=1, bias=False)
        with torch.no_grad():
            self.conv.weight.copy_(torch.arange(9, dtype=torch.float32).reshape(1, 1, 3, 3) - 2.0)

    def forward(self, x):
        return self.conv(x)


def _volume(shape=(20, 24, 6)) -> np.ndarray:
    rng = np.random.default_rng(0)
    vol = np.zeros(shape, np.float32)
    vol[2:-3, 3:-2, :] = 1.0 + rng.random((shape[0] - 5, shape[1] - 5, shape[2]), dtype=np.float32)
    vol[5:9, 6:8, 1:4] = 4.0
    return vol


@pytest.mark.parametrize(("transpose", "flip_x", "flip_y"), VARIANTS, ids=IDS)
def test_every_in_plane_storage_turns_back_to_the_dataset_orientation(transpose, flip_x, flip_y):
    vol = _volume()
    data, affine = stored_as(vol, LPS, transpose, flip_x, flip_y)
    turn = orientation_to(affine, 2, ["L", "P"])
    assert turn == InPlaneOrientation(transpose, (flip_x, flip_y))
    assert np.array_equal(turn.apply(data), vol)
    assert np.array_equal(turn.undo(turn.apply(data)), data)
    assert turn.pair(data.shape[:2]) == vol.shape[:2]
    assert turn.identity == (not (transpose or flip_x or flip_y))


def test_codes_and_the_dataset_majority():
    assert in_plane_codes(LPS, 2) == ("L", "P")
    assert in_plane_codes(np.eye(4), 2) == ("R", "A")
    assert in_plane_codes(np.eye(4), 0) is None  # in-plane axes A and S: no axial axis named
    codes, count, named = dataset_orientation([("L", "P"), ("R", "A"), ("L", "P"), None])
    assert (codes, count, named) == (["L", "P"], 2, 3)
    assert dataset_orientation([None]) == (None, 0, 0)
    assert orientation_to(np.eye(4), 2, None) is IDENTITY  # nothing recorded: file order, as before
    assert InPlaneOrientation.from_json(None) is IDENTITY
    turn = InPlaneOrientation(True, (False, True))
    assert InPlaneOrientation.from_json(turn.to_json()) == turn


@pytest.mark.parametrize("in_plane", ["crop", "resize"])
@pytest.mark.parametrize("grid", ["1 mm", "0.5 x 1 mm resampled to 0.8 mm"])
@pytest.mark.parametrize(("transpose", "flip_x", "flip_y"), VARIANTS, ids=IDS)
def test_predict_gives_the_same_probabilities_in_world_space_whatever_the_storage(transpose, flip_x, flip_y, grid,
                                                                                   in_plane):
    vol = _volume()
    base = LPS if grid == "1 mm" else LPS_ANISO
    prep = {"in_plane": in_plane, "size": 16, "normalisation": {"t2": {"scheme": "mri"}},
            "orientation": {"in_plane": ["L", "P"]}}
    if grid != "1 mm":  # the spacing pair must follow the swap, or the grid is planned on the wrong axes
        prep["spacing"] = {"in_plane_mm": 0.8}
    net = SkewNet()
    reference = probabilities_on_grid(net, vol, base, prep, CPU, FP32, channels_last=False, modality="t2")
    data, affine = stored_as(vol, base, transpose, flip_x, flip_y)
    probs = probabilities_on_grid(net, data, affine, prep, CPU, FP32, channels_last=False, modality="t2")
    assert probs.shape == data.shape
    back = orientation_to(affine, 2, ["L", "P"]).apply(probs)
    assert np.allclose(back, reference, atol=1e-5)
    if in_plane == "resize" or grid != "1 mm":
        return
    if transpose or flip_x or flip_y:  # without the record (runs made before): file order, which differs
        legacy = {k: v for k, v in prep.items() if k != "orientation"}
        old = probabilities_on_grid(net, data, affine, legacy, CPU, FP32, channels_last=False, modality="t2")
        assert not np.allclose(orientation_to(affine, 2, ["L", "P"]).apply(old), reference, atol=1e-3)


VARIANT_CASES = {"case_0": (False, False, False), "case_1": (False, False, False), "case_2": (False, True, True),
                 "case_3": (True, False, True)}


def _mixed_dataset(root, base=LPS):
    """nnU-Net raw folder: 4 copies of one case, two stored like BraTS, one in RAS, one transposed."""
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    vol = _volume((40, 44, 6))
    label = (vol >= 4.0).astype(np.uint8)
    for cid, how in VARIANT_CASES.items():
        img, aff = stored_as(vol, base, *how)
        lab, _ = stored_as(label, base, *how)
        save_nifti(img, aff, root / "imagesTr" / f"{cid}_0000.nii.gz")
        save_nifti(lab, aff, root / "labelsTr" / f"{cid}.nii.gz")
    (root / "dataset.json").write_text('{"channel_names": {"0": "T2"}, "labels": {"background": 0, "tumour": 1}, '
                                       '"numTraining": 4, "file_ending": ".nii.gz"}')
    return label


@pytest.mark.parametrize("base", [LPS, LPS_ANISO], ids=["1 mm", "0.5 x 1 mm resampled"])
def test_prepare_stores_a_mirrored_and_a_transposed_case_like_the_others(tmp_path, base):
    raw = tmp_path / "raw"
    label = _mixed_dataset(raw, base)
    variants = VARIANT_CASES
    store = SliceStore(prepare_store(raw, tmp_path / "store", PrepareOptions(modalities=("T2",), size=32, workers=1)))
    assert (store.manifest["spacing"]["in_plane_mm"] == 0.75) == (base is LPS_ANISO)  # the median of 0.5 and 1
    assert store.manifest["orientation"]["in_plane"] == ["L", "P"]
    assert "(2 of 4)" in store.manifest["orientation"]["rule"]
    assert store.manifest["version"] == 2  # a turned case: readers that ignore turns must refuse it
    assert store.preprocessing()["orientation"]["in_plane"] == ["L", "P"]
    first = np.asarray(store.images("case_0"))
    for cid in ("case_1", "case_2", "case_3"):
        assert np.array_equal(np.asarray(store.images(cid)), first), cid
        assert np.array_equal(np.asarray(store.label(cid)), np.asarray(store.label("case_0"))), cid
        # and the way back lands on the case's own voxel order
        meta, meta0 = store.cases[cid], store.cases["case_0"]
        planes = np.asarray(store.label(cid), np.float32).transpose(1, 2, 0)
        img, affine = stored_as(label, base, *variants[cid])
        turn = orientation_to(affine, 2, ["L", "P"])
        assert np.array_equal(turn.apply(meta.from_stored_frame(planes)), meta0.from_stored_frame(planes)), cid
        assert np.array_equal(meta.to_stored_frame(img, nearest=True), meta0.to_stored_frame(label, nearest=True)), cid
        assert meta.stored_spacing == meta0.stored_spacing, cid
        if base is LPS:  # no resampling: exact both ways
            assert np.array_equal(meta.from_stored_frame(planes) > 0.5, img > 0), cid
            assert np.array_equal(meta.to_stored_frame(img, nearest=True), planes.astype(img.dtype)), cid


def test_prepare_says_which_cases_it_turned(tmp_path, monkeypatch, capsys):
    _mixed_dataset(tmp_path / "raw")
    code, out, err = run_cli(["prepare", tmp_path / "raw", tmp_path / "store", "--modalities", "T2", "--size", "32",
                              "--workers", "1"], monkeypatch, capsys)
    assert code == 0, err
    assert "orientation: in-plane L,P (most common in-plane orientation of the cases' T2 images (2 of 4)); " \
           "2 case(s) turned to it: case_2, case_3" in out


def test_a_store_without_a_turned_case_stays_readable_by_readers_before_orientations(tmp_path):
    raw = tmp_path / "raw"
    _mixed_dataset(raw)
    for cid in ("case_2", "case_3"):  # keep only the two cases stored like BraTS
        (raw / "imagesTr" / f"{cid}_0000.nii.gz").unlink()
        (raw / "labelsTr" / f"{cid}.nii.gz").unlink()
    store = SliceStore(prepare_store(raw, tmp_path / "store", PrepareOptions(modalities=("T2",), size=32, workers=1)))
    assert store.manifest["version"] == 1 and store.manifest["orientation"]["in_plane"] == ["L", "P"]
    assert not any(c.get("orientation") for c in store.manifest["cases"])
