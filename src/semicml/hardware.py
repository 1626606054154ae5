"""Device and precision choices.

bf16 autocast is the default only where the hardware has fast bf16 matrix units (CUDA GPUs
with bf16 support, CPUs with AMX or AVX512-BF16). On CPUs without them (e.g. AVX2-only) bf16
is emulated and measured ~10x SLOWER than fp32 here, so "auto" falls back to fp32 there.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

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
