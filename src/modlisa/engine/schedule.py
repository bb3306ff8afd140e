"""Learning-rate schedule of docs/LISA.md §6: linear warm-up, then linear decay to 0 (or constant)."""

from __future__ import annotations

from collections.abc import Callable


def lr_lambda(warmup_steps: int, total_steps: int, kind: str = "linear") -> Callable[[int], float]:
    """Multiplier of the base lr after ``step`` optimizer steps (LambdaLR convention)."""

    def factor(step: int) -> float:
        if warmup_steps > 0 and step < warmup_steps:
            return (step + 1) / warmup_steps
        if kind == "constant":
            return 1.0
        remaining = total_steps - step
        span = max(1, total_steps - warmup_steps)
        return max(0.0, remaining / span)

    return factor
