"""FLOPs of a step (``torch.utils.flop_counter``) and the peak matmul rate of the device, for MFU.

``FlopCounterMode`` counts matmuls, convolutions and attention kernels of what actually runs (forward,
backward and any recomputation under gradient checkpointing). Its registry has no formula for the CPU
flash-attention kernel that ``scaled_dot_product_attention`` uses on CPU, so one is added here (the same
count as for the CUDA kernels). MFU = achieved FLOP/s / peak FLOP/s of a large matmul measured in the
same process, in the run's dtype, on the run's device.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch
from torch.utils import flop_counter

from modlisa.engine.meters import synchronize

_aten = torch.ops.aten


def _cpu_sdpa(query_shape: Any, key_shape: Any, value_shape: Any, *args: Any, **kwargs: Any) -> int:
    return flop_counter.sdpa_flop_count(query_shape, key_shape, value_shape)


def _cpu_sdpa_backward(grad_out_shape: Any, query_shape: Any, key_shape: Any, value_shape: Any, *args: Any,
                       **kwargs: Any) -> int:
    return flop_counter.sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


EXTRA_FORMULAS: dict[Any, Callable[..., int]] = {
    _aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa,
    _aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_sdpa_backward,
}


def flop_counter_mode() -> flop_counter.FlopCounterMode:
    """A quiet ``FlopCounterMode`` that also counts CPU scaled-dot-product attention."""
    return flop_counter.FlopCounterMode(display=False, custom_mapping=EXTRA_FORMULAS)


def count_flops(fn: Callable[[], Any]) -> int:
    """Total FLOPs of the ops ``fn()`` runs (forward and, if ``fn`` calls it, backward)."""
    with flop_counter_mode() as mode:
        fn()
    return int(mode.get_total_flops())


def measure_peak_matmul(device: torch.device, dtype: torch.dtype, n: int | None = None, repeats: int = 5,
                        warmup: int = 2) -> dict[str, Any]:
    """FLOP/s of an (n x n) @ (n x n) matmul in ``dtype`` on ``device`` (best of ``repeats``, synchronised).

    n defaults to 8192 on CUDA and 2048 on CPU (a few hundred ms per matmul on a small CPU).
    """
    if n is None:
        n = 8192 if device.type == "cuda" else 2048
    generator = torch.Generator(device="cpu").manual_seed(0)
    a = torch.randn(n, n, generator=generator).to(device=device, dtype=dtype)
    b = torch.randn(n, n, generator=generator).to(device=device, dtype=dtype)
    for _ in range(warmup):
        torch.matmul(a, b)
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        torch.matmul(a, b)
        synchronize(device)
        times.append(time.perf_counter() - start)
    best = min(times)
    flops = 2 * n**3
    return {"n": n, "dtype": str(dtype).replace("torch.", ""), "device": str(device), "repeats": repeats,
            "flops_per_matmul": flops, "best_seconds": best, "median_seconds": sorted(times)[len(times) // 2],
            "flops_per_s": flops / best}


def mfu(flops_per_step: float, step_time_s: float, peak_flops_per_s: float) -> float:
    """Model FLOPs utilisation: (flops_per_step / step_time_s) / peak_flops_per_s."""
    if step_time_s <= 0 or peak_flops_per_s <= 0:
        return 0.0
    return flops_per_step / step_time_s / peak_flops_per_s
