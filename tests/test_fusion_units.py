"""Fused prediction piece by piece (issue 14, the survivors of mutmut over ``inference/fusion.py``):
every argument check with its exact message and nothing written, the defaults seen through the
files and the record, engine / device / threads / compile reaching the loader, the run's spelling
of the modalities reaching the per-modality normalisation and ``run.json``, window / margin / tta
reaching every network, ``align_to_grid`` against hand-computed grids, ``fused_postprocess``'s
fallbacks and their reasons, ``threshold_masks`` with spacing-dependent min-size for 3D to 5D.

Stub networks, runs and cases come from ``test_fusion.py``.
"""

from __future__ import annotations

import json
import os

import nibabel as nib
import numpy as np
import pytest
import torch
from test_fusion import POINTWISE, PREP, REGIONS, SHAPE, HalfPlane, dataset, load, make_run, stubs, write_case  # noqa: F401 (fixtures)

import semicml.inference.fusion as fusion_mod
from semicml.errors import BusyError, ConfigError, DataError
from semicml.inference.fusion import (
    align_to_grid,
    choose_fused_postprocessing,
    fused_postprocess,
    fused_weights,
    predict_fused,
    threshold_masks,
)
from semicml.inference.fusion_weights import choose_weights, weighted_sum
from semicml.locking import exclusive
from semicml.inference.predict import predict_cases

CPU = torch.device("cpu")


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-np.asarray(x, np.float64)))


# ------------------------------------------------------------------------------ argument checks
@pytest.mark.parametrize("kwargs, error, message", [
    ({"modalities": ["t2"]}, ConfigError, "fused prediction needs two or more modalities, e.g. --modality t2,t1ce"),
    ({"missing": "ignore"}, ConfigError, "--missing-modality must be one of error, skip, not 'ignore'"),
    ({"window": "box"}, ConfigError, "unknown window 'box' (choose from whole, brain)"),
    ({"margin": -1}, ConfigError, "--margin must be >= 0, got -1"),
    ({"engine": "onnxruntime", "device": "cuda"}, ConfigError,
     "--engine onnxruntime runs on the CPU; --device cuda needs --engine torch"),
    ({"engine": "openvino", "device": "cuda:1"}, ConfigError,
     "--engine openvino runs on the CPU; --device cuda:1 needs --engine torch"),
    ({"regions_as_files": True}, ConfigError,
     "--regions-as-files needs a network trained on a region target (--target regions)"),
    ({"engine": "onnxruntime", "compile": True}, ConfigError,
     "--compile applies to --engine torch (the onnxruntime engine compiles the graph itself)"),
])
def test_argument_checks_are_exact_one_line_errors_before_anything_is_written(tmp_path, dataset, kwargs, error,
                                                                               message):
    run = make_run(tmp_path, POINTWISE)
    out = tmp_path / "fused"
    args = {"modalities": ["t2", "t1ce"], "device": "cpu", "progress": False, **kwargs}
    with pytest.raises(error) as err:
        predict_fused(run, args.pop("modalities"), dataset, out, **args)
    assert str(err.value) == message and err.value.path is None
    assert not out.exists()


def test_a_run_that_is_not_a_directory_is_named(tmp_path, dataset):
    run = make_run(tmp_path, POINTWISE)
    weights = run / "weights" / "T2.pt"  # a file: one network, not the run's set
    out = tmp_path / "fused"
    with pytest.raises(DataError) as err:
        predict_fused(weights, ["t2", "t1ce"], dataset, out, device="cpu", progress=False)
    assert err.value.path == weights
    assert str(err.value) == f"{weights}: fused prediction needs a run directory (one network per modality)"
    assert not out.exists()


