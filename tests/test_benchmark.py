"""`semicml benchmark`: a grid of methods x seeds on phantom data, its tables and plots, resuming,
failure isolation, and the config's validation / path rules."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from conftest import REPO_ROOT
from semicml.benchmark import (
    RESULT_COLUMNS,
    BenchmarkConfig,
    load_benchmark_config,
    run_benchmark,
    write_results,
)
from semicml.benchmark.runner import report_benchmark
from semicml.cli import app
from semicml.data.phantom import write_phantom
from semicml.data.store import PrepareOptions, prepare_store
from semicml.errors import ConfigError

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
REQUIRED = ["method", "modality", "seed", "labeled_fraction", "dice", "jaccard", "hd95", "asd", "precision",
            "sensitivity", "status", "seconds", "run_dir", "teacher"]
TINY_TRAIN = {"model": {"base_width": 4, "levels": 2}, "iterations": 4, "labeled_batch": 2, "unlabeled_batch": 2,
              "val_every": 2, "log_every": 2, "val_fraction": 0.2, "test_fraction": 0.2, "device": "cpu",
              "precision": "fp32"}


@pytest.fixture(scope="module")
def grid(tmp_path_factory) -> dict:
    """Phantom + store, a YAML using paths relative to its own folder, and one run of the grid."""
    root = tmp_path_factory.mktemp("bench")
    write_phantom(root / "data", cases=6, seed=0, shape=(48, 48, 16))
    prepare_store(root / "data", root / "store", PrepareOptions(modalities=("T2", "T1ce"), size=48, workers=1),
                  progress=False)
    (root / "conf").mkdir()
    spec = {
        "store": "../store", "dataset": "../data", "out": "../out",  # relative to conf/, the YAML's folder
        "seeds": [0], "labeled_fraction": 0.3, "train": TINY_TRAIN,
        "methods": ["supervised", "semicml",
                    # semi-supervised with every slice labelled: no unlabelled data -> the run fails
                    {"name": "semicml-all", "method": "semicml", "labeled_fraction": 1.0}],
    }
    config = root / "conf" / "bench.yaml"
    config.write_text(yaml.safe_dump(spec))
    cfg = load_benchmark_config(config)
    rows = run_benchmark(cfg, progress=False, echo=lambda line: None)
    return {"root": root, "config": config, "cfg": cfg, "rows": rows, "out": root / "out"}


pytestmark = pytest.mark.slow


def test_paths_are_relative_to_the_yaml_folder(grid):
    cfg, root = grid["cfg"], grid["root"]
    assert Path(cfg.out) == (root / "out").resolve()
    assert Path(cfg.store) == (root / "store").resolve()
    assert Path(cfg.dataset) == (root / "data").resolve()


def test_result_files_and_columns(grid):
    out, rows = grid["out"], grid["rows"]
    with open(out / "results.csv", newline="") as fh:
        table = list(csv.DictReader(fh))
    header = list(table[0])
    assert all(c in header for c in REQUIRED), header
    assert header[: len(RESULT_COLUMNS)] == list(RESULT_COLUMNS)
    # one row per method x modality x seed
    assert sorted((r["method"], r["modality"], r["seed"]) for r in table) == sorted(
        (m, mod, "0") for m in ("supervised", "semicml", "semicml-all") for mod in ("T2", "T1ce"))
    ok = [r for r in table if r["status"] == "ok"]
    assert {r["method"] for r in ok} == {"supervised", "semicml"}
    for r in ok:
        assert 0.0 <= float(r["dice"]) <= 1.0 and float(r["hd95"]) >= 0.0
        assert r["labeled_fraction"] == "0.3" and r["run_dir"] == f"runs/{r['method']}/seed0"
        assert (out / r["run_dir"] / "result.json").is_file()
        assert (out / r["run_dir"] / "eval" / "evaluation" / r["modality"] / "summary.json").is_file()
        assert float(r["seconds"]) > 0
        assert int(r["n_labeled_slices"]) > 0  # the real count, read back from the run's run.json
        compute = json.loads((out / r["run_dir"] / "run.json").read_text())["compute"]
        assert r["train_threads"] == str(compute["threads"]) and r["train_precision"] == compute["precision"] == "fp32"
        assert 0.0 <= float(r["precision"]) <= 1.0  # the metric, not the arithmetic
    data = json.loads((out / "results.json").read_text())
    assert len(data["rows"]) == len(rows) == 6 and data["benchmark"]["seeds"] == [0]

    md = (out / "results.md").read_text()
    assert "## T2 alone" in md and "## T1ce alone" in md
    assert "Δ Dice vs sup-30%" in md and " ± " in md and "**" in md
    assert "semicml-all seed 0" in md  # listed under failed runs
    assert f"Runs trained with {ok[0]['train_threads']} CPU thread(s) each, precision fp32" in md
    n_sup = {r["n_labeled_slices"] for r in ok if r["method"] == "supervised"}
    assert len(n_sup) == 1 and f"| supervised | 30% ({n_sup.pop()} sl.) |" in md
    for name in ("dice.png", "val_curves.png"):
        blob = (out / name).read_bytes()
        assert blob[:8] == PNG_MAGIC and len(blob) > 2000
    assert not list(out.glob(".*.tmp*"))  # atomic writes leave nothing behind


def test_failed_run_is_reported_and_others_finish(grid):
    failed = [r for r in grid["rows"] if r["method"] == "semicml-all"]
    assert {r["modality"] for r in failed} == {"T2", "T1ce"}
    for r in failed:
        assert r["status"].startswith("failed: ") and "unlabelled" in r["status"]
        assert "\n" not in r["status"] and r["dice"] is None
    assert all(r["status"] == "ok" for r in grid["rows"] if r["method"] != "semicml-all")


def test_rerun_skips_finished_runs(grid):
    """The CLI on the same YAML: finished runs are skipped (untouched), the failed one is retried."""
    out = grid["out"]
    markers = {p: p.stat().st_mtime_ns for p in out.glob("runs/*/seed0/*") if p.name in ("result.json",
                                                                                         "checkpoint.pt")}
    assert len(markers) == 4  # supervised + semicml: result.json and checkpoint.pt each
    result = CliRunner().invoke(app, ["benchmark", str(grid["config"]), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "3 runs (2 finished earlier, 1 failed)" in result.output
    assert all(p.stat().st_mtime_ns == t for p, t in markers.items())
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert {r["action"] for r in rows if r["method"] != "semicml-all"} == {"skipped"}
    assert {r["action"] for r in rows if r["method"] == "semicml-all"} == {"failed"}
    before = {(r["method"], r["modality"]): r["dice"] for r in grid["rows"]}
    assert {(r["method"], r["modality"]): r["dice"] for r in rows} == before


def test_changed_budget_is_not_mixed_with_old_runs(grid, tmp_path):
    """A finished run made under another budget is reported, never silently reused."""
    spec = yaml.safe_load(grid["config"].read_text())
    spec.update(store=str(grid["root"] / "store"), dataset=str(grid["root"] / "data"), out=str(grid["out"]),
                train={**TINY_TRAIN, "iterations": 5}, methods=["supervised"])
    (tmp_path / "b.yaml").write_text(yaml.safe_dump(spec))
    cfg = load_benchmark_config(tmp_path / "b.yaml", out=tmp_path / "other")
    assert Path(cfg.out) == (tmp_path / "other").resolve()  # --out wins
    cfg = cfg.model_copy(update={"out": str(grid["out"])})
    rows = run_benchmark(cfg, progress=False, echo=lambda line: None, only=[])
    assert rows and all(r["status"].startswith("failed: ") and "different configuration" in r["status"]
                        and "iterations" in r["status"] for r in rows)
    write_results(grid["rows"], grid["out"], labeled_fraction=0.3)  # restore the module's tables


def test_an_interrupted_run_started_before_a_setting_existed_resumes_but_a_real_change_does_not(grid, tmp_path):
    """A run killed mid-training (checkpoint, no result) whose config.yaml predates a setting
    resumes when the grid asks for what the run did then; a real change is still refused."""
    import shutil

    out = tmp_path / "out"
    shutil.copytree(grid["out"], out)
    run = out / "runs" / "semicml" / "seed0"
    (run / "result.json").unlink()  # as if killed after its last checkpoint
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["prel"]["from_best"] is False and saved["compile"] is False
    del saved["prel"]["from_best"], saved["compile"]  # recorded before these settings existed
    (run / "config.yaml").write_text(yaml.safe_dump(saved))
    cfg = grid["cfg"].model_copy(update={"out": str(out)})
    rows = run_benchmark(cfg, progress=False, echo=lambda line: None, only=["semicml"])
    mine = [r for r in rows if r["method"] == "semicml"]
    assert [r["action"] for r in mine] == ["resumed", "resumed"] and all(r["status"] == "ok" for r in mine)
    assert (run / "result.json").is_file()

    (run / "result.json").unlink()
    (run / "config.yaml").write_text(yaml.safe_dump(dict(saved, iterations=saved["iterations"] + 1)))
    rows = run_benchmark(cfg, progress=False, echo=lambda line: None, only=["semicml"])
    mine = [r for r in rows if r["method"] == "semicml"]
    assert mine and all(r["status"].startswith("failed: ") and "different configuration" in r["status"]
                        and "iterations" in r["status"] for r in mine)


def test_markdown_table_marks_best_and_paired_deltas(tmp_path):
    def row(method, seed, dice, hd95, fraction=0.1, method_id=None):
        return {"method": method, "method_id": method_id or method, "modality": "T2", "seed": seed,
                "labeled_fraction": fraction, "dice": dice, "jaccard": dice / 2, "hd95": hd95, "asd": hd95 / 4,
                "precision": dice, "sensitivity": dice, "status": "ok", "action": "trained", "seconds": 1.0,
                "run_dir": f"runs/{method}/seed{seed}", "teacher": None,
                "n_labeled_slices": (60 + seed if fraction < 1 else 600)}

    rows = [row("supervised", 0, 0.50, 10.0), row("supervised", 1, 0.60, 8.0),
            row("supervised-100%", 0, 0.90, 2.0, 1.0, "supervised"), row("supervised-100%", 1, 0.92, 2.0, 1.0,
                                                                          "supervised"),
            row("semicml", 0, 0.70, 6.0), row("semicml", 1, 0.74, 5.0)]
    write_results(rows, tmp_path, labeled_fraction=0.1)
    md = (tmp_path / "results.md").read_text()
    lines = {line.split("|")[1].strip(): line for line in md.splitlines() if line.startswith("| ")}
    assert "Δ Dice vs sup-10%" in md and "Δ Dice vs sup-100%" in md
    semi = lines["semicml"]
    assert "**0.7200 ± 0.0283**" in semi  # best Dice among the 10% methods (the 100% row is not ranked)
    assert "**5.50 ± 0.71**" in semi  # best HD95 = lowest
    assert "+0.1700 ± 0.0424" in semi  # paired per-seed differences to supervised: +0.20, +0.14
    assert "-0.1900 ± 0.0141" in semi  # to the upper bound: -0.20, -0.18
    assert "**" not in lines["supervised-100%"]
    assert "| 10% (60-61 sl.) |" in semi and "| 100% (600 sl.) |" in lines["supervised-100%"]  # seeds differ
    assert (tmp_path / "dice.png").read_bytes()[:8] == PNG_MAGIC
    assert (tmp_path / "val_curves.png").read_bytes()[:8] == PNG_MAGIC  # no logs: a placeholder panel


@pytest.mark.parametrize("text, expected", [
    ("out: o\nstore: s\ndataset: d\nmethods: [supervised]\nbogus: 1\n", "'bogus': Extra inputs are not permitted"),
    ("out: o\nstore: s\ndataset: d\nmethods: [supervized]\n", "unknown method 'supervized'"),
    ("out: o\nstore: s\ndataset: d\nmethods: [supervised, supervised]\n", "must be unique"),
    ("out: o\nstore: s\ndataset: d\nmethods: [supervised]\ntrain: {seed: 1}\n", "seed may not be set in train"),
    ("out: o\nstore: s\ndataset: d\nmethods: [{name: cps, overrides: {cps: {weigth: 1}}}]\n", "cps.weigth"),
    ("out: o\nmethods: [supervised]\n", "give 'store'"),
    ("store: s\ndataset: d\nmethods: [supervised]\n", "no output folder"),
    ("out: o\nstore: ${SEMICML_TEST_UNSET_VAR}/s\ndataset: d\nmethods: [supervised]\n", "SEMICML_TEST_UNSET_VAR"),
    ("- just a list\n", "must be a YAML mapping"),
])
def test_config_errors_are_one_line(tmp_path, monkeypatch, text, expected):
    monkeypatch.delenv("SEMICML_TEST_UNSET_VAR", raising=False)
    path = tmp_path / "b.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_benchmark_config(path)
    message = str(info.value)
    assert expected in message and "\n" not in message and str(path) in message


def test_env_var_paths(tmp_path, monkeypatch):
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "b.yaml").write_text("out: o\nstore: ${SEMICML_TEST_STORE:-../s}\ndataset: ${SEMICML_TEST_DATA}\n"
                                 "methods: [supervised]\n")
    monkeypatch.delenv("SEMICML_TEST_STORE", raising=False)
    monkeypatch.setenv("SEMICML_TEST_DATA", "rel/data")
    monkeypatch.chdir(tmp_path)
    cfg = load_benchmark_config(conf / "b.yaml")
    assert Path(cfg.store) == (tmp_path / "s").resolve()  # the default text: relative to the YAML folder
    assert Path(cfg.dataset) == (tmp_path / "rel" / "data").resolve()  # from the environment: the cwd
    assert Path(cfg.out) == (conf / "o").resolve()


def test_string_entries_and_defaults():
    cfg = BenchmarkConfig.model_validate({"out": "o", "store": "s", "dataset": "d",
                                          "methods": ["cps", {"name": "up", "method": "supervised",
                                                              "labeled_fraction": 1.0}]})
    assert [(e.name, e.method) for e in cfg.methods] == [("cps", "cps"), ("up", "supervised")]
    assert cfg.seeds == [0, 1, 2] and cfg.labeled_fraction == 0.1
    tcfg = cfg.train_config(cfg.methods[1], 2, None)
    assert (tcfg.method, tcfg.seed, tcfg.labeled_fraction) == ("supervised", 2, 1.0)


BENCHMARKS = REPO_ROOT / "benchmarks"
SHIPPED = sorted(p.name for p in BENCHMARKS.glob("*.yaml"))


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_configs_validate(name, monkeypatch):
    """Every grid in benchmarks/ loads, every entry resolves to a valid training config, and each
    has the full method beside both bounds (supervised on the grid's fraction and on 100%)."""
    monkeypatch.delenv("SEMICML_BRATS18", raising=False)
    cfg = load_benchmark_config(BENCHMARKS / name)
    resolved = [cfg.train_config(e, cfg.seeds[0], None) for e in cfg.methods]
    kinds = {(t.method, t.labeled_fraction) for t in resolved}
    assert {("semicml-prel", cfg.labeled_fraction), ("supervised", cfg.labeled_fraction),
            ("supervised", 1.0)} <= kinds
    assert Path(cfg.out).is_absolute()


def test_shipped_configs_include_the_main_grids():
    assert {"phantom.yaml", "brats18.yaml", "brats18-cv.yaml"} <= set(SHIPPED)


def test_cross_validation_tests_every_patient_once_and_compares_per_patient(grid, tmp_path):
    """2-fold CV on the 6 phantom cases: each labelled case is a test case exactly once per
    method and modality, folds are written, rows pool the folds, the paired table is there."""
    spec = {"store": str(grid["root"] / "store"), "dataset": str(grid["root"] / "data"), "out": str(tmp_path / "cv"),
            "seeds": [0], "labeled_fraction": 0.3, "train": TINY_TRAIN,
            "cross_validation": {"folds": 2, "val_cases": 1}, "reference": "semicml",
            "methods": ["supervised", "semicml"]}
    (tmp_path / "cv.yaml").write_text(yaml.safe_dump(spec))
    cfg = load_benchmark_config(tmp_path / "cv.yaml")
    rows = run_benchmark(cfg, progress=False, echo=lambda line: None)
    out = tmp_path / "cv"
    assert {r["fold"] for r in rows} == {0, 1} and all(r["status"] == "ok" for r in rows)
    folds = [json.loads((out / "splits" / f"fold{k}.json").read_text()) for k in (0, 1)]
    tested = folds[0]["test"] + folds[1]["test"]
    assert sorted(tested) == sorted(f"phantom_{i:03d}" for i in range(6))  # every patient tested once
    for f in folds:
        assert not set(f["test"]) & set(f["train"] + f["val"]) and len(f["val"]) == 1
    with open(out / "cases.csv", newline="") as fh:
        cases = list(csv.DictReader(fh))
    for method in ("supervised", "semicml"):
        for mod in ("T2", "T1ce"):
            got = sorted(c["case"] for c in cases if c["method"] == method and c["modality"] == mod)
            assert got == sorted(tested)
    summary = json.loads((out / "results.json").read_text())
    pooled = summary["summary"]["T2"]["supervised"]["dice"]["mean"]
    by_case = [float(c["dice"]) for c in cases if c["method"] == "supervised" and c["modality"] == "T2"]
    assert pooled == pytest.approx(sum(by_case) / len(by_case))  # the mean over ALL patients of all folds
    paired = [e for e in summary["paired"] if e["metric"] == "dice" and e["modality"] == "T2"]
    assert paired and paired[0]["n_patients"] == 6 and paired[0]["other"] == "supervised"
    sem = {c["case"]: float(c["dice"]) for c in cases if c["method"] == "semicml" and c["modality"] == "T2"}
    sup = {c["case"]: float(c["dice"]) for c in cases if c["method"] == "supervised" and c["modality"] == "T2"}
    assert paired[0]["mean_diff"] == pytest.approx(sum(sem[c] - sup[c] for c in sem) / 6)
    assert paired[0]["ci_low"] <= paired[0]["mean_diff"] <= paired[0]["ci_high"]
    assert "Paired per-patient comparison" in (out / "results.md").read_text()
    # resumed: nothing retrained, same folds
    again = run_benchmark(cfg, progress=False, echo=lambda line: None)
    assert {r["action"] for r in again} == {"skipped"}
    # the grid moved elsewhere (its markers record the old splits/ path): still the same runs
    out.rename(tmp_path / "moved")
    cfg = load_benchmark_config(tmp_path / "cv.yaml").model_copy(update={"out": str(tmp_path / "moved")})
    moved = run_benchmark(cfg, progress=False, echo=lambda line: None)
    assert {r["action"] for r in moved} == {"skipped"} and all(r["status"] == "ok" for r in moved)
    assert all(r["status"] == "ok" for r in report_benchmark(cfg, echo=lambda line: None))
    # ...but runs copied into a grid whose folds hold other patients are not its runs
    import shutil

    shutil.copytree(tmp_path / "moved", tmp_path / "other")
    f0, f1 = (json.loads((tmp_path / "other" / "splits" / f"fold{k}.json").read_text()) for k in (0, 1))
    for k, (a, b) in enumerate(((f0, f1), (f1, f0))):
        swapped = dict(a, test=b["test"], train=sorted(set(a["train"]) - set(b["test"])) + a["test"])
        (tmp_path / "other" / "splits" / f"fold{k}.json").write_text(json.dumps(swapped))
    other = report_benchmark(cfg.model_copy(update={"out": str(tmp_path / "other")}), echo=lambda line: None)
    assert other and all(r["status"].startswith("failed: ") and "splits" in r["status"] for r in other)


def test_cross_validation_and_fixed_splits_are_exclusive(tmp_path):
    with pytest.raises(Exception, match="not both"):
        BenchmarkConfig.model_validate({"store": "s", "dataset": "d", "splits": "x.json", "methods": ["supervised"],
                                        "cross_validation": {"folds": 2}})


def test_parallel_jobs_give_the_serial_results(grid, tmp_path):
    """--jobs 2 (spawned processes) trains the same runs as the serial grid: same labelled subset,
    same metrics up to float reduction order (the workers use fewer threads, recorded in each
    run.json), rows in grid order, the failed run still isolated, and a rerun skips everything."""
    spec = yaml.safe_load(grid["config"].read_text())
    spec.update(store=str(grid["root"] / "store"), dataset=str(grid["root"] / "data"), out=str(tmp_path / "par"))
    (tmp_path / "par.yaml").write_text(yaml.safe_dump(spec))
    cfg = load_benchmark_config(tmp_path / "par.yaml")
    rows = run_benchmark(cfg, progress=False, echo=lambda line: None, jobs=2)
    serial = grid["rows"]
    key = lambda r: (r["method"], r["modality"])  # noqa: E731
    assert [key(r) for r in rows] == [key(r) for r in serial]
    for got, want in zip(rows, serial):
        assert got["status"].split(":")[0] == want["status"].split(":")[0]
        if want["status"] == "ok":
            assert got["dice"] == pytest.approx(want["dice"], abs=1e-4)
            subset = "labeled_subset.json"
            assert (tmp_path / "par" / got["run_dir"] / subset).read_text() == \
                (grid["out"] / want["run_dir"] / subset).read_text()
            compute = json.loads((tmp_path / "par" / got["run_dir"] / "run.json").read_text())["compute"]
            assert compute["threads"] == max(1, (os.cpu_count() or 1) // 2)
    assert {r["action"] for r in run_benchmark(cfg, progress=False, echo=lambda line: None, jobs=2)
            if r["status"] == "ok"} == {"skipped"}
    with pytest.raises(ConfigError, match="--jobs"):
        run_benchmark(cfg, progress=False, jobs=0)
    with pytest.raises(ConfigError, match="--threads"):
        run_benchmark(cfg, progress=False, threads=0)


def test_a_run_recorded_before_a_setting_existed_stands_but_a_real_change_does_not():
    from semicml.benchmark.runner import config_difference
    from semicml.config import build_config

    current = build_config(profile="tiny", overrides={"method": "semicml-prel", "low_resolution": 0.0})
    saved = current.model_dump(mode="json")
    assert config_difference(saved, current) is None
    older = {k: v for k, v in saved.items() if k not in ("low_resolution", "compile")}  # recorded before they existed
    older["semicml"] = {k: v for k, v in saved["semicml"].items() if k != "asc_channels"}
    assert config_difference(older, current) is None
    assert config_difference(dict(older, iterations=saved["iterations"] + 1), current) == (
        f"iterations: {saved['iterations'] + 1} -> {saved['iterations']}")
    assert "low_resolution" in config_difference(dict(saved, low_resolution=0.25), current)
    assert config_difference(dict(saved, retired_setting=1), current) == "retired_setting: 1 -> None"
    assert config_difference(None, current) is not None
    # the default changed since (low_resolution 0 -> 0.25, issue 10): the run recorded before the
    # setting existed did what it meant then (config.BEFORE_IT_EXISTED), so a grid on today's
    # default must retrain it, never re-label it
    today = build_config(profile="tiny", overrides={"method": "semicml-prel"})
    assert today.low_resolution == 0.25
    assert config_difference(older, today) == "low_resolution: 0.0 -> 0.25"
    assert config_difference(dict(older, low_resolution=0.25), today) is None


def test_a_default_that_changed_retrains_the_runs_recorded_before_the_setting(monkeypatch):
    """Had low_resolution existed with P = 0.5 meaning 'before', a record without the key is P = 0.5:
    today's grid (default 0.25) must not take it as its own run, and a grid at 0.5 must."""
    from semicml import config as config_module
    from semicml.benchmark.runner import config_difference
    from semicml.config import build_config

    monkeypatch.setitem(config_module.BEFORE_IT_EXISTED, "low_resolution", 0.5)
    current = build_config(profile="tiny", overrides={"method": "semicml-prel"})
    older = {k: v for k, v in current.model_dump(mode="json").items() if k != "low_resolution"}
    assert config_difference(older, current) == "low_resolution: 0.5 -> 0.25"
    assert config_difference(older, current.model_copy(update={"low_resolution": 0.5})) is None


def test_settings_a_recorded_configuration_predates_keep_their_meaning_then():
    from semicml.config import BEFORE_IT_EXISTED, TrainConfig, with_absent_settings

    recorded = {"iterations": 7, "semicml": {"asc_weight": 1.0}}
    filled = with_absent_settings(recorded)
    assert filled["low_resolution"] == 0.0 and filled["compile"] is False
    assert filled["semicml"]["asc_weight"] == 1.0 and filled["semicml"]["asc_channels"] == "joint"
    assert filled["semicml"]["dice_reduction"] == "slice" and "model" not in filled  # no section invented
    assert recorded == {"iterations": 7, "semicml": {"asc_weight": 1.0}}  # the record itself untouched
    assert with_absent_settings({"low_resolution": 0.25})["low_resolution"] == 0.25  # recorded wins
    for dotted in BEFORE_IT_EXISTED:  # every entry names a real setting
        node = TrainConfig().model_dump()
        for key in dotted.split("."):
            assert key in node, dotted
            node = node[key]


def test_report_only_needs_neither_store_nor_dataset_and_refuses_other_configurations(grid, tmp_path):
    """The grid's finished runs copied elsewhere (no store, no data): --report-only rebuilds the same
    table from their markers; under another budget every finished run is reported as failed."""
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(grid["out"], out)
    for name in ("results.csv", "results.md", "results.json", "cases.csv"):
        (out / name).unlink()
    spec = yaml.safe_load(grid["config"].read_text())
    spec.update(store=str(tmp_path / "gone-store"), dataset=str(tmp_path / "gone-data"), out=str(out))
    (tmp_path / "b.yaml").write_text(yaml.safe_dump(spec))
    result = CliRunner().invoke(app, ["benchmark", str(tmp_path / "b.yaml"), "--report-only", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "2 runs (2 finished earlier, 0 failed)" in result.output  # semicml-all never finished: no marker
    rows = json.loads((out / "results.json").read_text())["rows"]
    before = {(r["method"], r["modality"]): r["dice"] for r in grid["rows"] if r["status"] == "ok"}
    assert {(r["method"], r["modality"]): r["dice"] for r in rows} == before
    assert not (tmp_path / "gone-store").exists() and not (tmp_path / "gone-data").exists()

    spec["train"] = {**TINY_TRAIN, "iterations": 5}
    (tmp_path / "b.yaml").write_text(yaml.safe_dump(spec))
    result = CliRunner().invoke(app, ["benchmark", str(tmp_path / "b.yaml"), "--report-only", "--no-progress"])
    assert result.exit_code == 0, result.output
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert rows and all(r["status"].startswith("failed: ") and "iterations: 4 -> 5" in r["status"] for r in rows)


def test_a_finished_run_is_reported_under_the_grids_name_for_it(grid, tmp_path):
    """Runs moved in from another grid (same configuration, another entry name) are labelled as
    THIS grid names them, never under the name their marker recorded."""
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(grid["out"], out)
    (out / "runs" / "semicml").rename(out / "runs" / "semicml-again")
    spec = yaml.safe_load(grid["config"].read_text())
    spec.update(store=str(tmp_path / "gone-store"), dataset=str(tmp_path / "gone-data"), out=str(out),
                methods=["supervised", {"name": "semicml-again", "method": "semicml"}])
    (tmp_path / "b.yaml").write_text(yaml.safe_dump(spec))
    rows = report_benchmark(load_benchmark_config(tmp_path / "b.yaml"), echo=lambda line: None)
    assert {r["method"] for r in rows} == {"supervised", "semicml-again"} and all(r["status"] == "ok" for r in rows)
    assert {r["run_dir"] for r in rows if r["method"] == "semicml-again"} == {"runs/semicml-again/seed0"}


def test_report_only_without_runs_is_one_line(tmp_path):
    (tmp_path / "b.yaml").write_text(yaml.safe_dump({"out": str(tmp_path / "out"), "store": "s", "dataset": "d",
                                                     "seeds": [0], "methods": ["supervised"]}))
    result = CliRunner().invoke(app, ["benchmark", str(tmp_path / "b.yaml"), "--report-only"])
    assert result.exit_code != 0 and "no run to report (no runs/ folder)" in str(result.exception)


def test_serial_grid_trains_with_the_given_threads_and_gives_the_callers_back(grid, tmp_path):
    import torch

    spec = yaml.safe_load(grid["config"].read_text())
    spec.update(store=str(grid["root"] / "store"), dataset=str(grid["root"] / "data"), out=str(tmp_path / "t1"),
                methods=["supervised"])
    (tmp_path / "t1.yaml").write_text(yaml.safe_dump(spec))
    before = torch.get_num_threads()
    caller = 2 if before == 1 else 1  # not the 3 the grid is given
    torch.set_num_threads(caller)
    try:
        rows = run_benchmark(load_benchmark_config(tmp_path / "t1.yaml"), progress=False, echo=lambda line: None,
                             threads=3)
        assert torch.get_num_threads() == caller
    finally:
        torch.set_num_threads(before)
    info = json.loads((tmp_path / "t1" / rows[0]["run_dir"] / "run.json").read_text())
    assert info["compute"]["threads"] == 3 and {r["train_threads"] for r in rows} == {3}
    result = CliRunner().invoke(app, ["benchmark", str(tmp_path / "t1.yaml"), "--report-only", "--threads", "1"])
    assert result.exit_code != 0 and "--threads" in str(result.exception)


def test_cross_validated_rows_name_each_thread_count_once_and_list_changed_runs():
    from semicml.benchmark.tables import _compute_line, combine_folds

    def part(seed, fold, threads, changes=None):
        return {"method": "m", "modality": "T2", "seed": seed, "fold": fold, "status": "ok", "n_test_cases": 2,
                "seconds": 1.0, "best_val_dice": 0.5, "teacher": None, "run_dir": f"runs/m/seed{seed}/fold{fold}",
                "train_threads": threads, "train_precision": "bf16", "compute_changes": changes,
                **{k: 0.5 for k in ("dice", "jaccard", "hd95", "asd", "precision", "sensitivity", "components")}}

    rows = combine_folds([part(0, 0, 1), part(0, 1, 2, "iteration 10: threads 1 -> 2"), part(1, 0, 1), part(1, 1, 1)], 2)
    assert [r["train_threads"] for r in rows] == ["1,2", "1"]
    line = _compute_line(rows)[0]
    assert line.startswith("Runs trained with 1,2 CPU thread(s) each, precision bf16")
    assert "m seed 0" in line and "m seed 1" not in line
    assert _compute_line([{k: v for k, v in part(0, 0, None).items() if k != "train_precision"}]) == []
