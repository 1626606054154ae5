"""The inference engines one by one, on hand-made networks and a hand-built ONNX graph (fast).

Each engine must turn a (B, 1, H, W) float32 tensor into float32 CPU logits exactly as the
network defines them, with the runtime settings it documents (thread counts, fp32 in OpenVINO,
eval mode and no autograd in the torch engine). The trained-model round trips are in
test_export.py (slow).
"""

from __future__ import annotations

import re
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from semicml.errors import ConfigError
from semicml.hardware import Precision
from semicml.inference import engines
from semicml.inference.engines import (
    ENGINES,
    ONNX_INPUT,
    ONNX_OUTPUT,
    Engine,
    OnnxRuntimeEngine,
    OpenVinoEngine,
    TorchEngine,
    check_engine,
    require,
)

CPU = torch.device("cpu")
FP32 = Precision("fp32", "cpu")
BF16 = Precision("bf16", "cpu")


def affine_onnx(scale: float = 2.0, shift: float = 1.0) -> bytes:
    """ONNX graph ``logits = scale * image + shift`` with dynamic batch, height and width."""
    from onnx import TensorProto, helper

    image = helper.make_tensor_value_info(ONNX_INPUT, TensorProto.FLOAT, ["b", 1, "h", "w"])
    logits = helper.make_tensor_value_info(ONNX_OUTPUT, TensorProto.FLOAT, ["b", 1, "h", "w"])
    consts = [helper.make_tensor("s", TensorProto.FLOAT, [], [scale]), helper.make_tensor("t", TensorProto.FLOAT, [], [shift])]
    nodes = [helper.make_node("Mul", [ONNX_INPUT, "s"], ["scaled"]), helper.make_node("Add", ["scaled", "t"], [ONNX_OUTPUT])]
    graph = helper.make_graph(nodes, "affine", [image], [logits], initializer=consts)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # readable by every runtime version the extras allow
    return model.SerializeToString()


def two_output_onnx() -> bytes:
    """ONNX graph with an extra output BEFORE ``logits``: ``aux = -image`` (float32) and
    ``logits = float16(2 * image + 1)``: an engine must pick the logits by name and return float32."""
    from onnx import TensorProto, helper

    image = helper.make_tensor_value_info(ONNX_INPUT, TensorProto.FLOAT, ["b", 1, "h", "w"])
    aux = helper.make_tensor_value_info("aux", TensorProto.FLOAT, ["b", 1, "h", "w"])
    logits = helper.make_tensor_value_info(ONNX_OUTPUT, TensorProto.FLOAT16, ["b", 1, "h", "w"])
    consts = [helper.make_tensor("s", TensorProto.FLOAT, [], [2.0]), helper.make_tensor("t", TensorProto.FLOAT, [], [1.0])]
    nodes = [helper.make_node("Neg", [ONNX_INPUT], ["aux"]),
             helper.make_node("Mul", [ONNX_INPUT, "s"], ["scaled"]), helper.make_node("Add", ["scaled", "t"], ["affine"]),
             helper.make_node("Cast", ["affine"], [ONNX_OUTPUT], to=TensorProto.FLOAT16)]
    graph = helper.make_graph(nodes, "two_outputs", [image], [aux, logits], initializer=consts)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def other_threads() -> int:
    """A thread count that differs from torch's (the engines' default) and from the runtimes' own
    default (every core), so that the assertions see the setting and not a default."""
    return 1 if torch.get_num_threads() > 1 else 2


def slices(batch: int = 3, h: int = 8, w: int = 12) -> torch.Tensor:
    return torch.arange(batch * h * w, dtype=torch.float32).reshape(batch, 1, h, w) / 7.0 - 5.0


# --------------------------------------------------------------------------- choice and imports
def test_engine_names_and_the_optional_imports():
    assert ENGINES == ("torch", "onnxruntime", "openvino")
    assert [check_engine(e) for e in ENGINES] == list(ENGINES)
    with pytest.raises(ConfigError) as err:
        check_engine("TORCH")  # names are exact
    assert str(err.value) == "unknown engine 'TORCH' (choose from torch, onnxruntime, openvino)"
    import json

    assert require("json", "none") is json
    with pytest.raises(ConfigError) as err:
        require("semicml_no_such_runtime", "gpu")
    assert str(err.value) == "semicml_no_such_runtime is not installed (pip install 'semicml[gpu]')"
    assert err.value.__cause__ is None and err.value.__suppress_context__  # one line, no chained traceback


@pytest.mark.parametrize("engine, module, extra", [(OnnxRuntimeEngine, "onnxruntime", "onnx"),
                                                   (OpenVinoEngine, "openvino", "openvino")])
