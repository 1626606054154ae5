"""2D U-Net of the Semi-CML paper (one network per modality).

Architecture (docs/method-notes.md, "Networks and losses"): ``levels`` max-pool down-sampling
steps, encoder blocks ``3x3 conv -> BN -> ReLU -> Dropout(p_level) -> 3x3 conv -> BN -> ReLU``,
transposed-conv 2x2 stride-2 up-sampling, concatenation with the encoder skip, decoder blocks of
the same form, and a final 1x1 convolution. ``forward`` returns logits; the caller applies sigmoid (binary) or softmax.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

__all__ = ["ConvBlock", "UNet2D", "unet_widths"]


def unet_widths(base: int, levels: int = 4) -> tuple[int, ...]:
    """Channel widths ``(base, 2 base, ..., 2**levels base)`` for a U-Net with ``levels`` downsamplings."""
    if base < 1 or levels < 1:
        raise ValueError(f"unet_widths needs base >= 1 and levels >= 1, got base={base}, levels={levels}")
    return tuple(base * 2**i for i in range(levels + 1))


class ConvBlock(nn.Sequential):
    """``3x3 conv -> BN -> ReLU -> Dropout(p) -> 3x3 conv -> BN -> ReLU`` (spatial size kept)."""

    def __init__(self, in_channels: int, out_channels: int, dropout: float = 0.0):
        # Conv bias is redundant right before BatchNorm (BN's shift absorbs it), so it is off.
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class _UpBlock(nn.Module):
    """Transposed-conv x2 up-sampling, concat with the skip, then a ConvBlock."""

    def __init__(self, in_channels: int, out_channels: int, dropout: float):
        super().__init__()
        self.up = nn.ConvTranspose2d(in_channels, out_channels, kernel_size=2, stride=2)
        self.conv = ConvBlock(2 * out_channels, out_channels, dropout)

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        return self.conv(torch.cat([skip, self.up(x)], dim=1))


class UNet2D(nn.Module):
    """2D U-Net returning logits.

    Args:
        in_channels: input channels (1 for a single modality).
        out_channels: output channels (1 for binary segmentation with sigmoid).
        widths: channels per resolution level, top to bottom; ``len(widths) - 1`` down-samplings.
        dropout: encoder dropout per level, same length as ``widths``.
        decoder_dropout: dropout inside every decoder block.

    Shape contract: ``x`` is ``(B, in_channels, H, W)`` with ``H`` and ``W`` divisible by
    ``2 ** levels``; output is ``(B, out_channels, H, W)`` logits. Channels-last input and
    autocast are supported.
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 1,
        widths: Sequence[int] = (32, 64, 128, 256, 512),
        dropout: Sequence[float] = (0.05, 0.1, 0.2, 0.3, 0.5),
        decoder_dropout: float = 0.0,
    ):
        super().__init__()
        widths = tuple(int(w) for w in widths)
        dropout = tuple(float(p) for p in dropout)
        if in_channels < 1 or out_channels < 1:
            raise ValueError(f"in_channels and out_channels must be >= 1, got {in_channels}, {out_channels}")
        if len(widths) < 2:
            raise ValueError(f"widths needs at least 2 entries (one down-sampling), got {widths}")
        if any(w < 1 for w in widths):
            raise ValueError(f"widths must be positive, got {widths}")
        if len(dropout) != len(widths):
            raise ValueError(
                f"dropout needs one probability per level: len(dropout)={len(dropout)} != len(widths)={len(widths)}"
            )
        if any(not 0.0 <= p < 1.0 for p in (*dropout, decoder_dropout)):
            raise ValueError(f"dropout probabilities must be in [0, 1), got {dropout} and {decoder_dropout}")

        self.in_channels = in_channels
        self.out_channels = out_channels
        self.widths = widths
        self.levels = len(widths) - 1

        chans = (in_channels, *widths)
        self.encoder = nn.ModuleList(ConvBlock(chans[i], chans[i + 1], dropout[i]) for i in range(len(widths)))
        self.pool = nn.MaxPool2d(2)
        # Decoder goes bottom -> top: up from widths[i+1] to widths[i].
        self.decoder = nn.ModuleList(
            _UpBlock(widths[i + 1], widths[i], decoder_dropout) for i in reversed(range(self.levels))
        )
        self.head = nn.Conv2d(widths[0], out_channels, kernel_size=1)

    def _check_input(self, x: Tensor) -> None:
        if x.ndim != 4:
            raise ValueError(f"UNet2D expects a 4D tensor (B, C, H, W), got shape {tuple(x.shape)}")
        if x.shape[1] != self.in_channels:
            raise ValueError(
                f"UNet2D expects {self.in_channels} input channel(s), got shape {tuple(x.shape)}"
            )
        factor = 2**self.levels
        h, w = x.shape[-2:]
        if h % factor or w % factor:
            raise ValueError(
                f"UNet2D with {self.levels} down-sampling levels needs H and W divisible by {factor}, "
                f"got H={h}, W={w}"
            )

    def forward(self, x: Tensor) -> Tensor:
        self._check_input(x)
        skips: list[Tensor] = []
        for i, block in enumerate(self.encoder):
            if i > 0:
                x = self.pool(x)
            x = block(x)
            skips.append(x)
        x = skips.pop()  # bottleneck
        for up in self.decoder:
            x = up(x, skips.pop())
        return self.head(x)
