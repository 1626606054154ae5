"""One rank of a distributed training run, for tests/test_distributed.py.

Spawned by ``torch.multiprocessing`` with torchrun's environment variables; it creates the gloo
process group itself, so that several jobs share one group (one start-up cost), and the Trainer
joins it. After each training job it saves this rank's whole method state (students, teachers) so
that the test can compare ranks; only rank 0 writes the run directory.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import torch
import torch.distributed as dist

from semicml.config import build_config
from semicml.engine.trainer import Trainer
from semicml.losses import asc_loss, supervised_loss
from semicml.methods.uamt import masked_mse
from semicml.models.syncbn import CPUSyncBatchNorm2d
from semicml.parallel import global_sum, sharded_batch


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def probe(rank: int, world: int) -> dict[str, torch.Tensor]:
    """Values and gradients of the batch-coupled losses and of BatchNorm on rank ``rank``'s
    contiguous shard of one fixed global batch of 4 (``world == 1``: the whole batch, plain
    torch BatchNorm). Gradients are those DDP would see (``x.grad`` of this shard, scaled by W)."""
    g = torch.Generator().manual_seed(0)
    logits, target = torch.randn(4, 1, 8, 8, generator=g) * 2, (torch.rand(4, 1, 8, 8, generator=g) > 0.7).float()
    p_a, p_b, mask = (torch.rand(4, 1, 8, 8, generator=g) for _ in range(3))
    x, r = torch.randn(4, 3, 5, 5, generator=g) * 3 + 1, torch.randn(4, 3, 5, 5, generator=g)
    n = 4 // world
    shard = slice(rank * n, (rank + 1) * n)
    out: dict[str, torch.Tensor] = {}

    def leaf(t: torch.Tensor) -> torch.Tensor:
        return t[shard].clone().requires_grad_()

    with sharded_batch(world > 1):
        for reduction in ("batch", "slice"):
            z = leaf(logits)
            loss = supervised_loss(z, target[shard], dice_reduction=reduction)
            loss.backward()
            out[f"sup_{reduction}"], out[f"sup_{reduction}_grad"] = loss.detach(), z.grad
        a, b = leaf(p_a), leaf(p_b)
        loss = asc_loss(a, b)
        loss.backward()
        out["asc"], out["asc_grad_a"], out["asc_grad_b"] = loss.detach(), a.grad, b.grad
        a = leaf(p_a)
        loss = masked_mse(a, p_b[shard], (mask[shard] > 0.5).float())
        loss.backward()
        out["masked_mse"], out["masked_mse_grad"] = loss.detach(), a.grad
        bn = CPUSyncBatchNorm2d(3)
        with torch.no_grad():
            bn.weight.copy_(torch.tensor([0.5, 1.0, 2.0]))
            bn.bias.copy_(torch.tensor([0.1, -0.2, 0.3]))
        xs = leaf(x)
        y = bn(xs)
        global_sum((y * r[shard]).sum()).backward()
        out.update(bn_out=y.detach(), bn_grad_x=xs.grad, bn_grad_weight=bn.weight.grad, bn_grad_bias=bn.bias.grad,
                   bn_running_mean=bn.running_mean, bn_running_var=bn.running_var)
    return out


def run_rank(rank: int, world: int, port: int, jobs: list[dict], dumps: str) -> None:
    """``jobs``: ``{"name": "probe"}`` or ``{"name", "overrides", "store", "run", "env" (optional)}``."""
    torch.set_num_threads(1)  # the ranks share the host's cores
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    dist.init_process_group("gloo")
    for job in jobs:
        target = Path(dumps) / f"{job['name']}-rank{rank}.pt"
        if job["name"] == "probe":
            torch.save(probe(rank, world), target)
            continue
        os.environ.update(job.get("env", {}))
        trainer = Trainer(build_config(overrides=job["overrides"]), job["store"], job["run"], progress=False)
        trainer.fit()
        torch.save({k: v.detach().cpu() for k, v in trainer.method.state_dict().items()}, target)
    dist.destroy_process_group()


def teardown_rank(rank: int, world: int, port: int, mode: str, dumps: str) -> None:
    """How the ranks leave. ``finished``: rank 0 works 2 s after the last step (as it chooses
    post-processing and writes run.json), then every rank shuts down normally; ``error``: the same
    after an error (nobody waits); ``rank0-failed``: rank 0 fails in that work and its process
    lives on 3 s (a caller that caught the error), the others end normally. Each rank writes when
    its shutdown returned."""
    import json
    import time

    from semicml.engine.distributed import setup_distributed, shutdown

    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    ctx, _ = setup_distributed("cpu")
    record = {"owns": ctx.owns_group}
    if rank == 0:
        time.sleep(2.0)
        record["work_done"] = time.time()
    shutdown(ctx, finished=mode == "finished" or (mode == "rank0-failed" and rank != 0))
    record["left"] = time.time()
    record["destroyed"] = not dist.is_initialized()
    (Path(dumps) / f"teardown-rank{rank}.json").write_text(json.dumps(record))
    if mode == "rank0-failed" and rank == 0:
        time.sleep(3.0)
