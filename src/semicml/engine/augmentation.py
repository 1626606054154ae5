"""The training configuration's augmentation settings -> the sampler's :class:`AugmentOptions`."""

from __future__ import annotations

from collections.abc import Sequence

from ..config import TrainConfig
from ..data.lesion_paste import PasteOptions
from ..data.sampler import AugmentOptions
from ..errors import ConfigError


def augment_options(cfg: TrainConfig, modalities: Sequence[str] = ()) -> AugmentOptions:
    """The sampler's augmentation as the training config asks for it; ``modalities``: the run's,
    in the sampler's order (needed when ``augment_intensity`` lists modalities)."""
    intensity: bool | tuple[bool, ...]
    if isinstance(cfg.augment_intensity, bool):
        intensity = cfg.augment_intensity
    else:
        run = [m.lower() for m in modalities]
        unknown = [m for m in cfg.augment_intensity if m.lower() not in run]
        if unknown:
            raise ConfigError(f"augment_intensity names {', '.join(unknown)}, not a modality of this run "
                              f"(trains: {', '.join(modalities) or 'none given'})")
        listed = {m.lower() for m in cfg.augment_intensity}
        intensity = tuple(m in listed for m in run)
    return AugmentOptions(enabled=cfg.augment, intensity=intensity, low_resolution=cfg.low_resolution,
                          paste=PasteOptions(probability=cfg.lesion_paste))
