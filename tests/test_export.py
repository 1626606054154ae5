"""``semicml export`` and ``predict --engine`` with a small trained phantom run: every engine and
exported format gives the masks of the PyTorch path and probabilities within 1e-4.

The run is trained long enough (supervised, 150 tiny iterations) that its masks are not empty
and many probabilities lie near the threshold, so an engine that ran the network in training
mode, dropped BatchNorm, or normalised differently would change masks.
"""

from __future__ import annotations

import errno
import json
import shutil

import nibabel as nib
import numpy as np
import pytest

from conftest import train_phantom_run
from faults import fail_writes, run_cli, temporaries, tree
from semicml.inference.export import META_KEY, TS_EXTRA, export_model, read_export, sidecar_path
from semicml.inference.predict import predict_cases

pytestmark = pytest.mark.slow
CASES = ["phantom_004", "phantom_005"]


@pytest.fixture(scope="module")
def run(phantom_root, tmp_path_factory):
    return train_phantom_run(phantom_root, tmp_path_factory.mktemp("export"),
                             {"iterations": 150, "val_every": 50, "method": "supervised", "labeled_fraction": 1.0,
                              "num_workers": 0, "device": "cpu"})


@pytest.fixture(scope="module")
def exports(run):
    return {"onnx": export_model(run, "t2", "onnx"), "torchscript": export_model(run, "T2", "torchscript")}


@pytest.fixture(scope="module")
def reference(run, phantom_root, tmp_path_factory):
    """Masks and probabilities of today's path: the run's PyTorch network, eager, in fp32 (the
    exported engines run fp32; ``auto`` would pick bf16 on a CPU with AVX512-BF16 or AMX)."""
    out = tmp_path_factory.mktemp("ref")
    predict_cases(run, "T2", phantom_root, out, device="cpu", precision="fp32", save_probabilities=True,
                  progress=False, cases=CASES)
    return read_prediction(out)


def read_prediction(folder) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    return {c: (np.asarray(nib.load(folder / f"{c}.nii.gz").dataobj),
                np.asarray(nib.load(folder / f"{c}_prob.nii.gz").dataobj)) for c in CASES}


def test_reference_masks_are_a_real_test(reference):
    masks = np.stack([m for m, _ in reference.values()])
    probs = np.stack([p for _, p in reference.values()])
    assert 200 < masks.sum() < 0.5 * masks.size
    assert np.count_nonzero(np.abs(probs - 0.5) < 0.05) > 100  # voxels a small error would flip


@pytest.mark.parametrize("engine,source", [("onnxruntime", "onnx"), ("openvino", "onnx"), ("onnxruntime", "run"),
                                           ("torch", "torchscript")])
def test_engines_reproduce_the_pytorch_path(engine, source, run, exports, reference, phantom_root, tmp_path):
    model = run if source == "run" else exports[source]
    predict_cases(model, "T2", phantom_root, tmp_path, engine=engine, precision="fp32", save_probabilities=True,
                  progress=False, cases=CASES)
    got = read_prediction(tmp_path)
    for case, (mask, prob) in reference.items():
        assert np.array_equal(got[case][0], mask), case
        assert np.abs(got[case][1] - prob).max() <= 1e-4, case
    assert json.loads((tmp_path / "predict.json").read_text())["engine"] == engine


def test_sidecar_records_what_predict_needs(run, exports):
    import onnx
    import torch

    payload = torch.load(run / "weights" / "T2.pt", weights_only=True)
    meta = read_export(exports["onnx"])
    assert exports["onnx"] == run / "export" / "T2.onnx"
    assert meta["modality"] == "T2" and meta["model_format"] == "onnx" and meta["threshold"] == 0.5
    assert meta["postprocessing"] == payload["postprocessing"]
    assert {k: meta["preprocessing"][k] for k in payload["preprocessing"]} == payload["preprocessing"]
    assert meta["preprocessing"]["in_plane"] == "crop" and meta["preprocessing"]["normalisation"]["T2"]["scheme"] == "mri"
    assert meta["preprocessing"]["clip_percentiles"] == [0.5, 99.5]
    assert meta["levels"] == 2 and meta["input"]["multiple_of"] == 4
    assert meta["spacing"]["training_spacing_mm"] == [1.5, 1.5, 3.0]  # the phantom's, axial last
    # the same description travels inside each model file
    props = {p.key: p.value for p in onnx.load(str(exports["onnx"])).metadata_props}
    assert json.loads(props[META_KEY]) == {k: v for k, v in meta.items() if k != "model_sha256"}
    extra = {TS_EXTRA: ""}
    torch.jit.load(str(exports["torchscript"]), _extra_files=extra)
    ts_meta = json.loads(extra[TS_EXTRA])
    assert ts_meta["model_format"] == "torchscript" and ts_meta["preprocessing"] == meta["preprocessing"]


def test_a_model_without_its_sidecar_still_predicts(exports, reference, phantom_root, tmp_path):
    lone = tmp_path / "model" / "t2_only.onnx"
    lone.parent.mkdir()
    shutil.copyfile(exports["onnx"], lone)
    predict_cases(lone, "T2", phantom_root, tmp_path / "pred", engine="onnxruntime", save_probabilities=True,
                  progress=False, cases=CASES)
    got = read_prediction(tmp_path / "pred")
    assert all(np.array_equal(got[c][0], reference[c][0]) for c in CASES)


