"""Distributed data-parallel training (torch DDP), launched by torchrun.

``torchrun --nproc_per_node N -m semicml train ...`` (multi-node: torchrun's ``--nnodes``,
``--node_rank``, ``--rdzv_endpoint``) starts N copies of the same command; torchrun's environment
(``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``) tells each one its
place. The process group uses NCCL on CUDA (one GPU per local rank) and gloo on CPU;
``SEMICML_DIST_BACKEND=gloo|nccl`` overrides that (NCCL refuses two ranks on one GPU, so a
one-GPU machine checks the CUDA path with several ranks under gloo: ``--device cuda:0``).

What is kept in step (see docs/method-notes.md, "Distributed training"):

* every rank trains on its contiguous slice of the global batch the one-process sampler draws;
* DDP averages gradients; losses that are not means over samples are made global
  (``semicml.parallel``), so the gradient is the one-process gradient of the global batch;
* BatchNorm statistics over the global batch (SyncBatchNorm, default on with world size > 1);
* random draws inside a step (input noise, dropout) are seeded by (seed, iteration, rank): they
  differ between ranks as they would between the samples of one process, and a resumed run draws
  what an uninterrupted one would have, whatever the world size;
* teachers (EMA, BMA) follow the synchronized students, so they are identical on every rank.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ..errors import ConfigError
from ..hardware import resolve_device

__all__ = ["DistContext", "active_backend", "check_shardable", "launched_rank", "launched_world_size",
           "setup_distributed", "shutdown", "step_seed", "wrap_ddp"]


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False  # this process created the process group (and destroys it)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    try:
        return int(value) if value else default
    except ValueError:
        raise ConfigError(f"environment variable {name}={value!r} is not an integer (set by torchrun)") from None


def launched_world_size() -> int:
    """World size of an existing process group, else the one torchrun announced, else 1."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return max(1, _env_int("WORLD_SIZE", 1))


def launched_rank() -> int:
    """Rank in an existing process group, else the one torchrun announced, else 0."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return _env_int("RANK", 0)


def check_shardable(labeled_batch: int, unlabeled_batch: int, world_size: int) -> None:
    """Every rank takes an equal slice of each stream of the global batch."""
    bad = [f"{name} {n}" for name, n in (("labeled_batch", labeled_batch), ("unlabeled_batch", unlabeled_batch))
           if n % world_size]
    if bad:
        raise ConfigError(f"{' and '.join(bad)} not divisible by the world size {world_size}: each rank takes an "
                          "equal share of the global batch (change the batch or --nproc_per_node)")


def _backend(device: torch.device) -> str:
    chosen = os.environ.get("SEMICML_DIST_BACKEND", "").strip().lower()
    if not chosen:
        return "nccl" if device.type == "cuda" else "gloo"
    if chosen not in ("gloo", "nccl"):
        raise ConfigError(f"SEMICML_DIST_BACKEND={chosen!r}: choose gloo or nccl")
    if chosen == "nccl" and device.type != "cuda":
        raise ConfigError("SEMICML_DIST_BACKEND=nccl needs a CUDA device (gloo runs on the CPU)")
    return chosen


def active_backend() -> str | None:
    """The process group's backend (what run.json records); None without a group."""
    return str(dist.get_backend()) if dist.is_available() and dist.is_initialized() else None


# After the last step rank 0 alone still chooses post-processing on validation and writes run.json;
# the other ranks wait for it on a group of their own, as the process group's timeout (30 min for
# gloo, 10 for NCCL) could run out on a large validation set.
END_BARRIER_TIMEOUT = timedelta(hours=24)
# Module-level, not in the (frozen, shared) context: shutdown must drop the last reference, or the
# group's connections outlive destroy_process_group and a peer waits for this process to end.
_end_group: Any = None


def setup_distributed(device_name: str) -> tuple[DistContext, torch.device]:
    """Join (or create, under torchrun) the process group; the device of this rank."""
    if not dist.is_available() or launched_world_size() == 1:
        return DistContext(), resolve_device(device_name)
    local_rank = _env_int("LOCAL_RANK", 0)
    device = resolve_device(device_name)
    if device.type == "cuda":
        if device.index is None:  # "auto" / "cuda": one GPU per local rank
            device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    backend = _backend(device)
    owns = not dist.is_initialized()
    if owns:
        global _end_group
        dist.init_process_group(backend)
        _end_group = dist.new_group(backend="gloo", timeout=END_BARRIER_TIMEOUT)
    return DistContext(dist.get_rank(), dist.get_world_size(), local_rank, owns), device


def shutdown(ctx: DistContext, finished: bool = False) -> None:
    """Destroy the process group this process created. ``finished``: every rank ended training
    normally, so they first wait for each other: a rank that tore gloo down while a peer still held
    its connections sometimes aborted at exit ("terminate called without an active exception").
    After an error nobody waits (a peer may be inside a collective; torchrun stops the others)."""
    global _end_group
    if not (ctx.owns_group and dist.is_initialized()):
        return
    group, _end_group = _end_group, None
    if finished and group is not None:
        try:
            dist.barrier(group=group)
        except RuntimeError:  # a peer already gone: nothing left to wait for
            pass
    del group
    dist.destroy_process_group()


def wrap_ddp(method: nn.Module, device: torch.device, every_network: bool = True) -> nn.Module:
    """The method behind DDP (its ``forward`` is ``train_step``). ``every_network=False``: some
    steps leave a network without gradient (PReL's teacher modality until late); DDP then finds
    those parameters each step and leaves their gradients empty, as one process does (so Adam skips
    them: no moment update, no weight decay)."""
    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(method, device_ids=ids, find_unused_parameters=not every_network)


def step_seed(seed: int, iteration: int, rank: int) -> int:
    """Seed of the torch RNG for step ``iteration`` on ``rank`` (distributed runs only)."""
    return int(np.random.SeedSequence([seed, 101, iteration, rank]).generate_state(1)[0])
