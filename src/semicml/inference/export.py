"""``semicml export``: one modality's network as ONNX or TorchScript, with what ``predict`` needs.

The model maps normalised axial slices ``image`` (B, 2k + 1, H, W), float32, H and W multiples of
``2 ** levels``, to ``logits`` (B, C, H, W); sigmoid gives the foreground probability. k (the
through-plane context, 0 for a 2D network) is ``network.in_channels = 2k + 1`` in the metadata:
each slice comes with its k neighbours on either side, zeros beyond the volume. Beside it,
``<model file>.json`` (the *sidecar*) records how ``semicml predict`` turns a volume into those
slices and the slices back into a mask: in-plane rule, normalisation (with its clip percentiles),
threshold, post-processing chosen on validation, modality, target, training spacing. The same
JSON is embedded in the model (ONNX ``metadata_props["semicml"]``, TorchScript extra file
``semicml.json``), so a model file that lost its sidecar still predicts; when both exist the
sidecar must describe that very file (its ``model_sha256``).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import __version__
from ..data.context import context_of_network
from ..data.preprocess import CLIP_PERCENTILES
from ..errors import ConfigError, DataError
from ..io_utils import atomic_write_bytes, atomic_write_json
from .engines import ONNX_INPUT, ONNX_OUTPUT, require
from .postprocess import NONE
from .weights import load_weights, weights_path

EXPORT_FORMAT = "semicml-export-v1"
FORMATS = {"onnx": ".onnx", "torchscript": ".torchscript.pt"}
META_KEY = "semicml"
TS_EXTRA = "semicml.json"
THRESHOLD = 0.5


def default_out(run: str | Path, modality: str, fmt: str, quantize: str | None = None) -> Path:
    """``RUN/export/<modality>[-int8]<suffix>``; next to the weights file when ``run`` is one."""
    run = Path(run)
    folder = run.parent if run.is_file() else run / "export"
    return folder / f"{modality}{'-' + quantize if quantize else ''}{FORMATS[fmt]}"


def sidecar_path(model: str | Path) -> Path:
    return Path(str(model) + ".json")


def _training_spacing(run: Path) -> list[float] | None:
    """Median voxel spacing (axial last, mm) of the run's training cases, if its store is still there."""
    try:
        from ..data.store import SliceStore

        info = json.loads((run / "run.json").read_text())
        store = SliceStore(info["store"])
        metas = [store.cases[c] for c in info["splits"]["train"] if c in store.cases]
        rows = [[*m.orientation.pair([m.spacing[a] for a in range(3) if a != m.axial_axis]), m.spacing[m.axial_axis]]
                for m in metas]
        return [round(float(v), 4) for v in np.median(np.asarray(rows, dtype=float), axis=0)] if rows else None
    except Exception:  # noqa: BLE001 - provenance only: a moved or deleted store just leaves it unknown
        return None


def _activation(payload: dict) -> str:
    target = payload.get("target")
    if isinstance(target, dict) and target.get("regions"):
        return "sigmoid per channel: the probability of each region, in order " + ", ".join(target["classes"])
    return "sigmoid (foreground probability)"