# ------------------------------------------------------------------------------ defaults and the record
def test_defaults_write_only_the_masks_and_the_record_with_a_progress_bar(tmp_path, dataset, capsys):
    run = make_run(tmp_path, POINTWISE)
    out = tmp_path / "fused"
    written = predict_fused(run, ["t2", "t1ce"], dataset, out)  # device "auto": the CPU here
    assert written == [out / "a.nii.gz", out / "b.nii.gz"]
    assert sorted(p.name for p in out.iterdir()) == ["a.nii.gz", "b.nii.gz", "predict.json"]  # no _prob, no _unc.
    case = {"modalities": ["t2", "t1ce"], "reference_grid": "t2", "postprocessing": "none",
            "postprocessing_from": "no fused choice recorded", "weights": "mean", "missing": {},
            "coarse_inputs": {}, "constant_inputs": {}}
    assert json.loads((out / "predict.json").read_text()) == {
        "run": str(run), "modalities": ["t2", "t1ce"], "fused": True, "input": str(dataset), "regions": None,
        "engine": "torch", "window": "whole", "margin": 0, "threshold": 0.5, "tta": False, "uncertainty": None,
        "missing_policy": "error", "cases": {c: {"masks": [f"{c}.nii.gz"], **case} for c in ("a", "b")}}
    err = capsys.readouterr().err  # the bar is on by default, counting cases
    assert "predict t2+t1ce" in err and ("case/s" in err or "s/case" in err)
    assert predict_fused(run, ["t2", "t1ce"], dataset, out, device="cpu", progress=False) == written  # again
    assert "predict" not in capsys.readouterr().err


def test_a_busy_output_folder_is_refused_before_anything_is_written(tmp_path, dataset):
    run = make_run(tmp_path, POINTWISE)
    out = tmp_path / "fused"
    with exclusive(out, "another writer"), pytest.raises(BusyError) as err:
        predict_fused(run, ["t2", "t1ce"], dataset, out, device="cpu", progress=False)
    assert str(err.value) == (f"{out}: prediction folder is in use by another semicml process (PID {os.getpid()}, "
                              "lock .fused.lock); wait for it to finish or stop it")
    assert not out.exists()


def test_region_record_and_a_bad_postprocess_before_anything_is_written(tmp_path, dataset):
    run = make_run(tmp_path, {"T2": ("regions", 2.0, 1.5), "T1ce": ("regions", -1.5, 2.5)}, target=REGIONS,
                   postprocessing={"wt": "none", "tc": "largest", "et": "none"})
    out = tmp_path / "fused"
    with pytest.raises(DataError) as err:
        predict_fused(run, ["T2", "T1ce"], dataset, out, device="cpu", progress=False, postprocess="biggest")
    assert str(err.value) == "unknown post-processing 'biggest' (none, largest, min-size:<mm^3>, near:<mm>, or near:<mm>+min-size:<mm^3>)"
    assert not out.exists()
    predict_fused(run, ["T2", "T1ce"], dataset, out, device="cpu", progress=False, regions_as_files=True,
                  cases=["b"], postprocess="min-size:5")
    record = json.loads((out / "predict.json").read_text())
    assert record["regions"] == {"classes": ["wt", "tc", "et"], "values": [[1, 2, 4], [1, 4], [4]], "as_files": True}
    assert record["cases"]["b"]["masks"] == ["wt/b.nii.gz", "tc/b.nii.gz", "et/b.nii.gz"]
    assert record["cases"]["b"]["postprocessing"] == {"wt": "min-size:5", "tc": "min-size:5", "et": "min-size:5"}
    assert record["cases"]["b"]["postprocessing_from"] == "given by the user"


# ------------------------------------------------------------------------------ cases and missing files
def test_asked_cases_must_exist_and_only_their_missing_files_count(tmp_path, dataset):
    run = make_run(tmp_path, POINTWISE)
    out = tmp_path / "fused"
    with pytest.raises(DataError) as err:
        predict_fused(run, ["t2", "t1ce"], dataset, out, device="cpu", progress=False, cases=["zz"])
    assert err.value.path == dataset and str(err.value) == f"{dataset}: case 'zz' with any of t2, t1ce not found"
    assert not out.exists()
    (dataset / "b" / "b_t1ce.nii.gz").unlink()
    assert predict_fused(run, ["t2", "t1ce"], dataset, out, device="cpu", progress=False, cases=["a"]) == [
        out / "a.nii.gz"]  # b's missing file is not asked for
    assert json.loads((out / "predict.json").read_text())["cases"]["a"]["missing"] == {}


@pytest.mark.parametrize("gone, more", [(["a/a_t1ce"], ""), (["a/a_t1ce", "b/b_t2"], " (1 more files missing)")])
def test_missing_files_are_one_exact_line_naming_the_first(tmp_path, dataset, gone, more):
    run = make_run(tmp_path, POINTWISE)
    for g in gone:
        (dataset / f"{g}.nii.gz").unlink()
    first = dataset / f"{gone[0]}.nii.gz"
    out = tmp_path / "fused"
    with pytest.raises(DataError) as err:
        predict_fused(run, ["t2", "t1ce"], dataset, out, device="cpu", progress=False)
    assert err.value.path == first
    assert str(err.value) == (f"{first}: case 'a' has no t1ce image for the fused prediction{more}; add it, or "
                              "predict from the modalities each case has with --missing-modality skip")
    assert not out.exists()


