"""``semicml export`` piece by piece on a tiny untrained U-Net (fast): paths, the metadata record,
the TorchScript and ONNX graphs (eval mode, BatchNorm folded, dynamic shapes, metadata inside),
and how ``read_export`` finds and checks the metadata. The round trips with a trained run through
every engine are in test_export.py (slow).
"""

from __future__ import annotations

import hashlib
import json
import logging
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import semicml.data.store as store_mod
from semicml import __version__
from semicml.data.orientation import IDENTITY, InPlaneOrientation
from semicml.errors import ConfigError, DataError
from semicml.inference import export
from semicml.inference.export import (
    EXPORT_FORMAT,
    META_KEY,
    TS_EXTRA,
    default_out,
    export_metadata,
    export_model,
    load_torchscript,
    model_format,
    onnx_model_bytes,
    read_export,
    sidecar_path,
    torchscript_bytes,
)
from semicml.models import build_network

# three down-samplings: inputs are multiples of 8 (a level count where 2 ** levels != 2 * levels)
SPEC = {"in_channels": 1, "out_channels": 1, "widths": [2, 2, 2, 2], "dropout": [0.0] * 4}
PREP = {"in_plane": "crop", "size": 32, "normalisation": {"T2": {"scheme": "mri"}}}


def tiny_net(seed: int = 0) -> torch.nn.Module:
    """The U-Net of SPEC with random weights and BatchNorm statistics far from (0, 1), in train mode:
    an export that kept train mode (batch statistics) or dropped BatchNorm gives other logits."""
    torch.manual_seed(seed)
    net = build_network(SPEC)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-1.0, 1.0)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
    return net.train()


