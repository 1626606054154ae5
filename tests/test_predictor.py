"""``predict_planes`` beyond test_core_inference.py: batching and the evaluation mode inside.

mutmut makes no mutant of this function (it is under ``@torch.no_grad()``), so its hand mutants
live in benchmarks/mutation.py (``--hand predictor``); these tests are written against them.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from semicml.hardware import resolve_precision
from semicml.inference.predictor import predict_planes

CPU = torch.device("cpu")
FP32 = resolve_precision("fp32", CPU)


class Recorder(nn.Module):
    def __init__(self):
        super().__init__()
        self.batches: list[int] = []

    def forward(self, x):
        self.batches.append(x.shape[0])
        return 2.0 * x


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def test_every_non_empty_slice_is_predicted_once_in_batches_of_the_given_size():
    planes = np.zeros((7, 4, 4), np.float32)
    for z in (0, 2, 3, 4, 6):
        planes[z] = np.linspace(-1, 1, 16).reshape(4, 4) * (z + 1)
    net = Recorder()
    out = predict_planes(net, planes, CPU, FP32, batch_size=2, channels_last=False)
    assert net.batches == [2, 2, 1]
    assert np.allclose(out[[0, 2, 3, 4, 6]], sigmoid(2.0 * planes[[0, 2, 3, 4, 6]]), atol=1e-6)
    assert not out[[1, 5]].any()  # empty slices: background, never shown to the network
    assert out.dtype == np.float32 and out.shape == planes.shape


def test_the_network_runs_in_eval_mode_and_gets_its_modes_back():
    """Dropout in train mode would zero or double the input; in eval mode it is the identity."""
    net = nn.Sequential(nn.Dropout(0.5), nn.Identity())
    net.train()
    net[1].eval()  # a mixed state, which must come back as it was
    planes = np.full((3, 8, 8), 0.25, np.float32)
    for tta in (False, True):
        out = predict_planes(net, planes, CPU, FP32, channels_last=False, tta=tta)
        assert np.allclose(out, sigmoid(0.25), atol=1e-7)
    assert net.training and net[0].training and not net[1].training


def test_channels_last_input_gives_the_same_probabilities():
    planes = np.random.default_rng(0).standard_normal((3, 8, 8)).astype(np.float32)
    conv = nn.Conv2d(1, 1, 3, padding=1)
    a = predict_planes(conv, planes, CPU, FP32, channels_last=True)
    b = predict_planes(conv, planes, CPU, FP32, channels_last=False)
    assert np.allclose(a, b, atol=1e-6)