# ------------------------------------------------------------------------------ engine and device
def test_engine_device_precision_threads_and_compile_reach_the_loader(tmp_path, dataset, monkeypatch):
    """A non-torch engine resolves the CPU whatever ``device`` says (auto or cpu); torch resolves
    ``device`` itself (cuda included: resolved by the spy here, as on a GPU host)."""
    run = make_run(tmp_path, POINTWISE)
    seen: list = []
    real_load = fusion_mod.load_models

    def resolve(name):
        seen.append(name)
        return CPU

    def load(*args, **kwargs):
        seen.append((args[1:], kwargs))
        return real_load(args[0], args[1], "torch", CPU, "fp32")

    monkeypatch.setattr(fusion_mod, "resolve_device", resolve)
    monkeypatch.setattr(fusion_mod, "load_models", load)
    for k, (engine, device, resolved) in enumerate((("onnxruntime", "auto", "cpu"), ("openvino", "cpu", "cpu"),
                                                    ("torch", "cuda", "cuda"), ("torch", "auto", "auto"))):
        seen.clear()
        out = tmp_path / f"o{k}"
        compile = engine == "torch"  # --compile is for the torch engine only
        predict_fused(run, ["T2", "T1ce"], dataset, out, device=device, engine=engine, precision="bf16", threads=3,
                      compile=compile, progress=False, cases=["a"])
        assert seen == [resolved] + [((m, engine, CPU, "bf16", 3, compile), {}) for m in ("T2", "T1ce")]
        assert json.loads((out / "predict.json").read_text())["engine"] == engine
    seen.clear()
    predict_fused(run, ["T2", "T1ce"], dataset, tmp_path / "defaults", progress=False, cases=["a"])
    assert seen == ["auto"] + [((m, "torch", CPU, "auto", None, False), {}) for m in ("T2", "T1ce")]


# ------------------------------------------------------------------------------ what reaches each network
PER_MODALITY = {"in_plane": "crop", "size": 16, "normalisation": {"T2": {"scheme": "mri"}, "T1ce": {"scheme": "none"}}}


def small_body(root):
    """One case, 32 x 32 planes, a 6 x 6 body in the middle: a brain window narrower than the plane."""
    rng = np.random.default_rng(3)
    body = np.zeros((32, 32, 4), np.float32)
    body[12:18, 12:18, 1:3] = 1.0
    write_case(root, "a", {m: body * rng.uniform(1, 3, body.shape).astype(np.float32) for m in ("t2", "t1ce")})
    return root


def test_the_runs_modality_window_and_margin_reach_every_network(tmp_path):
    """T2 z-scored, T1ce raw (a lookup by another name fails or normalises wrongly); window brain
    with margin 2: the 6-pixel body widened to 10 and rounded up to 16 pixels (rows / columns
    7..22), outside of which every network says 0. The fused map, with and without the flip
    members of ``uncertainty``, is the mean of the single predictions made the same way."""
    root = small_body(tmp_path / "in")
    run = make_run(tmp_path, POINTWISE, preprocessing=PER_MODALITY)  # weights spell T2, T1ce
    single = {}
    for m in ("T2", "T1ce"):
        out = tmp_path / f"single_{m}"
        predict_cases(run, m, root, out, device="cpu", window="brain", margin=2, save_probabilities=True,
                      progress=False)
        single[m] = load(out / "a_prob.nii.gz")[0]
    raw = np.asarray(nib.load(str(root / "a" / "a_t1ce.nii.gz")).dataobj)
    a, b = POINTWISE["T1ce"][1:]
    window = np.zeros((32, 32), bool)
    window[7:23, 7:23] = True
    for z in (1, 2):  # by hand: T1ce's raw intensity (scheme none) inside the window, 0 outside it
        np.testing.assert_allclose(single["T1ce"][..., z], np.where(window, sigmoid(a * raw[..., z] + b), 0.0),
                                   atol=1e-6)
    assert np.all(single["T1ce"][..., (0, 3)] == 0)  # empty slices
    want = (single["T2"].astype(np.float64) + single["T1ce"]) / 2
    for uncertainty in (False, True):
        out = tmp_path / f"fused_{uncertainty}"
        predict_fused(run, ["t2", "t1ce"], root, out, device="cpu", window="brain", margin=2,
                      uncertainty=uncertainty, save_probabilities=True, progress=False)
        np.testing.assert_allclose(load(out / "a_prob.nii.gz")[0], want, atol=1e-6)
        maps = ["a_prob.nii.gz"] + ["a_uncertainty.nii.gz"] * uncertainty
        assert [nib.load(str(out / f)).get_data_dtype() for f in maps] == [np.float32] * len(maps)  # not float64
        record = json.loads((out / "predict.json").read_text())
        assert (record["window"], record["margin"], record["tta"], record["uncertainty"]) == (
            "brain", 2, uncertainty, "flip-std" if uncertainty else None)