def reference(net: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    was = net.training
    with torch.no_grad():
        out = net.eval()(x)
    net.train(was)
    return out


def inputs() -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return [torch.randn(1, 1, 8, 24, generator=gen), torch.randn(3, 1, 16, 8, generator=gen)]  # multiples of 8


def make_run(tmp_path: Path, modality: str = "T2", **extra) -> Path:
    run = tmp_path / "run"
    (run / "weights").mkdir(parents=True, exist_ok=True)
    payload = {"format": "semicml-weights-v1", "modality": modality, "network": SPEC,
               "state_dict": tiny_net().state_dict(), "preprocessing": PREP, "target": "whole_tumour",
               "iteration": 40, **extra}
    torch.save(payload, run / "weights" / f"{modality}.pt")
    return run


# --------------------------------------------------------------------------- paths
def test_default_output_and_sidecar_paths(tmp_path):
    run = make_run(tmp_path)
    assert default_out(run, "T2", "onnx") == run / "export" / "T2.onnx"
    assert default_out(run, "FLAIR", "torchscript") == run / "export" / "FLAIR.torchscript.pt"
    assert default_out(run, "T2", "onnx", "int8") == run / "export" / "T2-int8.onnx"
    assert default_out(run, "T2", "onnx", None) == run / "export" / "T2.onnx"
    weights = run / "weights" / "T2.pt"  # a weights file: the export goes next to it
    assert default_out(weights, "T2", "onnx") == run / "weights" / "T2.onnx"
    assert sidecar_path("a/m.onnx") == Path("a/m.onnx.json")
    assert sidecar_path(Path("m.torchscript.pt")) == Path("m.torchscript.pt.json")


@pytest.mark.parametrize("name,fmt", [("m.onnx", "onnx"), ("m.torchscript.pt", "torchscript"), ("T2.pt", "torchscript"),
                                      ("m.torchscript", "torchscript"), ("dir.onnx/m.pt", "torchscript")])
def test_model_format_from_the_file_name(name, fmt):
    assert model_format(name) == fmt


@pytest.mark.parametrize("name", ["m.onnx.json", "m_onnx", "m.pth", "m.ONNX"])
def test_model_format_of_another_file_is_a_one_line_error(name):
    with pytest.raises(DataError) as err:
        model_format(Path("x") / name)
    assert str(err.value) == f"x/{name}: unknown model file type (expected .onnx or .torchscript.pt)"


# --------------------------------------------------------------------------- the metadata record
class FakeStore:
    """SliceStore stand-in: case -> metadata with ``spacing``, ``axial_axis`` and ``orientation``."""

    opened: list[str] = []

    def __init__(self, path):
        FakeStore.opened.append(path)
        meta = SimpleNamespace
        self.cases = {
            "a": meta(spacing=(1.0, 2.0, 3.0), axial_axis=2, orientation=IDENTITY),       # (1, 2 | 3)
            "b": meta(spacing=(4.0, 0.123456, 1.0), axial_axis=0, orientation=IDENTITY),  # axial first: (0.123456, 1 | 4)
            # axial middle, in-plane axes stored swapped against the store's orientation: (2.5, 0.1 | 9)
            "c": meta(spacing=(0.1, 9.0, 2.5), axial_axis=1, orientation=InPlaneOrientation(True, (False, False))),
            "val": meta(spacing=(50.0, 50.0, 50.0), axial_axis=2, orientation=IDENTITY),  # not a training case
        }


def test_training_spacing_is_the_median_of_the_training_cases_axial_last(tmp_path, monkeypatch):
    monkeypatch.setattr(store_mod, "SliceStore", FakeStore)
    FakeStore.opened = []
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text(json.dumps({"store": "/stores/s1", "splits": {"train": ["a", "b", "c", "gone"]}}))
    # medians of (1, 0.123456, 2.5), (2, 1, 0.1), (3, 4, 9), rounded to 4 decimals
    assert export._training_spacing(run) == [1.0, 1.0, 4.0]
    assert FakeStore.opened == ["/stores/s1"]
    (run / "run.json").write_text(json.dumps({"store": "/s", "splits": {"train": ["a", "c"]}}))
    assert export._training_spacing(run) == [1.75, 1.05, 6.0]  # an even count: the mean of the middle two
    (run / "run.json").write_text(json.dumps({"store": "/s", "splits": {"train": ["gone"]}}))
    assert export._training_spacing(run) is None  # no training case left in the store
    (run / "run.json").unlink()
    assert export._training_spacing(run) is None  # provenance only: unknown, not an error


def test_export_metadata_records_what_predict_needs(tmp_path, monkeypatch):
    source = tmp_path / "T2.pt"
    source.write_bytes(b"weights bytes")
    payload = {"network": {**SPEC, "out_channels": 3, "widths": [4, 8, 16, 32, 64]}, "preprocessing": PREP,
               "modality": "T2", "target": "tumour_core", "iteration": 120, "postprocessing": "largest"}
    monkeypatch.setattr(export, "_training_spacing", lambda run: [1.0, 1.0, 2.0] if run == tmp_path else "wrong run")
    meta = export_metadata(payload, "t2", "onnx", source, tmp_path)
    assert meta["format"] == "semicml-export-v1" == EXPORT_FORMAT and meta["semicml_version"] == __version__
    assert meta["model_format"] == "onnx" and meta["modality"] == "T2" and meta["target"] == "tumour_core"
    assert meta["network"] == payload["network"] and meta["levels"] == 4 and meta["iteration"] == 120
    assert meta["input"] == {"name": "image", "shape": ["batch", 1, "height", "width"], "dtype": "float32",
                             "multiple_of": 16, "content": "normalised axial slices of the one modality"}
    assert meta["output"] == {"name": "logits", "shape": ["batch", 3, "height", "width"],
                              "activation": "sigmoid (foreground probability)"}
    prep = meta["preprocessing"]
    assert {k: prep[k] for k in PREP} == PREP and prep["clip_percentiles"] == [0.5, 99.5]
    assert prep["normalisation_rule"].startswith("zscore_nonzero: clip the non-zero voxels")
    assert prep["window"].endswith("All-zero slices are not run: probability 0")
    assert "clip_percentiles" not in PREP  # the payload's own record is not modified
    assert meta["threshold"] == 0.5 and meta["postprocessing"] == "largest"
    assert meta["spacing"]["resampled"] is False and meta["spacing"]["training_spacing_mm"] == [1.0, 1.0, 2.0]
    assert "resampled in plane to preprocessing.spacing.in_plane_mm" in meta["spacing"]["note"]
    regions = {**payload, "target": {"name": "regions", "classes": ["wt", "tc", "et"], "regions": True}}
    assert export_metadata(regions, "t2", "onnx", source, tmp_path)["output"]["activation"] == (
        "sigmoid per channel: the probability of each region, in order wt, tc, et")
    spaced = export_metadata({**payload, "preprocessing": {**PREP, "spacing": {"in_plane_mm": 1.0}}}, "t2", "onnx",
                             source, tmp_path)
    assert spaced["spacing"]["resampled"] is True
    assert meta["weights_file"] == str(source)
    assert meta["weights_sha256"] == hashlib.sha256(b"weights bytes").hexdigest()
    json.dumps(meta)  # it goes to a JSON sidecar as it is

    bare = {"network": SPEC, "preprocessing": {}}  # older weights: no modality, target, post-processing
    meta = export_metadata(bare, "FLAIR", "torchscript", source, source)  # run given as a weights file
    assert meta["modality"] == "FLAIR" and meta["target"] is None and meta["postprocessing"] == "none"
    assert meta["levels"] == 3 and meta["input"]["multiple_of"] == 8 and meta["iteration"] is None
    assert meta["spacing"]["training_spacing_mm"] is None  # not looked up for a file


def test_quiet_exporter_silences_prints_warnings_and_the_onnx_logger_then_restores(capsys):
    logger = logging.getLogger("torch.onnx")
    logger.setLevel(logging.DEBUG)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with export._quiet_exporter():
            print("exporter chatter")
            warnings.warn("tracer note")
            assert logger.level == logging.ERROR
        warnings.warn("after")
    assert capsys.readouterr().out == ""
    assert [str(w.message) for w in caught] == ["after"]
    assert logger.level == logging.DEBUG
    with pytest.raises(RuntimeError), export._quiet_exporter():  # restored when the export fails too
        raise RuntimeError("export failed")
    assert logger.level == logging.DEBUG
    logger.setLevel(logging.NOTSET)


# --------------------------------------------------------------------------- the graphs
def test_torchscript_export_is_the_frozen_eval_network_with_its_metadata(tmp_path):
    net = tiny_net()
    path = tmp_path / "m.torchscript.pt"
    path.write_bytes(torchscript_bytes(net, levels=3, metadata={"format": EXPORT_FORMAT, "k": [1, 2]}))
    extra = {TS_EXTRA: ""}
    loaded = load_torchscript(path, "cpu", extra)
    assert json.loads(extra[TS_EXTRA]) == {"format": EXPORT_FORMAT, "k": [1, 2]}
    assert "batch_norm" not in str(loaded.graph)  # frozen: BatchNorm folded into the convolutions
    for x in inputs():  # any batch and size, not only the traced example's
        with torch.no_grad():
            assert torch.allclose(loaded(x), reference(net, x), atol=1e-5)
    path.write_bytes(torchscript_bytes(net, levels=3))
    extra = {TS_EXTRA: ""}
    load_torchscript(path, torch.device("cpu"), extra)
    assert not extra[TS_EXTRA]  # nothing embedded
    assert isinstance(load_torchscript(path), torch.jit.ScriptModule)


def test_onnx_export_without_its_packages_names_the_extra_that_installs_them(monkeypatch):
    pytest.importorskip("onnxscript")  # imported for real first: only the package named below is missing
    for module in ("onnxscript", "onnx"):
        with monkeypatch.context() as patch:
            patch.setitem(sys.modules, module, None)  # how Python sees a package that is not installed
            with pytest.raises(ConfigError) as err:
                onnx_model_bytes(tiny_net(), levels=3)
        assert str(err.value) == f"{module} is not installed (pip install 'semicml[onnx]')"


# The export runs inside the test, not in a fixture: mutmut times a test by its call phase only,
# and a fixture's ~10-30 s export made every mutant of onnx_model_bytes exceed its time limit
# (counted as killed whatever the mutant did).
def test_onnx_export_is_the_eval_network_with_dynamic_shapes_folded_and_its_metadata():
    pytest.importorskip("onnxruntime")
    import onnx
    import onnxruntime as ort

    net = tiny_net()
    data = onnx_model_bytes(net, levels=3, metadata={"format": EXPORT_FORMAT, "k": "v"})
    model = onnx.load_from_string(data)
    assert {p.key: p.value for p in model.metadata_props} == {META_KEY: json.dumps({"format": EXPORT_FORMAT, "k": "v"})}
    assert [i.name for i in model.graph.input] == ["image"] and [o.name for o in model.graph.output] == ["logits"]
    # what a reader of the file sees: batch, one channel, H and W multiples of 2 ** levels, each its own axis
    for value in (model.graph.input[0], model.graph.output[0]):
        assert [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim] == ["batch", 1, "8*h", "8*w"]
    ops = {n.op_type for n in model.graph.node}
    assert "Conv" in ops and "BatchNormalization" not in ops  # constants folded in the file
    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    for x in inputs():  # batch 1 and 3, two sizes: the axes are dynamic
        (got,) = sess.run(["logits"], {"image": x.numpy()})
        assert np.allclose(got, reference(net, x).numpy(), atol=1e-5)
    assert net.training is False  # the exporter put the network in eval mode


# --------------------------------------------------------------------------- export_model
def test_export_model_writes_the_model_then_a_sidecar_that_describes_it(tmp_path, monkeypatch):
    monkeypatch.setattr(export, "_training_spacing", lambda run: [1.5, 1.5, 3.0])
    run = make_run(tmp_path, postprocessing="largest")
    out = export_model(run, "t2", "torchscript")  # the modality in any case: the stored name is used
    assert out == run / "export" / "T2.torchscript.pt" and out.is_file()
    meta = json.loads(sidecar_path(out).read_text())
    assert meta["model_file"] == "T2.torchscript.pt" and meta["modality"] == "T2"
    assert meta["model_sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()
    assert meta["weights_file"] == str(run / "weights" / "T2.pt") and meta["model_format"] == "torchscript"
    assert meta["postprocessing"] == "largest" and meta["spacing"]["training_spacing_mm"] == [1.5, 1.5, 3.0]
    extra = {TS_EXTRA: ""}
    net = load_torchscript(out, "cpu", extra)
    assert json.loads(extra[TS_EXTRA]) == {k: v for k, v in meta.items() if k != "model_sha256"}
    assert read_export(out) == meta
    trained = build_network(SPEC)
    trained.load_state_dict(torch.load(run / "weights" / "T2.pt", weights_only=True)["state_dict"])
    x = inputs()[1]
    with torch.no_grad():
        assert torch.allclose(net(x), reference(trained, x), atol=1e-5)

    chosen = export_model(run / "weights" / "T2.pt", "T2", "torchscript", out=tmp_path / "elsewhere" / "m.pt")
    assert chosen == tmp_path / "elsewhere" / "m.pt" and json.loads(sidecar_path(chosen).read_text())["model_file"] == "m.pt"


def test_export_model_errors(tmp_path):
    run = make_run(tmp_path, modality="T1ce")
    with pytest.raises(ConfigError) as err:
        export_model(run, "T1ce", "tflite")
    assert str(err.value) == "unknown export format 'tflite' (choose from onnx, torchscript)"
    weights = run / "weights" / "T1ce.pt"
    with pytest.raises(DataError) as err:
        export_model(weights, "T2", "torchscript")  # a weights file of another modality
    assert str(err.value) == f"{weights}: these weights are for modality 'T1ce', not 'T2'"
    assert not (run / "weights" / "T2.torchscript.pt").exists() and not (run / "export").exists()


def identity_onnx() -> bytes:
    """A valid one-node ONNX graph ``logits = image``: the stand-in for a quantized export."""
    from onnx import TensorProto, helper

    io_ = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["b", 1, "h", "w"]) for n in ("image", "logits")]
    graph = helper.make_graph([helper.make_node("Identity", ["image"], ["logits"])], "id", io_[:1], io_[1:])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def same_state(net: torch.nn.Module, weights: Path) -> bool:
    saved = torch.load(weights, weights_only=True)["state_dict"]
    state = net.state_dict()
    return state.keys() == saved.keys() and all(torch.equal(state[k], saved[k]) for k in saved)


