"""An exponential moving average of the networks that predict (config ``ema``; off by default).

Why: with about ten training patients the weights of any single iteration carry that step's
noise (a far island one network makes and the next step's does not), and on the BraTS
cross-validation an average of two trained networks was the most reliable lever measured
(lower HD95 on both modalities). Averaging recent weights is the same idea inside one run, at
no training cost (Polyak averaging; mean teacher's teacher is such an average). When on,
validation, model selection, the post-processing choice and the saved weights use the averaged
networks. The averages never feed back into a loss, so training is unchanged, except where a
method acts on validation scores itself (PReL picks its teacher and its best-model average by
them): those decisions then follow the averaged networks' scores.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

__all__ = ["WeightAverage"]


class WeightAverage:
    """Per modality, ``avg <- d * avg + (1 - d) * net`` after every optimiser step, for the
    parameters and the floating-point buffers (BatchNorm statistics); integer buffers are copied.

    ``d = min(decay, (1 + n) / (10 + n))`` after ``n`` earlier updates (TensorFlow's
    ``num_updates`` rule): early on the average follows the network closely, so it never carries
    the random initial weights for long.
    """

    def __init__(self, nets: Mapping[str, nn.Module], decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"ema decay must be in (0, 1), got {decay}")
        self.decay = float(decay)
        self.updates = 0
        self.nets: dict[str, nn.Module] = {}
        for m, net in nets.items():
            avg = copy.deepcopy(net).eval()
            avg.requires_grad_(False)  # never trained: no optimiser holds it, no loss reaches it
            self.nets[m] = avg

    def current_decay(self) -> float:
        return min(self.decay, (1.0 + self.updates) / (10.0 + self.updates))

    @torch.no_grad()
    def update(self, nets: Mapping[str, nn.Module]) -> None:
        weight = 1.0 - self.current_decay()
        for m, avg in self.nets.items():
            net = nets[m]
            for a, p in zip(avg.parameters(), net.parameters(), strict=True):
                a.lerp_(p.detach().to(a.dtype), weight)
            for a, b in zip(avg.buffers(), net.buffers(), strict=True):
                if a.dtype.is_floating_point:
                    a.lerp_(b.to(a.dtype), weight)
                else:
                    a.copy_(b)
        self.updates += 1

    def state_dict(self) -> dict[str, Any]:
        return {"decay": self.decay, "updates": self.updates,
                "networks": {m: {k: v.detach().cpu().clone() for k, v in n.state_dict().items()}
                             for m, n in self.nets.items()}}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.updates = int(state["updates"])
        for m, weights in state["networks"].items():
            self.nets[m].load_state_dict(weights)