def test_tta_reaches_every_network(tmp_path, dataset):
    """Half-plane networks: +3 in one half of the plane, -3 in the other; the four flips average
    to exactly 0.5 on every predicted slice (sigmoid(3) and sigmoid(-3) alone without --tta)."""
    run = make_run(tmp_path, {"T2": ("halfplane",), "T1ce": ("halfplane",)})
    probs = {}
    for tta in (False, True):
        out = tmp_path / f"tta_{tta}"
        predict_fused(run, ["T2", "T1ce"], dataset, out, device="cpu", tta=tta, save_probabilities=True,
                      progress=False, cases=["a"])
        probs[tta] = load(out / "a_prob.nii.gz")[0][..., 1:5]  # the slices with a body
    np.testing.assert_allclose(probs[True], 0.5, atol=1e-6)
    assert np.isclose(probs[False].max(), sigmoid(3.0), atol=1e-6) and np.isclose(probs[False].min(), sigmoid(-3.0),
                                                                                   atol=1e-6)


# ------------------------------------------------------------------------------ run.json and stored choices
def test_post_processing_from_run_json_and_the_weights_by_the_runs_spelling(tmp_path, dataset):
    """The user types t2,t1ce; the run spells T2, T1ce (weights and run.json). Case b lacks T1ce
    (skipped): T2's own stored choice. Without a fused record: that of T1ce, the best on validation."""
    nets = {"T2": ("pointwise", 3.0, -2.0), "T1ce": ("pointwise", 2.5, -1.5)}  # speckled masks: islands
    make_run(tmp_path, {"T2": nets["T2"]}, postprocessing="largest")
    info = {"modalities": ["T2", "T1ce", "FLAIR"], "best_val": {"T2": {"dice": 0.6}, "T1ce": {"dice": 0.8}},
            "postprocessing_fused": {"T2+T1ce": {"choice": "min-size:7"}}}
    run = make_run(tmp_path, {"T1ce": nets["T1ce"]}, info, postprocessing="min-size:3")
    (dataset / "b" / "b_t1ce.nii.gz").unlink()

    def chosen(out):
        cases = json.loads((out / "predict.json").read_text())["cases"]
        return {c: (v["postprocessing"], v["postprocessing_from"]) for c, v in cases.items()}

    out = tmp_path / "f1"
    predict_fused(run, ["t2", "t1ce"], dataset, out, device="cpu", missing="skip", progress=False,
                  save_probabilities=True)
    assert chosen(out) == {"a": ("min-size:7", "chosen on validation for T2+T1ce"),
                           "b": ("largest", "stored with the T2 network")}
    prob, mask = load(out / "a_prob.nii.gz")[0], nib.load(str(out / "a.nii.gz"))
    assert mask.get_data_dtype() == np.uint8
    want = threshold_masks(prob, 0.5, "min-size:7", (1.0, 1.0, 2.0))  # 2 mm^3 voxels: islands of 1-3 go
    assert np.array_equal(np.asarray(mask.dataobj), want) and not np.array_equal(want, prob > 0.5)
    del info["postprocessing_fused"]
    (run / "run.json").write_text(json.dumps(info))
    predict_fused(run, ["t2", "t1ce"], dataset, tmp_path / "f2", device="cpu", progress=False, cases=["a"])
    assert chosen(tmp_path / "f2") == {"a": ("min-size:3", "no fused choice recorded: that of T1ce (best validation "
                                                           "Dice)")}
    info["postprocessing_fused"] = {"T2+T1ce": {"choice": "biggest"}}  # a corrupt record: one line, no traceback
    (run / "run.json").write_text(json.dumps(info))
    with pytest.raises(DataError) as err:
        predict_fused(run, ["t2", "t1ce"], dataset, tmp_path / "f3", device="cpu", progress=False, cases=["a"])
    assert str(err.value) == "unknown post-processing 'biggest' (none, largest, min-size:<mm^3>, near:<mm>, or near:<mm>+min-size:<mm^3>)"


