"""Learning-rate schedule of the reference: linear warm-up, then step decay at fractions."""

from __future__ import annotations

import bisect

from ..config import OptimConfig


def lr_factor(iteration: int, total: int, cfg: OptimConfig) -> float:
    """Multiplier of the base lr at ``iteration`` (0-based) of ``total``."""
    warmup = int(cfg.warmup_fraction * total)
    if warmup > 0 and iteration < warmup:
        return (iteration + 1) / warmup
    steps = bisect.bisect_right([m * total for m in cfg.milestones], iteration)
    return cfg.gamma**steps