class FakeOnnxExporter:
    """Stands in for ``onnx_model_bytes`` (a real export is ~10 s here): records its calls."""

    def __init__(self):
        self.calls: list[dict] = []

    def __call__(self, net, levels, metadata=None, optimize=True):
        # a copy as the real exporter writes it (the caller adds the model's sha256 afterwards)
        record = None if metadata is None else json.loads(json.dumps(metadata))
        self.calls.append({"net": net, "levels": levels, "metadata": record, "optimize": optimize})
        return b"onnx graph of the network"


def test_export_model_writes_onnx_by_default_through_the_onnx_exporter(tmp_path, monkeypatch):
    fake = FakeOnnxExporter()
    monkeypatch.setattr(export, "onnx_model_bytes", fake)
    monkeypatch.setattr(export, "_training_spacing", lambda run: None)
    run = make_run(tmp_path)
    out = export_model(run, "T2")
    assert out == run / "export" / "T2.onnx" and out.read_bytes() == b"onnx graph of the network"
    meta = read_export(out)
    assert meta["model_format"] == "onnx" and meta["model_file"] == "T2.onnx" and "quantization" not in meta
    (call,) = fake.calls
    assert call["levels"] == 3 and call["optimize"] is True  # the file keeps the folded graph
    assert call["metadata"] == {k: v for k, v in meta.items() if k != "model_sha256"}  # embedded as well
    assert same_state(call["net"], run / "weights" / "T2.pt") and not call["net"].training


