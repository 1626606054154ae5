"""Scans as clinics store them (issue 10): any in-plane spacing and size, old stores and runs,
bad geometry. Prepare resamples every case to one in-plane spacing; predict resamples each input
to the training spacing and its probabilities back to the input grid."""

from __future__ import annotations

import gzip
import json
import shutil
import struct
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from scipy import ndimage

from conftest import copy_phantom, save_nifti
from faults import run_cli
from semicml.data.preprocess import (
    axial_axis,
    extract_planes,
    foreground_box,
    from_axial_last,
    paste_planes,
    to_axial_last,
    whole_plane_box,
)
from semicml.data.normalisation import normalise
from semicml.data.store import PrepareOptions, SliceStore, prepare_store
from semicml.hardware import resolve_precision
from semicml.inference.predict import probabilities_on_grid
from semicml.inference.predictor import predict_planes
from semicml.models import build_network

CPU = torch.device("cpu")
FP32 = resolve_precision("fp32", CPU)
SPEC = {"in_channels": 1, "out_channels": 1, "widths": [2, 4, 8, 16, 32], "dropout": [0.0] * 5}


def _finer(affine: np.ndarray, factor: int) -> np.ndarray:
    """Affine of the same field of view with ``factor`` x more voxels along axes 0 and 1: the outer
    voxel edges stay where they were (voxel i' sits at old index (i' + 0.5) / f - 0.5)."""
    scale = np.diag([1 / factor, 1 / factor, 1.0, 1.0])
    scale[:2, 3] = 0.5 / factor - 0.5
    return np.asarray(affine, float) @ scale


def _refine_case(root: Path, case: str, factor: int) -> None:
    """Rewrite one nnU-Net case ``factor`` x finer in plane, world positions unchanged (images
    linear, label nearest): the same anatomy stored on another grid."""
    for f in sorted((root / "imagesTr").glob(f"{case}_*.nii.gz")) + [root / "labelsTr" / f"{case}.nii.gz"]:
        img = nib.load(str(f))
        data = np.asarray(img.dataobj)
        order = 0 if f.parent.name == "labelsTr" else 1
        fine = ndimage.zoom(data.astype(np.float32), (factor, factor, 1), order=order, mode="nearest", grid_mode=True)
        f.unlink()
        save_nifti(fine.astype(data.dtype), _finer(img.affine, factor), f)


def test_prepare_resamples_every_case_to_the_median_in_plane_spacing(phantom_root, tmp_path):
    """Three cases at 1.5 mm and one stored at 0.75 mm: the median is 1.5 mm, and the fine case
    lands in the store as it would from its 1.5 mm files (same label planes, same intensities)."""
    coarse = copy_phantom(phantom_root, tmp_path / "a", cases=4)
    fine = copy_phantom(phantom_root, tmp_path / "b", cases=4)
    _refine_case(fine, "phantom_001", 2)
    opts = PrepareOptions(modalities=("T2", "T1ce"), size=64, workers=1)
    s_coarse = SliceStore(prepare_store(coarse, tmp_path / "s_coarse", opts, progress=False))
    s_fine = SliceStore(prepare_store(fine, tmp_path / "s_fine", opts, progress=False))
    assert s_fine.manifest["spacing"]["in_plane_mm"] == 1.5
    assert s_fine.manifest["spacing"]["cases_min_max_mm"] == [0.75, 1.5]
    assert s_fine.preprocessing()["spacing"]["in_plane_mm"] == 1.5  # what run.json and the weights get
    meta_c, meta_f = s_coarse.cases["phantom_001"], s_fine.cases["phantom_001"]
    assert meta_f.grid.shape == (128, 128) and meta_f.grid.resampled == (64, 64)
    assert meta_f.stored_spacing == (3.0, 1.5, 1.5) and meta_c.stored_spacing == (3.0, 1.5, 1.5)
    assert meta_c.grid.identity
    # Both on the 64 x 64 grid of 1.5 mm pixels, each pasted back from its own box.
    lab_c = paste_planes(np.asarray(s_coarse.label("phantom_001")).transpose(1, 2, 0), meta_c.box, (64, 64))
    lab_f = paste_planes(np.asarray(s_fine.label("phantom_001")).transpose(1, 2, 0), meta_f.box, (64, 64))
    dice = 2 * np.sum((lab_c > 0) & (lab_f > 0)) / (np.sum(lab_c > 0) + np.sum(lab_f > 0))
    assert dice > 0.93, dice
    img_c = paste_planes(np.asarray(s_coarse.images("phantom_001")[:, 0], np.float32).transpose(1, 2, 0),
                         meta_c.box, (64, 64))
    img_f = paste_planes(np.asarray(s_fine.images("phantom_001")[:, 0], np.float32).transpose(1, 2, 0),
                         meta_f.box, (64, 64))
    brain = (img_c != 0) & (img_f != 0)
    assert np.corrcoef(img_c[brain], img_f[brain])[0, 1] > 0.9
    # The other cases are untouched by the resampling of one.
    for cid in ("phantom_000", "phantom_002"):
        assert np.array_equal(s_coarse.images(cid), s_fine.images(cid))
    # And the stored label maps back onto the fine case's own grid.
    back = meta_f.from_stored_frame(np.asarray(s_fine.label("phantom_001"), np.float32).transpose(1, 2, 0)) > 0.5
    ref = np.asarray(nib.load(str(fine / "labelsTr" / "phantom_001.nii.gz")).dataobj) > 0
    assert back.shape == ref.shape and 2 * np.sum(back & ref) / (back.sum() + ref.sum()) > 0.93