def test_an_engine_whose_runtime_is_missing_names_the_extra_that_installs_it(monkeypatch, engine, module, extra):
    monkeypatch.setitem(sys.modules, module, None)  # how Python sees a package that is not installed
    with pytest.raises(ConfigError) as err:
        engine(affine_onnx(), multiple=8)
    assert str(err.value) == f"{module} is not installed (pip install 'semicml[{extra}]')"
    pyproject = (Path(__file__).parents[1] / "pyproject.toml").read_text()
    line = re.search(rf"^{extra} = \[(.*)\]$", pyproject, re.M)  # the extra exists and installs the runtime
    assert line and f'"{module}' in line.group(1)


def test_the_base_engine_is_abstract_with_a_neutral_session():
    base = Engine()
    assert base.name == "" and base.multiple == 16
    with pytest.raises(NotImplementedError):
        base(slices())
    with base.session() as inside:
        assert inside is None and torch.is_grad_enabled()


def test_thread_count_defaults_to_torchs():
    assert engines._threads(3) == 3 and engines._threads("2") == 2
    assert engines._threads(None) == torch.get_num_threads() and engines._threads(0) == torch.get_num_threads()


# --------------------------------------------------------------------------- torch
class Probe(nn.Module):
    """1x1 convolution ``2x + 1`` with BatchNorm and dropout; records what each call saw."""

    def __init__(self, levels: int | None = 3):
        super().__init__()
        if levels is not None:
            self.levels = levels
        self.conv = nn.Conv2d(1, 1, 1)
        with torch.no_grad():
            self.conv.weight.fill_(2.0)
            self.conv.bias.fill_(1.0)
        self.bn = nn.BatchNorm2d(1)
        self.drop = nn.Dropout(0.5)
        self.seen: list[dict] = []

    def forward(self, x):
        self.seen.append({"channels_last": x.is_contiguous(memory_format=torch.channels_last),
                          "contiguous": x.is_contiguous(), "grad": torch.is_grad_enabled(),
                          "autocast": torch.is_autocast_enabled("cpu"), "training": self.training,
                          "dtype": x.dtype})
        y = self.conv(x)
        return self.drop(self.bn(y)) if self.training else y


def test_torch_engine_multiple_comes_from_the_networks_levels():
    assert TorchEngine(Probe(levels=3), CPU, FP32).multiple == 8
    assert TorchEngine(Probe(levels=1), CPU, FP32).multiple == 2
    assert TorchEngine(Probe(levels=None), CPU, FP32).multiple == 16  # the U-Net default (4 levels)
    engine = TorchEngine(Probe(), CPU, FP32)
    assert engine.name == "torch" and engine.channels_last is True and engine._forward is engine.net


@pytest.mark.parametrize("channels_last", [True, False])
def test_torch_engine_logits_layout_and_precision(channels_last):
    net = Probe()
    engine = TorchEngine(net, CPU, FP32, channels_last=channels_last)
    x = slices().transpose(2, 3)  # a non-contiguous view: the engine decides the layout
    with engine.session():
        out = engine(x)
    assert out.dtype == torch.float32 and out.device.type == "cpu"
    assert torch.equal(out, 2 * x + 1)
    seen = net.seen[-1]
    # one channel: a channels-last copy is also row-major contiguous; without it the view stays as given
    assert seen["channels_last"] is channels_last and seen["contiguous"] is channels_last
    assert seen["autocast"] is False and seen["grad"] is False and seen["training"] is False

    bf16 = TorchEngine(Probe(), CPU, BF16, channels_last=channels_last)
    with bf16.session():
        out = bf16(x)
    assert bf16.net.seen[-1]["autocast"] is True
    assert out.dtype == torch.float32  # the bf16 convolution output comes back as float32
    assert torch.allclose(out, 2 * x + 1, rtol=2 ** -7, atol=0.05) and not torch.equal(out, 2 * x + 1)


def test_torch_engine_runs_the_network_on_its_device_and_returns_cpu_logits():
    class Where(nn.Module):
        def forward(self, x):
            self.device = x.device
            return torch.zeros(x.shape)  # a meta tensor holds no values to copy back

    net = Where()
    meta = torch.device("meta")  # a device other than the CPU that needs no hardware
    out = TorchEngine(net, meta, FP32, channels_last=False)(slices())
    assert net.device == meta and out.shape == (3, 1, 8, 12)


def test_torch_engine_session_is_eval_without_grad_and_restores_every_modules_mode():
    net = Probe()
    net.train()
    net.drop.eval()  # a method may keep one sub-module in eval on purpose
    engine = TorchEngine(net, CPU, FP32)
    with engine.session():
        assert not torch.is_grad_enabled()
        assert not any(m.training for m in net.modules())
        engine(slices())
    assert torch.is_grad_enabled()
    assert net.training and net.conv.training and net.bn.training and not net.drop.training
    assert net.bn.num_batches_tracked.item() == 0  # BatchNorm statistics untouched by inference

    with warnings.catch_warnings():  # torch >= 2.10 marks TorchScript deprecated
        warnings.simplefilter("ignore", DeprecationWarning)
        scripted = torch.jit.script(nn.Conv2d(1, 1, 1).eval())  # an export: no modes to switch
    engine = TorchEngine(scripted, CPU, FP32)
    with engine.session() as inside:
        assert inside is None and not torch.is_grad_enabled()
        assert engine(slices()).shape == (3, 1, 8, 12)
    assert torch.is_grad_enabled()


