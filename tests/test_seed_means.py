"""benchmarks/seed_mean_cases.py: per-patient means over training seeds, the input of the paired
tables of every seed check (a wrong mean or a silently unequal seed set would change their CIs)."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "seed_mean_cases.py"
METRICS = ("dice", "jaccard", "hd95", "asd", "precision", "sensitivity", "components", "pred_voxels", "ref_voxels")


def _metrics_row(case: str, dice: float) -> dict:
    return {"case": case, **{k: dice if k == "dice" else 1.0 for k in METRICS}}


def _seed_run(folder: Path, row: str, seed: int, fold: int, dice: dict[str, float]) -> None:
    out = folder / row / f"seed{seed}" / f"fold{fold}" / "eval" / "evaluation" / "t2"
    out.mkdir(parents=True)
    with (out / "metrics.csv").open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["case", *METRICS])
        w.writeheader()
        w.writerows(_metrics_row(c, d) for c, d in dice.items())


def _grid(path: Path, rows: list[tuple[str, str, float]]) -> None:
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["method", "modality", "seed", "fold", "case", *METRICS])
        w.writeheader()
        for method, case, dice in rows:
            w.writerow({"method": method, "modality": "t2", "seed": 0, "fold": 0, **_metrics_row(case, dice)})


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True)


def _means(path: Path) -> dict[tuple[str, str], float]:
    return {(r["method"], r["case"]): float(r["dice"]) for r in csv.DictReader(path.open())}


def test_means_over_the_chosen_seeds_from_several_folders(tmp_path):
    _grid(tmp_path / "cases.csv", [("a", "p1", 0.2), ("a", "p2", 0.4), ("other", "p1", 0.9)])
    _seed_run(tmp_path / "check", "a", 1, 0, {"p1": 0.6, "p2": 0.8})
    _seed_run(tmp_path / "check", "a", 2, 0, {"p1": 1.0, "p2": 1.0})
    # a variant kept apart, with every seed retrained (none in the grid's cases.csv)
    _seed_run(tmp_path / "variants", "a+v", 0, 0, {"p1": 0.1, "p2": 0.3})
    _seed_run(tmp_path / "variants", "a+v", 1, 0, {"p1": 0.5, "p2": 0.5})
    out = tmp_path / "mean.csv"
    proc = _run(str(tmp_path / "cases.csv"), "--seed-check", str(tmp_path / "check"), "--seed-check",
                str(tmp_path / "variants"), "--rows", "a,a+v", "--seeds", "0,1", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    got = _means(out)
    assert set(got) == {("a (seeds 0+1)", "p1"), ("a (seeds 0+1)", "p2"), ("a+v (seeds 0+1)", "p1"),
                        ("a+v (seeds 0+1)", "p2")}
    assert abs(got[("a (seeds 0+1)", "p1")] - 0.4) < 1e-12 and abs(got[("a (seeds 0+1)", "p2")] - 0.6) < 1e-12
    assert abs(got[("a+v (seeds 0+1)", "p1")] - 0.3) < 1e-12 and abs(got[("a+v (seeds 0+1)", "p2")] - 0.4) < 1e-12
    # without --seeds every seed found is averaged: seed 2 joins row a
    proc = _run(str(tmp_path / "cases.csv"), "--seed-check", str(tmp_path / "check"), "--rows", "a",
                "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert abs(_means(out)[("a (seeds 0+1+2)", "p1")] - 0.6) < 1e-12


def test_a_patient_missing_a_seed_is_refused(tmp_path):
    _grid(tmp_path / "cases.csv", [("a", "p1", 0.2), ("a", "p2", 0.4)])
    _seed_run(tmp_path / "check", "a", 1, 0, {"p1": 0.6})  # p2 lacks seed 1
    proc = _run(str(tmp_path / "cases.csv"), "--seed-check", str(tmp_path / "check"), "--rows", "a",
                "--out", str(tmp_path / "mean.csv"))
    assert proc.returncode != 0 and "p2" in proc.stderr and "every patient needs every seed" in proc.stderr
    assert not (tmp_path / "mean.csv").exists()