class BrightNet(torch.nn.Module):
    """Logit = 50 (x - level): foreground where the normalised input is above ``level``."""

    levels = 4

    def __init__(self, level: float = 0.0):
        super().__init__()
        self.level = level
        self.seen: list[tuple[int, ...]] = []

    def forward(self, x):
        self.seen.append(tuple(x.shape))
        return 50.0 * (x - self.level)


def _brain_with_border_tumour(shape, spacing):
    """A stripped brain (value 1) filling the plane, with a bright 'tumour' (value 3) at the edge."""
    x, y = np.mgrid[: shape[0], : shape[1]] * np.array(spacing)[:2, None, None]
    image = np.zeros(shape, np.float32)
    brain = (x - shape[0] * spacing[0] / 2) ** 2 / (0.48 * shape[0] * spacing[0]) ** 2 \
        + (y - shape[1] * spacing[1] / 2) ** 2 / (0.48 * shape[1] * spacing[1]) ** 2 <= 1
    image[brain] = 1.0
    tumour = brain & ((x - 6 * spacing[0]) ** 2 + (y - shape[1] * spacing[1] / 2) ** 2 <= 12**2)  # near x = 0
    image[tumour] = 3.0
    return image, tumour[:, :, None].repeat(shape[2], 2)


def test_predict_resamples_to_the_training_spacing_and_back():
    """A 2 mm input, networks trained at 1 mm: the network sees 1 mm planes (twice as many
    pixels), and the mask comes back on the 2 mm grid, the border tumour included."""
    image, tumour = _brain_with_border_tumour((112, 100, 4), (2.0, 2.0, 3.0))
    affine = np.diag([2.0, 2.0, 3.0, 1.0])
    prep = {"in_plane": "crop", "size": 160, "normalisation": {"T2": {"scheme": "mri"}},
            "spacing": {"in_plane_mm": 1.0}}
    _, stats = normalise(image, "zscore_nonzero")
    net = BrightNet(level=(2.0 - stats.mean) / stats.std)  # half-way between brain (1) and tumour (3)
    probs = probabilities_on_grid(net, image, affine, prep, CPU, FP32, channels_last=False, modality="t2")
    assert probs.shape == image.shape
    assert {s[-2:] for s in net.seen} == {(224, 224)}  # 224 x 200 at 1 mm, padded to a square multiple of 16
    pred = probs > 0.5
    assert 2 * np.sum(pred & tumour) / (pred.sum() + tumour.sum()) > 0.97
    edge = int(np.flatnonzero(tumour.any(axis=(1, 2)))[0])
    assert edge <= 3 and pred[edge].any()  # the tumour's outermost column, 3 voxels from the edge of the image


