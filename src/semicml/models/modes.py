"""Train / eval modes that survive a temporary switch.

``net.train(was_training)`` after an evaluation would re-enable every dropout layer, including
the ones a method switched off on purpose (students train without dropout). These helpers save
and restore the mode of every sub-module instead.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from torch import nn


@contextmanager
def modes_restored(net: nn.Module) -> Iterator[nn.Module]:
    """Inside the block the caller may change modes freely; each module's own mode comes back after it."""
    saved = [(module, module.training) for module in net.modules()]
    try:
        yield net
    finally:
        for module, training in saved:
            module.training = training


def enable_mc_dropout(net: nn.Module) -> None:
    """eval() everywhere (BatchNorm uses running stats) but dropout active (Monte-Carlo dropout)."""
    net.eval()
    for module in net.modules():
        if isinstance(module, nn.modules.dropout._DropoutNd):
            module.train()
