"""Test-set isolation, instrumented: every case the training process reads from the slice store
(``SliceStore.images`` / ``SliceStore.label``) is recorded; no test-split case may be among them,
for any registered method (training, validation, teacher choice, model and post-processing
selection) nor in ``semicml benchmark`` on the phantom (which evaluates the test cases from the
raw dataset, after training)."""

from __future__ import annotations

import json

import pytest
import yaml

from faults import run_cli
from semicml.config import build_config
from semicml.data.store import PrepareOptions, SliceStore, prepare_store
from semicml.engine.trainer import Trainer
from semicml.methods import METHODS, get_method

pytestmark = pytest.mark.slow

get_method("semicml")  # registers every method
BUDGET = {"iterations": 2, "val_every": 2, "num_workers": 0, "labeled_fraction": 0.3, "model": {"base_width": 2},
          "postprocess": "none"}


@pytest.fixture
def reads(monkeypatch) -> list[str]:
    """Cases read from any SliceStore while the fixture is active (DataLoader workers: 0, so the
    training process is this one)."""
    seen: list[str] = []
    images, label = SliceStore.images, SliceStore.label

    def spy_images(self, case_id):
        seen.append(case_id)
        return images(self, case_id)

    def spy_label(self, case_id):
        seen.append(case_id)
        return label(self, case_id)

    monkeypatch.setattr(SliceStore, "images", spy_images)
    monkeypatch.setattr(SliceStore, "label", spy_label)
    return seen


@pytest.fixture(scope="module")
def store(phantom_root, tmp_path_factory):
    return prepare_store(phantom_root, tmp_path_factory.mktemp("iso") / "store",
                         PrepareOptions(modalities=("T2", "T1ce"), size=32, workers=1), progress=False)


@pytest.fixture(scope="module")
def stage1(store, tmp_path_factory):
    run = tmp_path_factory.mktemp("iso_stage1") / "run"
    Trainer(build_config(profile="tiny", overrides={**BUDGET, "method": "semicml"}), store, run, progress=False).fit()
    return run


@pytest.mark.parametrize("method", sorted(METHODS))
def test_training_never_reads_a_test_case(method, store, stage1, tmp_path, reads):
    overrides = {**BUDGET, "method": method}
    if method == "semicml-prel":  # one method also runs the post-processing choice (on val) and the teacher choice
        overrides.update(postprocess="auto", iterations=4)
    if method == "prel":
        overrides["init"] = str(stage1)
    info = Trainer(build_config(profile="tiny", overrides=overrides), store, tmp_path / "run", progress=False).fit()
    splits = info["splits"]
    assert splits["test"], "the phantom split must have test cases for this check to mean anything"
    touched = set(reads)
    assert set(splits["val"]) <= touched, "the spy must see validation reads (it is live)"
    assert touched & set(splits["train"]), "the spy must see training reads"
    assert not touched & set(splits["test"]), f"{method} read test cases {sorted(touched & set(splits['test']))}"


def test_the_spy_would_catch_a_test_read(store, reads):
    case = sorted(store_cases := SliceStore(store).cases)[0]
    SliceStore(store).images(case)
    assert reads == [case] and case in store_cases


def test_benchmark_on_the_phantom_never_reads_a_test_case_during_training(tmp_path, reads, monkeypatch, capsys):
    spec = {"out": "out", "prepare": {"input": "phantom", "phantom": {"cases": 6, "seed": 0, "shape": [48, 48, 16]},
                                      "modalities": ["T2", "T1ce"], "size": 32, "workers": 1},
            "seeds": [0], "labeled_fraction": 0.3, "profile": "tiny",
            "train": {"iterations": 2, "val_every": 2, "num_workers": 0, "device": "cpu"},
            "methods": ["supervised", "semicml-prel"]}
    (tmp_path / "bench.yaml").write_text(yaml.safe_dump(spec))
    rc, _, err = run_cli(["benchmark", tmp_path / "bench.yaml", "--no-progress"], monkeypatch, capsys)
    assert rc == 0, err
    rows = json.loads((tmp_path / "out" / "results.json").read_text())["rows"]
    assert rows and all(r["status"] == "ok" for r in rows)
    touched = set(reads)
    for run in {r["run_dir"] for r in rows}:
        splits = json.loads((tmp_path / "out" / run / "run.json").read_text())["splits"]
        assert set(splits["val"]) <= touched
        assert not touched & set(splits["test"]), (run, sorted(touched & set(splits["test"])))
