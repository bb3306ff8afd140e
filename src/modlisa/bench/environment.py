"""What a benchmark ran on: device, dtype, threads, library versions, load, process memory."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import sys
from typing import Any

import torch

LIBRARIES = ("torch", "transformers", "peft", "accelerate", "numpy", "pillow", "opencv-python-headless",
             "safetensors", "modlisa")


def library_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine()


def current_rss_gb() -> float:
    """Resident set size of this process now (Linux /proc; 0.0 where unavailable)."""
    try:
        with open("/proc/self/statm", encoding="ascii") as fh:
            pages = int(fh.read().split()[1])
    except (OSError, ValueError, IndexError):
        return 0.0
    return pages * os.sysconf("SC_PAGE_SIZE") / 1024**3


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def environment(device: torch.device, run_dtype: torch.dtype) -> dict[str, Any]:
    """Device name, dtype, thread counts, versions, platform and the load average now."""
    info: dict[str, Any] = {
        "device": str(device), "device_name": device_name(device),
        "dtype": str(run_dtype).replace("torch.", ""),
        "torch_num_threads": torch.get_num_threads(), "torch_num_interop_threads": torch.get_num_interop_threads(),
        "cpu_count": os.cpu_count(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "python": sys.version.split()[0], "platform": platform.platform(),
        "versions": library_versions(), "loadavg": load_average(),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(cuda=torch.version.cuda, gpu_memory_gb=props.total_memory / 1024**3,
                    gpu_count=torch.cuda.device_count())
    return info
