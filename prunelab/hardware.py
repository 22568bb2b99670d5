"""What machine this is: the CPU model, its vector ISA flags and the cores this process may use
(part of every latency fingerprint; read by the targets and the cache alike)."""

from __future__ import annotations

import functools
import os
import platform
from pathlib import Path

ISA_FLAGS = ("sse4_2", "avx", "avx2", "fma", "avx_vnni", "avx512f", "avx512bw", "avx512_vnni",
             "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "neon", "asimd", "sve")


@functools.lru_cache(maxsize=1)
def cpu_info() -> dict:
    """CPU model, vector ISA flags and core counts (Linux /proc/cpuinfo, else platform)."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            k, _, v = line.partition(":")
            k = k.strip()
            if k in ("model name", "Hardware") and model in ("", platform.machine(),
                                                             platform.processor()):
                model = v.strip()
            elif k in ("flags", "Features") and not flags:
                flags = set(v.split())
    except OSError:
        pass
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"cpu": model, "arch": platform.machine(), "isa": [f for f in ISA_FLAGS if f in flags],
            "logical_cores": os.cpu_count(), "usable_cores": usable}
