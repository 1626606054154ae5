"""Synchronized BatchNorm: batch statistics over the GLOBAL batch of all ranks.

On CUDA this is ``torch.nn.SyncBatchNorm``. PyTorch's version refuses CPU tensors (its kernels are
GPU-only), so for gloo on CPU :class:`CPUSyncBatchNorm2d` does the same in plain torch ops: the
forward gathers each rank's (count, mean, centred sum of squares) and combines them (Chan et al.'s
parallel variance, stable in float32); the backward all-reduces ``sum(dy)`` and ``sum(dy * xhat)``
so that every rank's input gradient includes the other ranks' dependence on the shared
statistics (the gradient of the global batch). Parameters and buffers are BatchNorm2d's, so
state dicts, weights files and checkpoints do not change.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor, nn

__all__ = ["CPUSyncBatchNorm2d", "convert_sync_batchnorm"]


class _SyncBatchNormFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor, running_mean: Tensor | None,
                running_var: Tensor | None, eps: float, momentum: float) -> Tensor:
        w = dist.get_world_size()
        dims = [0, *range(2, x.dim())]
        xf = x.float()
        count = x.numel() // x.shape[1]
        var, mean = torch.var_mean(xf, dim=dims, correction=0)
        stats = torch.cat([mean, var * count, mean.new_tensor([count])])
        parts = [torch.empty_like(stats) for _ in range(w)]
        dist.all_gather(parts, stats)
        table = torch.stack(parts)  # (W, 2C + 1)
        c = x.shape[1]
        means, m2s, counts = table[:, :c], table[:, c : 2 * c], table[:, 2 * c :]
        n = counts.sum()
        g_mean = (counts * means).sum(0) / n
        g_m2 = m2s.sum(0) + (counts * (means - g_mean) ** 2).sum(0)
        g_var = g_m2 / n
        invstd = torch.rsqrt(g_var + eps)
        if running_mean is not None:
            with torch.no_grad():  # unbiased variance in the running estimate, as BatchNorm does
                running_mean.mul_(1 - momentum).add_(g_mean.to(running_mean.dtype), alpha=momentum)
                running_var.mul_(1 - momentum).add_((g_m2 / (n - 1)).to(running_var.dtype), alpha=momentum)
        shape = [1, c] + [1] * (x.dim() - 2)
        xhat = (xf - g_mean.view(shape)) * invstd.view(shape)
        ctx.save_for_backward(xhat, weight, invstd)
        ctx.count = float(n)
        y = xhat * weight.float().view(shape) + bias.float().view(shape)
        return y.to(x.dtype)

    @staticmethod
    def backward(ctx, grad_y: Tensor):
        xhat, weight, invstd = ctx.saved_tensors
        dims = [0, *range(2, xhat.dim())]
        shape = [1, xhat.shape[1]] + [1] * (xhat.dim() - 2)
        gy = grad_y.float()
        sum_dy = gy.sum(dims)
        sum_dy_xhat = (gy * xhat).sum(dims)
        grad_x = None
        if ctx.needs_input_grad[0]:
            both = torch.cat([sum_dy, sum_dy_xhat])
            dist.all_reduce(both)
            c = sum_dy.numel()
            mean_dy, mean_dy_xhat = both[:c] / ctx.count, both[c:] / ctx.count
            scale = (invstd * weight.float()).view(shape)
            grad_x = ((gy - mean_dy.view(shape) - xhat * mean_dy_xhat.view(shape)) * scale).to(grad_y.dtype)
        # Parameter gradients are this rank's share; DDP reduces them like any other.
        return grad_x, sum_dy_xhat.to(weight.dtype), sum_dy.to(weight.dtype), None, None, None, None


class CPUSyncBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training-mode statistics cover every rank's batch (any device, gloo)."""

    def forward(self, x: Tensor) -> Tensor:
        syncing = (self.training and self.track_running_stats and self.affine and dist.is_available()
                   and dist.is_initialized() and dist.get_world_size() > 1)
        if not syncing:
            return super().forward(x)
        self.num_batches_tracked.add_(1)
        momentum = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        return _SyncBatchNormFunction.apply(x, self.weight, self.bias, self.running_mean, self.running_var,
                                            self.eps, momentum)


def convert_sync_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """Every BatchNorm2d of ``module`` synchronized: torch's SyncBatchNorm on CUDA, ours elsewhere."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    if type(module) is nn.BatchNorm2d:
        new = CPUSyncBatchNorm2d(module.num_features, module.eps, module.momentum, module.affine,
                                 module.track_running_stats, device=module.weight.device, dtype=module.weight.dtype)
        new.load_state_dict(module.state_dict())
        new.train(module.training)
        return new
    for name, child in module.named_children():
        setattr(module, name, convert_sync_batchnorm(child, device))
    return module
