"""benchmarks/region_contrast.py: a region's median as a percentile of the scan's normal brain."""

from __future__ import annotations

import importlib.util

import nibabel as nib
import numpy as np
import pytest

from conftest import REPO_ROOT

_spec = importlib.util.spec_from_file_location("region_contrast", REPO_ROOT / "benchmarks" / "region_contrast.py")
region_contrast = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(region_contrast)


def test_percentile_of_the_median_among_normal_intensities():
    normal = np.arange(1, 101, dtype=np.float32)  # sorted 1..100
    assert region_contrast.percentile_in(normal, np.array([10.0, 40.5, 90.0])) == pytest.approx(40.0)
    assert region_contrast.percentile_in(normal, np.array([1000.0])) == pytest.approx(100.0)
    assert region_contrast.percentile_in(normal, np.array([0.5])) == pytest.approx(0.0)
    assert np.isnan(region_contrast.percentile_in(normal, np.array([])))


def _case(folder, t1ce_et: float):
    """A 3-slice skull-stripped case: brain 1..N outside the tumour, oedema (2) bright on T2, the
    enhancing label (4) at ``t1ce_et`` on T1ce, a zero background that must not count as brain."""
    folder.mkdir()
    labels = np.zeros((12, 12, 3), np.uint8)
    labels[4:6, 4:6, 1] = 2
    labels[6:8, 6:8, 1] = 4
    brain = np.zeros(labels.shape, bool)
    brain[1:11, 1:11, :] = True
    normal_values = np.linspace(1.0, 100.0, int((brain & (labels == 0)).sum()))
    for contrast, oedema, et in (("t2", 500.0, 50.0), ("t1ce", 50.0, t1ce_et)):
        image = np.zeros(labels.shape, np.float32)
        image[brain & (labels == 0)] = normal_values
        image[labels == 2], image[labels == 4] = oedema, et
        nib.save(nib.Nifti1Image(image, np.eye(4)), str(folder / f"{folder.name}_{contrast}.nii.gz"))
    nib.save(nib.Nifti1Image(labels, np.eye(4)), str(folder / f"{folder.name}_seg.nii.gz"))


def test_bright_oedema_on_t2_and_dark_enhancing_label_on_t1ce(tmp_path):
    _case(tmp_path / "p1", t1ce_et=0.5)
    out = region_contrast.case_contrast(tmp_path / "p1")
    assert set(out) == {"t2", "t1ce"}  # no FLAIR or T1 file: not reported
    assert out["t2"]["oedema"] == pytest.approx(100.0)
    assert out["t1ce"]["et"] == pytest.approx(0.0)  # darker than all normal brain, background zeros excluded
    assert out["t2"]["et"] == pytest.approx(50.0, abs=1.0)


def test_a_case_without_a_label_map_is_a_clear_error(tmp_path):
    (tmp_path / "p2").mkdir()
    with pytest.raises(SystemExit, match="no \\*_seg"):
        region_contrast.case_contrast(tmp_path / "p2")


def test_test_dice_averages_methods_skips_fused_rows_and_names_binary_rows(tmp_path):
    csv = tmp_path / "cases.csv"
    csv.write_text("method,modality,seed,fold,case,region,dice\n"
                   "a,t2,0,0,p1,,0.8\n"          # binary grid: no region column value
                   "b,t2,0,0,p1,,0.6\n"
                   "c,t2,0,0,p1,,0.0\n"          # not among --methods
                   "a,t2+t1ce,0,0,p1,,0.9\n"     # fused: not one contrast's network
                   "a,t1ce,0,0,p1,et,0.3\n")
    dice = region_contrast.test_dice(csv, ["a", "b"], binary_region="wt")
    assert dice == {("p1", "t2", "wt"): pytest.approx(0.7), ("p1", "t1ce", "et"): pytest.approx(0.3)}


def test_figure_is_written_whole(tmp_path):
    _case(tmp_path / "p1", t1ce_et=0.5)
    rows = {"p1": region_contrast.case_contrast(tmp_path / "p1")}
    out = tmp_path / "fig.png"
    region_contrast.contrast_figure(tmp_path, ["p1"], rows, [("t2", "oedema"), ("t1ce", "et")], out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir() if p.is_file()] == ["fig.png"]  # no .part left behind