def _old_probabilities_on_grid(net, image, affine, preprocessing):
    """The prediction path as it was before spacing and per-modality normalisation existed."""
    axis = axial_axis(affine)
    vol = to_axial_last(image, axis)
    if preprocessing["in_plane"] == "crop":
        box = whole_plane_box(vol.shape[:2], 2 ** getattr(net, "levels", 4))
    else:
        box = foreground_box(vol, int(preprocessing["size"]), preprocessing["in_plane"])
    normed, _ = normalise(vol, preprocessing["normalisation"])
    planes = extract_planes(normed, box).transpose(2, 0, 1)
    probs = predict_planes(net, planes, CPU, FP32, channels_last=False)
    return from_axial_last(paste_planes(probs.transpose(1, 2, 0), box, vol.shape[:2]), axis)


@pytest.mark.parametrize("in_plane", ["crop", "resize"])
def test_runs_made_before_predict_exactly_as_before(phantom_root, in_plane):
    """A run's preprocessing record without spacing and with one scheme name (as every run made
    before issue 10 has) predicts bit for bit as the old code did, even at another spacing."""
    torch.manual_seed(0)
    net = build_network(SPEC).eval()
    img = nib.load(str(phantom_root / "imagesTr" / "phantom_000_0000.nii.gz"))
    image = np.asarray(img.dataobj, np.float32)
    affine = np.diag([0.7, 0.7, 3.0, 1.0])  # not the phantom's 1.5 mm: old runs never resampled
    prep = {"size": 64, "in_plane": in_plane, "normalisation": "zscore_nonzero",
            "box_from": "the predicted modality's non-zero region", "predict_window": "whole slice",
            "slice_axis": "axial (from affine)"}
    new = probabilities_on_grid(net, image, affine, prep, CPU, FP32, channels_last=False, modality="T2")
    old = _old_probabilities_on_grid(net, image, affine, prep)
    assert np.array_equal(new, old)


def test_stores_made_before_still_load(phantom_root, tmp_path):
    """store.json as written before issue 10 (one scheme name, no spacing, no grids)."""
    store = prepare_store(phantom_root, tmp_path / "s", PrepareOptions(modalities=("T2", "T1ce"), size=64,
                                                                       workers=1), progress=False)
    manifest = json.loads((store / "store.json").read_text())
    manifest["normalisation"] = "zscore_nonzero"
    for key in ("spacing", "reference_modality"):
        manifest.pop(key)
    for case in manifest["cases"]:
        for key in ("grid", "stored_spacing"):
            case.pop(key)
    (store / "store.json").write_text(json.dumps(manifest))
    old = SliceStore(store)
    prep = old.preprocessing()
    assert prep["normalisation"] == "zscore_nonzero" and prep["spacing"] is None
    meta = old.cases["phantom_000"]
    assert meta.grid is None and meta.stored_spacing == (3.0, 1.5, 1.5)
    back = meta.from_stored_frame(np.asarray(old.label("phantom_000"), np.float32).transpose(1, 2, 0)) > 0.5
    ref = np.asarray(nib.load(str(phantom_root / "labelsTr" / "phantom_000.nii.gz")).dataobj) > 0
    assert np.array_equal(back, ref)


def _weights(run: Path, modality: str, preprocessing: dict) -> Path:
    torch.manual_seed(0)
    net = build_network(SPEC)
    (run / "weights").mkdir(parents=True)
    torch.save({"format": "semicml-weights-v1", "modality": modality, "network": SPEC,
                "state_dict": net.state_dict(), "preprocessing": preprocessing, "target": {"name": "wt"},
                "postprocessing": "none"}, run / "weights" / f"{modality}.pt")
    return run


