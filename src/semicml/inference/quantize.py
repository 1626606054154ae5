"""Post-training static int8 quantization of an exported ONNX model (``semicml export --quantize int8``).

Why: on a CPU the float32 convolutions bound the speed of ``predict`` (the arithmetic, not the
engine: benchmarks/results/inference/). Int8 convolutions do the same work in fewer cycles on
AVX2 and more so with VNNI/AMX. It is opt-in: probabilities move (the activations are rounded
to 256 levels), so masks are not identical to the float32 model; the benchmark reports by how
much and what it does to test Dice.

ONNX Runtime's quantizer does the work (QDQ format, per-channel int8 weights in a 7-bit range,
uint8 activations, MinMax calibration); the result runs in ONNX Runtime and in OpenVINO. Calibration
data are the network's own inputs: slices of the run's TRAINING cases from its slice store
(already normalised as at training), evenly spread over the brain slices of each case, so that
healthy and tumour slices both set the activation ranges. Nothing from validation or test
cases enters the model.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np

from ..errors import DataError
from .engines import ONNX_INPUT, require

SCHEMES = ("int8",)
CALIBRATION_SLICES = 64


def calibration_slices(run: Path, modality: str, count: int = CALIBRATION_SLICES, multiple: int = 16,
                       context: int = 0) -> np.ndarray:
    """(N, 2k + 1, H, W) float32 slices of ``modality`` (each with its ``context`` k neighbours on
    either side, :mod:`semicml.data.context`) from the run's training cases in its store.

    Evenly spaced over each case's brain (non-empty) slices, cases in split order, up to ``count``
    in all; H and W are the store's, which must be multiples of ``multiple`` (the network's
    down-sampling factor).
    """
    from ..data.context import context_stack
    from ..data.store import SliceStore

    run = Path(run)
    try:
        info = json.loads((run / "run.json").read_text())
        store = SliceStore(info["store"])
    except (OSError, ValueError, KeyError) as exc:
        raise DataError(f"calibration needs the run's run.json and its slice store ({exc})", run) from None
    channel = store.modality_index(modality)
    cases = [c for c in info["splits"]["train"] if c in store.cases]
    if not cases:
        raise DataError("no training case of the run is in its slice store: nothing to calibrate on", run)
    per_case = max(1, -(-count // len(cases)))
    slices = []
    for case in cases:
        zs = store.cases[case].nonempty_slices
        if not zs:
            continue
        pick = np.unique(np.linspace(0, len(zs) - 1, min(per_case, len(zs))).round().astype(int))
        images = store.images(case)
        slices += [np.asarray(context_stack(images, zs[i], context)[:, channel], dtype=np.float32) for i in pick]
        if len(slices) >= count:
            break
    batch = np.stack(slices[:count])
    if batch.shape[-1] % multiple or batch.shape[-2] % multiple:
        raise DataError(f"stored slices {batch.shape[-2:]} are not multiples of {multiple}: re-prepare the store",
                        run)
    return batch


def quantize_onnx(model: bytes, slices: np.ndarray, scheme: str = "int8") -> bytes:
    """``model`` (float32 ONNX bytes) -> statically quantized ONNX bytes, calibrated on ``slices``."""
    if scheme not in SCHEMES:
        raise ValueError(f"unknown quantization {scheme!r} (choose from {', '.join(SCHEMES)})")
    require("onnxruntime", "onnx")
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([slices[i : i + 8] for i in range(0, len(slices), 8)])

        def get_next(self) -> dict | None:
            batch = next(self.batches, None)
            return None if batch is None else {ONNX_INPUT: np.ascontiguousarray(batch, dtype=np.float32)}

    with tempfile.TemporaryDirectory(prefix="semicml-quantize-") as tmp:
        src, pre, out = Path(tmp) / "model.onnx", Path(tmp) / "pre.onnx", Path(tmp) / "int8.onnx"
        src.write_bytes(model)
        # Shape inference + graph clean-up first (the quantizer's advice); symbolic shapes are
        # skipped because height and width are dynamic multiples of the down-sampling factor.
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        # reduce_range: 7-bit weights. Without VNNI (AVX2, AVX-512F) the u8 x s8 dot product adds
        # pairs of products in int16 and saturates, silently: a 3x3 conv of a 1-channel input
        # was off by 60% of its range in places (tests/test_quantize.py). The exported file may run
        # on any CPU, so the safe range is used everywhere; the cost is one bit of weight precision.
        quantize_static(str(pre), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        reduce_range=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
        return out.read_bytes()


def with_metadata(model: bytes, key: str, value: dict) -> bytes:
    """``model`` with ``metadata_props[key] = json(value)`` (replacing an earlier entry)."""
    onnx = require("onnx", "onnx")
    proto = onnx.load_from_string(model)
    kept = [(p.key, p.value) for p in proto.metadata_props if p.key != key]
    del proto.metadata_props[:]
    for k, v in [*kept, (key, json.dumps(value))]:
        entry = proto.metadata_props.add()
        entry.key, entry.value = k, v
    return proto.SerializeToString()