def test_export_model_of_older_weights_without_a_modality_uses_the_name_asked_for(tmp_path, monkeypatch):
    monkeypatch.setattr(export, "onnx_model_bytes", FakeOnnxExporter())
    run = make_run(tmp_path)
    payload = torch.load(run / "weights" / "T2.pt", weights_only=True)
    del payload["modality"]
    torch.save(payload, run / "weights" / "T2.pt")
    out = export_model(run, "t2", "onnx")
    assert out == run / "export" / "t2.onnx" and read_export(out)["modality"] == "t2"


def test_int8_export_calibrates_on_the_run_quantizes_the_float_graph_and_embeds_the_record(tmp_path, monkeypatch):
    """The quantizer itself is tested in test_quantize.py (slow); here: what export_model hands it and keeps."""
    from semicml.inference import quantize

    fp32 = FakeOnnxExporter()
    calib = np.zeros((5, 1, 8, 8), np.float32)
    seen: dict = {}

    def calibration_slices(run, modality, multiple, context):
        seen["calibration"] = (run, modality, multiple, context)
        return calib

    def quantize_onnx(model, slices, scheme):
        seen["quantize"] = (model, slices, scheme)
        return identity_onnx()

    monkeypatch.setattr(export, "onnx_model_bytes", fp32)
    monkeypatch.setattr(export, "_training_spacing", lambda run: None)
    monkeypatch.setattr(quantize, "calibration_slices", calibration_slices)
    monkeypatch.setattr(quantize, "quantize_onnx", quantize_onnx)
    run = make_run(tmp_path)
    out = export_model(str(run), "t2", "onnx", quantize="int8")
    assert out == run / "export" / "T2-int8.onnx"
    assert seen["calibration"] == (run, "T2", 8, 0)  # the stored modality name, slices multiples of 2 ** levels, 2D
    assert seen["quantize"][0] == b"onnx graph of the network" and seen["quantize"][1] is calib
    assert seen["quantize"][2] == "int8"
    assert fp32.calls[0]["levels"] == 3 and fp32.calls[0]["metadata"] is None  # the record goes on the int8 graph
    assert same_state(fp32.calls[0]["net"], run / "weights" / "T2.pt")  # the run's trained network
    meta = read_export(out)
    assert meta["quantization"] == {"scheme": "int8", "tool": "onnxruntime.quantization.quantize_static",
                                    "format": "QDQ", "weights": "int8 per channel, 7-bit range",
                                    "activations": "uint8, MinMax calibration",
                                    "calibration": "5 slices of the run's training cases (slice store)"}
    assert meta["model_file"] == "T2-int8.onnx" and meta["model_format"] == "onnx"
    import onnx

    model = onnx.load_from_string(out.read_bytes())
    assert [n.op_type for n in model.graph.node] == ["Identity"]  # the quantizer's graph is what is written
    embedded = json.loads({p.key: p.value for p in model.metadata_props}[META_KEY])
    assert embedded == {k: v for k, v in meta.items() if k != "model_sha256"}
    sidecar_path(out).unlink()
    assert read_export(out) == embedded  # the model alone still predicts


