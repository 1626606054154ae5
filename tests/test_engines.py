"""Inference windows and engine choice, on hand-made slices (fast; the exported-model round trips
with a trained run are in test_export.py).
"""

from __future__ import annotations

import builtins
import hashlib
import json

import numpy as np
import pytest
import torch
from torch import nn

from faults import run_cli
from semicml.errors import ConfigError, DataError
from semicml.hardware import resolve_precision
from semicml.inference.engines import TorchEngine, check_engine, require
from semicml.inference.export import EXPORT_FORMAT, read_export, sidecar_path
from semicml.inference.predict import load_model
from semicml.inference.predictor import brain_windows, engine_planes

CPU = torch.device("cpu")
FP32 = resolve_precision("fp32", CPU)


class CopyNet(nn.Module):
    """Logit = 50 x (pointwise, so no context): records the shapes it is given."""

    levels = 2

    def __init__(self):
        super().__init__()
        self.seen: list[tuple[int, ...]] = []

    def forward(self, x):
        self.seen.append(tuple(x.shape))
        return 50.0 * x


def test_brain_windows_hand_computed():
    planes = np.zeros((4, 32, 24), np.float32)
    planes[1, 5:9, 2:3] = 1.0     # rows 5..8, col 2       -> 4 x 1 box
    planes[2, 0:17, 10:12] = -1.0  # rows 0..16, cols 10-11 -> 17 x 2 box
    planes[3, 30:32, 20:24] = 2.0  # bottom-right corner
    groups = brain_windows(planes, multiple=4)  # sizes round up to 8
    # slice 1: rows 5-8 (centre 7) -> 8 rows from 3; col 2 -> 8 cols centred at 2.5 -> from 0 (kept inside)
    # slice 2: 17 rows -> 24 rows from 0; 2 cols (10, 11) -> 8 cols from 7
    # slice 3: 2 rows at the bottom -> 8 rows from 24; 4 cols -> 8 cols from 16
    assert groups == {(8, 8): [(1, 3, 0), (3, 24, 16)], (24, 8): [(2, 0, 7)]}
    with_margin = brain_windows(planes[:2], multiple=4, margin=3)  # rows 2..11 (10) -> 16, cols 0..5 -> 8
    assert with_margin == {(16, 8): [(1, 0, 0)]}
    exact = np.zeros((1, 32, 32), np.float32)
    exact[0, 8:16, 8:16] = 1.0  # an 8 x 8 brain: no margin by default, so one 8 x 8 window on it
    assert brain_windows(exact, multiple=4) == {(8, 8): [(0, 8, 8)]}
    assert brain_windows(exact, multiple=4, margin=1) == {(16, 16): [(0, 4, 4)]}


def test_brain_window_runs_fewer_pixels_and_keeps_the_mask_of_a_pointwise_network():
    rng = np.random.default_rng(0)
    planes = np.zeros((5, 64, 64), np.float32)
    planes[1:4, 20:40, 12:30] = rng.normal(0, 1, (3, 20, 18))
    whole_net, brain_net = CopyNet(), CopyNet()
    whole = engine_planes(TorchEngine(whole_net, CPU, FP32, False), planes)
    brain = engine_planes(TorchEngine(brain_net, CPU, FP32, False), planes, window="brain")
    assert np.array_equal(whole > 0.5, brain > 0.5)
    inside = planes != 0
    assert np.allclose(whole[inside], brain[inside], atol=1e-7)
    assert whole_net.seen == [(3, 1, 64, 64)]
    assert brain_net.seen == [(3, 1, 24, 24)]  # 20 x 18 rounded up to 8 (= 2 * 2**levels)
    assert np.all(brain[0] == 0) and np.all(brain[4] == 0)  # empty slices never run


def test_unknown_engine_window_and_missing_package_are_one_line_errors(monkeypatch):
    with pytest.raises(ConfigError, match="unknown engine 'tensorrt'"):
        check_engine("tensorrt")
    with pytest.raises(ValueError, match="unknown window"):
        engine_planes(TorchEngine(CopyNet(), CPU, FP32, False), np.ones((1, 8, 8), np.float32), window="box")
    real_import = builtins.__import__

    def no_ort(name, *args, **kwargs):
        if name == "onnxruntime":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ort)
    with pytest.raises(ConfigError) as err:
        require("onnxruntime", "onnx")
    assert str(err.value) == "onnxruntime is not installed (pip install 'semicml[onnx]')"


