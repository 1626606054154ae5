"""int8 export (``semicml export --quantize int8``): calibration only from training slices, a graph
that is really quantized, and outputs that stay close to the float32 network's."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from semicml.errors import ConfigError, DataError

pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def store_run(phantom_root, tmp_path_factory):
    """A slice store of the phantom and a run.json that names 2 training and 2 other cases."""
    from semicml.data.store import PrepareOptions, SliceStore, prepare_store

    work = tmp_path_factory.mktemp("quantize")
    prepare_store(phantom_root, work / "store", PrepareOptions(modalities=("T2", "T1ce"), size=32, workers=1),
                  progress=False)
    store = SliceStore(work / "store")
    cases = sorted(store.cases)
    run = work / "run"
    run.mkdir()
    splits = {"train": cases[:2], "val": cases[2:3], "test": cases[3:4]}
    (run / "run.json").write_text(json.dumps({"store": str(work / "store"), "splits": splits}))
    return store, run, splits


def test_calibration_uses_only_training_slices_spread_over_each_brain(store_run):
    from semicml.inference.quantize import calibration_slices

    store, run, splits = store_run
    channel = store.modality_index("T1ce")
    got = calibration_slices(run, "T1ce", count=8, multiple=16)
    assert got.shape == (8, 1, 32, 32) and got.dtype == np.float32
    train = {case: np.asarray(store.images(case)[:, channel]) for case in splits["train"]}
    # 4 per training case: its first and last brain slice are among them (evenly spread)
    for k, case in enumerate(splits["train"]):
        zs = store.cases[case].nonempty_slices
        mine = got[4 * k : 4 * k + 4, 0]
        assert np.array_equal(mine[0], train[case][zs[0]]) and np.array_equal(mine[-1], train[case][zs[-1]])
        assert all(any(np.array_equal(s, train[case][z]) for z in zs) for s in mine)
    others = [np.asarray(store.images(c)[:, channel]) for c in splits["val"] + splits["test"]]
    assert not any(np.array_equal(s, o[z]) for s in got[:, 0] for o in others for z in range(o.shape[0])
                   if np.abs(o[z]).max() > 0)
    with pytest.raises(DataError, match="multiples of 64"):
        calibration_slices(run, "T2", count=4, multiple=64)


def test_calibration_slices_of_a_2_5d_network_carry_their_neighbours(store_run):
    from semicml.inference.quantize import calibration_slices

    store, run, splits = store_run
    channel = store.modality_index("T2")
    flat = calibration_slices(run, "T2", count=8, multiple=16)
    got = calibration_slices(run, "T2", count=8, multiple=16, context=1)
    assert got.shape == (8, 3, 32, 32) and np.array_equal(got[:, 1:2], flat)  # the centre is the 2D slice
    case = splits["train"][0]
    volume = np.asarray(store.images(case)[:, channel], dtype=np.float32)
    z = store.cases[case].nonempty_slices[0]
    below = volume[z - 1] if z > 0 else np.zeros_like(volume[z])  # zeros beyond the volume
    assert np.array_equal(got[0, 0], below) and np.array_equal(got[0, 2], volume[z + 1])


@pytest.mark.slow  # the ONNX export alone takes ~20 s on a 2-core CPU
def test_quantized_graph_is_int8_and_close_to_float32():
    import onnxruntime as ort

    from semicml.inference.export import onnx_model_bytes
    from semicml.inference.quantize import quantize_onnx, with_metadata
    from semicml.models import UNet2D

    torch.manual_seed(0)
    net = UNet2D(widths=(4, 8, 16), dropout=(0, 0, 0)).eval()
    rng = np.random.default_rng(0)
    calib = rng.normal(size=(16, 1, 32, 32)).astype(np.float32)
    fp32 = onnx_model_bytes(net, 2)
    int8 = with_metadata(quantize_onnx(fp32, calib), "semicml", {"a": 1})
    import onnx

    proto = onnx.load_from_string(int8)
    ops = {n.op_type for n in proto.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    weights_int8 = [t for t in proto.graph.initializer if t.data_type == onnx.TensorProto.INT8]
    assert len(weights_int8) >= 6  # every convolution's weights stored as int8
    assert json.loads({p.key: p.value for p in proto.metadata_props}["semicml"]) == {"a": 1}
    x = rng.normal(size=(4, 1, 32, 48)).astype(np.float32)  # another size than the calibration: dynamic shapes
    run = lambda model: ort.InferenceSession(model, providers=["CPUExecutionProvider"]).run(None, {"image": x})[0]
    a, b = run(fp32), run(int8)
    assert a.shape == b.shape == (4, 1, 32, 48)
    assert not np.array_equal(a, b)  # really another arithmetic
    # untrained: the logits vary little, so int8 rounding is relatively coarse (measured: r 0.989, mean
    # error 0.10 std); a quantizer calibrated on the wrong ranges gives a flat or unrelated map
    assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.95 and np.abs(a - b).mean() < 0.25 * a.std()


def test_quantize_needs_onnx_and_a_known_scheme(tmp_path):
    from semicml.inference.export import export_model

    with pytest.raises(ConfigError, match="needs --format onnx"):
        export_model(tmp_path, "t2", "torchscript", quantize="int8")
    with pytest.raises(ConfigError, match="needs --format onnx"):
        export_model(tmp_path, "t2", "onnx", quantize="int4")


# ------------------------------------------------------------------ quantize_onnx on a hand-built graph
def conv_onnx(weights: np.ndarray, bias: np.ndarray) -> bytes:
    """image (b, 1, h, w) -> 3x3 Conv with ``weights`` (C, 1, 3, 3), padding 1 -> Relu -> logits."""
    from onnx import TensorProto, helper

    from semicml.inference.engines import ONNX_INPUT, ONNX_OUTPUT

    c = weights.shape[0]
    image = helper.make_tensor_value_info(ONNX_INPUT, TensorProto.FLOAT, ["b", 1, "h", "w"])
    logits = helper.make_tensor_value_info(ONNX_OUTPUT, TensorProto.FLOAT, ["b", c, "h", "w"])
    inits = [helper.make_tensor("W", TensorProto.FLOAT, list(weights.shape), weights.ravel().tolist()),
             helper.make_tensor("B", TensorProto.FLOAT, [c], bias.tolist())]
    nodes = [helper.make_node("Conv", [ONNX_INPUT, "W", "B"], ["conv"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["conv"], [ONNX_OUTPUT])]
    graph = helper.make_graph(nodes, "conv", [image], [logits], initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def test_quantize_onnx_gives_a_per_channel_int8_qdq_graph_close_to_the_float_one():
    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper

    from semicml.inference.quantize import quantize_onnx

    rng = np.random.default_rng(0)
    # two output channels of very different weight scales: one scale per channel is what keeps both
    weights = np.stack([rng.normal(0, 1.0, (1, 3, 3)), rng.normal(0, 0.01, (1, 3, 3))]).astype(np.float32)
    model = conv_onnx(weights, np.array([0.1, 0.0], np.float32))
    slices = rng.normal(0, 1, (16, 1, 16, 16)).astype(np.float32)
    q = onnx.load_from_string(quantize_onnx(model, slices))
    ops = [n.op_type for n in q.graph.node]
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops and ops.count("Conv") == 1
    inits = {i.name: numpy_helper.to_array(i) for i in q.graph.initializer}
    int8 = [v for v in inits.values() if v.dtype == np.int8 and v.shape == weights.shape]
    assert len(int8) == 1 and not any(v.dtype == np.float32 and v.shape == weights.shape for v in inits.values())
    assert np.abs(int8[0].astype(int)).max() <= 64  # 7-bit range: no int16 saturation on CPUs without VNNI
    zero_points = [inits[n.input[2]] for n in q.graph.node if n.op_type == "QuantizeLinear" and len(n.input) > 2
                   and n.input[2] in inits]
    assert zero_points and all(z.dtype == np.uint8 for z in zero_points)  # activations as uint8
    weight_scale = [inits[n.input[1]] for n in q.graph.node
                    if n.op_type == "DequantizeLinear" and inits.get(n.input[0]) is not None
                    and inits[n.input[0]].shape == weights.shape]
    assert len(weight_scale) == 1 and weight_scale[0].shape == (2,)  # per channel
    assert weight_scale[0][1] < 0.05 * weight_scale[0][0]
    x = rng.normal(0, 1, (2, 1, 16, 16)).astype(np.float32)
    run = lambda m: ort.InferenceSession(m, providers=["CPUExecutionProvider"]).run(None, {"image": x})[0]
    ref, got = run(model), run(q.SerializeToString())
    # within a few steps of the output's (per-tensor) range; 8-bit weights on AVX2 were 59% off
    assert np.abs(got - ref).max() < 0.05 * np.abs(ref).max()
    with pytest.raises(ValueError) as err:
        quantize_onnx(model, slices, "int4")
    assert str(err.value) == "unknown quantization 'int4' (choose from int8)"


def test_with_metadata_replaces_its_own_entry_and_keeps_the_others():
    import onnx

    from semicml.inference.quantize import with_metadata

    model = onnx.load_from_string(conv_onnx(np.ones((1, 1, 3, 3), np.float32), np.zeros(1, np.float32)))
    entry = model.metadata_props.add()
    entry.key, entry.value = "semicml", '{"modality": "T2"}'
    once = with_metadata(model.SerializeToString(), "quantization", {"scheme": "int8"})
    twice = with_metadata(once, "quantization", {"scheme": "int8", "slices": 64})
    props = [(p.key, p.value) for p in onnx.load_from_string(twice).metadata_props]
    assert props == [("semicml", '{"modality": "T2"}'), ("quantization", json.dumps({"scheme": "int8", "slices": 64}))]


# ------------------------------------------------------------------ calibration_slices: defaults and errors
def test_calibration_defaults_take_up_to_64_slices_evenly_from_every_training_case(store_run):
    from semicml.inference.quantize import CALIBRATION_SLICES, calibration_slices

    store, run, splits = store_run
    got = calibration_slices(run, "T2")  # count 64, multiple 16 (a 32 x 32 store)
    per_case = -(-CALIBRATION_SLICES // len(splits["train"]))
    expected = sum(min(per_case, len(store.cases[c].nonempty_slices)) for c in splits["train"])
    assert got.shape == (min(expected, CALIBRATION_SLICES), 1, 32, 32)


def test_calibration_skips_a_training_case_without_brain_slices_and_goes_on(store_run, monkeypatch):
    import dataclasses

    from semicml.data.store import SliceStore
    from semicml.inference.quantize import calibration_slices

    store, run, splits = store_run
    first, second = splits["train"]
    init = SliceStore.__init__

    def without_first(self, *args, **kwargs):
        init(self, *args, **kwargs)
        self.cases[first] = dataclasses.replace(self.cases[first], nonempty_slices=[])

    monkeypatch.setattr(SliceStore, "__init__", without_first)
    got = calibration_slices(run, "T2", count=4)
    zs = store.cases[second].nonempty_slices
    images = np.asarray(store.images(second)[:, store.modality_index("T2")])
    # 2 per case (4 over 2 cases), both from the second: its first and last brain slice
    assert got.shape[0] == 2 and np.array_equal(got[0, 0], images[zs[0]]) and np.array_equal(got[1, 0], images[zs[-1]])


def test_calibration_errors_name_the_run_and_the_problem(store_run, tmp_path, monkeypatch):
    from semicml.data.store import SliceStore
    from semicml.inference.quantize import calibration_slices

    store, run, splits = store_run
    with pytest.raises(DataError) as err:
        calibration_slices(tmp_path, "T2")
    assert str(err.value).startswith(f"{tmp_path}: calibration needs the run's run.json and its slice store (")
    other = tmp_path / "run"
    other.mkdir()
    info = json.loads((run / "run.json").read_text())
    (other / "run.json").write_text(json.dumps({**info, "splits": {**info["splits"], "train": ["nobody"]}}))
    with pytest.raises(DataError) as err:
        calibration_slices(other, "T2")
    assert str(err.value) == f"{other}: no training case of the run is in its slice store: nothing to calibrate on"
    # slices 32 high but 24 wide: one side not a multiple of 16 is enough to refuse
    images = SliceStore.images
    monkeypatch.setattr(SliceStore, "images", lambda self, case: images(self, case)[..., :24])
    with pytest.raises(DataError) as err:
        calibration_slices(run, "T2", count=4, multiple=16)
    assert str(err.value) == (f"{run}: stored slices (32, 24) are not multiples of 16: re-prepare the store")


def test_calibration_takes_one_slice_per_case_when_there_are_more_cases_than_slices_asked(store_run):
    from semicml.inference.quantize import calibration_slices

    store, run, splits = store_run
    got = calibration_slices(run, "T2", count=2)  # 2 training cases: the first brain slice of each
    channel = store.modality_index("T2")
    for k, case in enumerate(splits["train"]):
        first = np.asarray(store.images(case)[store.cases[case].nonempty_slices[0], channel])
        assert np.array_equal(got[k, 0], first)


def test_quantize_onnx_calibrates_on_every_slice_once_as_float32_in_batches_of_8(monkeypatch):
    """The calibration reader handed to onnxruntime: every slice once, in order, float32, contiguous
    (the quantizer feeds it to an ONNX session as it is); the graph is shape-inferred first without
    symbolic shapes (H and W are dynamic) and quantized as per-channel 7-bit QDQ int8."""
    import onnxruntime.quantization as oq
    import onnxruntime.quantization.shape_inference as shape_inference

    from semicml.inference.quantize import quantize_onnx

    seen: dict = {}

    def fake_pre_process(src, dst, **kwargs):
        seen["pre"] = (open(src, "rb").read(), kwargs)
        open(dst, "wb").write(b"pre-processed")

    def fake_quantize(src, dst, reader, **kwargs):
        seen["src"] = open(src, "rb").read()
        batches = []
        while (feed := reader.get_next()) is not None:
            batches.append(feed)
        seen["batches"], seen["kwargs"] = batches, kwargs
        open(dst, "wb").write(b"int8 model")

    monkeypatch.setattr(shape_inference, "quant_pre_process", fake_pre_process)
    monkeypatch.setattr(oq, "quantize_static", fake_quantize)
    slices = np.arange(19 * 4 * 4, dtype=np.float64).reshape(19, 1, 4, 4)
    assert quantize_onnx(b"float model", slices) == b"int8 model"
    assert seen["pre"] == (b"float model", {"skip_symbolic_shape": True})
    assert seen["src"] == b"pre-processed"
    batches = [feed["image"] for feed in seen["batches"]]
    assert [b.shape[0] for b in batches] == [8, 8, 3] and all(set(feed) == {"image"} for feed in seen["batches"])
    assert all(b.dtype == np.float32 and b.flags.c_contiguous for b in batches)
    np.testing.assert_array_equal(np.concatenate(batches), slices.astype(np.float32))
    assert seen["kwargs"] == {"quant_format": oq.QuantFormat.QDQ, "per_channel": True, "reduce_range": True,
                              "activation_type": oq.QuantType.QUInt8, "weight_type": oq.QuantType.QInt8}


def test_quantize_and_metadata_name_the_extra_to_install_when_onnx_is_missing(monkeypatch):
    import sys

    from semicml.inference.quantize import quantize_onnx, with_metadata

    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails as if not installed
    with pytest.raises(ConfigError) as err:
        quantize_onnx(b"", np.zeros((1, 1, 16, 16), np.float32))
    assert str(err.value) == "onnxruntime is not installed (pip install 'semicml[onnx]')"
    monkeypatch.setitem(sys.modules, "onnx", None)
    with pytest.raises(ConfigError) as err:
        with_metadata(b"", "k", {})
    assert str(err.value) == "onnx is not installed (pip install 'semicml[onnx]')"