def test_quantize_errors_list_the_schemes(tmp_path, monkeypatch):
    from semicml.inference import quantize

    monkeypatch.setattr(quantize, "SCHEMES", ("int8", "int4"))
    for fmt, scheme in (("torchscript", "int8"), ("onnx", "fp8")):
        with pytest.raises(ConfigError) as err:
            export_model(tmp_path, "T2", fmt, quantize=scheme)
        assert str(err.value) == f"--quantize {scheme!r} needs --format onnx and one of: int8, int4"
    assert not (tmp_path / "export").exists()


# --------------------------------------------------------------------------- read_export
def write_sidecar(model: Path, **meta) -> None:
    content = {"format": EXPORT_FORMAT, "model_sha256": hashlib.sha256(model.read_bytes()).hexdigest(), **meta}
    sidecar_path(model).write_text(json.dumps(content))


def test_read_export_checks_the_sidecar(tmp_path):
    model = tmp_path / "m.onnx"
    with pytest.raises(DataError) as err:
        read_export(model)
    assert str(err.value) == f"{model}: exported model not found"
    model.write_bytes(b"model")
    write_sidecar(model, modality="T2")
    assert read_export(model)["modality"] == "T2"
    side = sidecar_path(model)
    for bad in ([1, 2], {"format": "semicml-export-v0"}, {"modality": "T2"}):
        side.write_text(json.dumps(bad))
        with pytest.raises(DataError) as err:
            read_export(model)
        assert str(err.value) == f"{side}: not a semicml export sidecar (format 'semicml-export-v1' expected)"
    for bad in (b"\xff\xfe not text", b"{not json"):
        side.write_bytes(bad)
        with pytest.raises(DataError) as err:
            read_export(model)
        assert str(err.value) == f"{side}: sidecar is not valid JSON"
    write_sidecar(model)
    model.write_bytes(b"model, re-exported")
    with pytest.raises(DataError) as err:
        read_export(model)
    assert str(err.value) == f"{side}: sidecar does not describe this model file (sha256 differs; re-export)"


