"""The console command: bad input -> one-line error naming the file, exit 2, no traceback, nothing
half-written."""

from __future__ import annotations

import gzip
import json
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from semicml.cli import main


def run_cli(args: list[str], monkeypatch, capsys) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["semicml", *args])
    code = 0
    try:
        main()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


def _img(path: Path) -> nib.Nifti1Image:
    return nib.load(str(path))


def _save(data: np.ndarray, like: Path, out: Path, affine: np.ndarray | None = None) -> None:
    ref = _img(like)
    nib.save(nib.Nifti1Image(data, ref.affine if affine is None else affine, ref.header), str(out))


# Each corruption edits a copy of the phantom (nnU-Net raw layout) and names what the error must
# mention: (file name fragment, problem keyword).
def _missing_modality(root: Path):
    (root / "imagesTr" / "phantom_000_0001.nii.gz").unlink()
    return "phantom_000_0001", "missing"


# Other grids covering the same world space are resampled at prepare (issue 10); a volume that
# covers too little of the reference modality's space is the error.
def _shape_mismatch(root: Path):
    p = root / "imagesTr" / "phantom_001_0001.nii.gz"
    _save(np.asarray(_img(p).dataobj)[:20], p, p)  # 20 of 64 columns: 31% of the T2 image's space
    return "phantom_001", "not co-registered"


def _affine_mismatch(root: Path):
    p = root / "imagesTr" / "phantom_000_0001.nii.gz"
    affine = _img(p).affine.copy()
    affine[0, 3] += 500.0  # half a metre away: no overlap at all
    _save(np.asarray(_img(p).dataobj), p, p, affine)
    return "phantom_000", "covers 0% of the world space"


def _nan(root: Path):
    p = root / "imagesTr" / "phantom_002_0000.nii.gz"
    data = np.asarray(_img(p).dataobj, dtype=np.float32).copy()
    data[3, 3, 3] = np.nan
    _save(data, p, p)
    return "phantom_002_0000", "nan"


def _corrupt(root: Path):
    (root / "imagesTr" / "phantom_000_0000.nii.gz").write_bytes(b"this is not a nifti file at all")
    return "phantom_000_0000", "corrupt or truncated NIfTI"


