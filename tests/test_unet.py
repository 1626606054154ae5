"""UNet2D: shapes, validation, parameter count, dropout behaviour, memory format, autocast."""

from __future__ import annotations

import pytest
import torch

from semicml.models import UNet2D, unet_widths

TINY = dict(widths=(4, 8, 16), dropout=(0.0, 0.0, 0.5))


def expected_params(in_ch: int, out_ch: int, widths: tuple[int, ...]) -> int:
    """Hand formula. Convs before BN carry no bias; BN has weight + bias; the transposed conv and
    the 1x1 head have a bias."""

    def block(cin: int, cout: int) -> int:
        return 9 * cin * cout + 9 * cout * cout + 2 * (2 * cout)

    total = 0
    chans = (in_ch, *widths)
    for i in range(len(widths)):
        total += block(chans[i], chans[i + 1])
    for i in range(len(widths) - 1):
        total += 4 * widths[i + 1] * widths[i] + widths[i]  # ConvTranspose2d(2x2) + bias
        total += block(2 * widths[i], widths[i])  # decoder block on the concatenation
    total += widths[0] * out_ch + out_ch  # 1x1 head
    return total


def n_params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize(
    "kwargs, shape, out_shape",
    [
        (dict(), (2, 1, 16, 16), (2, 1, 16, 16)),
        (dict(in_channels=2, out_channels=3, **TINY), (3, 2, 8, 12), (3, 3, 8, 12)),
        (dict(widths=(4, 8), dropout=(0.0, 0.0)), (1, 1, 6, 2), (1, 1, 6, 2)),
    ],
)
def test_output_shape(kwargs, shape, out_shape):
    m = UNet2D(**kwargs).eval()
    assert m(torch.randn(shape)).shape == out_shape


@pytest.mark.parametrize(
    "shape, match",
    [
        ((1, 1, 12, 16), "divisible by 16"),  # default: 4 levels
        ((1, 1, 16, 8), "divisible by 16"),
        ((1, 2, 16, 16), "input channel"),
        ((1, 16, 16), "4D"),
    ],
)
def test_input_validation(shape, match):
    with pytest.raises(ValueError, match=match):
        UNet2D()(torch.zeros(shape))


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(widths=(4, 8), dropout=(0.1,)),
        dict(widths=(4,), dropout=(0.1,)),
        dict(widths=(4, 8), dropout=(0.0, 1.0)),
    ],
)
def test_bad_config(kwargs):
    with pytest.raises(ValueError):
        UNet2D(**kwargs)


def test_unet_widths():
    assert unet_widths(32) == (32, 64, 128, 256, 512)
    assert unet_widths(16, levels=2) == (16, 32, 64)


def test_parameter_count():
    # Default config: 7,762,465 parameters by the formula (paper-size U-Net, ~7.8 M).
    assert expected_params(1, 1, (32, 64, 128, 256, 512)) == 7_762_465
    assert n_params(UNet2D()) == 7_762_465
    assert n_params(UNet2D(2, 3, **TINY)) == expected_params(2, 3, TINY["widths"])


def test_dropout_train_vs_eval():
    torch.manual_seed(0)
    m = UNet2D(**TINY)
    x = torch.randn(2, 1, 8, 8)
    m.eval()
    assert torch.equal(m(x), m(x))
    # Train mode: BN uses batch stats (same for both passes), so only dropout can differ.
    m.train()
    assert not torch.allclose(m(x), m(x))
    no_drop = UNet2D(widths=(4, 8, 16), dropout=(0.0, 0.0, 0.0)).train()
    assert torch.equal(no_drop(x), no_drop(x))


def test_channels_last_matches_contiguous():
    torch.manual_seed(0)
    m = UNet2D(**TINY).eval()
    x = torch.randn(2, 1, 8, 8)
    ref = m(x)
    m_cl = m.to(memory_format=torch.channels_last)
    out = m_cl(x.to(memory_format=torch.channels_last))
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)


def test_autocast_bf16_cpu():
    torch.manual_seed(0)
    m = UNet2D(**TINY).train()
    x = torch.randn(2, 1, 8, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = m(x)
    assert out.shape == (2, 1, 8, 8)
    assert torch.isfinite(out.float()).all()
    out.float().mean().backward()
    assert m.encoder[0][0].weight.grad is not None