def test_fused_postprocess_fallbacks_and_their_reasons():
    stored = {"T2": "largest", "T1ce": "min-size:1000", "FLAIR": "none"}
    fused = {"T2+T1ce": {"choice": "min-size:100"}}
    # run.json lists none of the used names: the set is named in the given order
    assert fused_postprocess({"modalities": ["PD"], "postprocessing_fused": fused}, ["T2", "T1ce"], stored) == (
        "min-size:100", "chosen on validation for T2+T1ce")
    # one network keeps its own choice, or none when its weights stored none
    assert fused_postprocess({}, ["T2"], stored) == ("largest", "stored with the T2 network")
    assert fused_postprocess({}, ["PD"], stored) == ("none", "stored with the PD network")
    # the best validation Dice wins, not the last name or the first listed (T1ce: 0.8 beside 0.7, 0.75)
    best = {"best_val": {"T2": {"dice": 0.7}, "T1ce": {"dice": 0.8}, "FLAIR": {"dice": 0.75}}}
    assert fused_postprocess(best, ["T2", "T1ce", "FLAIR"], stored) == (
        "min-size:1000", "no fused choice recorded: that of T1ce (best validation Dice)")
    assert fused_postprocess(best, ["T2", "T1ce", "FLAIR"], {"T2": "largest"}) == (
        "none", "no fused choice recorded: that of T1ce (best validation Dice)")


def test_fused_choices_are_made_for_every_subset_up_to_four_modalities_from_the_mean():
    """2 to 4 modalities: every subset of two or more (1, 4, 11 of them); 5: only all together.
    ``choose`` sees, per validation case, the mean of the subset's maps (every map below the
    threshold and no tumour: each candidate scores alike, and the tie goes to the mean)."""
    maps = {m: [np.full((2, 2, 2), v / 4 + k / 100, np.float32) for k in range(2)] for m, v in
            zip("ABCDE", (0.1, 0.2, 0.4, 0.8, 1.6))}
    seen = {}

    def choose(probs, labels, spacings):
        key = round(float(probs[0].mean()), 6)
        seen[key] = [p.copy() for p in probs]
        return {"choice": "largest", "labels": len(labels), "spacings": spacings}

    labels, spacings = [np.zeros((2, 2, 2))] * 2, [(1.0, 1.0, 1.0)] * 2
    assert choose_fused_postprocessing({"A": maps["A"]}, labels, spacings) == {}
    for n, count in ((2, 1), (3, 4), (4, 11), (5, 1)):
        got = choose_fused_postprocessing({m: maps[m] for m in "ABCDE"[:n]}, labels, spacings, choose=choose)
        assert len(got) == count and all({k: v[k] for k in ("choice", "labels", "spacings", "chosen_by")} == {
            "choice": "largest", "labels": 2, "spacings": spacings, "chosen_by": "validation"} for v in got.values())
        assert all(v["weights_chosen"] == ["mean", "mean"] for v in got.values())
    assert "A+B+C+D+E" in got and "A+C+D" not in choose_fused_postprocessing(
        {m: maps[m] for m in "ABCDE"}, labels, spacings, fixed="none")
    acd = seen[round((0.1 + 0.4 + 0.8) / 12, 6)]  # A+C+D: the mean per case (case 1: each map + 0.01)
    np.testing.assert_allclose(acd[1], (0.1 + 0.4 + 0.8) / 12 + 0.01, atol=1e-6)
    assert choose_fused_postprocessing({m: maps[m] for m in "ABCD"}, labels, spacings, fixed="min-size:5")[
        "B+D"] == {"choice": "min-size:5", "chosen_by": "config"}


# ------------------------------------------------------------------------------ align_to_grid by hand
P = np.array([0.0, 0.0, 1.0, 0.0, 0.4, 0.8], np.float32)  # along x; y, z: 2 x 2 copies


def along_x(values) -> np.ndarray:
    return np.repeat(np.repeat(np.asarray(values, np.float32)[:, None, None], 2, 1), 2, 2)


def shifted(dx: float, scale: float = 1.0) -> np.ndarray:
    a = np.eye(4)
    a[0, 0], a[0, 3] = scale, dx
    return a


