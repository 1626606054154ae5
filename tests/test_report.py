"""Summary statistics, report files, evaluate_pairs, and the atomic-write helpers."""

from __future__ import annotations

import csv
import json
import os
import stat

import numpy as np
import pytest
import torch

from semicml.evaluation.metrics import METRICS
from semicml.evaluation.report import evaluate_pairs, summarize, write_report
from semicml.io_utils import atomic_path, atomic_save_torch, atomic_write_json, atomic_write_text


def _rows() -> list[dict]:
    return [
        {"case": "A", "dice": 0.5, "jaccard": 0.3, "hd95": 10.0, "asd": 2.0, "precision": 0.4, "sensitivity": 0.6,
         "components": 1.0},
        {"case": "B", "dice": 0.7, "jaccard": 0.5, "hd95": 20.0, "asd": 4.0, "precision": 0.6, "sensitivity": 0.8,
         "components": 3.0},
        {"case": "C", "dice": 0.9, "jaccard": 0.7, "hd95": 30.0, "asd": 6.0, "precision": 0.8, "sensitivity": 1.0,
         "components": 5.0},
    ]


def _no_temp_files(directory) -> bool:
    return not [p for p in directory.iterdir() if p.name.startswith(".") or ".tmp" in p.name]


# --- summarize -------------------------------------------------------------------------------

def test_summarize_mean_and_sample_std():
    s = summarize(_rows())
    assert s["n_cases"] == 3
    assert list(s["mean"]) == list(METRICS)
    assert s["mean"]["dice"] == pytest.approx(0.7)
    assert s["std"]["dice"] == pytest.approx(0.2)  # sample std of 0.5, 0.7, 0.9 (ddof=1)
    assert s["mean"]["hd95"] == pytest.approx(20.0)
    assert s["std"]["hd95"] == pytest.approx(10.0)
    assert "n_empty_pred" not in s  # no voxel counts in these rows


def test_summarize_single_case_std_is_zero():
    s = summarize(_rows()[:1])
    assert s["n_cases"] == 1
    assert s["std"] == {m: 0.0 for m in METRICS}


def test_summarize_subset_of_metrics_keeps_metric_order():
    s = summarize([{"case": "x", "hd95": 1.0, "dice": 0.5}, {"case": "y", "hd95": 3.0, "dice": 1.0}])
    assert list(s["mean"]) == ["dice", "hd95"]


def test_summarize_errors():
    with pytest.raises(ValueError):
        summarize([])
    rows = _rows()
    del rows[1]["hd95"]
    with pytest.raises(ValueError, match="B"):
        summarize(rows)


# --- write_report ----------------------------------------------------------------------------

def test_write_report_files(tmp_path):
    rows = _rows()
    for r in rows:
        r["pred_voxels"], r["ref_voxels"] = 10, 12
    rows[0]["pred_voxels"] = 0
    out = tmp_path / "report"
    summary = write_report(rows, out, "Test set, T2", extra={"method": "semicml", "seed": 0})

    assert summary["n_cases"] == 3 and summary["n_empty_pred"] == 1 and summary["n_empty_ref"] == 0
    assert {p.name for p in out.iterdir()} == {"metrics.csv", "summary.json", "summary.md"}

    with open(out / "metrics.csv", newline="") as fh:
        table = list(csv.DictReader(fh))
    assert list(table[0]) == ["case", *METRICS, "pred_voxels", "ref_voxels"]
    assert [r["case"] for r in table] == ["A", "B", "C"]  # per case only, no summary rows
    assert float(table[1]["dice"]) == 0.7  # full precision

    data = json.loads((out / "summary.json").read_text())
    assert data["title"] == "Test set, T2"
    assert data["method"] == "semicml" and data["seed"] == 0
    assert data["n_cases"] == 3
    assert data["mean"]["dice"] == pytest.approx(0.7)
    assert data["std_ddof"] == 1
    assert "empty_mask_rule" in data

    md = (out / "summary.md").read_text()
    assert md.startswith("# Test set, T2")
    assert "| Case | Dice | Jaccard | HD95 (mm) | ASD (mm) | Precision | Sensitivity |" in md
    assert "| A | 0.5000 | 0.3000 | 10.00 | 2.00 | 0.4000 | 0.6000 |" in md
    mean_line = md.strip().splitlines()[-1]
    assert mean_line.startswith("| **mean ± std** |")
    assert "0.7000 ± 0.2000" in mean_line and "20.00 ± 10.00" in mean_line


