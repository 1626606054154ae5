"""The benchmark's `prepare` section: what it hands to `prepare_store` (normalisation by channel name,
spacing, CT/PET statistics without test labels) and that folders prepared before the newer keys resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from semicml.benchmark import BenchmarkConfig
from semicml.benchmark import runner
from semicml.errors import ConfigError


def _cfg(tmp_path: Path, prepare: dict, splits: dict | None = None) -> BenchmarkConfig:
    spec = {"out": str(tmp_path / "out"), "dataset": str(tmp_path / "data"), "methods": ["supervised"],
            "prepare": {"modalities": ["CT", "PT"], "size": 64, **prepare}}
    if splits is not None:
        (tmp_path / "splits.json").write_text(json.dumps(splits))
        spec["splits"] = str(tmp_path / "splits.json")
    return BenchmarkConfig.model_validate(spec)


@pytest.fixture
def captured(monkeypatch):
    import semicml.data.store as store_mod

    got = {}
    monkeypatch.setattr(store_mod, "prepare_store", lambda dataset, store, opts, **kw: got.update(opts=opts))
    return got


def _run(cfg: BenchmarkConfig, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    runner._prepare(cfg, out, tmp_path / "data", out / "store", False, lambda s: None)


def test_fixed_split_keeps_test_labels_out_of_the_statistics(tmp_path, captured):
    splits = {"train": ["a", "b"], "val": ["c"], "test": ["d"]}
    _run(_cfg(tmp_path, {"normalisation": "CT=ct,PT=pet", "spacing": 1.5}, splits), tmp_path)
    opts = captured["opts"]
    assert opts.stats_cases == ("a", "b", "c")
    assert opts.normalisation == {"CT": "ct", "PT": "pet"} and opts.spacing == 1.5


def test_defaults_are_prepares_own(tmp_path, captured):
    _run(_cfg(tmp_path, {}), tmp_path)
    opts = captured["opts"]
    assert (opts.normalisation, opts.spacing, opts.stats_cases) == ("auto", "median", None)


@pytest.mark.parametrize("prepare, expected", [({"normalisation": "zscor"}, "unknown normalisation 'zscor'"),
                                               ({"normalisation": "CT=hu"}, "unknown normalisation 'hu'"),
                                               ({"spacing": 0}, "spacing must be positive"),
                                               ({"spacing": "finest"}, "spacing")])
def test_bad_prepare_values_are_refused(tmp_path, prepare, expected):
    with pytest.raises(Exception, match=expected):
        _cfg(tmp_path, prepare)


def test_a_folder_prepared_before_spacing_existed_resumes_but_a_real_change_is_refused(tmp_path, captured):
    cfg = _cfg(tmp_path, {"normalisation": "zscore_nonzero"})
    out = tmp_path / "out"
    out.mkdir()
    prep = cfg.prepare.model_dump(mode="json")
    prep.pop("spacing")  # written by the runner before the key existed
    intent = {"prepare": prep, "dataset": str(tmp_path / "data"), "store": str(out / "store")}
    (out / "prepare.json").write_text(json.dumps(intent))
    _run(cfg, tmp_path)  # no error: the old folder was made at the median spacing
    with pytest.raises(ConfigError, match="spacing"):
        _run(_cfg(tmp_path, {"normalisation": "zscore_nonzero", "spacing": 1.0}), tmp_path)
