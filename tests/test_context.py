"""Through-plane context (2.5D, ``model.context``): the same neighbours in training and predict,
modality-major batches, one augmentation draw per modality, and every engine/export path."""

from __future__ import annotations

import json
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pytest
import torch
from torch import nn

from conftest import train_phantom_run
from semicml.data.context import context_of_channels, context_stack, group_size
from semicml.data.sampler import AugmentOptions, PairedSliceDataset, augment_pair, simulate_low_resolution
from semicml.hardware import resolve_precision
from semicml.inference.predictor import predict_planes
from semicml.methods.base import Method

CPU = torch.device("cpu")
FP32 = resolve_precision("fp32", CPU)


def test_context_stack_by_hand():
    volume = np.arange(1, 6, dtype=np.float32)[:, None, None] * np.ones((5, 2, 2), np.float32)  # slice z holds z+1
    assert context_stack(volume, 2, 0).shape == (1, 2, 2) and context_stack(volume, 2, 0)[0, 0, 0] == 3
    assert context_stack(volume, 2, 1)[:, 0, 0].tolist() == [2, 3, 4]
    assert context_stack(volume, 0, 1)[:, 0, 0].tolist() == [0, 1, 2]  # zeros beyond the volume
    assert context_stack(volume, 4, 2)[:, 0, 0].tolist() == [3, 4, 5, 0, 0]
    assert context_stack(volume[:1], 0, 2)[:, 0, 0].tolist() == [0, 0, 1, 0, 0]
    stacked = context_stack(np.stack([volume, -volume], axis=1), 1, 1)  # (Z, M, H, W) -> (3, M, H, W)
    assert stacked.shape == (3, 2, 2, 2) and stacked[:, 1, 0, 0].tolist() == [-1, -2, -3]


def test_context_of_channels_and_group_size():
    assert [group_size(k) for k in range(4)] == [1, 3, 5, 7]
    assert [context_of_channels(c) for c in (1, 3, 5, 7)] == [0, 1, 2, 3]
    for bad in (0, 2, 4):
        with pytest.raises(ValueError, match="odd number"):
            context_of_channels(bad)


def test_method_channel_takes_each_modalitys_group():
    fake = SimpleNamespace(ctx=SimpleNamespace(modalities=["t2", "t1ce"]))
    x = torch.arange(6.0).view(1, 6, 1, 1).expand(2, 6, 3, 3)  # 2 modalities x 3 context slices
    assert Method.channel(fake, x, 0)[0, :, 0, 0].tolist() == [0, 1, 2]
    assert Method.channel(fake, x, 1)[0, :, 0, 0].tolist() == [3, 4, 5]
    flat = torch.arange(2.0).view(1, 2, 1, 1)  # 2D: one channel per modality, as before
    assert Method.channel(fake, flat, 1).flatten().tolist() == [1.0]


class FakeStore:
    """Two modalities; modality m of slice z holds (z + 1) * (1 if m == 0 else -1)."""

    modalities = ["t2", "t1ce"]

    def __init__(self, depth=4):
        base = np.arange(1, depth + 1, dtype=np.float16)[:, None, None, None] * np.ones((depth, 2, 4, 4), np.float16)
        base[:, 1] *= -1
        self.volume = base
        self.labels = np.zeros((depth, 4, 4), np.uint8)

    def modality_index(self, m):
        return self.modalities.index(m)

    def images(self, case):
        return self.volume

    def label(self, case):
        return self.labels


def test_dataset_gives_each_modality_its_neighbours_modality_major():
    store = FakeStore()
    two_d = PairedSliceDataset(store, [("c", 0)], [("c", 3)])
    assert two_d[0]["images"].shape == (2, 4, 4) and two_d[0]["images"][:, 0, 0].tolist() == [1, -1]
    ds = PairedSliceDataset(store, [("c", 0)], [("c", 3)], context=1)
    first, last = ds[0], ds[1]
    assert first["images"].shape == (6, 4, 4) and first["label"].shape == (4, 4)
    assert first["images"][:, 0, 0].tolist() == [0, 1, 2, 0, -1, -2]
    assert last["images"][:, 0, 0].tolist() == [3, 4, 0, -3, -4, 0]
    only_t1ce = PairedSliceDataset(store, [("c", 1)], [], modalities=["t1ce"], context=1)
    assert only_t1ce[0]["images"][:, 0, 0].tolist() == [-1, -2, -3]


