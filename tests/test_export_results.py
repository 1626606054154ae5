"""benchmarks/export_results.py: what a benchmark output folder contributes to the repository."""

from __future__ import annotations

import importlib.util

import pytest

from conftest import REPO_ROOT

_spec = importlib.util.spec_from_file_location("export_results", REPO_ROOT / "benchmarks" / "export_results.py")
export_results = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(export_results)


def _fake_output(out):
    for name in ("results.md", "results.json", "cases.csv", "dice.png"):
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_text(name)
    (out / "store").mkdir()
    (out / "store" / "store.json").write_text("{}")
    (out / "splits").mkdir()
    (out / "splits" / "fold0.json").write_text("{}")
    done = out / "runs" / "m" / "seed0" / "fold0"
    unfinished = out / "runs" / "m" / "seed0" / "fold1"
    for run in (done, unfinished):
        (run / "weights").mkdir(parents=True)
        (run / "weights" / "t2.pt").write_bytes(b"w")
        (run / "checkpoint.pt").write_bytes(b"c")
        (run / "log.jsonl").write_text("{}\n")
        (run / "config.yaml").write_text("a: 1\n")
    (done / "result.json").write_text("{}")
    (done / "run.json").write_text("{}")
    (done / "eval" / "evaluation" / "t2").mkdir(parents=True)
    (done / "eval" / "evaluation" / "t2" / "metrics.csv").write_text("case,dice\n")
    (done / "eval" / "predictions" / "t2").mkdir(parents=True)
    (done / "eval" / "predictions" / "t2" / "c.nii.gz").write_bytes(b"mask")


def test_export_copies_tables_folds_and_finished_runs_records_only(tmp_path):
    out, dest = tmp_path / "out", tmp_path / "dest"
    out.mkdir()
    _fake_output(out)
    export_results.export(out, dest)
    files = sorted(str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file())
    assert files == ["cases.csv", "dice.png", "results.json", "results.md", "runs/m/seed0/fold0/config.yaml",
                     "runs/m/seed0/fold0/eval/evaluation/t2/metrics.csv", "runs/m/seed0/fold0/log.jsonl", "runs/m/seed0/fold0/result.json",
                     "runs/m/seed0/fold0/run.json", "splits/fold0.json"]
    assert (dest / "results.md").read_text() == "results.md"


def test_export_refuses_a_folder_without_results(tmp_path):
    with pytest.raises(SystemExit, match="no results.json"):
        export_results.export(tmp_path, tmp_path / "dest")
    assert not (tmp_path / "dest").exists()
