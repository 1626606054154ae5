"""models: the 2D U-Net and its construction from a stored spec."""

from semicml.models.network import build_network, network_spec
from semicml.models.unet import ConvBlock, UNet2D, unet_widths

__all__ = ["ConvBlock", "UNet2D", "build_network", "network_spec", "unet_widths"]
