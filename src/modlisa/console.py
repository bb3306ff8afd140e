"""What a run prints: progress bars only where they render, one metric vocabulary, step lines worth reading.

- Progress bars (tqdm) are drawn only when their stream is a terminal and ``TQDM_DISABLE`` is not set to a true
  value: piped to a file, a run writes plain lines, no bar frames.
- One vocabulary everywhere: gIoU (mean of per-query IoUs) and cIoU (summed intersections / summed unions);
  no bare "IoU".
- The training step line carries the loss and its terms, running gIoU / cIoU of the epoch, the learning rate,
  the gradient norm, samples/s, peak memory and the ETA of the whole run.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Iterable
from typing import IO, Any

from tqdm.auto import tqdm

FALSE_WORDS = ("", "0", "false", "no", "off")


def bars_enabled(stream: IO[str] | None = None) -> bool:
    """Whether progress bars may be drawn on ``stream`` (default stderr, where tqdm writes): it is a terminal
    and ``TQDM_DISABLE`` is unset or false."""
    if os.environ.get("TQDM_DISABLE", "").strip().lower() not in FALSE_WORDS:
        return False
    stream = stream if stream is not None else sys.stderr
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # a closed or replaced stream
        return False


def progress(iterable: Iterable[Any] | None = None, *, enabled: bool = True, **kwargs: Any) -> tqdm:
    """``tqdm`` drawn only when ``enabled`` and ``bars_enabled()`` (its ``write`` prints plain lines either way)."""
    return tqdm(iterable, disable=not (enabled and bars_enabled(kwargs.get("file"))), **kwargs)


def format_duration(seconds: float) -> str:
    """``3725.2`` -> "1:02:05"; "?" when unknown (not finite or negative)."""
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    whole = int(round(seconds))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


def run_eta_seconds(step_times: list[float], steps_left: int) -> float:
    """Seconds until the run's last optimizer step: ``steps_left`` x the mean of the epoch's last 20
    ``step_times`` (its first step, with the loader's start-up, only while it is the only one). Validation and
    checkpoint time are not in it."""
    if steps_left <= 0:
        return 0.0
    recent = (step_times[1:] if len(step_times) > 1 else step_times)[-20:]
    return steps_left * (sum(recent) / len(recent)) if recent else float("nan")


TERM_NAMES = {"ce": "ce", "mask_bce": "bce", "mask_dice": "dice", "mask_focal": "focal"}


def step_line(*, epoch: int, num_epochs: int, step: int, steps_per_epoch: int, losses: dict[str, float],
              giou: float, ciou: float, lr: float, grad_norm: float, samples_per_s: float, peak_memory_gb: float,
              eta_s: float, terms: tuple[str, ...] = ("ce", "mask_bce", "mask_dice")) -> str:
    """One training step line; ``losses`` holds "loss" and the loss ``terms`` shown (running means of the
    epoch; the trainer adds "mask_focal" when its weight is > 0).

    e.g. ``epoch 1/8 step 20/94 | loss 0.8123 (ce 0.0031 bce 0.2011 dice 0.6081) | gIoU 0.4312 cIoU 0.4655 |
    lr 9.87e-04 | grad-norm 1.234 | 12.3 samples/s | mem 1.21 GB | ETA 0:05:12``
    """
    shown = " ".join(f"{TERM_NAMES.get(key, key)} {losses[key]:.4f}" for key in terms if key in losses)
    return (f"epoch {epoch}/{num_epochs} step {step}/{steps_per_epoch} | loss {losses['loss']:.4f} ({shown}) | "
            f"gIoU {giou:.4f} cIoU {ciou:.4f} | lr {lr:.2e} | grad-norm {grad_norm:.3f} | "
            f"{samples_per_s:.2f} samples/s | mem {peak_memory_gb:.2f} GB | ETA {format_duration(eta_s)}")


EPOCH_FIELDS = (("loss", "loss", "{:.4f}"), ("ce", "ce", "{:.4f}"), ("mask_bce", "mask bce", "{:.4f}"),
                ("mask_dice", "mask dice", "{:.4f}"), ("giou", "gIoU", "{:.4f}"), ("ciou", "cIoU", "{:.4f}"),
                ("empty_mask_giou", "empty-mask gIoU", "{:.4f}"), ("samples_per_sec", "samples/s", "{:.2f}"),
                ("avg_iter_time", "mean step time (s)", "{:.3f}"), ("epoch_time", "epoch time (s)", "{:.1f}"),
                ("peak_memory_gb", "peak memory (GB)", "{:.2f}"))


def metrics_block(title: str, metrics: dict[str, Any]) -> str:
    """The epoch's train or validation figures, one per line, gIoU / cIoU named as such."""
    lines = [f"{title}:"]
    for key, label, fmt in EPOCH_FIELDS:
        value = metrics.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            lines.append(f"  {label:<20} {fmt.format(value)}")
    return "\n".join(lines)