@pytest.mark.slow  # ~15 s: 73 + 182 slices of up to 224 x 224 through a U-Net on 2 CPU cores
def test_predict_writes_masks_on_the_input_grid_for_clinical_layouts(tmp_path, monkeypatch, capsys):
    """112 x 112 x 73 at 2 mm with the axial axis first (skull-stripped), and 182 x 218 x 182 at
    1 mm in LPS order (not stripped: noisy air around a head): masks on each input's own grid."""
    rng = np.random.default_rng(0)
    prep = {"size": 160, "in_plane": "crop", "normalisation": {"T2": {"scheme": "mri", "chosen_by": "channel name"}},
            "spacing": {"in_plane_mm": 1.0, "rule": "median"}}
    run = _weights(tmp_path / "run", "T2", prep)
    inputs = tmp_path / "in"
    inputs.mkdir()
    small = np.zeros((73, 112, 112), np.float32)  # axis 0 axial
    small[10:60, 20:95, 15:100] = rng.normal(100, 10, (50, 75, 85))
    axial_first = np.array([[0, 2.0, 0, -110], [0, 0, 2.0, -110], [2.0, 0, 0, -70], [0, 0, 0, 1]])
    save_nifti(small, axial_first, inputs / "small.nii.gz")
    big = np.abs(rng.normal(0, 3, (182, 218, 182))).astype(np.float32)
    x, y, z = np.ogrid[:182, :218, :182]
    head = (x - 91) ** 2 / 70**2 + (y - 109) ** 2 / 90**2 + (z - 91) ** 2 / 80**2 <= 1
    big[head] = 120.0
    lps = np.diag([-1.0, -1.0, 1.0, 1.0])
    save_nifti(big, lps, inputs / "big.nii.gz")
    code, _, err = run_cli(["predict", "--run", run, "--modality", "T2", "--input", inputs, "--out", tmp_path / "pred",
                            "--device", "cpu"], monkeypatch, capsys)
    assert code == 0, err
    for name, data, affine in (("small", small, axial_first), ("big", big, lps)):
        mask = nib.load(str(tmp_path / "pred" / f"{name}.nii.gz"))
        assert mask.shape == data.shape and np.allclose(mask.affine, affine)
        assert set(np.unique(np.asarray(mask.dataobj))) <= {0, 1}


def _mutate(path: Path, data_fn=None, affine=None, zero_spacing=False) -> None:
    img = nib.load(str(path))
    data = np.asarray(img.dataobj)
    path.unlink()
    if zero_spacing:  # nibabel will not write this: patch pixdim[2] and the sform's column 1 in the bytes
        save_nifti(data, img.affine, path)
        raw = bytearray(gzip.decompress(path.read_bytes()))
        for offset in (84, 284, 300, 316):  # pixdim[2]; srow_x[1], srow_y[1], srow_z[1] (NIfTI-1)
            raw[offset : offset + 4] = struct.pack("<f", 0.0)
        path.write_bytes(gzip.compress(bytes(raw)))
        return
    save_nifti(data_fn(data) if data_fn else data, img.affine if affine is None else affine, path)


SINGULAR = np.array([[1.5, 1.5, 0, 0], [1.5, 1.5, 0, 0], [0, 0, 3.0, 0], [0, 0, 0, 1]])
FAR = np.diag([-1.5, -1.5, 3.0, 1.0])
FAR[2, 3] = 900.0

BAD_GEOMETRY = [
    ("singular_affine", "imagesTr/phantom_001_0000.nii.gz", dict(affine=SINGULAR), "singular"),
    ("zero_spacing", "imagesTr/phantom_001_0000.nii.gz", dict(zero_spacing=True), "voxel sizes [1.5, 0.0, 3.0]"),
    ("image_2d", "imagesTr/phantom_002_0001.nii.gz", dict(data_fn=lambda a: a[:, :, 5]), "2D image"),
    ("not_overlapping", "imagesTr/phantom_000_0001.nii.gz", dict(affine=FAR), "not co-registered"),
    ("label_elsewhere", "labelsTr/phantom_002.nii.gz", dict(affine=FAR), "not co-registered"),
]


@pytest.mark.parametrize(("bad_file", "change", "keyword"), [b[1:] for b in BAD_GEOMETRY], ids=[b[0] for b in BAD_GEOMETRY])
def test_bad_geometry_is_one_line_and_leaves_nothing(bad_file, change, keyword, phantom_root, tmp_path, monkeypatch,
                                                     capsys):
    data = copy_phantom(phantom_root, tmp_path, cases=3)
    _mutate(data / bad_file, **change)
    out = tmp_path / "store"
    code, _, err = run_cli(["prepare", data, out, "--modalities", "T2,T1ce", "--size", "64", "--workers", "2"],
                           monkeypatch, capsys)
    lines = [line for line in err.replace("\r", "\n").splitlines() if line.strip() and "%|" not in line]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(f"error: {data / bad_file}: ") and keyword in lines[0], lines[0]
    assert not out.exists() and not list(tmp_path.glob("store.partial-*"))