def export_metadata(payload: dict, modality: str, fmt: str, source: Path, run: Path) -> dict[str, Any]:
    levels = len(payload["network"]["widths"]) - 1
    in_channels = int(payload["network"].get("in_channels", 1))
    prep = dict(payload["preprocessing"])
    return {
        "format": EXPORT_FORMAT,
        "semicml_version": __version__,
        "model_format": fmt,
        "modality": payload.get("modality", modality),
        "target": payload.get("target"),
        "network": payload["network"],
        "levels": levels,
        "input": {"name": ONNX_INPUT, "shape": ["batch", in_channels, "height", "width"], "dtype": "float32",
                  "multiple_of": 2 ** levels, "content": "normalised axial slices of the one modality" + (
                      "" if in_channels == 1 else f": slice z and its {in_channels // 2} neighbours on either side, "
                      "in order z - k .. z + k, zeros beyond the volume")},
        "output": {"name": ONNX_OUTPUT, "shape": ["batch", payload["network"]["out_channels"], "height", "width"],
                   "activation": _activation(payload)},
        "preprocessing": {**prep, "clip_percentiles": list(CLIP_PERCENTILES),
                          "normalisation_rule": "zscore_nonzero: clip the non-zero voxels of the volume to the "
                          "clip percentiles, z-score with their mean and std, zeros stay 0; zscore: the same over "
                          "all voxels; none: unchanged",
                          "window": "crop stores: the whole axial slice, zero-padded to a square whose side is a "
                          "multiple of multiple_of and centred; resize stores: the box of the non-zero region "
                          "resampled to size x size. All-zero slices are not run: probability 0",
                          "orientation_rule": "when orientation.in_plane is recorded: the two in-plane axes of each "
                          "slice are swapped and/or flipped until they point as those world codes say (nibabel "
                          "aff2axcodes), and the probabilities go back the same way; without it: file order"},
        "threshold": THRESHOLD,
        "postprocessing": payload.get("postprocessing", NONE),
        "spacing": {"resampled": bool((prep.get("spacing") or {}).get("in_plane_mm")),
                    "training_spacing_mm": _training_spacing(run) if run.is_dir() else None,
                    "note": "planes are resampled in plane to preprocessing.spacing.in_plane_mm when it is recorded "
                    "(runs made before it: used at their own spacing), the probabilities back to the input grid; "
                    "slice thickness unchanged; axial axis from the affine"},
        "weights_file": str(source),
        "weights_sha256": hashlib.sha256(source.read_bytes()).hexdigest(),
        "iteration": payload.get("iteration"),
    }


@contextlib.contextmanager
def _quiet_exporter():
    """The exporters print progress lines and warnings meant for torch developers."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            # Deprecation notes from torch's own internals and the tracer's note that the U-Net's
            # shape check becomes a constant (true for every input the predictor builds).
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def _example_input(net: torch.nn.Module, multiple: int) -> torch.Tensor:
    """A zero batch the exporters trace with: 2 slices of the network's input channels."""
    return torch.zeros(2, int(getattr(net, "in_channels", 1)), 2 * multiple, 2 * multiple)


def onnx_model_bytes(net: torch.nn.Module, levels: int, metadata: dict | None = None, optimize: bool = True) -> bytes:
    """The eval-mode network as an ONNX graph with dynamic batch, height and width.

    ``optimize``: fold constants (BatchNorm into the convolutions) in the file, half its size;
    ~2x slower to export, and the runtimes fold them anyway, so in-memory exports skip it.
    """
    require("onnxscript", "onnx")
    onnx = require("onnx", "onnx")
    m = 2 ** levels
    dims = torch.export.Dim("batch", min=1), torch.export.Dim("h", min=1), torch.export.Dim("w", min=1)
    example = _example_input(net, m)
    net = net.cpu().eval()
    with _quiet_exporter():
        program = torch.onnx.export(net, (example,), input_names=[ONNX_INPUT], output_names=[ONNX_OUTPUT],
                                    dynamic_shapes={"x": {0: dims[0], 2: m * dims[1], 3: m * dims[2]}},
                                    dynamo=True, verbose=False, optimize=optimize)
    model = program.model_proto
    if metadata is not None:
        entry = model.metadata_props.add()
        entry.key, entry.value = META_KEY, json.dumps(metadata)
    onnx.checker.check_model(model)
    return model.SerializeToString()


def torchscript_bytes(net: torch.nn.Module, levels: int, metadata: dict | None = None) -> bytes:
    """Traced and frozen (BatchNorm folded into the convolutions) eval-mode network."""
    m = 2 ** levels
    with torch.no_grad(), _quiet_exporter():
        traced = torch.jit.trace(net.cpu().eval(), _example_input(net, m), check_trace=False)
        frozen = torch.jit.freeze(traced)
    buf = io.BytesIO()
    extra = {TS_EXTRA: json.dumps(metadata)} if metadata is not None else {}
    with _quiet_exporter():  # torch >= 2.10 marks TorchScript deprecated (ONNX is the durable format)
        torch.jit.save(frozen, buf, _extra_files=extra)
    return buf.getvalue()


def load_torchscript(path: str | Path, device: torch.device | str = "cpu", extra: dict | None = None):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return torch.jit.load(str(path), map_location=device, _extra_files=extra if extra is not None else {})


