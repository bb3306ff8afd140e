"""Per-dataset figures of a training mixture: how many images, queries and masks each dataset contributed and
its share of the losses (CE per learned token, mask BCE and Dice per mask), summed over an epoch.

The sums are plain floats keyed by ``"<dataset>/<figure>"`` so that they travel in mid-epoch checkpoints and
are all-reduced across ranks like the epoch's loss sums (every rank starts with the same keys: every dataset
of the mixture, at zero). Computed without gradients from the step's outputs; the mask terms are the ones
``losses.compute_losses`` averages, so the per-dataset values are that average restricted to one dataset.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F

from modlisa.losses import per_mask_bce, per_mask_dice
from modlisa.model.seg import rows_to_images
from modlisa.types import IGNORE_INDEX, Batch

FIGURES = ("images", "queries", "masks", "ce_sum", "ce_tokens", "mask_bce_sum", "mask_dice_sum")


def zero_sums(names: Iterable[str]) -> dict[str, float]:
    """Every figure of every dataset at zero (the same keys on every rank)."""
    return {f"{name}/{figure}": 0.0 for name in names for figure in FIGURES}


def _row_images(batch: Batch, num_rows: int) -> torch.Tensor:
    """(R,) image index of each logits row: rows are queries (unpacked) or images (packed)."""
    if num_rows == batch.num_queries:
        return rows_to_images(batch.offsets, num_rows)
    return torch.arange(num_rows)


@torch.no_grad()
def batch_sums(batch: Batch, logits: torch.Tensor, labels: torch.Tensor, pred_masks: list[torch.Tensor]
               ) -> dict[str, float]:
    """The figures of one micro-batch per dataset (``batch.sources``).

    logits (R, T, V) and labels (R, T) as ``compute_losses`` takes them (R = queries, or images when packed);
    pred_masks: B tensors (n_b, H_b, W_b) of logits; batch.masks the matching uint8 targets.
    """
    sums: dict[str, float] = {}

    def add(name: str, figure: str, value: float) -> None:
        key = f"{name}/{figure}"
        sums[key] = sums.get(key, 0.0) + float(value)

    sources = batch.sources or ["reason_seg"] * batch.num_images
    offsets = batch.offsets.tolist()
    for b, name in enumerate(sources):
        add(name, "images", 1)
        add(name, "queries", offsets[b + 1] - offsets[b])
        gt = batch.masks[b]
        if gt.shape[0]:
            y = (gt == 1).to(pred_masks[b].device)
            add(name, "masks", gt.shape[0])
            add(name, "mask_bce_sum", per_mask_bce(pred_masks[b], y).sum())
            add(name, "mask_dice_sum", per_mask_dice(pred_masks[b], y).sum())
    targets = labels[:, 1:]
    counted = targets != IGNORE_INDEX
    if bool(counted.any()):
        token_ce = F.cross_entropy(logits[:, :-1][counted].float(), targets[counted], reduction="none")
        row_of_token = torch.nonzero(counted, as_tuple=True)[0]
        image_of_row = _row_images(batch, logits.shape[0]).to(row_of_token.device)
        image_of_token = image_of_row[row_of_token]
        for b, name in enumerate(sources):
            mine = image_of_token == b
            add(name, "ce_sum", token_ce[mine].sum())
            add(name, "ce_tokens", mine.sum())
    return sums


def summarise(sums: dict[str, float]) -> dict[str, dict[str, Any]]:
    """{dataset: {images, queries, masks, share (of the images), ce, mask_bce, mask_dice}} from summed figures
    (a loss is None when the dataset contributed no token / mask)."""
    names = sorted({key.rsplit("/", 1)[0] for key in sums})
    total_images = sum(sums.get(f"{n}/images", 0.0) for n in names)
    out = {}
    for n in names:
        def get(figure: str, name: str = n) -> float:
            return sums.get(f"{name}/{figure}", 0.0)
        out[n] = {
            "images": int(get("images")), "queries": int(get("queries")), "masks": int(get("masks")),
            "share": get("images") / total_images if total_images else 0.0,
            "ce": get("ce_sum") / get("ce_tokens") if get("ce_tokens") else None,
            "mask_bce": get("mask_bce_sum") / get("masks") if get("masks") else None,
            "mask_dice": get("mask_dice_sum") / get("masks") if get("masks") else None,
        }
    return out


def step_line_counts(sums: dict[str, float]) -> str:
    """The step line's mixture part: each dataset's images so far this epoch and its running CE / mask Dice,
    e.g. ``ade20k 12 (ce 0.41 dice 0.80) | llava_instruct 5 (ce 0.77)``."""
    parts = []
    for name, figures in summarise(sums).items():
        losses = " ".join(f"{label} {figures[key]:.2f}" for key, label in (("ce", "ce"), ("mask_dice", "dice"))
                          if figures[key] is not None)
        parts.append(f"{name} {figures['images']}" + (f" ({losses})" if losses else ""))
    return " | ".join(parts)
