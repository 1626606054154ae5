"""Argument checks and the empty-batch zero shared by every loss (supervised, ASC, PReL)."""

from __future__ import annotations

from torch import Tensor

__all__ = ["check_pair", "zero_with_graph"]


def check_pair(name: str, a: Tensor, b: Tensor, a_name: str, b_name: str) -> None:
    """Raise a ValueError naming the loss unless ``a`` and ``b`` are 4D with the same shape."""
    if a.ndim != 4 or a.shape != b.shape:
        raise ValueError(
            f"{name}: {a_name} and {b_name} must be 4D (B, C, H, W) with the same shape, "
            f"got {tuple(a.shape)} and {tuple(b.shape)}"
        )


def zero_with_graph(*ts: Tensor) -> Tensor:
    """A float32 zero that stays connected to the graph (empty batches)."""
    return sum(t.float().sum() for t in ts) * 0.0
