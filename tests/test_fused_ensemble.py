"""Fused prediction from several runs (``predict --run A --run B --modality t2,t1ce``): each
modality's probability is the mean of its networks in the runs, and the fusion weights and
post-processing are what most runs recorded. Stub networks (logit = a x + b of the normalised
input) make every probability known.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from semicml.inference.fusion import ensemble_fused_choice, predict_fused, weights_of_members
from semicml.inference.predict import predict_cases

from test_ensemble import probabilities
from test_fusion import PREP, dataset, load, stubs  # noqa: F401  (fixtures)


def make_run(tmp_path: Path, name: str, nets: dict[str, tuple], weights: dict | None = None,
             choice: str = "none", post: str = "none") -> Path:
    run = tmp_path / name
    (run / "weights").mkdir(parents=True)
    for m, spec in nets.items():
        torch.save({"format": "semicml-weights-v1", "modality": m, "network": {"stub": spec}, "state_dict": {},
                    "preprocessing": PREP, "postprocessing": post}, run / "weights" / f"{m}.pt")
    record = {"choice": choice, "chosen_by": "validation", **({"weights": weights} if weights else {})}
    info = {"modalities": list(nets), "postprocessing_fused": {"+".join(nets): record}}
    (run / "run.json").write_text(json.dumps(info))
    return run


def test_two_runs_fuse_the_mean_of_each_modality_with_the_weights_both_recorded(tmp_path, dataset):  # noqa: F811
    # both runs trust T1ce alone: the fused map is the T1ce ensemble's, not a run's, not the T2 one's
    t1ce_only = {"T2": [0.0], "T1ce": [1.0]}
    a = make_run(tmp_path, "a", {"T2": ("pointwise", 2.0, -0.5), "T1ce": ("pointwise", -1.5, 0.8)}, t1ce_only)
    b = make_run(tmp_path, "b", {"T2": ("pointwise", 1.0, 0.0), "T1ce": ("pointwise", 0.7, -0.3)}, t1ce_only)
    ens = tmp_path / "t1ce-ensemble"
    predict_cases([a, b], "T1ce", dataset, ens, device="cpu", save_probabilities=True, progress=False)
    alone = tmp_path / "t1ce-a"
    predict_cases(a, "T1ce", dataset, alone, device="cpu", save_probabilities=True, progress=False)
    out = tmp_path / "fused"
    predict_fused([a, b], ["t2", "t1ce"], dataset, out, device="cpu", save_probabilities=True, progress=False)
    for case in ("a", "b"):
        got = probabilities(out, case)
        assert np.allclose(got, probabilities(ens, case), atol=1e-6)
        assert np.abs(got - probabilities(alone, case)).max() > 0.05  # run b's networks count
    record = json.loads((out / "predict.json").read_text())
    assert record["run"] == [str(a), str(b)]
    assert record["cases"]["a"]["weights"] == t1ce_only  # the runs' spelling


def test_the_runs_disagree_on_the_fusion_the_majority_decides_channel_by_channel():
    first = {"t2": [1.0, 0.5, 1.0], "t1ce": [0.0, 0.5, 0.0]}
    third = {"t2": [1.0, 0.0, 0.0], "t1ce": [0.0, 1.0, 1.0]}
    # channel 0: T2 alone twice; channel 1: the mean (a run without a record votes for it) twice;
    # channel 2: one vote each, the earliest run's wins
    got = weights_of_members([first, None, third], ["t2", "t1ce"], channels=3)
    assert got == {"t2": [1.0, 0.5, 1.0], "t1ce": [0.0, 0.5, 0.0]}
    assert weights_of_members([None, None], ["t2", "t1ce"], channels=1) is None  # the plain mean, as before


def test_fused_post_processing_of_an_ensemble_is_the_runs_majority():
    infos = [{"modalities": ["T2", "T1ce"], "postprocessing_fused": {"T2+T1ce": {"choice": c}}}
             for c in ("none", "largest", "largest")]
    stored = [{"T2": "none", "T1ce": "none"}] * 3
    post, why, weights = ensemble_fused_choice(infos, ["T2", "T1ce"], stored, channels=1)
    assert post == "largest" and "most runs" in why and weights is None
    post, why, _ = ensemble_fused_choice(infos[1:], ["T2", "T1ce"], stored[1:], channels=1)
    assert post == "largest" and why == "chosen on validation for T2+T1ce (2 runs)"
    # one run: exactly the single-run rule
    assert ensemble_fused_choice(infos[:1], ["T2", "T1ce"], stored[:1], 1)[:2] == (
        "none", "chosen on validation for T2+T1ce")


def test_a_fused_ensemble_member_that_is_not_a_run_directory_is_refused(tmp_path, dataset):  # noqa: F811
    from semicml.errors import DataError

    a = make_run(tmp_path, "a", {"T2": ("pointwise", 2.0, -0.5), "T1ce": ("pointwise", -1.5, 0.8)})
    with pytest.raises(DataError, match="needs a run directory"):
        predict_fused([a, a / "weights" / "T2.pt"], ["t2", "t1ce"], dataset, tmp_path / "out", device="cpu",
                      progress=False)
    assert not (tmp_path / "out").exists()


def test_runs_that_disagree_or_spell_modalities_otherwise_fuse_by_majority(tmp_path, dataset):  # noqa: F811
    # two of three runs trust T1ce alone and chose `largest`; run b spells its modalities t2 / t1ce
    a = make_run(tmp_path, "a", {"T2": ("pointwise", 2.0, -0.5), "T1ce": ("pointwise", -1.5, 0.8)},
                 {"T2": [0.0], "T1ce": [1.0]}, choice="none")
    b = make_run(tmp_path, "b", {"t2": ("pointwise", 1.0, 0.0), "t1ce": ("pointwise", 0.7, -0.3)},
                 {"t2": [0.0], "t1ce": [1.0]}, choice="largest")
    c = make_run(tmp_path, "c", {"T2": ("pointwise", 0.5, 0.1), "T1ce": ("pointwise", 1.2, 0.4)},
                 {"T2": [1.0], "T1ce": [0.0]}, choice="largest")
    ens = tmp_path / "t1ce-ensemble"
    predict_cases([a, b, c], "T1ce", dataset, ens, device="cpu", save_probabilities=True, progress=False)
    out = tmp_path / "fused"
    predict_fused([a, b, c], ["t2", "t1ce"], dataset, out, device="cpu", save_probabilities=True, progress=False)
    for case in ("a", "b"):
        assert np.allclose(probabilities(out, case), probabilities(ens, case), atol=1e-6)
    record = json.loads((out / "predict.json").read_text())["cases"]["a"]
    assert record["weights"] == {"T2": [0.0], "T1ce": [1.0]} and record["postprocessing"] == "largest"
    assert "most runs" in record["postprocessing_from"]


def test_a_member_with_a_corrupt_run_json_is_one_data_error(tmp_path, dataset):  # noqa: F811
    from semicml.errors import DataError

    nets = {"T2": ("pointwise", 2.0, -0.5), "T1ce": ("pointwise", -1.5, 0.8)}
    a, b = make_run(tmp_path, "a", nets), make_run(tmp_path, "b", nets)
    (b / "run.json").write_text("{not json")
    with pytest.raises(DataError, match="run.json is not valid JSON") as err:
        predict_fused([a, b], ["t2", "t1ce"], dataset, tmp_path / "out", device="cpu", progress=False)
    assert err.value.path == b / "run.json" and not (tmp_path / "out").exists()
