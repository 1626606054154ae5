"""Network construction from a plain spec, shared by training and inference.

The spec (a JSON-able dict) is stored in every weights file, so ``predict`` rebuilds the exact
network from the file alone, without the training configuration or the engine.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from semicml.models.unet import UNet2D

if TYPE_CHECKING:  # only for the annotation: models must not depend on the config at run time
    from semicml.config import TrainConfig

__all__ = ["build_network", "network_spec"]


def network_spec(cfg: TrainConfig, out_channels: int) -> dict[str, Any]:
    """The spec of the single-modality U-Net that ``cfg`` asks for (one input channel per slice
    of its through-plane context, :mod:`semicml.data.context`)."""
    return {"in_channels": 2 * cfg.model.context + 1, "out_channels": out_channels, "widths": list(cfg.model.widths()),
            "dropout": list(cfg.model.dropout_per_level())}


def build_network(spec: dict[str, Any]) -> UNet2D:
    """A fresh U-Net from a spec made by :func:`network_spec` (or read from a weights file)."""
    return UNet2D(in_channels=spec["in_channels"], out_channels=spec["out_channels"], widths=tuple(spec["widths"]),
                  dropout=tuple(spec["dropout"]))
