"""What the numbers were measured on: CPU model, cores, RAM, and the versions of what was measured.

Latency ratios and wall times mean little without the machine (int8 speed-ups depend on VNNI/AMX) and the
exact package versions, so both go into the JSON and the BENCHMARKS.md section.
"""

from __future__ import annotations

import os
import platform
from importlib.metadata import PackageNotFoundError, version


def machine() -> dict[str, object]:
    cpu = platform.processor() or platform.machine()
    flags: set[str] = set()
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name") and cpu in (platform.processor(), platform.machine(), ""):
                    cpu = line.split(":", 1)[1].strip()
                elif line.startswith("flags") and not flags:
                    flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    isa = [name for name in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8") if name in flags]
    return {"cpu": cpu, "cores": os.cpu_count(), "arch": platform.machine(), "memory_gib": round(memory / 2**30, 1),
            "int8_isa": isa, "gpu": "none (CPUExecutionProvider)"}


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name in ("onnxq", "onnxruntime", "onnx", "onnx-ir", "onnxscript", "numpy", "torch"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            continue
    return found
