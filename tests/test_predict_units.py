"""What ``predict`` hands to what (issue 14, survivors of the mutation run over inference/predict.py):
its argument checks, the device, precision, threads and compile flag reaching the loader and the
engine, exported models told apart from runs, and the record of a region prediction."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import semicml.inference.predict as predict_mod
from semicml.data.targets import Target
from semicml.errors import ConfigError, DataError
from semicml.inference.predict import check_region_output, is_export, load_model, predict_cases

CPU = torch.device("cpu")


class Spy:
    """Records every call; returns ``result`` (or what ``result(*args, **kwargs)`` gives)."""

    def __init__(self, result=None):
        self.calls: list[tuple[tuple, dict]] = []
        self.result = result

    def __call__(self, *args, **kwargs):
        self.calls.append((args, kwargs))
        return self.result(*args, **kwargs) if callable(self.result) else self.result


class TwoLevels(torch.nn.Module):
    levels = 2

    def forward(self, x):
        return x


@pytest.fixture
def spies(monkeypatch):
    """load_weights, the engines, the in-memory export and the thread setting replaced by spies."""
    net = TwoLevels()
    s = {"weights": Spy((net, {"modality": "T2", "preprocessing": {}})), "torch_engine": Spy(lambda *a, **k: SimpleNamespace(name="torch engine")),
         "onnx_engine": Spy("onnx engine"), "onnx_bytes": Spy(b"onnx"), "threads": Spy(), "device": Spy(CPU),
         "torchscript": Spy("scripted"), "net": net}
    monkeypatch.setattr(predict_mod, "load_weights", s["weights"])
    monkeypatch.setattr(predict_mod, "TorchEngine", s["torch_engine"])
    monkeypatch.setattr(predict_mod, "_onnx_engine", s["onnx_engine"])
    monkeypatch.setattr(predict_mod, "onnx_model_bytes", s["onnx_bytes"])
    monkeypatch.setattr(predict_mod, "resolve_device", s["device"])
    monkeypatch.setattr(predict_mod, "load_torchscript", s["torchscript"])
    monkeypatch.setattr(torch, "set_num_threads", s["threads"])
    return s


# ------------------------------------------------------------------------------ load_model
def test_load_model_defaults_a_torch_engine_on_the_resolved_cpu_without_compile(spies, tmp_path):
    engine, info = load_model(tmp_path, "T2")
    assert engine.name == "torch engine" and info["modality"] == "T2"
    assert spies["device"].calls == [(("cpu",), {})]
    assert spies["weights"].calls == [((tmp_path, "T2", CPU), {})]
    (args, kwargs), = spies["torch_engine"].calls
    assert args[:2] == (spies["net"], CPU) and kwargs == {"channels_last": True, "compile": False}
    assert spies["threads"].calls == [] and spies["onnx_engine"].calls == []


def test_load_model_takes_a_device_as_given_and_sets_threads_for_torch_only(spies, tmp_path):
    load_model(tmp_path, "T2", "torch", CPU, "fp32", threads=3, compile=True)
    assert spies["device"].calls == []  # a torch.device is used as it is
    assert spies["threads"].calls == [((3,), {})]
    assert spies["torch_engine"].calls[0][1] == {"channels_last": True, "compile": True}
    spies["threads"].calls.clear()
    assert load_model(tmp_path, "T2", "onnxruntime", CPU, threads=3)[0] == "onnx engine"
    assert spies["threads"].calls == []  # ONNX Runtime takes its own thread count ...
    assert spies["onnx_bytes"].calls == [((spies["net"], 2), {"optimize": False})]
    assert spies["onnx_engine"].calls == [(("onnxruntime", b"onnx", 4, 3, 0), {})]  # ... here, with 2 ** levels


def export_file(tmp_path: Path, name: str, meta: dict) -> Path:
    model = tmp_path / name
    model.write_bytes(b"model")
    (tmp_path / (name + ".json")).write_text(json.dumps(meta))
    return model


def test_load_model_of_an_export_checks_modality_and_engine(spies, tmp_path, monkeypatch):
    monkeypatch.setattr(predict_mod, "read_export", lambda path: json.loads(Path(str(path) + ".json").read_text()))
    onnx = export_file(tmp_path, "t2.onnx", {"modality": "T2", "levels": 3})
    with pytest.raises(DataError) as err:
        load_model(onnx, "T1ce", "onnxruntime")
    assert err.value.path == onnx and str(err.value) == f"{onnx}: this model is for modality 'T2', not 'T1ce'"
    with pytest.raises(ConfigError) as err:
        load_model(onnx, "t2", "torch")
    assert str(err.value) == (f"{onnx}: an ONNX model runs with --engine onnxruntime or openvino (torch runs a run "
                              "directory, a weights file or a TorchScript export)")  # names the file: one of several runs
    engine, meta = load_model(onnx, "t2", "openvino", threads=2)
    assert engine == "onnx engine" and meta["levels"] == 3
    assert spies["onnx_engine"].calls == [(("openvino", onnx, 8, 2, 0), {})]  # 2D: no through-plane context
    scripted = export_file(tmp_path, "t2.torchscript.pt", {"modality": "T2", "levels": 2})
    with pytest.raises(ConfigError) as err:
        load_model(scripted, "T2", "onnxruntime")
    assert str(err.value) == f"{scripted}: a TorchScript model runs with --engine torch, not onnxruntime"
    engine, _ = load_model(scripted, "T2", "torch", CPU, "fp32")  # the torch engine runs a TorchScript export
    assert spies["torchscript"].calls == [((scripted, CPU), {})] and engine.multiple == 4
    assert spies["torch_engine"].calls[-1][1] == {"channels_last": True, "compile": False}


def test_is_export_by_name_or_sidecar(tmp_path):
    for name in ("a.onnx", "a.torchscript.pt", "a.pt"):
        (tmp_path / name).write_bytes(b"x")
    assert is_export(tmp_path / "a.onnx") and is_export(tmp_path / "a.torchscript.pt")
    assert not is_export(tmp_path / "a.pt")  # a weights file
    (tmp_path / "a.pt.json").write_text("{}")
    assert is_export(tmp_path / "a.pt")  # any file with an export sidecar
    assert not is_export(tmp_path / "b.onnx") and not is_export(tmp_path)  # missing; a run directory
    (tmp_path / "c.onnx.json").write_text("{}")
    assert not is_export(tmp_path / "c.onnx")  # a sidecar alone is no model


# ------------------------------------------------------------------------------ predict_cases
@pytest.mark.parametrize("kwargs, message", [
    ({"window": "box"}, "unknown window 'box' (choose from whole, brain)"),
    ({"margin": -2}, "--margin must be >= 0, got -2"),
    ({"engine": "openvino", "compile": True},
     "--compile applies to --engine torch (the openvino engine compiles the graph itself)"),
    ({"engine": "onnxruntime", "device": "cuda"},
     "--engine onnxruntime runs on the CPU; --device cuda needs --engine torch"),
    ({"engine": "onnxruntime", "device": "CPU"},
     "--engine onnxruntime runs on the CPU; --device CPU needs --engine torch"),
])
def test_predict_argument_checks_are_exact_and_come_first(tmp_path, kwargs, message):
    with pytest.raises(ConfigError) as err:
        predict_cases(tmp_path / "no-run", "T2", tmp_path / "no-input", tmp_path / "out", **kwargs)
    assert str(err.value) == message and not (tmp_path / "out").exists()


def test_predict_hands_engine_device_precision_threads_and_compile_to_the_loader(tmp_path, monkeypatch):
    seen = []

    def load(*args):
        seen.append(args)
        raise DataError("stop here")

    monkeypatch.setattr(predict_mod, "load_model", load)
    monkeypatch.setattr(predict_mod, "resolve_device", lambda name: f"resolved {name}")
    for engine, device, compile, dev in (("torch", "cuda", True, "resolved cuda"), ("torch", "auto", False, "resolved auto"),
                                         ("onnxruntime", "auto", False, "resolved cpu"),
                                         ("openvino", "cpu", False, "resolved cpu")):
        seen.clear()
        with pytest.raises(DataError):
            predict_cases("RUN", "T2", tmp_path, tmp_path / "out", device=device, precision="bf16", engine=engine,
                          threads=5, compile=compile)
        assert seen == [("RUN", "T2", engine, dev, "bf16", 5, compile)]
    seen.clear()
    with pytest.raises(DataError):
        predict_cases("RUN", "T2", tmp_path, tmp_path / "out")
    assert seen == [("RUN", "T2", "torch", "resolved auto", "auto", None, False)]  # the defaults


REGIONS = Target(name="regions", classes=["wt", "tc", "et"], values=[[1, 2, 4], [1, 4], [4]], regions=True,
                 paint=[2, 1, 4])
OVERLAPPING = Target(name="regions", classes=["a", "b"], values=[[1], [1, 2]], regions=True, paint=None)


def test_region_output_checks():
    check_region_output(None, False)
    check_region_output(REGIONS, False)
    check_region_output(REGIONS, True)
    check_region_output(OVERLAPPING, True)  # regions no label map can hold: one file each is fine
    with pytest.raises(ConfigError) as err:
        check_region_output(OVERLAPPING, False)
    assert str(err.value) == ("the regions a, b cannot be painted into one label map (a later region covers an "
                              "earlier one); use --regions-as-files")
    with pytest.raises(ConfigError, match=r"^--regions-as-files needs a network trained on a region target"):
        check_region_output(None, True)


@pytest.mark.parametrize("as_files, written_as", [(False, "one label map, painted in order with [2, 1, 4]"),
                                                  (True, "one mask per region")])
def test_the_record_says_how_regions_were_written(tmp_path, monkeypatch, as_files, written_as):
    recorded = {}

    def predict_all(found, out_dir, runner, preprocessing, post, threshold, save_probabilities, tta, progress, about,
                    **kwargs):
        recorded.update(about=about, **kwargs)
        return []

    info = {"modality": "T2w", "preprocessing": {}, "postprocessing": "none",
            "target": {"name": "regions", "classes": REGIONS.classes, "values": REGIONS.values, "regions": True,
                       "paint": REGIONS.paint}}
    monkeypatch.setattr(predict_mod, "load_model", lambda *args: ("engine", info))
    monkeypatch.setattr(predict_mod, "read_single_modality", lambda path, modality: [("a", None)])
    monkeypatch.setattr(predict_mod, "_predict_all", predict_all)
    predict_cases("RUN", "T2", tmp_path, tmp_path / "out", regions_as_files=as_files)
    assert recorded["about"]["regions"] == {"classes": ["wt", "tc", "et"], "values": [[1, 2, 4], [1, 4], [4]],
                                            "written_as": written_as}
    assert recorded["network_modality"] == "T2w" and recorded["regions_as_files"] is as_files
    assert recorded["regions"] == REGIONS
    assert (tmp_path / "out").is_dir() and np.isscalar(recorded["about"]["margin"])


def test_predict_refuses_files_per_region_from_a_binary_network_before_writing(tmp_path, monkeypatch):
    monkeypatch.setattr(predict_mod, "load_model", lambda *args: ("engine", {"preprocessing": {}}))
    with pytest.raises(ConfigError, match="^--regions-as-files needs a network trained on a region target"):
        predict_cases("RUN", "T2", tmp_path, tmp_path / "out", regions_as_files=True)
    assert not (tmp_path / "out").exists()


def test_load_model_of_a_network_without_levels_assumes_four_down_samplings(spies, tmp_path, monkeypatch):
    plain = torch.nn.Identity()  # no ``levels``: the U-Net default of 4, so sides are multiples of 16
    monkeypatch.setattr(predict_mod, "load_weights", Spy((plain, {"preprocessing": {}})))
    load_model(tmp_path, "T2", "openvino", CPU)
    assert spies["onnx_bytes"].calls == [((plain, 4), {"optimize": False})]
    assert spies["onnx_engine"].calls == [(("openvino", b"onnx", 16, None, 0), {})]


def test_the_torchscript_engine_gets_the_network_device_and_precision(spies, tmp_path, monkeypatch):
    from semicml.hardware import resolve_precision

    monkeypatch.setattr(predict_mod, "read_export", lambda path: {"modality": "T2", "levels": 3})
    scripted = export_file(tmp_path, "t2.torchscript.pt", {})
    load_model(scripted, "T2", "torch", CPU, "fp32", compile=True)
    (args, kwargs), = spies["torch_engine"].calls
    assert args == ("scripted", CPU, resolve_precision("fp32", CPU))
    assert kwargs == {"channels_last": True, "compile": True}


def test_onnx_engine_picks_the_runtime_by_name(monkeypatch):
    made = []
    monkeypatch.setattr(predict_mod, "OnnxRuntimeEngine", lambda *args: made.append(("ort", *args)))
    monkeypatch.setattr(predict_mod, "OpenVinoEngine", lambda *args: made.append(("ov", *args)))
    predict_mod._onnx_engine("onnxruntime", b"m", 8, 2)
    predict_mod._onnx_engine("openvino", Path("m.onnx"), 16, None, 1)
    assert made == [("ort", b"m", 8, 2, 0), ("ov", Path("m.onnx"), 16, None, 1)]


# ------------------------------------------------------------------------------ engine_planes by hand
class Channels(torch.nn.Module):
    """``n`` output channels: channel c is the input plus c (so each channel's sigmoid differs)."""

    levels = 2

    def __init__(self, n: int):
        super().__init__()
        self.n = n

    def forward(self, x):
        return torch.cat([x + c for c in range(self.n)], dim=1)


def _engine(net):
    from semicml.hardware import resolve_precision
    from semicml.inference.engines import TorchEngine

    return TorchEngine(net, CPU, resolve_precision("fp32", CPU), channels_last=False)


@pytest.mark.parametrize("channels", [2, 3])
def test_engine_planes_gives_one_float32_map_per_channel(channels):
    from semicml.inference.predictor import engine_planes

    planes = np.zeros((3, 8, 8), np.float32)
    planes[1, 2:6, 2:6] = np.linspace(-1, 1, 16, dtype=np.float32).reshape(4, 4)
    got = engine_planes(_engine(Channels(channels)), planes, channels=channels)
    assert got.shape == (3, channels, 8, 8) and got.dtype == np.float32
    for c in range(channels):
        np.testing.assert_allclose(got[1, c], 1 / (1 + np.exp(-(planes[1] + c))), atol=1e-6)
    assert not got[0].any() and not got[2].any()  # empty slices are not run: 0


def test_engine_planes_errors_are_exact():
    from semicml.inference.predictor import engine_planes

    planes = np.ones((1, 8, 8), np.float32)
    with pytest.raises(ValueError) as err:
        engine_planes(_engine(Channels(3)), planes, channels=2)
    assert str(err.value) == "the network has 3 output channels, expected 2"
    with pytest.raises(ValueError) as err:
        engine_planes(_engine(Channels(1)), planes, window="box")
    assert str(err.value) == "unknown window 'box' (choose from whole, brain)"


def test_brain_window_margins_default_to_none_in_the_prediction_path():
    from semicml.hardware import resolve_precision
    from semicml.inference.predict import probabilities_on_grid
    from semicml.inference.predictor import engine_planes

    class Roll(torch.nn.Module):
        levels = 2

        def forward(self, x):
            return 5.0 * (x - torch.roll(x, 1, dims=-1))

    planes = np.zeros((1, 32, 32), np.float32)
    planes[0, 8:16, 8:16] = np.random.default_rng(0).random((8, 8), dtype=np.float32) + 1
    engine = _engine(Roll())
    tight = engine_planes(engine, planes, window="brain", margin=0)
    assert not np.allclose(tight, engine_planes(engine, planes, window="brain", margin=1))
    np.testing.assert_array_equal(engine_planes(engine, planes, window="brain"), tight)
    vol = planes[0][:, :, None]
    prep = {"in_plane": "crop", "size": 32, "normalisation": "none"}
    fp32 = resolve_precision("fp32", CPU)
    default = probabilities_on_grid(Roll(), vol, np.eye(4), prep, CPU, fp32, channels_last=False, window="brain")
    zero = probabilities_on_grid(Roll(), vol, np.eye(4), prep, CPU, fp32, channels_last=False, window="brain",
                                 margin=0)
    np.testing.assert_array_equal(default, zero)


# ------------------------------------------------------------ flip TTA on networks never shown a mirror
def test_mirroring_warning_reads_the_training_config_of_the_run(tmp_path):
    from semicml.inference.predict import mirroring_warning

    run = tmp_path / "run"
    (run / "weights").mkdir(parents=True)
    assert mirroring_warning(run) is None  # no config: unknown, no alarm
    (run / "config.yaml").write_text("method: semicml-prel\naugment: false\n")
    for target in (run, run / "weights" / "T2.pt", run / "export" / "T2.onnx"):
        note = mirroring_warning(target)
        assert note is not None and note.startswith("warning: ") and "without mirroring" in note
        assert "--augment" in note and "\n" not in note
    (run / "config.yaml").write_text("method: semicml-prel\naugment: true\n")
    assert mirroring_warning(run) is None
    (run / "config.yaml").write_text("augment: [unclosed\n")
    assert mirroring_warning(run) is None  # an unreadable config is not this check's business


@pytest.mark.parametrize("options,warned", [({"tta": True}, True), ({"uncertainty": True}, True), ({}, False)])
def test_predict_warns_when_flip_averaging_a_network_trained_without_mirroring(tmp_path, monkeypatch, capsys,
                                                                              options, warned):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("augment: false\n")
    monkeypatch.setattr(predict_mod, "load_model", lambda *a: (None, {"preprocessing": {}}))
    monkeypatch.setattr(predict_mod, "read_single_modality", lambda *a: {})
    monkeypatch.setattr(predict_mod, "select_cases", lambda found, *a: found)
    monkeypatch.setattr(predict_mod, "_predict_all", lambda *a, **k: [])
    assert predict_cases(run, "T2", tmp_path, tmp_path / "out", **options) == []
    err = capsys.readouterr().err
    assert ("trained without mirroring" in err) is warned
