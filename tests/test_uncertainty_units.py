"""The flip-disagreement uncertainty (``predict --uncertainty``) recomputed by hand: each member is
the prediction of the mirrored image mirrored back, the map is their standard deviation, the mean
is the ``--tta`` probability; the flipped engine keeps what predict reads of the engine."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from semicml.hardware import resolve_precision
from semicml.inference.engines import TorchEngine
from semicml.inference.predict import probabilities_on_grid
from semicml.inference.uncertainty import FLIPS, MAX_STD, FlippedEngine, Spread, flip_members, flip_spread

CPU = torch.device("cpu")
FP32 = resolve_precision("fp32", CPU)
# per-modality records, as runs store them: T2 z-scored, T1ce another scheme (a wrong lookup shows)
PREP = {"in_plane": "crop", "size": 16, "normalisation": {"T2": {"scheme": "mri"}, "T1ce": {"scheme": "none"}}}


class EdgeNet(nn.Module):
    """Logit = 4 (x - x one column to the left): not mirror-symmetric, so the flips disagree."""

    levels = 2

    def forward(self, x):
        return 4.0 * (x - torch.roll(x, 1, dims=-1))


def image() -> np.ndarray:
    rng = np.random.default_rng(0)
    vol = np.zeros((16, 20, 3), np.float32)  # in plane already a multiple of 4: no padding
    vol[2:14, 3:17] = 1 + rng.random((12, 14, 3), dtype=np.float32)
    return vol


def hand_members(vol: np.ndarray) -> list[np.ndarray]:
    """Member k: the network on the image mirrored over the flip's in-plane axes, mirrored back."""
    out = []
    for dims in FLIPS:
        axes = tuple(d - 2 for d in dims)  # (B, C, H, W) dims 2, 3 -> volume axes 0, 1 (axial last)
        mirrored = np.flip(vol, axes) if axes else vol
        p = probabilities_on_grid(EdgeNet(), np.ascontiguousarray(mirrored), np.eye(4), PREP, CPU, FP32,
                                  channels_last=False, modality="T2")
        out.append(np.flip(p, axes) if axes else p)
    return out


def engine() -> TorchEngine:
    return TorchEngine(EdgeNet(), CPU, FP32, channels_last=False)


def test_flip_members_with_their_defaults_are_the_mirrored_predictions():
    vol = image()
    got = list(flip_members(engine(), vol, np.eye(4), PREP, "T2"))
    want = hand_members(vol)
    assert len(got) == 4
    for g, w in zip(got, want):
        assert g.shape == vol.shape
        np.testing.assert_allclose(g, w, atol=1e-6)
    assert not np.allclose(got[0], got[3])  # the flips really disagree here


def test_flip_spread_is_the_mean_and_standard_deviation_of_the_members():
    vol = image()
    mean, std = flip_spread(engine(), vol, np.eye(4), PREP, "T2")
    members = np.stack(hand_members(vol))
    np.testing.assert_allclose(mean, members.mean(0), atol=1e-6)
    np.testing.assert_allclose(std, members.std(0), atol=1e-6)
    assert std.dtype == np.float32 and std.max() > 0.05
    tta = probabilities_on_grid(EdgeNet(), vol, np.eye(4), PREP, CPU, FP32, channels_last=False, tta=True,
                                modality="T2")
    np.testing.assert_allclose(mean, tta, atol=1e-6)  # the map describes the --tta prediction


def test_the_modality_picks_its_own_normalisation():
    vol = image()
    t2 = next(flip_members(engine(), vol, np.eye(4), PREP, "T2"))
    t1ce = next(flip_members(engine(), vol, np.eye(4), PREP, "T1ce"))
    assert not np.allclose(t2, t1ce)


def test_flipped_engine_keeps_the_engines_name_multiple_and_session():
    inner = engine()
    inner.multiple = 8
    flipped = FlippedEngine(inner, (2, 3))
    assert (flipped.name, flipped.multiple, flipped.dims) == (inner.name, 8, (2, 3))
    assert type(flipped.session()) is type(inner.session())
    x = torch.arange(16.0).view(1, 1, 4, 4)
    assert torch.equal(flipped(x), torch.flip(inner(torch.flip(x, (2, 3))), (2, 3)))
    assert torch.equal(FlippedEngine(inner, ())(x), inner(x))