def test_write_report_overwrites_and_rejects_reserved_extra(tmp_path):
    write_report(_rows(), tmp_path, "first")
    write_report(_rows()[:2], tmp_path, "second")
    assert json.loads((tmp_path / "summary.json").read_text())["n_cases"] == 2
    assert _no_temp_files(tmp_path)
    with pytest.raises(ValueError, match="mean"):
        write_report(_rows(), tmp_path, "t", extra={"mean": 1})


def test_markdown_escapes_pipes_in_case_ids(tmp_path):
    rows = _rows()[:1]
    rows[0]["case"] = "a|b"
    write_report(rows, tmp_path, "t")
    assert "| a\\|b |" in (tmp_path / "summary.md").read_text()


# --- evaluate_pairs --------------------------------------------------------------------------

def _pairs():
    ref = np.zeros((6, 6, 6), bool)
    ref[1:4, 1:4, 1:4] = True
    shifted = np.roll(ref, 1, axis=0)
    empty = np.zeros_like(ref)
    return [("p1", ref.copy(), ref, (1.0, 1.0, 1.0)), ("p2", shifted, ref, (2.0, 1.0, 1.0)), ("p3", empty, ref, (1, 1, 1))]


@pytest.mark.parametrize("progress", [False, True])
def test_evaluate_pairs(progress):
    rows = evaluate_pairs(iter(_pairs()), progress=progress)  # a plain iterator (no len) works
    assert [r["case"] for r in rows] == ["p1", "p2", "p3"]
    assert rows[0]["dice"] == 1.0 and rows[0]["hd95"] == 0.0
    assert rows[1]["hd95"] == pytest.approx(2.0)  # 1-voxel shift along axis 0 at 2 mm
    assert rows[2]["dice"] == 0.0 and rows[2]["pred_voxels"] == 0 and rows[2]["ref_voxels"] == 27
    assert rows[2]["hd95"] == pytest.approx(np.sqrt(3 * 36))  # empty prediction: volume diagonal
    assert summarize(rows)["n_empty_pred"] == 1


def test_evaluate_pairs_errors_name_the_case():
    pairs = _pairs()
    with pytest.raises(ValueError, match="duplicate"):
        evaluate_pairs([pairs[0], pairs[0]], progress=False)
    bad = ("bad_case", np.zeros((6, 6, 6), bool), np.zeros((6, 6, 5), bool), (1, 1, 1))
    with pytest.raises(ValueError, match="bad_case"):
        evaluate_pairs([bad], progress=False)


# --- io_utils --------------------------------------------------------------------------------

def test_atomic_write_text_and_json(tmp_path):
    target = tmp_path / "sub" / "a.txt"  # parent created on demand
    atomic_write_text(target, "one")
    atomic_write_text(target, "two")
    assert target.read_text() == "two"
    atomic_write_json(tmp_path / "b.json", {"x": np.float32(0.5), "n": np.int64(3), "arr": np.arange(2), "p": tmp_path})
    data = json.loads((tmp_path / "b.json").read_text())
    assert data == {"x": 0.5, "n": 3, "arr": [0, 1], "p": str(tmp_path)}
    assert _no_temp_files(tmp_path) and _no_temp_files(tmp_path / "sub")


def test_atomic_write_failure_keeps_old_file_and_no_temp(tmp_path):
    target = tmp_path / "keep.json"
    atomic_write_json(target, {"ok": True})
    with pytest.raises(TypeError):
        atomic_write_json(target, {"bad": object()})  # fails before the temp file is opened
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("partial")
            raise RuntimeError("crash mid-write")
    assert json.loads(target.read_text()) == {"ok": True}
    assert _no_temp_files(tmp_path)


def test_atomic_path_keeps_suffix_and_sane_permissions(tmp_path):
    with atomic_path(tmp_path / "fig.png") as tmp:
        assert tmp.suffix == ".png" and tmp.parent == tmp_path
        tmp.write_bytes(b"x")
    umask = os.umask(0)
    os.umask(umask)
    mode = stat.S_IMODE((tmp_path / "fig.png").stat().st_mode)
    assert mode == 0o666 & ~umask  # not mkstemp's 0600


def test_atomic_save_torch_roundtrip(tmp_path):
    path = tmp_path / "ckpt.pt"
    atomic_save_torch({"w": torch.arange(3)}, path)
    assert torch.equal(torch.load(path)["w"], torch.arange(3))
    assert _no_temp_files(tmp_path)
