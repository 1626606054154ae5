"""Collectives for data-parallel training (torch.distributed), usable by losses and layers.

Under DDP every rank holds a shard of the global batch and DDP AVERAGES the gradients of the
ranks. A loss that is a mean over the batch is then right as it is (equal shards: the average of
the shards' means is the global mean). A loss that is not a sum over samples (one Dice over the
whole batch, ASC's similarity matrix of every pair of slices) must see the global batch: inside
:func:`sharded_batch` the helpers below give every rank the global value, with gradient flowing
to its own shard only, scaled by the world size so that DDP's average equals the gradient of the
global loss::

    global_sum(s_r)  = sum_k s_k  (value)        d/ds_r = W   (W = world size)
    gather_rows(x_r) = cat_k x_k  (value)        d/dx_r = W on rank r's rows, 0 elsewhere

Outside the block (one process, validation, tests) every helper is the identity, so the
single-process path computes exactly what it always did.
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import Any, Iterator

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["all_gather_objects", "barrier", "gather_rows", "global_sum", "is_main", "mean_over_ranks", "rank",
           "sharded", "sharded_batch", "world_size"]

_SHARDED: contextvars.ContextVar[bool] = contextvars.ContextVar("semicml_sharded_batch", default=False)


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main() -> bool:
    """Rank 0 (or the only process): the one that writes files."""
    return rank() == 0


@contextlib.contextmanager
def sharded_batch(active: bool = True) -> Iterator[None]:
    """Inside: the batch is this rank's shard of a global batch (set by the engine around a step)."""
    token = _SHARDED.set(bool(active) and world_size() > 1)
    try:
        yield
    finally:
        _SHARDED.reset(token)


def sharded() -> bool:
    return _SHARDED.get()


def _scaled_local(value: Tensor, local: Tensor, w: int) -> Tensor:
    """``value`` (no graph) + W * (local - local): the value of ``value``, the gradient of W * local."""
    if not local.requires_grad:
        return value
    return value + (local - local.detach()) * w


def global_sum(t: Tensor) -> Tensor:
    """Elementwise sum of ``t`` over the ranks (one all-reduce); identity outside a sharded batch."""
    if not sharded():
        return t
    total = t.detach().clone()
    dist.all_reduce(total)
    return _scaled_local(total, t, world_size())


def gather_rows(t: Tensor) -> Tensor:
    """Every rank's ``t`` (same shape on every rank) concatenated along dim 0 in rank order: the
    global batch when each rank holds a contiguous slice of it. Identity outside a sharded batch."""
    if not sharded():
        return t
    w, r = world_size(), rank()
    local = t.detach().contiguous()
    parts = [torch.empty_like(local) for _ in range(w)]
    dist.all_gather(parts, local)
    parts[r] = _scaled_local(parts[r], t, w)
    return torch.cat(parts, dim=0)


def mean_over_ranks(values: dict[str, float]) -> dict[str, float]:
    """Mean of each logged number over the ranks (same keys on every rank); identity on one process."""
    w = world_size()
    if w == 1 or not values:
        return values
    keys = sorted(values)
    packed = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64)
    if dist.get_backend() == "nccl":
        packed = packed.cuda()
    dist.all_reduce(packed)
    return {k: float(v) / w for k, v in zip(keys, packed.tolist())}


def all_gather_objects(obj: Any) -> list[Any]:
    """Every rank's picklable ``obj``, in rank order; ``[obj]`` on one process."""
    if world_size() == 1:
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()