def test_align_to_grid_same_grid_within_its_tolerance_is_returned_as_is():
    p = along_x(P)
    assert align_to_grid(p, shifted(5e-5), p.shape, np.eye(4)) is p  # within atol 1e-4: the same grid
    t = 2e-4  # beyond it: resampled; ref voxel i sits at input index i - t
    out = align_to_grid(p, shifted(t), p.shape, np.eye(4))
    want = along_x(np.concatenate([P[:1], P[1:] * (1 - t) + P[:-1] * t]))  # voxel 0: the edge value
    assert out is not p and out.dtype == np.float32
    np.testing.assert_allclose(out, want, atol=1e-7)
    as64 = align_to_grid(p.astype(np.float64), np.eye(4), p.shape, np.eye(4))
    assert as64.dtype == np.float32 and np.array_equal(as64, p)


def test_align_to_grid_is_linear_on_shifted_coarser_and_larger_grids():
    p = along_x(P)
    half = align_to_grid(p, np.eye(4), p.shape, shifted(0.5))  # ref voxel i at input x = i + 0.5
    assert half.dtype == np.float32
    np.testing.assert_allclose(half, along_x([0.0, 0.5, 0.5, 0.2, 0.6, 0.8]), atol=1e-6)  # last: edge value
    coarse = align_to_grid(p, np.eye(4), (3, 2, 2), shifted(0.5, scale=2.0))  # 2 mm voxels at x = 2i + 0.5
    np.testing.assert_allclose(coarse, along_x([0.0, 0.5, 0.6]), atol=1e-6)
    larger = align_to_grid(p, np.eye(4), (8, 2, 2), np.eye(4))  # same affine, two more x-planes
    np.testing.assert_allclose(larger, along_x([*P, 0.8, 0.0]), atol=1e-6)  # edge value, then outside: 0


def test_align_to_grid_clips_to_probabilities():
    over = align_to_grid(along_x([1.5] * 6), np.eye(4), (6, 2, 2), shifted(0.5))
    under = align_to_grid(along_x([-0.5] * 6), np.eye(4), (6, 2, 2), shifted(0.5))
    assert np.all(over == 1.0) and np.all(under == 0.0)


# ------------------------------------------------------------------------------ threshold_masks
def blob_and_island(island: int) -> np.ndarray:
    """A 27-voxel block (0.9), an ``island``-voxel row (0.8) and one voxel at exactly 0.5."""
    p = np.zeros((8, 8, 8), np.float32)
    p[0:3, 0:3, 0:3] = 0.9
    p[6, 6, 8 - island:] = 0.8
    p[6, 0, 0] = 0.5
    return p


@pytest.mark.parametrize("spacing, kept", [((1.0, 1.0, 1.0), False), ((2.0, 2.0, 2.0), True),
                                           ((1.0, 1.0, 5.0), True), ((1.0, 1.0, 4.9), False)])
def test_threshold_masks_min_size_is_in_cubic_millimetres(spacing, kept):
    p = blob_and_island(2)  # the island: 2 voxels = 2 * prod(spacing) mm^3 against min-size 10
    mask = threshold_masks(p, 0.5, "min-size:10", spacing)
    assert mask.dtype == np.uint8 and mask.shape == p.shape
    assert mask[6, 0, 0] == 0  # > threshold, not >=
    assert mask.sum() == 27 + 2 * kept and mask[6, 6, 7] == kept
    assert np.array_equal(threshold_masks(p, 0.5, "none", spacing), (p > 0.5).astype(np.uint8))


def test_threshold_masks_per_region_and_any_leading_axes():
    regions = np.stack([blob_and_island(2), blob_and_island(3)])  # islands of 16 and 24 mm^3 at 2 mm
    masks = threshold_masks(regions, 0.5, "min-size:20", (2.0, 2.0, 2.0))
    assert masks.shape == regions.shape and masks.dtype == np.uint8
    assert [int(m.sum()) for m in masks] == [27, 30]  # only the second island is large enough
    assert [int(m.sum()) for m in threshold_masks(regions, 0.5, "min-size:20", (1.0, 1.0, 1.0))] == [27, 27]
    batch = np.stack([regions, regions[::-1]])  # (2, 2, X, Y, Z): each 3D map alone, the shape kept
    got = threshold_masks(batch, 0.5, "min-size:20", (2.0, 2.0, 2.0))
    assert got.shape == batch.shape
    assert np.array_equal(got, np.stack([masks, masks[::-1]]))


