"""Splits and subsets that cannot drift: --resume refuses a changed splits.json, labelled fraction,
store or semicml version, naming the difference; run.json records the store's content hash."""

from __future__ import annotations

import json
import shutil

import pytest
import yaml

from faults import run_cli
from semicml.config import build_config
from semicml.data.store import PrepareOptions, SliceStore, prepare_store
from semicml.engine.trainer import Trainer
from semicml.errors import ConfigError

pytestmark = pytest.mark.slow

TINY = {"iterations": 2, "val_every": 2, "method": "supervised", "num_workers": 0, "labeled_fraction": 0.3}


@pytest.fixture(scope="module")
def store(phantom_root, tmp_path_factory):
    return prepare_store(phantom_root, tmp_path_factory.mktemp("drift") / "store",
                         PrepareOptions(modalities=("T2", "T1ce"), size=32, workers=1), progress=False)


@pytest.fixture(scope="module")
def finished(store, tmp_path_factory):
    run = tmp_path_factory.mktemp("drift_run") / "run"
    info = Trainer(build_config(profile="tiny", overrides=TINY), store, run, progress=False).fit()
    return run, info


@pytest.fixture
def run(finished, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(finished[0], copy)
    return copy


def resume(run, store):
    return Trainer(build_config(run / "config.yaml"), store, run, resume=True, progress=False)


def test_unchanged_resume_is_accepted_and_run_json_has_the_store_hash(finished, store):
    run, info = finished
    assert info["store_sha256"] == SliceStore(store).content_hash == SliceStore(store).content_hash
    assert len(info["store_sha256"]) == 64 and len(info["labeled_subset_sha256"]) == 64
    assert all("sha256" in c for c in SliceStore(store).manifest["cases"])
    assert resume(run, store).iteration == 2


def test_changed_splits_json_is_refused_naming_the_case(run, store):
    splits = json.loads((run / "splits.json").read_text())
    moved = splits["val"].pop(0)
    splits["test"].append(moved)
    (run / "splits.json").write_text(json.dumps(splits))
    with pytest.raises(ConfigError, match=rf"splits changed.*{moved}.*val -> test"):
        resume(run, store)


def test_changed_labelled_fraction_is_refused(run, store):
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    cfg["labeled_fraction"] = 0.6
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(ConfigError, match=r"labelled fraction changed.*0\.3 -> 0\.6"):
        resume(run, store)


def test_another_or_reprepared_store_is_refused(run, store, phantom_root, tmp_path):
    other = prepare_store(phantom_root, tmp_path / "store2", PrepareOptions(modalities=("T2", "T1ce"), size=32,
                                                                           normalisation="zscore", workers=1),
                          progress=False)
    assert SliceStore(other).content_hash != SliceStore(store).content_hash
    with pytest.raises(ConfigError, match="slice store"):
        resume(run, other)


def test_new_semicml_version_is_refused(run, store, monkeypatch):
    import semicml.engine.provenance as provenance

    monkeypatch.setattr(provenance, "__version__", "99.0")
    with pytest.raises(ConfigError, match=r"semicml version changed.*-> '99.0'"):
        resume(run, store)


def test_cli_resume_refuses_options_that_change_the_run(run, store, monkeypatch, capsys):
    rc, _, err = run_cli(["train", store, "--out", run, "--resume", "--labeled-fraction", "0.5"], monkeypatch, capsys)
    assert rc == 2 and "--labeled-fraction" in err and len(err.strip().splitlines()) == 1


@pytest.fixture
def threads_restored():
    import torch

    before = torch.get_num_threads()
    yield before
    torch.set_num_threads(before)


def test_run_records_where_it_computed_and_a_resume_on_other_threads_says_so(finished, run, store, capsys,
                                                                             threads_restored):
    """Float sums depend on the thread count (1 vs 2 threads diverge at iteration ~10 on BraTS), so a
    run records its threads, CPU kind and precision, and a resume that changes them goes on but says
    so once and keeps the change in run.json; an unchanged resume says nothing."""
    import torch

    _, info = finished
    assert info["compute"]["threads"] == threads_restored
    assert info["compute"]["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert info["compute"]["precision"] == info["precision"] and info["compute_changes"] == []
    resume(run, store).fit()
    assert "note:" not in capsys.readouterr().err
    other = 1 if threads_restored != 1 else 2
    torch.set_num_threads(other)
    again = resume(run, store).fit()
    err = capsys.readouterr().err
    assert f"resumed with threads {threads_restored} -> {other}" in err and len(err.strip().splitlines()) == 1
    assert again["compute"]["threads"] == other
    assert again["compute_changes"] == [f"iteration 2: threads {threads_restored} -> {other}"]
    saved = json.loads((run / "run.json").read_text())
    assert saved["compute_changes"] == again["compute_changes"]


def test_cli_train_threads_sets_the_run_threads_and_may_change_on_resume(store, tmp_path, monkeypatch, capsys,
                                                                         threads_restored):
    out = tmp_path / "cli_run"
    args = ["train", store, "--out", out, "--profile", "tiny", "--iterations", "2", "--val-every", "2",
            "--method", "supervised", "--num-workers", "0", "--labeled-fraction", "0.3"]
    rc, _, err = run_cli([*args, "--threads", "1"], monkeypatch, capsys)
    assert rc == 0, err
    assert json.loads((out / "run.json").read_text())["compute"]["threads"] == 1
    rc, _, err = run_cli(["train", store, "--out", out, "--resume", "--threads", "2"], monkeypatch, capsys)
    assert rc == 0, err
    assert "threads 1 -> 2" in err
    assert json.loads((out / "run.json").read_text())["compute"]["threads"] == 2


def test_a_checkpoint_from_before_the_record_resumes_silently(run, store, capsys):
    import torch

    ckpt = run / "checkpoint.pt"
    state = torch.load(ckpt, weights_only=True)
    del state["compute"], state["compute_changes"]
    torch.save(state, ckpt)
    info = resume(run, store).fit()
    assert "note:" not in capsys.readouterr().err and info["compute_changes"] == []


def test_compute_difference_names_what_changed_and_ignores_the_cpu_side_on_a_gpu():
    from semicml.hardware import compute_difference

    cpu = {"threads": 1, "processes": 1, "cpu": "A", "cpu_capability": "AVX2", "precision": "fp32", "gpu": None}
    assert compute_difference(cpu, dict(cpu)) == "" and compute_difference(None, cpu) == ""
    assert compute_difference(cpu, {**cpu, "threads": 2, "cpu": "B"}) == "threads 1 -> 2, cpu A -> B"
    assert compute_difference({k: v for k, v in cpu.items() if k != "processes"}, {**cpu, "processes": 2}) == ""
    gpu = {**cpu, "gpu": "H100"}
    assert compute_difference(gpu, {**gpu, "threads": 8, "cpu_capability": "AVX512"}) == ""
    assert compute_difference(gpu, {**gpu, "precision": "bf16"}) == "precision fp32 -> bf16"