def export_model(run: str | Path, modality: str, fmt: str = "onnx", out: str | Path | None = None,
                 quantize: str | None = None) -> Path:
    """Write ``modality``'s network of ``run`` as ``fmt`` to ``out`` (+ ``out.json``); returns ``out``.

    ``quantize="int8"`` (ONNX only): post-training static quantization calibrated on the run's
    training slices (see :mod:`semicml.inference.quantize`).
    """
    from .quantize import SCHEMES, calibration_slices, quantize_onnx, with_metadata

    if fmt not in FORMATS:
        raise ConfigError(f"unknown export format {fmt!r} (choose from {', '.join(FORMATS)})")
    if quantize is not None and (fmt != "onnx" or quantize not in SCHEMES):
        raise ConfigError(f"--quantize {quantize!r} needs --format onnx and one of: {', '.join(SCHEMES)}")
    source = weights_path(run, modality)
    net, payload = load_weights(run, modality, torch.device("cpu"))
    stored = str(payload.get("modality", modality))
    if stored.lower() != modality.lower():
        raise DataError(f"these weights are for modality {stored!r}, not {modality!r}", source)
    out = Path(out) if out is not None else default_out(run, stored, fmt, quantize)
    meta = export_metadata(payload, stored, fmt, source, Path(run))
    meta["model_file"] = out.name
    if quantize is None:
        make = onnx_model_bytes if fmt == "onnx" else torchscript_bytes
        data = make(net, meta["levels"], meta)
    else:
        slices = calibration_slices(Path(run), stored, multiple=2 ** meta["levels"],
                                    context=context_of_network(net))
        meta["quantization"] = {"scheme": quantize, "tool": "onnxruntime.quantization.quantize_static", "format": "QDQ",
                                "weights": "int8 per channel, 7-bit range", "activations": "uint8, MinMax calibration",
                                "calibration": f"{len(slices)} slices of the run's training cases (slice store)"}
        data = with_metadata(quantize_onnx(onnx_model_bytes(net, meta["levels"]), slices, quantize),
                             META_KEY, meta)
    meta["model_sha256"] = hashlib.sha256(data).hexdigest()
    # The model first, then its sidecar: a sidecar never describes a file that is not there.
    atomic_write_bytes(out, data)
    atomic_write_json(sidecar_path(out), meta)
    return out


def read_export(model: str | Path) -> dict[str, Any]:
    """Metadata of an exported model: its sidecar, else the copy embedded in the model."""
    model = Path(model)
    if not model.is_file():
        raise DataError("exported model not found", model)
    side = sidecar_path(model)
    if side.is_file():
        try:
            meta = json.loads(side.read_text())
        except (ValueError, UnicodeDecodeError):
            raise DataError("sidecar is not valid JSON", side) from None
        if not isinstance(meta, dict) or meta.get("format") != EXPORT_FORMAT:
            raise DataError(f"not a semicml export sidecar (format {EXPORT_FORMAT!r} expected)", side)
        if meta.get("model_sha256") != hashlib.sha256(model.read_bytes()).hexdigest():
            raise DataError("sidecar does not describe this model file (sha256 differs; re-export)", side)
        return meta
    meta = _embedded(model)
    if meta is None:
        raise DataError(f"no semicml metadata (neither {side.name} nor embedded): export it with semicml export",
                        model)
    return meta


def _embedded(model: Path) -> dict | None:
    try:
        if model.suffix == ".onnx":
            onnx = require("onnx", "onnx")
            props = {p.key: p.value for p in onnx.load(str(model), load_external_data=False).metadata_props}
            text = props.get(META_KEY)
        else:
            extra = {TS_EXTRA: ""}
            load_torchscript(model, "cpu", extra)
            text = extra[TS_EXTRA] or None
        meta = json.loads(text) if text else None
    except (ConfigError, DataError):
        raise
    except Exception:  # noqa: BLE001 - any parse failure means an unusable file
        raise DataError("not a readable ONNX or TorchScript model", model) from None
    return meta if isinstance(meta, dict) and meta.get("format") == EXPORT_FORMAT else None


def model_format(model: str | Path) -> str:
    """``onnx`` or ``torchscript`` from the file name (as ``export`` names them)."""
    name = Path(model).name
    if name.endswith(".onnx"):
        return "onnx"
    if name.endswith(".pt") or name.endswith(".torchscript"):
        return "torchscript"
    raise DataError("unknown model file type (expected .onnx or .torchscript.pt)", model)