def test_a_modality_much_coarser_than_its_networks_training_spacing_is_warned_about(tmp_path, dataset, capsys):
    # the T1ce network was trained at 0.5 mm, the inputs are at 1 mm; the T2 network recorded no spacing
    make_run(tmp_path, {"T2": POINTWISE["T2"]})
    run = make_run(tmp_path, {"T1ce": POINTWISE["T1ce"]}, preprocessing={**PREP, "spacing": {"in_plane_mm": 0.5}})
    out = tmp_path / "fused"
    predict_fused(run, ["t2", "t1ce"], dataset, out, device="cpu", progress=False)
    note = "2.0x coarser in plane (1.00 mm) than the 0.50 mm the network was trained at"
    err = capsys.readouterr().err
    for case in ("a", "b"):
        assert f"warning: case {case!r}: its t1ce image is {note}: expect a less accurate mask" in err
    assert "t2 image" not in err
    record = json.loads((out / "predict.json").read_text())
    assert {c: v["coarse_inputs"] for c, v in record["cases"].items()} == {"a": {"t1ce": note}, "b": {"t1ce": note}}


def test_a_blank_modality_is_warned_about_and_recorded(tmp_path, dataset, capsys):
    """A blank T1ce export (every voxel 0) still fuses, but the mean with a blind network is no longer silent."""
    run = make_run(tmp_path, POINTWISE)
    write_case(dataset, "b", {"t1ce": np.zeros(SHAPE, np.float32)})  # b's T2 stays a real image
    out = tmp_path / "fused"
    predict_fused(run, ["t2", "t1ce"], dataset, out, device="cpu", progress=False)
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("warning:")]
    assert len(lines) == 1 and "'b'" in lines[0] and "b_t1ce.nii.gz" in lines[0] and "same value (0)" in lines[0]
    record = json.loads((out / "predict.json").read_text())
    assert {c: v["constant_inputs"] for c, v in record["cases"].items()} == {"a": {}, "b": {"t1ce": 0.0}}
    assert (out / "b.nii.gz").exists()


def test_networks_with_different_targets_are_refused_before_anything_is_written(tmp_path, dataset):
    make_run(tmp_path, {"T2": POINTWISE["T2"]})  # binary ...
    run = make_run(tmp_path, {"T1ce": ("regions", -1.5, 2.5)}, target=REGIONS)  # ... beside a region network
    out = tmp_path / "fused"
    for order in (["T2", "T1ce"], ["T1ce", "T2"]):
        with pytest.raises(DataError) as err:
            predict_fused(run, order, dataset, out, device="cpu", progress=False)
        assert str(err.value) == (f"{run}: the {order[1]} network has another target than the {order[0]} network; "
                                  "fuse the networks of one run")
    assert not out.exists()


def test_a_region_run_takes_one_postprocess_for_every_region(tmp_path, dataset):
    run = make_run(tmp_path, {"T2": ("regions", 2.0, 1.5), "T1ce": ("regions", -1.5, 2.5)}, target=REGIONS)
    out = tmp_path / "fused"
    predict_fused(run, ["T2", "T1ce"], dataset, out, device="cpu", progress=False, postprocess="largest")
    record = json.loads((out / "predict.json").read_text())
    assert record["cases"]["a"]["postprocessing"] == {"wt": "largest", "tc": "largest", "et": "largest"}
    assert nib.load(str(out / "a.nii.gz")).header["descrip"].tobytes().rstrip(b"\0") == b"a t2"


def test_fused_uncertainty_runs_every_network_through_the_four_flips(tmp_path, dataset):
    # HalfPlane ignores the image: both networks agree, so all the spread comes from the flips
    run = make_run(tmp_path, {"T2": ("halfplane",), "T1ce": ("halfplane",)})
    out = tmp_path / "fused"
    predict_fused(run, ["T2", "T1ce"], dataset, out, device="cpu", progress=False, uncertainty=True,
                  save_probabilities=True)
    s = 1.0 / (1.0 + np.exp(-HalfPlane.L))
    unc = load(out / "a_uncertainty.nii.gz")[0]
    body = np.asarray(nib.load(str(dataset / "a" / "a_t2.nii.gz")).dataobj).any(axis=(0, 1))
    assert np.allclose(unc[:, :, body], (s - (1 - s)) / 2, atol=1e-6)  # 8 members: 4 at s, 4 at 1 - s
    # the probability and uncertainty files carry the reference image's header, like the mask
    for name in ("a.nii.gz", "a_prob.nii.gz", "a_uncertainty.nii.gz"):
        assert nib.load(str(out / name)).header["descrip"].tobytes().rstrip(b"\0") == b"a t2"


