"""The README's "Python API" example runs as written (on its tiny phantom, ``tiny`` profile)."""

from __future__ import annotations

import json
import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def _api_example() -> str:
    text = README.read_text()
    section = text.split("## Python API", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert len(blocks) == 1, "the Python API section should hold exactly one python example"
    return blocks[0]


def test_readme_python_api_example_runs(tmp_path, monkeypatch, capsys):
    from semicml.evaluation.plots import training_curves_figure

    monkeypatch.chdir(tmp_path)
    exec(compile(_api_example(), str(README), "exec"), {"__name__": "readme_example"})

    work = tmp_path / "api_demo"
    assert sorted(p.name for p in (work / "run" / "weights").iterdir()) == ["T1ce.pt", "T2.pt"]
    info = json.loads((work / "run" / "run.json").read_text())
    test_cases = info["splits"]["test"]
    assert test_cases and sorted(p.name for p in (work / "pred").glob("*.nii.gz")) == sorted(
        f"{c}.nii.gz" for c in test_cases)
    assert (work / "eval" / "metrics.csv").is_file()
    out = capsys.readouterr().out
    assert re.search(r"T1ce alone, test Dice \d\.\d{3} on \d+ cases", out)
    assert re.search(r"T2 \+ T1ce fused, test Dice \d\.\d{3}", out)
    assert sorted(p.name for p in (work / "fused").glob("*_uncertainty.nii.gz")) == sorted(
        f"{c}_uncertainty.nii.gz" for c in test_cases)
    assert set(info["postprocessing_fused"]) == {"T2+T1ce"}
    # the region example: four networks with three channels, one BraTS-style label map per test case
    assert sorted(p.stem for p in (work / "run4" / "weights").iterdir()) == ["FLAIR", "T1", "T1ce", "T2"]
    run4 = json.loads((work / "run4" / "run.json").read_text())
    assert run4["target"]["classes"] == ["wt", "tc", "et"] and run4["network"]["out_channels"] == 3
    assert re.search(r"\{'wt': \d\.\d+, 'tc': \d\.\d+, 'et': \d\.\d+\} mean \d", out)
    assert json.loads((work / "eval4" / "summary.json").read_text())["region_order"] == ["wt", "tc", "et"]
    fused4 = json.loads((work / "fused4" / "predict.json").read_text())  # regions fused: one label map per case
    assert fused4["regions"]["classes"] == ["wt", "tc", "et"] and len(fused4["cases"]) == len(run4["splits"]["test"])
    assert set(run4["postprocessing_fused"]) >= {"T2+T1ce+FLAIR+T1"}

    # training_curves.png of this run would draw every loss term the trainer logged
    rows = [json.loads(line) for line in (work / "run" / "log.jsonl").read_text().splitlines()]
    terms = {k for r in rows for k, v in r.items() if isinstance(v, float) and k != "lr" and not k.startswith("val_")}
    assert {"loss", "asc", "mse", "sup/T2", "sup/T1ce"} <= terms
    ax_loss, ax_val = training_curves_figure(rows).axes
    assert {line.get_label() for line in ax_loss.get_lines()} == terms
    assert {line.get_label() for line in ax_val.get_lines()} == {"T2", "T1ce"}
