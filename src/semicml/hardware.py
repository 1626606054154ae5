"""Device and precision choices.

bf16 autocast is the default only where the hardware has fast bf16 matrix units (CUDA GPUs
with bf16 support, CPUs with AMX or AVX512-BF16). On CPUs without them (e.g. AVX2-only) bf16
is emulated and measured ~10x SLOWER than fp32 here, so "auto" falls back to fp32 there.
"""

from __future__ import annotations

import contextlib
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .errors import ConfigError


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown device {name!r} (use auto, cpu, cuda or cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} requested but CUDA is not available")
    return device


def cpu_has_fast_bf16() -> bool:
    amx = getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    avx512_bf16 = getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    try:
        return bool(amx() or avx512_bf16())
    except RuntimeError:
        return False


@dataclass(frozen=True)
class Precision:
    name: str  # "bf16" or "fp32"
    device_type: str

    def autocast(self):
        if self.name == "bf16":
            return torch.autocast(self.device_type, dtype=torch.bfloat16)
        return contextlib.nullcontext()


PRECISIONS = ("auto", "bf16", "fp32")


def resolve_precision(requested: str, device: torch.device) -> Precision:
    if requested not in PRECISIONS:  # the training config validates it; predict/bench pass the CLI text
        raise ConfigError(f"unknown precision {requested!r} (choose from {', '.join(PRECISIONS)})")
    if requested == "fp32":
        return Precision("fp32", device.type)
    if device.type == "cuda":
        fast = torch.cuda.is_bf16_supported()
    else:
        fast = cpu_has_fast_bf16()
    if requested == "bf16":
        return Precision("bf16", device.type)
    return Precision("bf16" if fast else "fp32", device.type)


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux, else what ``platform`` knows)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


# What decides a run's numbers beyond its config and seed. Float sums are split over the threads
# (and the processes of a distributed run), and oneDNN / ATen / MKL pick kernels by CPU vendor and
# instruction set, so another thread count, process count, CPU or precision gives results that
# differ in the last bits, and training amplifies them (measured here: 1 vs 2 threads, same seed,
# diverge at iteration 10; the same thread count reproduces bit for bit). On a GPU, whose own
# kernels are not bit-reproducible, the CPU side is not compared.
COMPUTE_KEYS = ("threads", "processes", "cpu", "cpu_capability", "precision", "gpu")
_CPU_SIDE = ("threads", "cpu", "cpu_capability")


def compute_record(device: torch.device, precision: str, processes: int = 1) -> dict[str, Any]:
    """Where a run computed: recorded in run.json and checkpoints, compared on resume."""
    return {
        "threads": torch.get_num_threads(),
        "processes": processes,
        "cpu": cpu_name(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),  # the ATen kernels in use (AVX2, AVX512, ...)
        "precision": precision,
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
    }


def compute_difference(before: dict[str, Any] | None, now: dict[str, Any]) -> str:
    """'threads 1 -> 2, ...' for the settings that change the numbers; '' when none changed (or
    the record predates this check)."""
    if not before:
        return ""
    keys = [k for k in COMPUTE_KEYS if not (now.get("gpu") and before.get("gpu") and k in _CPU_SIDE)]
    return ", ".join(f"{k.replace('_', ' ')} {before.get(k)} -> {now.get(k)}" for k in keys
                     if k in before and before[k] != now.get(k))