def _truncated(root: Path):
    p = root / "imagesTr" / "phantom_001_0000.nii.gz"
    raw = p.read_bytes()
    p.write_bytes(raw[: len(raw) // 2])
    return "phantom_001_0000", "corrupt or truncated NIfTI"


def _bad_label(root: Path):
    p = root / "labelsTr" / "phantom_002.nii.gz"
    data = np.asarray(_img(p).dataobj).copy()
    data[0, 0, 0] = 7
    _save(data.astype(np.uint8), p, p)
    return "phantom_002", "label values [7] not in the declared label set"


def _four_d(root: Path):
    p = root / "imagesTr" / "phantom_000_0000.nii.gz"
    data = np.asarray(_img(p).dataobj)
    nib.save(nib.Nifti1Image(np.stack([data, data], -1), _img(p).affine), str(p))
    return "phantom_000_0000", "4d"


def _empty(root: Path):
    for child in root.iterdir():
        shutil.rmtree(child) if child.is_dir() else child.unlink()
    return root.name, "no cases found"


def _json_missing_field(root: Path):
    meta = json.loads((root / "dataset.json").read_text())
    del meta["channel_names"]
    (root / "dataset.json").write_text(json.dumps(meta))
    return "dataset.json", "channel_names"


CORRUPTIONS = [_missing_modality, _shape_mismatch, _affine_mismatch, _nan, _corrupt, _truncated, _bad_label,
               _four_d, _empty, _json_missing_field]


@pytest.mark.parametrize("corrupt", CORRUPTIONS, ids=lambda f: f.__name__.strip("_"))
def test_prepare_bad_input_one_line_error_and_no_store(corrupt, phantom_root, tmp_path, monkeypatch, capsys):
    data = tmp_path / "data"
    shutil.copytree(phantom_root, data)
    fragment, keyword = corrupt(data)
    out = tmp_path / "store"
    code, stdout, err = run_cli(["prepare", str(data), str(out), "--modalities", "T2,T1ce", "--workers", "1"],
                                monkeypatch, capsys)
    assert code == 2
    lines = [line for line in err.replace("\r", "\n").splitlines() if line.strip() and "%|" not in line]
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ") and "Traceback" not in err
    assert fragment.lower() in lines[0].lower()
    assert keyword and keyword.lower() in lines[0].lower()
    assert not out.exists()
    assert not list(tmp_path.glob("store.partial-*"))


def test_unknown_modality_and_bad_config(phantom_root, tmp_path, monkeypatch, capsys):
    code, _, err = run_cli(["prepare", str(phantom_root), str(tmp_path / "s"), "--modalities", "T2,PET"],
                           monkeypatch, capsys)
    assert code == 2 and "PET" in err and "T1ce" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "s").exists()
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("optim:\n  lr: -1\n")
    code, _, err = run_cli(["train", str(tmp_path), "--out", str(tmp_path / "r"), "--config", str(cfg)],
                           monkeypatch, capsys)
    assert code == 2 and "bad.yaml" in err and "optim.lr" in err and len(err.strip().splitlines()) == 1
    cfg.write_text("optim:\n  learning_rate: 0.1\n")
    code, _, err = run_cli(["train", str(tmp_path), "--out", str(tmp_path / "r"), "--config", str(cfg)],
                           monkeypatch, capsys)
    assert code == 2 and "learning_rate" in err
    code, _, err = run_cli(["train", str(tmp_path), "--out", str(tmp_path / "r"), "--profile", "huge"],
                           monkeypatch, capsys)
    assert code == 2 and "huge" in err
    # a folder that is not a prepared store
    code, _, err = run_cli(["train", str(tmp_path), "--out", str(tmp_path / "r"), "--method", "semicml"],
                           monkeypatch, capsys)
    assert code == 2 and "store.json" in err
    assert not (tmp_path / "r").exists()


def test_console_entry_point_help_lists_verbs():
    proc = subprocess.run([sys.executable, "-m", "semicml.cli", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0
    for verb in ("phantom", "prepare", "train", "predict", "evaluate", "demo", "methods"):
        assert verb in proc.stdout


@pytest.mark.realdata
def test_prepare_real_brats_subset(brats18_root, tmp_path, monkeypatch, capsys):
    """Two real cases through the CLI; the stored label maps back onto the original grid."""
    data = tmp_path / "brats"
    data.mkdir()
    cases = sorted(p for p in brats18_root.iterdir() if p.is_dir())[:2]
    for case in cases:
        (data / case.name).symlink_to(case)
    out = tmp_path / "store"
    code, _, err = run_cli(["prepare", str(data), str(out), "--modalities", "t2,t1ce", "--target", "wt"],
                           monkeypatch, capsys)
    assert code == 0, err
    from semicml.data.preprocess import from_axial_last, paste_planes
    from semicml.data.store import SliceStore

    store = SliceStore(out)
    for case in cases:
        meta = store.cases[case.name]
        assert meta.shape == (240, 240, 155) and store.images(case.name).shape == (155, 2, 160, 160)
        seg = np.asarray(nib.load(str(case / f"{case.name}_seg.nii.gz")).dataobj) > 0
        planes = np.asarray(store.label(case.name)).transpose(1, 2, 0).astype(np.float32)
        back = from_axial_last(paste_planes(planes, meta.box, (240, 240)), meta.axial_axis) > 0.5
        lost = store.manifest["cases"][[c["case_id"] for c in store.manifest["cases"]].index(case.name)]
        assert lost["label_voxels_outside_box"] == int(seg.sum() - back.sum())
        assert np.array_equal(back, seg & back) and (seg.sum() - back.sum()) < 0.01 * seg.sum()
