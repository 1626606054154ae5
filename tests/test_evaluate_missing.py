"""Evaluation that cannot flatter: every labelled reference case is expected (unless --cases says
otherwise); a missing prediction stops the evaluation (--missing error, the default) or scores as
the worst case (--missing worst); the report states cases expected, found and missing."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from conftest import phantom_case_ids
from faults import run_cli
from semicml.evaluation.evaluate import worst_row
from semicml.evaluation.metrics import METRICS, volume_diagonal_mm


@pytest.fixture(scope="module")
def perfect(phantom_root, tmp_path_factory):
    """Perfect predictions (the reference's whole tumour) for the first 4 of the 6 phantom cases."""
    out = tmp_path_factory.mktemp("pred")
    for case in phantom_case_ids(phantom_root)[:4]:
        ref = nib.load(str(phantom_root / "labelsTr" / f"{case}.nii.gz"))
        mask = (np.asarray(ref.dataobj) > 0).astype(np.uint8)
        nib.save(nib.Nifti1Image(mask, ref.affine, ref.header), str(out / f"{case}.nii.gz"))
    return out


def test_missing_predictions_stop_the_evaluation_by_default(perfect, phantom_root, tmp_path, monkeypatch, capsys):
    rc, _, err = run_cli(["evaluate", "--pred", perfect, "--ref", phantom_root, "--out", tmp_path / "ev"],
                         monkeypatch, capsys)
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    missing = phantom_case_ids(phantom_root)[4:]
    assert rc == 2 and len(lines) == 1 and "no prediction for 2 of 6 expected cases" in lines[0]
    assert all(c in lines[0] for c in missing) and "--missing worst" in lines[0]
    assert not (tmp_path / "ev").exists()


def test_missing_worst_counts_them_and_the_report_says_so(perfect, phantom_root, tmp_path, monkeypatch, capsys):
    rc, out, err = run_cli(["evaluate", "--pred", perfect, "--ref", phantom_root, "--out", tmp_path / "ev",
                            "--missing", "worst"], monkeypatch, capsys)
    assert rc == 0, err
    summary = json.loads((tmp_path / "ev" / "summary.json").read_text())
    cov = summary["coverage"]
    assert (cov["n_expected"], cov["n_found"], cov["n_missing"]) == (6, 4, 2)
    assert cov["cases_missing"] == phantom_case_ids(phantom_root)[4:] and cov["missing_policy"] == "worst"
    assert summary["n_cases"] == 6
    assert summary["mean"]["dice"] == pytest.approx(4 / 6)  # the old behaviour reported 1.0 over 4 cases
    md = (tmp_path / "ev" / "summary.md").read_text()
    assert "Cases expected: 6, found: 4, missing: 2" in md and "Cases expected: 6" in out
    rows = (tmp_path / "ev" / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    missing_rows = [dict(zip(header, r.split(","))) for r in rows[1:] if r.endswith(",missing")]
    assert len(missing_rows) == 2 and all(float(r["dice"]) == 0 for r in missing_rows)


def test_cases_option_sets_the_expected_cases(perfect, phantom_root, tmp_path, monkeypatch, capsys):
    ids = phantom_case_ids(phantom_root)
    rc, _, err = run_cli(["evaluate", "--pred", perfect, "--ref", phantom_root, "--out", tmp_path / "ev",
                          "--cases", ",".join(ids[:2])], monkeypatch, capsys)
    assert rc == 0, err
    cov = json.loads((tmp_path / "ev" / "summary.json").read_text())["coverage"]
    assert (cov["n_expected"], cov["n_missing"]) == (2, 0) and cov["cases_not_expected"] == ids[2:4]


def test_bad_missing_policy_is_one_line(perfect, phantom_root, tmp_path, monkeypatch, capsys):
    rc, _, err = run_cli(["evaluate", "--pred", perfect, "--ref", phantom_root, "--out", tmp_path / "ev",
                          "--missing", "skip"], monkeypatch, capsys)
    assert rc == 2 and "--missing" in err


def test_worst_row_is_worst_even_for_an_empty_reference():
    ref = np.zeros((4, 5, 6), bool)
    row = worst_row("c", ref, (1.0, 2.0, 3.0))
    assert row["dice"] == row["jaccard"] == row["precision"] == row["sensitivity"] == 0.0
    assert row["hd95"] == row["asd"] == volume_diagonal_mm(ref.shape, (1.0, 2.0, 3.0))
    assert set(METRICS) <= set(row)  # every metric, so the summary can average it with the found cases


def test_evaluation_needs_only_the_label_not_an_image_on_its_grid(perfect, phantom_root, tmp_path, monkeypatch, capsys):
    """The first modality stored on a cropped grid (another image grid than the label's) used to
    stop the evaluation with 'label shape differs'; scoring needs the label and the prediction only."""
    import shutil

    root = tmp_path / "raw"
    shutil.copytree(phantom_root, root)
    case = phantom_case_ids(phantom_root)[0]
    image = root / "imagesTr" / f"{case}_0000.nii.gz"
    img = nib.load(str(image))
    data = np.asarray(img.dataobj)[2:-2, 3:-1]  # cropped, origin moved so that world space agrees
    affine = img.affine.copy()
    affine[:3, 3] = img.affine[:3, :3] @ np.array([2, 3, 0]) + img.affine[:3, 3]
    nib.save(nib.Nifti1Image(data, affine), str(image))
    rc, _, err = run_cli(["evaluate", "--pred", perfect, "--ref", root, "--out", tmp_path / "ev", "--cases", case],
                         monkeypatch, capsys)
    assert rc == 0, err
    report = json.loads((tmp_path / "ev" / "summary.json").read_text())
    assert report["mean"]["dice"] == pytest.approx(1.0)


def test_a_nan_mask_or_two_files_for_one_case_are_one_line_errors(perfect, phantom_root, tmp_path, monkeypatch,
                                                                    capsys):
    """NaN > 0 is False: a NaN mask would score as background, silently; case.nii beside
    case.nii.gz: which one is the prediction is unknown."""
    import shutil

    case = phantom_case_ids(phantom_root)[0]
    pred = tmp_path / "pred"
    shutil.copytree(perfect, pred)
    ref = nib.load(str(perfect / f"{case}.nii.gz"))
    nib.save(nib.Nifti1Image(np.asarray(ref.dataobj).astype(np.float32), ref.affine), str(pred / f"{case}.nii"))
    args = ["evaluate", "--pred", pred, "--ref", phantom_root, "--out", tmp_path / "ev", "--missing", "worst"]
    rc, _, err = run_cli(args, monkeypatch, capsys)
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert rc == 2 and len(lines) == 1 and f"two predictions for case '{case}'" in lines[0]
    (pred / f"{case}.nii.gz").unlink()
    data = np.asarray(ref.dataobj).astype(np.float32)
    data[data > 0] = np.nan
    nib.save(nib.Nifti1Image(data, ref.affine), str(pred / f"{case}.nii"))
    rc, _, err = run_cli(args, monkeypatch, capsys)
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert rc == 2 and len(lines) == 1 and f"{case}.nii: the mask holds NaN" in lines[0]
    assert not (tmp_path / "ev").exists()