def test_cli_export_then_predict(run, reference, phantom_root, tmp_path, monkeypatch, capsys):
    out = tmp_path / "t2.torchscript.pt"
    rc, text, _ = run_cli(["export", "--run", run, "--modality", "T2", "--format", "torchscript", "--out", out],
                          monkeypatch, capsys)
    assert rc == 0 and text.strip() == f"wrote {out} and t2.torchscript.pt.json"
    rc, text, _ = run_cli(["predict", "--run", out, "--modality", "T2", "--input", phantom_root, "--out",
                           tmp_path / "pred", "--cases", ",".join(CASES), "--probabilities", "--precision", "fp32"],
                          monkeypatch, capsys)
    assert rc == 0 and text.strip().endswith("wrote 2 masks to " + str(tmp_path / "pred"))
    got = read_prediction(tmp_path / "pred")
    assert all(np.array_equal(got[c][0], reference[c][0]) for c in CASES)
    rc, _, err = run_cli(["export", "--run", run, "--modality", "FLAIR"], monkeypatch, capsys)
    assert rc == 2 and err.strip() == f"error: {run}: no network for modality 'FLAIR' in this run (has: T1ce, T2)"


def test_skipping_empty_slices_keeps_the_masks(run, phantom_root):
    """Empty slices are predicted as background without the network: the network agrees."""
    import torch

    from semicml.data.preprocess import extract_planes, normalise, whole_plane_box
    from semicml.hardware import resolve_precision
    from semicml.inference.engines import TorchEngine
    from semicml.inference.predict import load_weights
    from semicml.inference.predictor import engine_planes, nonempty_slices

    net, _ = load_weights(run, "T2", torch.device("cpu"))
    vol = np.asarray(nib.load(phantom_root / "imagesTr" / "phantom_004_0000.nii.gz").dataobj, dtype=np.float32)
    normed, _ = normalise(vol)
    planes = extract_planes(normed, whole_plane_box(vol.shape[:2], 4)).transpose(2, 0, 1)
    assert len(nonempty_slices(planes)) < len(planes)  # the phantom has empty slices
    skipped = engine_planes(TorchEngine(net, torch.device("cpu"), resolve_precision("fp32", torch.device("cpu"))),
                            planes)
    with torch.no_grad():
        every = torch.sigmoid(net.eval()(torch.from_numpy(planes[:, None]))).numpy()[:, 0]
    assert np.array_equal(skipped > 0.5, every > 0.5)


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS])
def test_export_write_failure_leaves_the_previous_export_intact(code, run, tmp_path, monkeypatch, capsys):
    out = tmp_path / "m.torchscript.pt"
    export_model(run, "T2", "torchscript", out)
    before = tree(tmp_path)
    failed = fail_writes(monkeypatch, code, match=lambda p: p.name.endswith(".pt"))
    rc, _, err = run_cli(["export", "--run", run, "--modality", "T2", "--format", "torchscript", "--out", out],
                         monkeypatch, capsys)
    assert failed and rc == 1 and err.count("error:") == 1 and str(out) in err
    assert tree(tmp_path) == before and temporaries(tmp_path) == []
    # the model written but its sidecar refused: the stale sidecar no longer matches and says so
    monkeypatch.undo()
    fail_writes(monkeypatch, code, match=lambda p: p.name.endswith(".json"))
    rc, _, err = run_cli(["export", "--run", run, "--modality", "T1ce", "--format", "torchscript", "--out", out],
                         monkeypatch, capsys)
    assert rc == 1 and temporaries(tmp_path) == []
    monkeypatch.undo()
    rc, _, err = run_cli(["predict", "--run", out, "--modality", "T1ce", "--input", tmp_path, "--out",
                          tmp_path / "p"], monkeypatch, capsys)
    assert rc == 2 and "sidecar does not describe this model file" in err and not (tmp_path / "p").exists()
    assert sidecar_path(out).read_text() == before[sidecar_path(out).name].decode()


def test_int8_export_predicts_nearly_the_float32_masks(run, reference, phantom_root, tmp_path):
    """``--quantize int8``: the sidecar says so, the engines run it, and its masks overlap the float32
    masks almost entirely (not identical: int8 is opt-in for speed)."""
    model = export_model(run, "t2", "onnx", tmp_path / "t2-int8.onnx", quantize="int8")
    meta = read_export(model)
    assert meta["quantization"]["scheme"] == "int8" and "training cases" in meta["quantization"]["calibration"]
    out = tmp_path / "pred"
    predict_cases(model, "T2", phantom_root, out, engine="onnxruntime", save_probabilities=True, progress=False,
                  cases=CASES)
    got = read_prediction(out)
    for c in CASES:
        ref_mask, ref_prob = reference[c]
        mask, prob = got[c]
        assert ref_mask.sum() > 0
        assert 2 * np.logical_and(mask, ref_mask).sum() / (mask.sum() + ref_mask.sum()) > 0.9
        assert np.abs(prob - ref_prob).mean() < 0.02
