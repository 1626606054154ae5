"""models."""

from semicml.models.unet import ConvBlock, UNet2D, unet_widths

__all__ = ["ConvBlock", "UNet2D", "unet_widths"]
