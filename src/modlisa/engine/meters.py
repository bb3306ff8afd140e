"""Meters: iteration time, throughput and peak memory (CUDA peak allocated on GPU, peak RSS on CPU)."""

from __future__ import annotations

import contextlib
import re
import resource
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch


def synchronize(device: torch.device) -> None:
    """Wait for queued device work so that wall-clock timings are real."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


_PROC_STATUS = Path("/proc/self/status")
_PROC_CLEAR_REFS = Path("/proc/self/clear_refs")


def reset_peak_memory(device: torch.device) -> None:
    """Restart the peak-memory count: CUDA's peak statistics, or on Linux the process's peak RSS (VmHWM, reset
    by writing 5 to /proc/self/clear_refs); elsewhere the CPU peak cannot be reset."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    with contextlib.suppress(OSError):
        _PROC_CLEAR_REFS.write_text("5")


def _vm_hwm_kib() -> int | None:
    """The peak resident set size in KiB since the process started or the last ``reset_peak_memory`` (Linux)."""
    try:
        match = re.search(r"^VmHWM:\s+(\d+) kB", _PROC_STATUS.read_text(), re.MULTILINE)
    except OSError:
        return None
    return int(match.group(1)) if match else None


def peak_memory(device: torch.device) -> tuple[float, str]:
    """Peak memory in GB and what it measures.

    On CUDA: ``torch.cuda.max_memory_allocated`` since the last reset ("cuda_max_allocated").
    On CPU: the process's peak resident set size ("cpu_peak_rss"): since the last ``reset_peak_memory`` on Linux
    (VmHWM), since the process started elsewhere (``ru_maxrss``).
    """
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 1024**3, "cuda_max_allocated"
    hwm = _vm_hwm_kib()
    if hwm is not None:
        return hwm / 1024**2, "cpu_peak_rss"
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    scale = 1024**3 if sys.platform == "darwin" else 1024**2
    return rss / scale, "cpu_peak_rss"


@dataclass
class ThroughputMeter:
    """Times optimizer steps (iterations) within one epoch.

    ``step(samples)`` is called after each optimizer step with the number of images it consumed.
    """

    device: torch.device
    iteration_times: list[float] = field(default_factory=list)
    samples: int = 0
    _start: float = field(default_factory=time.perf_counter)
    _last: float = field(default_factory=time.perf_counter)

    def start(self) -> None:
        synchronize(self.device)
        reset_peak_memory(self.device)
        self._start = self._last = time.perf_counter()
        self.iteration_times.clear()
        self.samples = 0

    def step(self, samples: int) -> float:
        synchronize(self.device)
        now = time.perf_counter()
        elapsed = now - self._last
        self._last = now
        self.iteration_times.append(elapsed)
        self.samples += samples
        return elapsed

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self._start

    @property
    def iter_per_sec(self) -> float:
        total = sum(self.iteration_times)
        return len(self.iteration_times) / total if total > 0 else 0.0

    @property
    def samples_per_sec(self) -> float:
        """Images per second of the epoch's steps so far (all processes' images when ``step`` is given them)."""
        total = sum(self.iteration_times)
        return self.samples / total if total > 0 else 0.0

    def summary(self) -> dict[str, float | str]:
        """Per-epoch benchmark figures (seconds, iterations/s, samples/s, GB)."""
        times = self.iteration_times
        total = sum(times)
        mem, kind = peak_memory(self.device)
        return {
            "iter_per_sec": len(times) / total if total > 0 else 0.0,
            "avg_iter_time": total / len(times) if times else 0.0,
            "median_iter_time": statistics.median(times) if times else 0.0,
            "epoch_time": self.elapsed,
            "samples_per_sec": self.samples / total if total > 0 else 0.0,
            "peak_memory_gb": mem,
            "peak_memory_kind": kind,
        }
