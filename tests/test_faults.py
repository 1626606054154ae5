"""Disk full (ENOSPC) and read-only disk (EROFS) during prepare, checkpoint writes, predict and the
benchmark tables: one-line error, earlier files intact, no half-written file under a final name.

Simulation: :func:`faults.fail_writes` patches ``semicml.io_utils.open_for_write`` (every file
semicml writes is opened there) so a write fails after a few real bytes (ENOSPC) or at open (EROFS).
"""

from __future__ import annotations

import errno
import json

import numpy as np
import pytest
import torch

from faults import fail_writes, run_cli, temporaries, tree
from semicml.benchmark.tables import write_tables
from semicml.errors import storage_problem

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("faults")


@pytest.fixture(scope="module")
def store(phantom_root, workdir):
    from semicml.data.store import PrepareOptions, prepare_store

    return prepare_store(phantom_root, workdir / "stores" / "store", PrepareOptions(modalities=("T2", "T1ce"),
                                                                                    size=32, workers=1),
                         progress=False)


@pytest.fixture(scope="module")
def run(store, workdir):
    from semicml.config import build_config
    from semicml.engine.trainer import Trainer

    out = workdir / "run"
    cfg = build_config(profile="tiny", overrides={"iterations": 4, "val_every": 2, "method": "supervised",
                                                  "num_workers": 0, "postprocess": "none"})
    Trainer(cfg, store, out, progress=False).fit()
    return out


def one_line(err: str) -> str:
    lines = [ln for ln in err.strip().splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS])
def test_prepare_overwrite_fails_and_keeps_the_previous_store(code, store, phantom_root, monkeypatch, capsys):
    before = tree(store.parent)
    failed = fail_writes(monkeypatch, code, match=lambda p: p.suffix == ".npy", skip=3)
    rc, _, err = run_cli(["prepare", phantom_root, store, "--modalities", "T2,T1ce", "--size", "32", "--workers",
                          "1", "--overwrite"], monkeypatch, capsys)
    assert failed and rc == 1
    line = one_line(err)
    assert ("No space left" if code == errno.ENOSPC else "Read-only") in line and str(store) in line
    assert tree(store.parent) == before  # same files, same bytes; no partial folder, no temporaries
    assert temporaries(store.parent) == []


def test_checkpoint_write_fails_previous_checkpoint_intact_and_resumable(store, workdir, monkeypatch, capsys):
    out = workdir / "ckpt_run"
    args = ["train", store, "--out", out, "--profile", "tiny", "--iterations", "6", "--val-every", "2",
            "--method", "supervised", "--num-workers", "0", "--device", "cpu", "--postprocess", "none"]
    failed = fail_writes(monkeypatch, match=lambda p: "checkpoint.pt" in p.name, skip=1, budget=4096)
    rc, _, err = run_cli(args, monkeypatch, capsys)
    assert rc == 1 and len(failed) == 1
    assert "No space left" in one_line(err) and "checkpoint.pt" in one_line(err)
    state = torch.load(out / "checkpoint.pt", weights_only=True)  # the first checkpoint, whole
    assert state["iteration"] == 2
    assert temporaries(out) == [] and temporaries(out.parent) == []
    monkeypatch.undo()
    rc, _, err = run_cli(["train", store, "--out", out, "--resume"], monkeypatch, capsys)
    assert rc == 0, err
    assert torch.load(out / "checkpoint.pt", weights_only=True)["iteration"] == 6


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS])
def test_predict_fails_earlier_masks_intact(code, run, phantom_root, tmp_path, monkeypatch, capsys):
    pred = tmp_path / "pred"
    args = ["predict", "--run", run, "--modality", "T2", "--input", phantom_root, "--out", pred, "--device", "cpu"]
    rc, _, err = run_cli(args, monkeypatch, capsys)
    assert rc == 0, err
    before = tree(pred)
    assert len([k for k in before if k.endswith(".nii.gz")]) == 6
    failed = fail_writes(monkeypatch, code, match=lambda p: ".nii.gz" in p.name, skip=2)
    rc, _, err = run_cli(args, monkeypatch, capsys)
    assert rc == 1 and failed
    assert ("No space left" if code == errno.ENOSPC else "Read-only") in one_line(err)
    assert tree(pred) == before  # the third mask's old version is still there, whole
    assert temporaries(pred) == [] and temporaries(tmp_path) == []


@pytest.mark.parametrize("bad", ["truncated.nii.gz", "truncated.nii", "zero-voxels.nii.gz"])
def test_a_bad_file_among_good_ones_stops_predict_before_any_mask(bad, run, phantom_root, tmp_path, monkeypatch,
                                                                  capsys):
    """The good files sort before the bad one; each input is checked first (header, geometry,
    whether its data is all there), so nothing is written, rather than the masks of half a folder."""
    import gzip
    import io
    import shutil

    import nibabel as nib

    folder = tmp_path / "in"
    folder.mkdir()
    good = sorted((phantom_root / "imagesTr").glob("*_0000.nii.gz"))[:2]
    for k, f in enumerate(good):
        shutil.copyfile(f, folder / f"a{k}.nii.gz")
    raw = gzip.decompress(good[0].read_bytes())
    if bad == "zero-voxels.nii.gz":  # no sform, pixdim 0: nothing places the voxels
        hdr = nib.Nifti1Header.from_fileobj(io.BytesIO(raw[:348]), check=False)
        hdr["sform_code"] = 0
        hdr["pixdim"][1:4] = 0
        (folder / bad).write_bytes(gzip.compress(hdr.binaryblock + raw[348:]))
    elif bad.endswith(".gz"):
        (folder / bad).write_bytes(gzip.compress(raw)[: len(gzip.compress(raw)) * 2 // 3])
    else:
        (folder / bad).write_bytes(raw[: len(raw) * 2 // 3])
    pred = tmp_path / "pred"
    rc, _, err = run_cli(["predict", "--run", run, "--modality", "T2", "--input", folder, "--out", pred,
                          "--device", "cpu"], monkeypatch, capsys)
    assert rc == 2 and bad in one_line(err)
    assert not pred.exists() or not list(pred.glob("*.nii.gz"))


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS])
def test_benchmark_tables_fail_previous_tables_intact(code, tmp_path, monkeypatch):
    rows = [{"method": "supervised", "modality": "T2", "seed": 0, "dice": 0.5, "status": "ok"}]
    write_tables(rows, tmp_path)
    before = tree(tmp_path)
    fail_writes(monkeypatch, code, match=lambda p: "results" in p.name, skip=1)  # csv written, json fails
    with pytest.raises(OSError) as info:
        write_tables(rows * 2, tmp_path)
    assert info.value.errno == code and info.value.filename == str(tmp_path / "results.json")
    assert json.loads((tmp_path / "results.json").read_text())["rows"] == rows  # the old table, whole
    assert temporaries(tmp_path) == []
    assert set(tree(tmp_path)) == set(before)


def test_storage_problem_is_one_line_and_ignores_other_errors():
    line = storage_problem(OSError(errno.ENOSPC, "No space left on device", "/x/y.pt"))
    assert line.startswith("/x/y.pt: cannot write: No space left on device") and "\n" not in line
    assert storage_problem(FileNotFoundError(errno.ENOENT, "nope", "/x")) is None
    assert storage_problem(ValueError("x")) is None


def test_store_arrays_are_unchanged_by_the_failed_overwrite(store):
    from semicml.data.store import SliceStore

    s = SliceStore(store)
    for case in s.cases:
        assert np.isfinite(np.asarray(s.images(case), dtype=np.float32)).all()
