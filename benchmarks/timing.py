"""Timing of full optimisation steps, shared by the training benchmarks (bench_train.py,
bench_modalities.py): forward through the method's stage loss, backward, update."""
from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from contextlib import nullcontext


def step_times(method, optimizer, batches: Iterable[dict], stage: str,
               autocast: Callable = nullcontext, sync: Callable[[], None] = lambda: None) -> list[float]:
    """Seconds of each step over ``batches`` (``stage``: ``semicml`` or ``prel``, the latter with
    the first modality as teacher). ``sync`` waits for the device (CUDA) so that a step's time is
    its own; the batches are drawn (collated, moved) before the clock starts."""
    method.train()
    if stage == "prel":
        method.teacher_index = 0
    times = []
    for k, batch in enumerate(batches):
        sync()
        t0 = time.perf_counter()
        with autocast():
            losses = method.prel_losses(batch, k) if stage == "prel" else method.semicml_losses(batch, k)
        optimizer.zero_grad()
        losses["loss"].backward()
        optimizer.step()
        sync()
        times.append(time.perf_counter() - t0)
    return times
