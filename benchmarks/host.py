"""The machine a benchmark ran on, recorded beside every timing (timings mean nothing without it)."""
from __future__ import annotations

import os
from pathlib import Path


def cpu_model() -> str:
    """The CPU's model name ("AMD EPYC ..."): the one run.json records (``compute.cpu``)."""
    from semicml.hardware import cpu_name

    return cpu_name()


def cpu_info() -> dict:
    """The model, core count and the vector ISA that decides conv speed (AVX2, AVX-512, AMX)."""
    flags: set[str] = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    isa = [f for f in ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile") if f in flags]
    info = {"model": cpu_model(), "cores": os.cpu_count(), "isa": isa}
    try:
        import torch

        info["torch_cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    except ImportError:
        pass
    return info
