"""benchmarks/resample_brats.py (issue 10's experiment), on the BraTS-layout phantom."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from conftest import REPO_ROOT, make_brats_fixture
from semicml.data.store import PrepareOptions, SliceStore, prepare_store
from semicml.models import build_network

_spec = importlib.util.spec_from_file_location("resample_brats", REPO_ROOT / "benchmarks" / "resample_brats.py")
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)


def _world_centroid(mask: np.ndarray, affine: np.ndarray) -> np.ndarray:
    idx = np.argwhere(mask).mean(axis=0)
    return affine[:3, :3] @ idx + affine[:3, 3]


@pytest.mark.parametrize("spacing", [3.0, 1.05])
def test_regrid_keeps_world_positions(phantom_root, spacing):
    """The phantom (1.5 mm, affine diag(-1.5, -1.5, 3)) on a 3 mm and a 1.05 mm grid: the tumour's
    world centroid moves less than half a millimetre, its volume by under 5%."""
    img = nib.load(str(phantom_root / "labelsTr" / "phantom_000.nii.gz"))
    label = np.asarray(img.dataobj) > 0
    out, affine = bench.regrid(label.astype(np.uint8), img.affine, spacing, label=True)
    assert np.allclose(np.linalg.norm(affine[:3, :3], axis=0)[:2], 64 * 1.5 / out.shape[0])
    assert out.shape[2] == label.shape[2] and out.shape[0] == round(64 * 1.5 / spacing)
    # (nearest-neighbour labels would move it by half an input voxel, ~1.1 mm here)
    assert np.linalg.norm(_world_centroid(out > 0, affine) - _world_centroid(label, img.affine)) < 0.5
    vol = label.sum() * 1.5 * 1.5 * 3
    new_vol = (out > 0).sum() * abs(np.linalg.det(affine[:3, :3]))
    assert abs(new_vol / vol - 1) < 0.05


@pytest.mark.slow  # 12 predictions and evaluations: ~30 s on 2 cores
def test_experiment_table_on_the_phantom(phantom_root, tmp_path):
    data = make_brats_fixture(phantom_root, tmp_path, cases=3)
    store = SliceStore(prepare_store(data, tmp_path / "store", PrepareOptions(modalities=("t2", "t1ce"), size=64,
                                                                              workers=1), progress=False))
    run = tmp_path / "run"
    (run / "weights").mkdir(parents=True)
    spec = {"in_channels": 1, "out_channels": 1, "widths": [4, 8, 16], "dropout": [0.0] * 3}
    torch.manual_seed(0)
    for m in store.modalities:
        torch.save({"format": "semicml-weights-v1", "modality": m, "network": spec,
                    "state_dict": build_network(spec).state_dict(), "preprocessing": store.preprocessing(),
                    "target": store.target, "postprocessing": "none"}, run / "weights" / f"{m}.pt")
    (run / "run.json").write_text(json.dumps({"modalities": store.modalities, "target": store.target,
                                              "preprocessing": store.preprocessing(),
                                              "splits": {"train": [], "val": [], "test": ["phantom_000", "phantom_002"]}}))
    result = bench.main(["--run", str(run), "--data", str(data), "--spacings", "3.0,1.05", "--out", str(tmp_path / "out"),
                         "--work", str(tmp_path / "work"), "--no-progress"])
    rows = result["rows"]
    assert len(rows) == 3 * 2 * 2 + 2 * 2 and result["trained_in_plane_mm"] == 1.5  # + a ceiling per new grid
    # The ceiling carries the original masks to a finer grid: nearly the original Dice.
    for m in ("t2", "t1ce"):
        orig = next(r for r in rows if r["grid"] == "original" and r["modality"] == m and r["mode"] == "resampled")
        ceil = next(r for r in rows if r["grid"] == "1.05 mm" and r["modality"] == m and r["mode"] == "ceiling")
        assert abs(ceil["dice_mean"] - orig["dice_mean"]) < 0.05
    assert {r["grid"] for r in rows} == {"original", "3 mm", "1.05 mm"}
    # On the training grid both ways of predicting are the same computation.
    for m in ("t2", "t1ce"):
        same = [r["dice_per_case"] for r in rows if r["grid"] == "original" and r["modality"] == m]
        assert same[0] == same[1]
    # The masks of each grid are on that grid.
    coarse = nib.load(str(tmp_path / "work" / "pred" / "3mm" / "resampled" / "t2" / "phantom_000.nii.gz"))
    assert coarse.shape == (32, 32, 24)
    md = (tmp_path / "out" / "results.md").read_text()
    assert "| 3 mm |" in md and "| 1.05 mm |" in md and "t2 resampled" in md and "t1ce as-is" in md
    assert json.loads((tmp_path / "out" / "results.json").read_text())["cases"] == ["phantom_000", "phantom_002"]
