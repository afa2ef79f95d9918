"""The machine a benchmark ran on, as every table's heading says it (no flags: importable by
any benchmark script)."""

from __future__ import annotations

import os
import platform

from catdog import distribute


def cpu_description() -> str:
    """'<CPU model>, <N> cores, bfloat16 flags: <amx_bf16, avx512_bf16 or none>'."""
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f
                          if line.startswith("model name")), platform.processor())
    except OSError:
        model = platform.processor() or "unknown CPU"
    native = [f for f in distribute.BFLOAT16_CPU_FLAGS if f in distribute.cpu_flags()]
    return f"{model}, {os.cpu_count()} cores, bfloat16 flags: {', '.join(native) or 'none'}"