def test_predict_refuses_a_singular_affine_in_one_line(tmp_path, monkeypatch, capsys):
    run = _weights(tmp_path / "run", "T2", {"size": 64, "in_plane": "crop", "normalisation": "zscore_nonzero"})
    save_nifti(np.ones((32, 32, 4), np.float32), SINGULAR, tmp_path / "x.nii.gz")
    code, _, err = run_cli(["predict", "--run", run, "--modality", "T2", "--input", tmp_path / "x.nii.gz",
                            "--out", tmp_path / "pred", "--device", "cpu"], monkeypatch, capsys)
    lines = [line for line in err.replace("\r", "\n").splitlines() if line.strip() and "%|" not in line]
    assert code == 2 and len(lines) == 1 and "singular" in lines[0] and "Traceback" not in err
    assert not (tmp_path / "pred").exists() or not list((tmp_path / "pred").glob("*.nii.gz"))


def test_crop_is_shifted_to_keep_a_border_tumour(phantom_root, tmp_path):
    """A 64-pixel crop of a 64 x 64 brain phantom padded to 96 x 96 with the tumour moved to the
    edge of the brain: the centred crop would cut it; the stored crop keeps every label voxel."""
    data = copy_phantom(phantom_root, tmp_path, cases=1)
    for f in [data / "imagesTr" / "phantom_000_0000.nii.gz", data / "imagesTr" / "phantom_000_0001.nii.gz",
              data / "labelsTr" / "phantom_000.nii.gz"]:
        _mutate(f, data_fn=lambda a: np.pad(a, ((0, 0), (0, 40), (0, 0))))
    label = np.asarray(nib.load(str(data / "labelsTr" / "phantom_000.nii.gz")).dataobj).copy()
    label[:] = 0
    label[28:34, 2:8, 8:12] = 2  # at the brain's low-y edge; the brain spans y 0..64 of 104
    _mutate(data / "labelsTr" / "phantom_000.nii.gz", data_fn=lambda a: label)
    store = SliceStore(prepare_store(data, tmp_path / "s", PrepareOptions(modalities=("T2", "T1ce"), size=48,
                                                                          workers=1), progress=False))
    case = next(c for c in store.manifest["cases"] if c["case_id"] == "phantom_000")
    assert case["label_voxels"] == 6 * 6 * 4 and case["label_voxels_outside_box"] == 0
    assert case["box"]["y0"] <= 2


def test_cli_spacing_option_and_errors(phantom_root, tmp_path, monkeypatch, capsys):
    code, _, err = run_cli(["prepare", phantom_root, tmp_path / "s", "--modalities", "T2", "--size", "48",
                            "--spacing", "3", "--workers", "1"], monkeypatch, capsys)
    assert code == 0, err
    store = SliceStore(tmp_path / "s")
    assert store.manifest["spacing"] == {"in_plane_mm": 3.0, "rule": "given"}
    meta = store.cases["phantom_000"]
    assert meta.grid.resampled == (32, 32) and meta.stored_spacing == (3.0, 3.0, 3.0)
    # 32 x 32 planes in a 48 x 48 crop: padded with the (skull-stripped) background, nothing lost
    images = np.asarray(store.images("phantom_000"), np.float32)
    assert images.shape[2:] == (48, 48) and (images[:, :, :4] == 0).all() and (images[:, :, -4:] == 0).all()
    assert store.manifest["cases"][0]["label_voxels_outside_box"] == 0
    for bad, keyword in (("fine", "--spacing must be"), ("0", "not a plausible"), ("-1", "not a plausible")):
        code, _, err = run_cli(["prepare", phantom_root, tmp_path / "t", "--modalities", "T2", "--spacing", bad],
                               monkeypatch, capsys)
        assert code == 2 and keyword in err and not (tmp_path / "t").exists()
    code, _, err = run_cli(["prepare", phantom_root, tmp_path / "t", "--modalities", "T2",
                            "--normalisation", "T2=minmax"], monkeypatch, capsys)
    assert code == 2 and "unknown normalisation 'minmax'" in err
    shutil.rmtree(tmp_path / "s")