def fake_export(tmp_path, name="m.onnx", **meta):
    model = tmp_path / name
    model.write_bytes(b"not really a model")
    sidecar = {"format": EXPORT_FORMAT, "modality": "T2", "levels": 2,
               "model_sha256": hashlib.sha256(model.read_bytes()).hexdigest(), **meta}
    sidecar_path(model).write_text(json.dumps(sidecar))
    return model


def test_exported_model_and_engine_must_match(tmp_path):
    onnx = fake_export(tmp_path)
    with pytest.raises(ConfigError, match="ONNX model runs with --engine onnxruntime or openvino"):
        load_model(onnx, "T2", "torch")
    with pytest.raises(DataError, match="this model is for modality 'T2', not 'FLAIR'"):
        load_model(onnx, "FLAIR", "onnxruntime")
    ts = fake_export(tmp_path, "m.torchscript.pt")
    with pytest.raises(ConfigError, match="TorchScript model runs with --engine torch, not openvino"):
        load_model(ts, "T2", "openvino")


def test_a_sidecar_of_another_model_file_is_refused(tmp_path):
    model = fake_export(tmp_path)
    model.write_bytes(b"a different model, exported later")
    with pytest.raises(DataError, match="sidecar does not describe this model file"):
        read_export(model)
    sidecar_path(model).write_text("{not json")
    with pytest.raises(DataError, match="sidecar is not valid JSON"):
        read_export(model)
    sidecar_path(model).unlink()
    with pytest.raises(DataError, match="not a readable ONNX"):
        read_export(model)


def test_cli_errors_are_one_line(tmp_path, monkeypatch, capsys):
    rc, _, err = run_cli(["export", "--run", tmp_path / "nope", "--modality", "T2"], monkeypatch, capsys)
    assert rc == 2 and err.strip() == f"error: {tmp_path / 'nope'}: run directory not found"
    (tmp_path / "run" / "weights").mkdir(parents=True)
    rc, _, err = run_cli(["export", "--run", tmp_path / "run", "--modality", "T2", "--format", "tflite"],
                         monkeypatch, capsys)
    assert rc == 2 and err.strip() == "error: unknown export format 'tflite' (choose from onnx, torchscript)"
    rc, _, err = run_cli(["predict", "--run", tmp_path / "run", "--modality", "T2", "--input", tmp_path,
                          "--out", tmp_path / "p", "--engine", "tensorrt"], monkeypatch, capsys)
    assert rc == 2 and "unknown engine 'tensorrt'" in err and len(err.strip().splitlines()) == 1
    rc, _, err = run_cli(["predict", "--run", tmp_path / "run", "--modality", "T2", "--input", tmp_path,
                          "--out", tmp_path / "p", "--window", "box"], monkeypatch, capsys)
    assert rc == 2 and "unknown window 'box'" in err
    rc, _, err = run_cli(["predict", "--run", tmp_path / "run", "--modality", "T2", "--input", tmp_path,
                          "--out", tmp_path / "p", "--engine", "openvino", "--compile"], monkeypatch, capsys)
    assert rc == 2 and err.strip() == ("error: --compile applies to --engine torch (the openvino engine compiles "
                                       "the graph itself)")
    assert not (tmp_path / "p").exists()


# --------------------------------------------------------------------------- the compile switches
def test_compile_switches_reach_torch_compile(monkeypatch):
    """Training ``compile: true`` compiles every network a method builds; ``predict --compile``
    compiles the engine's network. (Whether it pays is measured in benchmarks/, not here.)"""
    from semicml.config import build_config
    from semicml.methods.base import MethodContext
    from semicml.models import UNet2D

    compiled: list[nn.Module] = []
    monkeypatch.setattr(nn.Module, "compile", lambda self, *a, **k: compiled.append(self))
    for flag in (False, True):
        ctx = MethodContext(cfg=build_config(profile="tiny", overrides={"compile": flag}), modalities=["T2"],
                            out_channels=1, total_iterations=1, iterations_per_epoch=1.0, device=CPU,
                            new_network=lambda: UNet2D(widths=(2, 4), dropout=(0.0, 0.0)))
        nets = [ctx.new_network(), ctx.new_network()]
        assert compiled == (nets if flag else [])
    assert build_config().compile is False

    calls = []
    monkeypatch.setattr(torch, "compile", lambda net, **k: calls.append(net) or net)
    net = CopyNet()
    TorchEngine(net, CPU, FP32, compile=False)
    assert calls == []
    TorchEngine(net, CPU, FP32, compile=True)
    assert calls == [net]
