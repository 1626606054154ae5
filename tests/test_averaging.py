"""The moving average of the predicting networks (config ``ema``): the update rule by hand, no
gradient into the averages, and its checkpoint state."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from semicml.engine.averaging import WeightAverage


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(2, 1), nn.BatchNorm1d(1))


def test_the_update_is_the_hand_computed_average_with_the_warm_up_decay():
    net = _net()
    avg = WeightAverage({"T2": net}, decay=0.99)
    w0 = net[0].weight.detach().clone()
    with torch.no_grad():
        net[0].weight.fill_(1.0)
        net[1].running_mean.fill_(4.0)  # a float buffer: averaged like a parameter
        net[1].num_batches_tracked.fill_(7)  # an integer buffer: copied
    avg.update({"T2": net})  # first update: d = min(0.99, 1/10) = 0.1
    got = avg.nets["T2"]
    assert torch.allclose(got[0].weight, 0.1 * w0 + 0.9 * 1.0)
    assert torch.allclose(got[1].running_mean, torch.tensor([0.1 * 0.0 + 0.9 * 4.0]))
    assert int(got[1].num_batches_tracked) == 7
    before = got[0].weight.clone()
    with torch.no_grad():
        net[0].weight.fill_(-1.0)
    avg.update({"T2": net})  # second: d = min(0.99, 2/11)
    d = 2 / 11
    assert torch.allclose(got[0].weight, d * before + (1 - d) * -1.0)
    for _ in range(1000):
        avg.update({"T2": net})
    assert avg.current_decay() == 0.99  # the warm-up ends at the configured decay


def test_no_gradient_reaches_the_average_and_it_does_not_share_storage():
    net = _net()
    avg = WeightAverage({"T2": net}, decay=0.9)
    copy = avg.nets["T2"]
    assert all(not p.requires_grad for p in copy.parameters()) and not copy.training
    assert all(a.data_ptr() != b.data_ptr() for a, b in zip(copy.parameters(), net.parameters()))
    net.train()
    loss = net(torch.randn(4, 2)).square().mean()
    loss.backward()
    assert all(p.grad is not None for p in net.parameters())
    assert all(p.grad is None for p in copy.parameters())


def test_state_round_trip_and_decay_bounds():
    net = _net()
    a = WeightAverage({"T2": net}, decay=0.9)
    for _ in range(3):
        with torch.no_grad():
            net[0].weight.add_(1.0)
        a.update({"T2": net})
    b = WeightAverage({"T2": _net()}, decay=0.9)
    b.load_state_dict(a.state_dict())
    assert b.updates == 3
    for x, y in zip(a.nets["T2"].state_dict().values(), b.nets["T2"].state_dict().values()):
        assert torch.equal(x, y)
    for bad in (0.0, 1.0, -0.5):
        with pytest.raises(ValueError):
            WeightAverage({"T2": net}, decay=bad)