def test_coarse_input_note_by_hand():
    from semicml.data.preprocess import COARSE_INPUT_FACTOR, coarse_input_note

    prep = {"spacing": {"in_plane_mm": 1.0}}
    assert COARSE_INPUT_FACTOR == 1.5
    assert coarse_input_note(np.diag([1.5, 1.5, 5.0, 1.0]), prep) is None  # at the limit: no note
    assert coarse_input_note(np.diag([0.5, 0.5, 1.0, 1.0]), prep) is None  # finer: resampling loses nothing
    # the coarser in-plane axis counts; the slice thickness (axis 0 here, the axial one) does not
    axial_first = np.array([[0, 0.9, 0, 0], [0, 0, 2.5, 0], [9.0, 0, 0, 0], [0, 0, 0, 1.0]])
    assert coarse_input_note(axial_first, prep) == (
        "2.5x coarser in plane (2.50 mm) than the 1.00 mm the network was trained at")
    assert coarse_input_note(np.diag([3.0, 3.0, 3.0, 1.0]), {"spacing": {"in_plane_mm": 2.0}}) is None
    assert coarse_input_note(np.diag([3.1, 3.1, 3.0, 1.0]), {"spacing": {"in_plane_mm": 2.0}}).startswith("1.6x")
    assert coarse_input_note(np.diag([4.0, 4.0, 3.0, 1.0]), {"spacing": None}) is None  # runs made before


def test_predict_warns_about_inputs_much_coarser_than_the_training_spacing(tmp_path, monkeypatch, capsys):
    prep = {"size": 64, "in_plane": "crop", "normalisation": {"T2": {"scheme": "mri"}}, "spacing": {"in_plane_mm": 1.0}}
    run = _weights(tmp_path / "run", "T2", prep)
    inputs = tmp_path / "in"
    inputs.mkdir()
    rng = np.random.default_rng(0)
    for name, mm in (("coarse", 2.0), ("fine", 1.2)):
        save_nifti(rng.normal(100, 10, (24, 24, 2)).astype(np.float32), np.diag([mm, mm, 3.0, 1.0]),
                   inputs / f"{name}.nii.gz")
    code, _, err = run_cli(["predict", "--run", run, "--modality", "T2", "--input", inputs, "--out", tmp_path / "pred",
                            "--device", "cpu"], monkeypatch, capsys)
    assert code == 0, err
    note = "2.0x coarser in plane (2.00 mm) than the 1.00 mm the network was trained at"
    assert f"warning: case 'coarse' is {note}: expect a less accurate mask" in err and "'fine'" not in err
    assert json.loads((tmp_path / "pred" / "predict.json").read_text())["coarse_inputs"] == {"coarse": note}
    assert (tmp_path / "pred" / "coarse.nii.gz").exists() and (tmp_path / "pred" / "fine.nii.gz").exists()


def test_predict_warns_about_a_constant_image_and_records_it(tmp_path, monkeypatch, capsys):
    """A blank export (every voxel 0) is segmented as before (an empty mask here), but no longer silently."""
    prep = {"size": 64, "in_plane": "crop", "normalisation": {"T2": {"scheme": "mri"}}, "spacing": {"in_plane_mm": 1.0}}
    run = _weights(tmp_path / "run", "T2", prep)
    inputs = tmp_path / "in"
    inputs.mkdir()
    save_nifti(np.zeros((24, 24, 2), np.float32), np.diag([1.0, 1.0, 3.0, 1.0]), inputs / "blank.nii.gz")
    save_nifti(np.random.default_rng(0).normal(100, 10, (24, 24, 2)).astype(np.float32), np.diag([1.0, 1.0, 3.0, 1.0]),
               inputs / "scan.nii.gz")
    code, _, err = run_cli(["predict", "--run", run, "--modality", "T2", "--input", inputs, "--out", tmp_path / "pred",
                            "--device", "cpu"], monkeypatch, capsys)
    assert code == 0, err
    lines = [ln for ln in err.splitlines() if ln.startswith("warning:")]
    assert len(lines) == 1 and "'blank'" in lines[0] and "blank.nii.gz" in lines[0] and "same value (0)" in lines[0]
    assert json.loads((tmp_path / "pred" / "predict.json").read_text())["constant_inputs"] == {"blank": 0.0}
    assert not np.asarray(nib.load(str(tmp_path / "pred" / "blank.nii.gz")).dataobj).any()
