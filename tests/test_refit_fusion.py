"""benchmarks/refit_fusion.py: a run trained before fusion weights existed gets them chosen from
its own validation cases, the rest of its record untouched; the fused prediction then uses them."""

from __future__ import annotations

import importlib.util
import json

import pytest

from conftest import REPO_ROOT
from semicml.config import build_config
from semicml.data.phantom import write_phantom
from semicml.data.store import PrepareOptions, prepare_store
from semicml.engine.trainer import Trainer
from semicml.errors import DataError
from semicml.inference.fusion import predict_fused

_spec = importlib.util.spec_from_file_location("refit_fusion", REPO_ROOT / "benchmarks" / "refit_fusion.py")
refit_fusion = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(refit_fusion)


@pytest.mark.slow
@pytest.mark.parametrize("target, channels", [("wt", 1), ("regions", 3)])
def test_refit_records_weights_per_channel_and_predict_applies_them(tmp_path, target, channels):
    write_phantom(tmp_path / "data", cases=6, seed=0, shape=(32, 32, 16))
    store = prepare_store(tmp_path / "data", tmp_path / "store",
                          PrepareOptions(modalities=("T2", "T1ce"), size=32, target=target, workers=1), progress=False)
    cfg = build_config(profile="tiny", overrides={"method": "semicml", "device": "cpu", "precision": "fp32",
                                                  "val_fraction": 0.2, "test_fraction": 0.2})
    run = tmp_path / "run"
    Trainer(cfg, store, run, progress=False).fit()
    info = json.loads((run / "run.json").read_text())
    assert info["postprocessing_fused"]["T2+T1ce"]["weights_chosen"]  # training chose them already
    old = dict(info, postprocessing_fused={"T2+T1ce": {"choice": info["postprocessing_fused"]["T2+T1ce"]["choice"],
                                                       "chosen_by": "validation"}})  # as recorded before
    (run / "run.json").write_text(json.dumps(old))

    fused, regions = refit_fusion.refit(run)
    assert regions == (["wt", "tc", "et"] if target == "regions" else [])
    rec = fused["T2+T1ce"]
    assert set(rec["weights"]) == {"T2", "T1ce"} and all(len(w) == channels for w in rec["weights"].values())
    for c in range(channels):  # each channel: the mean (1/2 each) or one network alone (1 and 0)
        assert sorted(rec["weights"][m][c] for m in ("T2", "T1ce")) in ([0.5, 0.5], [0.0, 1.0])
        assert set(rec["weights_val_dice"][c]) == {"mean", "T2", "T1ce"}
    assert rec == info["postprocessing_fused"]["T2+T1ce"]  # the same choice as at training end
    now = json.loads((run / "run.json").read_text())
    assert {k: v for k, v in now.items() if k != "postprocessing_fused"} == {
        k: v for k, v in info.items() if k != "postprocessing_fused"}

    out = tmp_path / "fused"
    predict_fused(run, ["T2", "T1ce"], tmp_path / "data", out, device="cpu", progress=False)
    record = json.loads((out / "predict.json").read_text())
    assert all(c["weights"] == rec["weights"] for c in record["cases"].values())

    plain, _ = refit_fusion.refit(run, plain_mean=True)  # the behaviour before weights, for comparisons
    assert "weights" not in plain["T2+T1ce"] and plain["T2+T1ce"]["chosen_by"] == "validation"
    predict_fused(run, ["T2", "T1ce"], tmp_path / "data", tmp_path / "mean", device="cpu", progress=False)
    record = json.loads((tmp_path / "mean" / "predict.json").read_text())
    assert all(c["weights"] == "mean" for c in record["cases"].values())


def test_refit_names_a_folder_that_is_not_a_finished_run(tmp_path):
    with pytest.raises(DataError, match="no run.json"):
        refit_fusion.refit(tmp_path)


def test_reset_drops_only_the_fused_rows_and_folders(tmp_path):
    run = tmp_path / "run"
    for part in ("predictions", "evaluation"):
        for name in ("T2", "T2+T1ce"):
            (run / "eval" / part / name).mkdir(parents=True)
    rows = [{"modality": m, "dice": 0.5} for m in ("T2", "T1ce", "T2+T1ce")]
    (run / "result.json").write_text(json.dumps({"name": "x", "rows": rows}))
    assert refit_fusion.reset_fused_evaluation(run) == 1
    assert json.loads((run / "result.json").read_text()) == {"name": "x", "rows": rows[:2]}
    assert sorted(p.name for p in (run / "eval" / "predictions").iterdir()) == ["T2"]
    assert sorted(p.name for p in (run / "eval" / "evaluation").iterdir()) == ["T2"]
    assert refit_fusion.reset_fused_evaluation(tmp_path / "elsewhere") == 0