def test_augmentation_draws_once_per_modality_for_its_whole_group():
    images = np.ones((6, 16, 16), np.float32)  # 2 modalities x 3 context slices
    opts = AugmentOptions(enabled=True, flip=False, rotate_degrees=0.0, scale=(1.0, 1.0), noise_std=0.0)
    out, _ = augment_pair(images.copy(), None, np.random.default_rng(0), opts, group=3)
    values = out[:, 0, 0]
    assert np.allclose(values[:3], values[0]) and np.allclose(values[3:], values[3])  # one gain + shift per modality
    assert not np.isclose(values[0], values[3])
    per_slice, _ = augment_pair(images.copy(), None, np.random.default_rng(0), opts, group=1)
    assert len(np.unique(per_slice[:, 0, 0].round(6))) == 6  # group 1: each channel its own modality

    ramp = np.tile(np.linspace(-1, 1, 16, dtype=np.float32), (16, 1))
    blurred = simulate_low_resolution(np.stack([ramp] * 3 + [ramp] * 3), np.random.default_rng(1), 1.0, (0.5, 0.6),
                                      group=3)
    assert np.allclose(blurred[0], blurred[1]) and np.allclose(blurred[0], blurred[2])  # one zoom for the group
    assert not np.allclose(blurred[0], ramp)


class PreviousMinusNext(nn.Module):
    """A 2.5D stub: logit = slice z-1 - slice z+1 (in_channels 3)."""

    in_channels = 3
    levels = 0

    def forward(self, x):
        assert x.shape[1] == 3
        return x[:, 0:1] - x[:, 2:3]


def test_predict_planes_feeds_the_neighbours_zero_beyond_the_volume():
    planes = np.zeros((5, 4, 4), np.float32)
    for z in (0, 1, 2, 4):
        planes[z] = z + 1.0  # slice 3 empty: never shown, background
    out = predict_planes(PreviousMinusNext(), planes, CPU, FP32, batch_size=2, channels_last=False)
    expect = {0: 0 - 2.0, 1: 1 - 3.0, 2: 2 - 0.0, 4: 0 - 0.0}
    for z, logit in expect.items():
        assert np.allclose(out[z], 1 / (1 + np.exp(-logit))), z
    assert not out[3].any()


@pytest.fixture(scope="module")
def context_run(phantom_root, tmp_path_factory):
    return train_phantom_run(phantom_root, tmp_path_factory.mktemp("context"),
                             {"iterations": 120, "val_every": 60, "method": "semicml", "model": {"context": 1},
                              "num_workers": 0, "device": "cpu", "low_resolution": 0.25})


@pytest.mark.slow
def test_a_context_run_trains_predicts_and_exports_alike(context_run, phantom_root, tmp_path):
    from semicml.inference.export import export_model, read_export
    from semicml.inference.predict import predict_cases

    weights = torch.load(context_run / "weights" / "T2.pt", map_location="cpu", weights_only=False)
    assert weights["network"]["in_channels"] == 3
    cases = ["phantom_004"]
    predict_cases(context_run, "T2", phantom_root, tmp_path / "torch", device="cpu", precision="fp32",
                  save_probabilities=True, progress=False, cases=cases)
    ref = np.asarray(nib.load(tmp_path / "torch" / "phantom_004_prob.nii.gz").dataobj)
    assert ref.max() > 0.5  # the network found something: a real comparison below
    onnx = export_model(context_run, "T2", "onnx")
    meta = read_export(onnx)
    assert meta["input"]["shape"][1] == 3 and "neighbours" in meta["input"]["content"]
    for model, engine in ((onnx, "onnxruntime"), (export_model(context_run, "T2", "torchscript"), "torch"),
                          (context_run, "openvino")):
        out = tmp_path / engine
        predict_cases(model, "T2", phantom_root, out, engine=engine, precision="fp32", save_probabilities=True,
                      progress=False, cases=cases)
        got = np.asarray(nib.load(out / "phantom_004_prob.nii.gz").dataobj)
        assert np.abs(got - ref).max() <= 1e-4, engine
    assert json.loads((context_run / "run.json").read_text())["network"]["in_channels"] == 3
    assert "context: 1" in (context_run / "config.yaml").read_text()
