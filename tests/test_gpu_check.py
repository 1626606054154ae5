"""benchmarks/gpu_check.sh, the GPU check of issue 12, dry-run on the CPU with a tiny budget so the
script cannot rot between GPU loans: it must prepare, measure, train, evaluate and summarise."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from semicml.data.phantom import write_phantom

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def test_gpu_check_dry_run_on_cpu(tmp_path):
    data = write_phantom(tmp_path / "data", cases=8, seed=0, shape=(48, 48, 16))
    env = dict(os.environ, PYTHON=sys.executable)
    subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--data", str(data), "--work",
                    str(tmp_path / "work"), "--results", str(tmp_path / "res"), "--profile", "tiny", "--size", "48",
                    "--bench-steps", "1", "--bench-settings", "fp32_nchw", "--modalities", "T2,T1ce",
                    "--device", "cpu", "--workers", "1"], check=True, env=env, cwd=tmp_path, capture_output=True)
    summary = json.loads((tmp_path / "res" / "summary.json").read_text())
    assert set(summary["test"]) == {"T2", "T1ce"}
    assert all(0 <= v["dice"] <= 1 for v in summary["test"].values())
    assert summary["throughput"]["fp32_nchw"]["semicml_slices_per_s"] > 0
    assert summary["iterations"] == 8 and "--profile tiny" in summary["train_command"]
    assert summary["train_seconds"] > 0 and summary["peak_gpu_memory_mib"] is None  # CPU: no GPU memory
    assert "| T2 |" in (tmp_path / "res" / "summary.md").read_text()