# --------------------------------------------------------------------------- ONNX Runtime / OpenVINO
@pytest.fixture(scope="module")
def onnx_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("onnx") / "affine.onnx"
    path.write_bytes(affine_onnx())
    return path


@pytest.mark.parametrize("source", ["bytes", "path", "str"])
def test_onnxruntime_engine_runs_the_graph_with_its_thread_settings(onnx_file, source):
    pytest.importorskip("onnxruntime")
    model = {"bytes": onnx_file.read_bytes(), "path": onnx_file, "str": str(onnx_file)}[source]
    engine = OnnxRuntimeEngine(model, multiple=8.0, threads=other_threads())
    assert engine.name == "onnxruntime" and engine.multiple == 8 and isinstance(engine.multiple, int)
    opts = engine.sess.get_session_options()
    assert opts.intra_op_num_threads == other_threads() and opts.inter_op_num_threads == 1
    assert engine.sess.get_providers() == ["CPUExecutionProvider"]
    for x in (slices(), slices(1, 16, 4)):  # dynamic batch and size
        out = engine(x)
        assert out.dtype == torch.float32 and torch.allclose(out, 2 * x + 1, atol=1e-6)
    default = OnnxRuntimeEngine(onnx_file, multiple=4)
    assert default.sess.get_session_options().intra_op_num_threads == torch.get_num_threads()


@pytest.mark.parametrize("source", ["bytes", "path"])
def test_openvino_engine_runs_the_graph_in_fp32_with_its_thread_settings(onnx_file, source):
    pytest.importorskip("openvino")
    model = onnx_file.read_bytes() if source == "bytes" else onnx_file
    engine = OpenVinoEngine(model, multiple=4.0, threads=other_threads())
    assert engine.name == "openvino" and engine.multiple == 4 and isinstance(engine.multiple, int)
    props = {k: str(engine.compiled.get_property(k)) for k in
             ("INFERENCE_NUM_THREADS", "PERFORMANCE_HINT", "INFERENCE_PRECISION_HINT")}
    assert props["INFERENCE_NUM_THREADS"] == str(other_threads())
    assert props["PERFORMANCE_HINT"].endswith("LATENCY")
    assert props["INFERENCE_PRECISION_HINT"] in ("f32", "<Type: 'float32'>")
    for x in (slices(), slices(1, 16, 4)):
        out = engine(x)
        assert out.dtype == torch.float32 and torch.allclose(out, 2 * x + 1, atol=1e-6)
    default = OpenVinoEngine(onnx_file, multiple=4)
    assert int(str(default.compiled.get_property("INFERENCE_NUM_THREADS"))) == torch.get_num_threads()


def test_onnxruntime_engine_asks_for_the_cpu_provider_by_name(onnx_file, monkeypatch):
    """A GPU build of ONNX Runtime would pick (or, since 1.9, demand) a provider otherwise; the
    engines hand CPU tensors to the runtime and take CPU tensors back."""
    ort = pytest.importorskip("onnxruntime")
    asked, real = [], ort.InferenceSession

    def spy(source, options, providers=None, **kwargs):
        asked.append(providers)
        return real(source, options, providers=providers, **kwargs)

    monkeypatch.setattr(ort, "InferenceSession", spy)
    OnnxRuntimeEngine(onnx_file, multiple=4)
    assert asked == [["CPUExecutionProvider"]]


@pytest.mark.parametrize("engine, module", [(OnnxRuntimeEngine, "onnxruntime"), (OpenVinoEngine, "openvino")])
def test_engines_return_the_output_named_logits_as_float32(engine, module):
    pytest.importorskip(module)
    x = slices()
    out = engine(two_output_onnx(), multiple=4)(x)
    assert out.dtype == torch.float32  # the graph's float16 logits, converted
    assert torch.equal(out, (2 * x + 1).half().float())  # not the first output (-x)


def test_openvino_reads_a_model_held_in_memory_through_a_file_it_removes(tmp_path, monkeypatch):
    ov = pytest.importorskip("openvino")
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    graph = engines._read_onnx_bytes(ov.Core(), affine_onnx(3.0, 0.0))
    assert [op.get_type_name() for op in graph.get_ordered_ops()].count("Multiply") == 1
    assert list(tmp_path.iterdir()) == []  # the temporary copy is gone


def test_unknown_precision_is_a_one_line_error():
    """`predict --precision foo` used to run silently as auto."""
    import torch

    from semicml.errors import ConfigError
    from semicml.hardware import resolve_precision

    with pytest.raises(ConfigError, match=r"unknown precision 'foo' \(choose from auto, bf16, fp32\)"):
        resolve_precision("foo", torch.device("cpu"))
    assert resolve_precision("fp32", torch.device("cpu")).name == "fp32"