def test_read_export_falls_back_to_the_metadata_inside_the_model(tmp_path):
    pytest.importorskip("onnx")
    from semicml.inference.quantize import with_metadata

    ts = tmp_path / "m.torchscript.pt"
    ts.write_bytes(torchscript_bytes(tiny_net(), 3, {"format": EXPORT_FORMAT, "modality": "T1ce"}))
    assert read_export(ts) == {"format": EXPORT_FORMAT, "modality": "T1ce"}
    onnx_file = tmp_path / "m.onnx"
    onnx_file.write_bytes(with_metadata(identity_onnx(), META_KEY, {"format": EXPORT_FORMAT, "k": "v"}))
    assert read_export(onnx_file) == {"format": EXPORT_FORMAT, "k": "v"}

    ts.write_bytes(torchscript_bytes(tiny_net(), 3, {"format": "something-else"}))
    for model in (ts, tmp_path / "plain.torchscript.pt"):
        if not model.exists():
            model.write_bytes(torchscript_bytes(tiny_net(), 3))  # nothing embedded
        with pytest.raises(DataError) as err:
            read_export(model)
        assert str(err.value) == (f"{model}: no semicml metadata (neither {model.name}.json nor embedded): "
                                  "export it with semicml export")
    for name in ("junk.onnx", "junk.torchscript.pt"):
        junk = tmp_path / name
        junk.write_bytes(b"\x00\x01 not a model")
        with pytest.raises(DataError) as err:
            read_export(junk)
        assert str(err.value) == f"{junk}: not a readable ONNX or TorchScript model"


def test_read_export_without_onnx_installed_says_how_to_install_it(tmp_path, monkeypatch):
    model = tmp_path / "m.onnx"
    model.write_bytes(b"model")

    def missing(module, extra):
        raise ConfigError(f"{module} is not installed (pip install 'semicml[{extra}]')")

    monkeypatch.setattr(export, "require", missing)
    with pytest.raises(ConfigError) as err:
        read_export(model)
    assert str(err.value) == "onnx is not installed (pip install 'semicml[onnx]')"
