"""Inference engines: one network of one modality, run on batches of normalised slices.

Every engine maps a CPU float32 tensor ``(B, 2k + 1, H, W)`` (k = ``context``, the neighbouring
slices on either side; 0 for the paper's 2D network) to CPU float32 logits ``(B, C, H, W)``;
the predictor applies the sigmoid, the flips and the slice selection itself, so the engines
differ only in who evaluates the network:

    torch        the PyTorch module (eager, or ``torch.compile``-d)
    onnxruntime  an exported ONNX graph in ONNX Runtime's CPU provider
    openvino     the same ONNX graph compiled by OpenVINO for the CPU

ONNX Runtime and OpenVINO are optional (``pip install 'semicml[onnx]'`` / ``'semicml[openvino]'``);
asking for one that is not installed is a one-line error.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..data.context import context_of_network
from ..errors import ConfigError
from ..hardware import Precision

ENGINES: tuple[str, ...] = ("torch", "onnxruntime", "openvino")
ONNX_INPUT = "image"
ONNX_OUTPUT = "logits"


def check_engine(name: str) -> str:
    if name not in ENGINES:
        raise ConfigError(f"unknown engine {name!r} (choose from {', '.join(ENGINES)})")
    return name


def require(module: str, extra: str):
    """Import an optional dependency, or fail with one line saying how to install it."""
    try:
        return __import__(module)
    except ImportError:
        raise ConfigError(f"{module} is not installed (pip install 'semicml[{extra}]')") from None


class Engine:
    """Callable ``(B, 2k + 1, H, W)`` float32 CPU tensor -> ``(B, C, H, W)`` float32 CPU logits."""

    name = ""
    #: H and W must be multiples of this (``2 ** levels`` of the U-Net).
    multiple = 16
    #: neighbouring slices on either side that the network takes with each slice (semicml.data.context)
    context = 0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def session(self):
        """Context for a run of calls (the torch engine switches the network to eval inside it)."""
        return contextlib.nullcontext()


class TorchEngine(Engine):
    name = "torch"

    def __init__(self, net: nn.Module, device: torch.device, precision: Precision, channels_last: bool = True,
                 compile: bool = False):
        self.net = net
        self.device = device
        self.precision = precision
        self.channels_last = channels_last
        self.multiple = 2 ** int(getattr(net, "levels", 4))
        self.context = context_of_network(net)
        # torch.compile re-traces per input shape (mark_dynamic would cost the speed it buys);
        # compiled lazily so that building the engine stays cheap.
        self._forward = torch.compile(net) if compile else net

    @contextlib.contextmanager
    def session(self):
        from ..models.modes import modes_restored

        if isinstance(self.net, torch.jit.ScriptModule):  # a frozen export: eval-only, no modes to keep
            with torch.no_grad():
                yield
            return
        with modes_restored(self.net), torch.no_grad():
            self.net.eval()
            yield

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with self.precision.autocast():
            logits = self._forward(x).float()
        return logits.cpu()


def _threads(threads: int | None) -> int:
    return int(threads) if threads else torch.get_num_threads()


class OnnxRuntimeEngine(Engine):
    name = "onnxruntime"

    def __init__(self, model: str | Path | bytes, multiple: int, threads: int | None = None, context: int = 0):
        ort = require("onnxruntime", "onnx")
        self.context = int(context)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = _threads(threads)
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        source = model if isinstance(model, bytes) else str(model)
        self.sess = ort.InferenceSession(source, opts, providers=["CPUExecutionProvider"])
        self.multiple = int(multiple)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        (logits,) = self.sess.run([ONNX_OUTPUT], {ONNX_INPUT: x.numpy()})
        return torch.from_numpy(np.asarray(logits, dtype=np.float32))


class OpenVinoEngine(Engine):
    name = "openvino"

    def __init__(self, model: str | Path | bytes, multiple: int, threads: int | None = None, context: int = 0):
        ov = require("openvino", "openvino")
        self.context = int(context)
        core = ov.Core()
        if isinstance(model, bytes):
            graph = _read_onnx_bytes(core, model)
        else:
            graph = core.read_model(str(model))
        # fp32 everywhere: OpenVINO would otherwise pick bf16 on CPUs with AMX / AVX512-BF16, and the
        # probabilities must match the PyTorch path to 1e-4.
        config = {"INFERENCE_NUM_THREADS": _threads(threads), "PERFORMANCE_HINT": "LATENCY",
                  "INFERENCE_PRECISION_HINT": "f32"}
        self.compiled = core.compile_model(graph, "CPU", config)
        self.request = self.compiled.create_infer_request()
        self.multiple = int(multiple)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        result = self.request.infer({ONNX_INPUT: x.numpy()})
        # by name, as in ONNX Runtime: a graph may have other outputs, in any order
        return torch.from_numpy(np.array(result[self.compiled.output(ONNX_OUTPUT)], dtype=np.float32))


def _read_onnx_bytes(core, data: bytes):
    """OpenVINO reads ONNX from a file; a model held in memory goes through a temporary one."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="semicml-ov-") as tmp:
        path = Path(tmp) / "model.onnx"
        path.write_bytes(data)
        return core.read_model(str(path))
