"""The benchmark's fused evaluation: the per-patient comparison of the fused prediction with the
best single modality (hand-computed on made-up rows), and a tiny phantom grid that evaluates the
fused prediction beside each modality and reports it."""

from __future__ import annotations

import csv
import json

import pytest
import yaml

from semicml.benchmark import load_benchmark_config, run_benchmark
from semicml.benchmark.paired import fusion_comparison, fusion_markdown
from semicml.data.phantom import write_phantom
from semicml.data.store import PrepareOptions, prepare_store


def rows(method: str, modality: str, dice: list[float], hd95: list[float], seed: int = 0) -> list[dict]:
    return [{"method": method, "modality": modality, "seed": seed, "case": f"c{k}", "dice": d, "hd95": h}
            for k, (d, h) in enumerate(zip(dice, hd95))]


def test_fusion_is_compared_with_the_best_single_modality_per_patient():
    case_rows = (rows("semi", "T2", [0.8, 0.6, 0.7], [5, 9, 7]) + rows("semi", "T1ce", [0.5, 0.5, 0.5], [9, 9, 9])
                 + rows("semi", "T2+T1ce", [0.9, 0.65, 0.6], [4, 8, 9])
                 + rows("semi", "T2+T1ce", [0.7, 0.65, 0.8], [4, 8, 9], seed=1))  # seed 1: no single rows
    comp = fusion_comparison(case_rows)
    dice = next(e for e in comp if e["metric"] == "dice")
    assert dice["best_single"] == "T2" and dice["seeds"] == [0] and dice["n_patients"] == 3
    assert dice["mean_diff"] == pytest.approx((0.1 + 0.05 - 0.1) / 3)  # fused - T2, seed 0 only
    assert dice["fused_better"] == 2
    hd = next(e for e in comp if e["metric"] == "hd95")
    assert hd["mean_diff"] == pytest.approx((-1 - 1 + 2) / 3) and hd["fused_better"] == 2  # lower is better
    text = fusion_markdown(comp)
    assert "| semi | T2+T1ce | T2 | 3 |" in text and "not shown (CI spans 0)" in text


@pytest.mark.slow
def test_phantom_grid_evaluates_the_fused_prediction_beside_each_modality(tmp_path):
    write_phantom(tmp_path / "data", cases=6, seed=0, shape=(48, 48, 16))
    prepare_store(tmp_path / "data", tmp_path / "store", PrepareOptions(modalities=("T2", "T1ce"), size=48, workers=1),
                  progress=False)
    spec = {"store": str(tmp_path / "store"), "dataset": str(tmp_path / "data"), "out": str(tmp_path / "out"),
            "seeds": [0], "labeled_fraction": 0.3, "fused": True, "cross_validation": {"folds": 2, "val_cases": 1},
            "train": {"model": {"base_width": 4, "levels": 2}, "iterations": 4, "labeled_batch": 2,
                      "unlabeled_batch": 2, "val_every": 2, "device": "cpu", "precision": "fp32"},
            "methods": ["semicml"]}
    (tmp_path / "b.yaml").write_text(yaml.safe_dump(spec))
    result = run_benchmark(load_benchmark_config(tmp_path / "b.yaml"), progress=False, echo=lambda line: None)
    assert {r["modality"] for r in result} == {"T2", "T1ce", "T2+T1ce"} and all(r["status"] == "ok" for r in result)
    out = tmp_path / "out"
    with open(out / "cases.csv", newline="") as fh:
        cases = list(csv.DictReader(fh))
    fused = {c["case"]: float(c["dice"]) for c in cases if c["modality"] == "T2+T1ce"}
    assert len(fused) == 6  # every patient, from both folds
    record = json.loads((out / "runs" / "semicml" / "seed0" / "fold0" / "eval" / "predictions" / "T2+T1ce"
                         / "predict.json").read_text())
    assert record["fused"] and record["modalities"] == ["T2", "T1ce"]
    summary = json.loads((out / "results.json").read_text())
    dice = next(e for e in summary["fusion"] if e["metric"] == "dice")
    single = {m: {c["case"]: float(c["dice"]) for c in cases if c["modality"] == m} for m in ("T2", "T1ce")}
    best = max(single, key=lambda m: sum(single[m].values()))
    assert dice["best_single"] == best
    assert dice["mean_diff"] == pytest.approx(sum(fused[c] - single[best][c] for c in fused) / 6)
    md = (out / "results.md").read_text()
    assert "## T2+T1ce fused" in md and "Fused prediction vs the best single modality" in md