def test_spread_by_hand_and_its_errors():
    s = Spread()
    with pytest.raises(ValueError, match="^no member added$"):
        s.std()
    with pytest.raises(ValueError, match="^no member added$"):
        s.mean()
    for m in ([0.0, 1.0, 0.2], [1.0, 1.0, 0.2], [0.0, 1.0, 0.2], [1.0, 1.0, 0.2]):
        s.add(np.array(m, np.float32))
    np.testing.assert_allclose(s.mean(), [0.5, 1.0, 0.2], atol=1e-7)
    std = s.std()
    assert std.dtype == np.float32
    np.testing.assert_allclose(std, [0.5, 0.0, 0.0], atol=1e-6)  # rounding below 0 is clipped, never NaN
    assert not np.isnan(std).any() and std.max() <= MAX_STD
    three = Spread()  # three equal members whose float64 variance rounds to -5.6e-17
    for _ in range(3):
        three.add(np.array([0.49103559695671095]))
    assert three.std()[0] == 0.0
    with pytest.raises(ValueError, match=r"member of shape \(2,\) beside members of shape \(3,\)"):
        s.add(np.zeros(2))
    half = Spread()
    half._sum = np.zeros(1)  # a sum without squares is no spread either
    with pytest.raises(ValueError, match="^no member added$"):
        half.std()


def hand_brain_members(vol: np.ndarray, margin: int) -> list[np.ndarray]:
    """As :func:`hand_members`, predicted in brain windows of ``margin`` voxels of context."""
    out = []
    for dims in FLIPS:
        axes = tuple(d - 2 for d in dims)
        mirrored = np.flip(vol, axes) if axes else vol
        p = probabilities_on_grid(EdgeNet(), np.ascontiguousarray(mirrored), np.eye(4), PREP, CPU, FP32,
                                  channels_last=False, modality="T2", window="brain", margin=margin)
        out.append(np.flip(p, axes) if axes else p)
    return out


def test_brain_windows_and_their_margin_reach_every_member():
    # a small brain in a wide plane: EdgeNet's wrap-around column differs with the window's size, so
    # whole slice, margin 0 and margin 4 give different members
    vol = np.zeros((32, 32, 2), np.float32)
    vol[10:18, 12:22] = 1 + np.random.default_rng(1).random((8, 10, 2), dtype=np.float32)
    tight, wide = hand_brain_members(vol, 0), hand_brain_members(vol, 4)
    assert not np.allclose(tight[0], wide[0]) and not np.allclose(tight[0], hand_members(vol)[0])
    for margin, want in ((0, tight), (4, wide)):
        got = list(flip_members(engine(), vol, np.eye(4), PREP, "T2", window="brain", margin=margin))
        for g, w in zip(got, want, strict=True):
            np.testing.assert_allclose(g, w, atol=1e-6)
        mean, std = flip_spread(engine(), vol, np.eye(4), PREP, "T2", "brain", margin)
        np.testing.assert_allclose(mean, np.mean(want, 0), atol=1e-6)
        np.testing.assert_allclose(std, np.std(want, 0), atol=1e-6)
    # the margin's default is no context at all
    for g, w in zip(flip_members(engine(), vol, np.eye(4), PREP, "T2", window="brain"), tight, strict=True):
        np.testing.assert_allclose(g, w, atol=1e-6)
    mean, std = flip_spread(engine(), vol, np.eye(4), PREP, "T2", "brain")
    np.testing.assert_allclose(mean, np.mean(tight, 0), atol=1e-6)
    np.testing.assert_allclose(std, np.std(tight, 0), atol=1e-6)


class RegionEdgeNet(EdgeNet):
    """Three region channels: EdgeNet's logit shifted down by 0, 1 and 2."""

    def forward(self, x):
        z = super().forward(x)
        return torch.cat([z, z - 1.0, z - 2.0], dim=1)


def test_flip_spread_of_a_region_network_has_one_map_per_region():
    vol = image()
    regions = TorchEngine(RegionEdgeNet(), CPU, FP32, channels_last=False)
    mean, std = flip_spread(regions, vol, np.eye(4), PREP, "T2", channels=3)
    assert mean.shape == std.shape == (3, *vol.shape)
    single = np.stack(hand_members(vol))  # channel 0 is EdgeNet itself
    np.testing.assert_allclose(mean[0], single.mean(0), atol=1e-6)
    np.testing.assert_allclose(std[0], single.std(0), atol=1e-6)
    assert (mean[1] < mean[0] + 1e-7).all() and (mean[2] < mean[1] + 1e-7).all() and (mean[0] > mean[2]).any()
