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
    sources = batch.sources or ["reason_seg"] * batch.num_images
    per_image = _per_image_sums(batch, logits, labels, pred_masks)  # figure -> B values, read back once each
    offsets = batch.offsets.tolist()
    per_image["images"] = [1.0] * len(sources)
    per_image["queries"] = [float(offsets[b + 1] - offsets[b]) for b in range(len(sources))]
    per_image["masks"] = [float(m.shape[0]) for m in batch.masks]
    sums: dict[str, float] = {}
    for figure, values in per_image.items():
        for name, value in zip(sources, values):
            key = f"{name}/{figure}"
            sums[key] = sums.get(key, 0.0) + float(value)
    return sums


def _per_image_sums(batch: Batch, logits: torch.Tensor, labels: torch.Tensor, pred_masks: list[torch.Tensor]
                    ) -> dict[str, list[float]]:
    """Per image b: summed mask BCE / Dice over its masks, summed token CE and its token count, each figure a (B,)
    tensor on the logits' device read back with ONE ``tolist`` (no host sync per image on the hot path)."""
    device, count = logits.device, batch.num_images
    bce, dice = torch.zeros(count, device=device), torch.zeros(count, device=device)
    for b, (pred, gt) in enumerate(zip(pred_masks, batch.masks)):
        if gt.shape[0]:
            y = (gt == 1).to(pred.device)
            bce[b] = per_mask_bce(pred, y).sum()
            dice[b] = per_mask_dice(pred, y).sum()
    ce, tokens = torch.zeros(count, device=device), torch.zeros(count, device=device)
    targets = labels[:, 1:]
    counted = targets != IGNORE_INDEX
    token_ce = F.cross_entropy(logits[:, :-1][counted].float(), targets[counted], reduction="none")
    image_of_token = _row_images(batch, logits.shape[0]).to(device)[torch.nonzero(counted, as_tuple=True)[0]]
    ce.index_add_(0, image_of_token, token_ce)
    tokens.index_add_(0, image_of_token, torch.ones_like(token_ce))
    return {"mask_bce_sum": bce.tolist(), "mask_dice_sum": dice.tolist(), "ce_sum": ce.tolist(),
            "ce_tokens": tokens.tolist()}


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