def test_a_binary_run_takes_the_postprocess_given(tmp_path, dataset):
    run = make_run(tmp_path, POINTWISE, postprocessing="none")
    out = tmp_path / "fused"
    predict_fused(run, ["T2", "T1ce"], dataset, out, device="cpu", progress=False, postprocess="min-size:3")
    case = json.loads((out / "predict.json").read_text())["cases"]["a"]
    assert (case["postprocessing"], case["postprocessing_from"]) == ("min-size:3", "given by the user")


# ------------------------------------------------------------------------------ fusion weights
def test_each_channel_trusts_the_networks_that_score_best_on_validation():
    """One case, 1 x 3 x 2 x 4 maps (three channels, a 2 x 4 plane), the tumour in every channel
    the left half (4 pixels). Channel 0: A exact, B says everything (Dice 4/6 = 0.667); the mean,
    (1 + 1) / 2 left and (0 + 1) / 2 = 0.5 right (not > 0.5), is exact too: a tie, the mean wins.
    Channel 1: A exact, B nothing: the mean is 0.5 everywhere, nothing (Dice 0): A alone.
    Channel 2: A says the tumour's left column only (2 pixels, Dice 2 x 2 / 6), B its right column
    only (the same); the mean is 0.5 on each (nothing, Dice 0): A and B tie, A (listed first) wins."""
    y = np.zeros((1, 3, 2, 4), bool)
    y[:, :, :, :2] = True
    a = y.astype(np.float32).copy()
    b = np.zeros_like(a)
    b[:, 0] = 1.0
    a[:, 2] = 0.0
    a[:, 2, :, 0] = 1.0
    b[:, 2, :, 1] = 1.0
    pick = choose_weights({"A": [a], "B": [b]}, [y])
    assert pick["chosen"] == ["mean", "A", "A"]
    assert pick["weights"] == {"A": [0.5, 1.0, 1.0], "B": [0.5, 0.0, 0.0]}
    assert pick["dice"][0] == pytest.approx({"mean": 1.0, "A": 1.0, "B": 2 * 4 / (4 + 8)})
    assert pick["dice"][1] == pytest.approx({"mean": 0.0, "A": 1.0, "B": 0.0})
    assert pick["dice"][2] == pytest.approx({"mean": 0.0, "A": 2 * 2 / 6, "B": 2 * 2 / 6})
    fused = weighted_sum({"A": a, "B": b}, pick["weights"], channel_axis=1)
    np.testing.assert_array_equal(fused[:, 1:], a[:, 1:])  # channels 1, 2: A's map exactly
    np.testing.assert_allclose(fused[:, 0], (a[:, 0] + b[:, 0]) / 2)


def test_the_recorded_weights_reach_the_fused_prediction(tmp_path, dataset):
    """A run whose record says: trust T1ce alone. The fused map is then T1ce's single map, and
    predict.json says which weights were used; a record for another set is not used."""
    run = make_run(tmp_path, POINTWISE)
    single = tmp_path / "single"
    predict_cases(run, "t1ce", dataset, single, device="cpu", save_probabilities=True, progress=False)
    info = json.loads((run / "run.json").read_text()) if (run / "run.json").is_file() else {}
    info.update(modalities=["T2", "T1ce"], postprocessing_fused={"T2+T1ce": {
        "choice": "none", "chosen_by": "validation", "weights": {"T2": [0.0], "T1ce": [1.0]}}})
    (run / "run.json").write_text(json.dumps(info))
    assert fused_weights(info, ["T1ce", "T2"]) == {"T2": [0.0], "T1ce": [1.0]}
    assert fused_weights(info, ["T2"]) is None and fused_weights({}, ["T2", "T1ce"]) is None
    out = tmp_path / "fused"
    predict_fused(run, ["t2", "t1ce"], dataset, out, device="cpu", save_probabilities=True, progress=False)
    for case in ("a", "b"):
        np.testing.assert_allclose(load(out / f"{case}_prob.nii.gz")[0], load(single / f"{case}_prob.nii.gz")[0],
                                   atol=1e-6)
    record = json.loads((out / "predict.json").read_text())
    assert record["cases"]["a"]["weights"] == {"T2": [0.0], "T1ce": [1.0]}
