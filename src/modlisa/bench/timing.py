"""Component timers: exclusive wall time of named regions of a step, with device synchronisation.

Regions nest (the forward contains the LM, the LM runs inside the forward); each second is charged to the
innermost open region only, and time outside every region is charged to ``other``. The components of a
step therefore sum EXACTLY to the step's wall time, which makes "the parts add up to the step" checkable.

The model's parts are timed by wrapping its methods on the instance (``encode_images`` = vision tower +
projector, ``encode_sam`` = SAM image encoder, ``_decode_per_image`` = SAM decoder + mask upsampling) and by
forward pre/post hooks on ``language_model``; ``detach()`` restores the model.
"""

from __future__ import annotations

import functools
import math
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from modlisa.engine.meters import synchronize

OTHER = "other"
# model part -> component name
MODEL_METHODS = {"encode_images": "vision_tower", "encode_sam": "sam_image_encoder",
                 "_decode_per_image": "sam_decoder_upsampling"}
LM_COMPONENT = "language_model"


class ComponentTimer:
    """Exclusive time per region name over a series of steps.

    ``start_step()`` / ``end_step()`` bracket one step (always synchronised); ``region(name)`` (a context
    manager) or ``enter(name)`` / ``exit()`` mark regions inside it, synchronised when ``sync``.
    ``per_step`` holds one {name: seconds} dict per step.
    """

    def __init__(self, device: torch.device, sync: bool = True) -> None:
        self.device = device
        self.sync = sync
        self.per_step: list[dict[str, float]] = []
        self.step_times: list[float] = []
        self._stack: list[str] = []
        self._mark = 0.0
        self._current: dict[str, float] | None = None
        self._step_start = 0.0

    def _now(self, force: bool = False) -> float:
        if self.sync or force:
            synchronize(self.device)
        return time.perf_counter()

    def _charge(self, now: float) -> None:
        if self._current is None:
            return
        name = self._stack[-1] if self._stack else OTHER
        self._current[name] = self._current.get(name, 0.0) + (now - self._mark)
        self._mark = now

    def start_step(self) -> None:
        self._stack.clear()
        self._current = {}
        self._step_start = self._mark = self._now(force=True)

    def end_step(self) -> float:
        """Close the step; returns its wall time (= the sum of its components)."""
        if self._current is None:
            raise RuntimeError("end_step() without start_step()")
        if self._stack:
            raise RuntimeError(f"end_step() with open regions {self._stack}")
        now = self._now(force=True)
        self._charge(now)
        self.per_step.append(self._current)
        self.step_times.append(now - self._step_start)
        self._current = None
        return self.step_times[-1]

    def enter(self, name: str) -> None:
        if self._current is None:
            return
        self._charge(self._now())
        self._stack.append(name)

    def exit(self) -> None:
        if self._current is None:
            return
        self._charge(self._now())
        self._stack.pop()

    @contextmanager
    def region(self, name: str) -> Iterator[None]:
        self.enter(name)
        try:
            yield
        finally:
            self.exit()

    # ------------------------------------------------------------------ summaries
    def names(self) -> list[str]:
        seen: dict[str, None] = {}
        for step in self.per_step:
            seen.update(dict.fromkeys(step))
        return list(seen)

    def mean_components(self) -> dict[str, float]:
        """Mean seconds per step of each component (they sum to the mean step time)."""
        n = max(1, len(self.per_step))
        return {name: sum(s.get(name, 0.0) for s in self.per_step) / n for name in self.names()}


def wrap_model(model: nn.Module, timer: ComponentTimer) -> Callable[[], None]:
    """Time the model's parts inside ``timer``; returns a function that removes the instrumentation."""
    for method, name in MODEL_METHODS.items():
        original = getattr(model, method)

        def timed(*args: Any, _original: Callable = original, _name: str = name, **kwargs: Any) -> Any:
            with timer.region(_name):
                return _original(*args, **kwargs)

        setattr(model, method, functools.wraps(original)(timed))
    handles = [
        model.language_model.register_forward_pre_hook(lambda *_: timer.enter(LM_COMPONENT)),
        model.language_model.register_forward_hook(lambda *_: timer.exit()),
    ]

    def detach() -> None:
        for method in MODEL_METHODS:
            if method in vars(model):
                delattr(model, method)
        for handle in handles:
            handle.remove()

    return detach


def latency_summary(times: list[float]) -> dict[str, float]:
    """median, p90 (nearest rank), mean, min, max of step times in seconds."""
    if not times:
        return {"median": 0.0, "p90": 0.0, "mean": 0.0, "min": 0.0, "max": 0.0}
    ordered = sorted(times)
    rank = min(len(ordered), max(1, math.ceil(0.9 * len(ordered)))) - 1
    return {"median": statistics.median(ordered), "p90": ordered[rank], "mean": sum(ordered) / len(ordered),
            "min": ordered[0], "max": ordered[-1]}
