"""One evaluation loop (LISA protocol, teacher-forced) for validation during training and `modlisa eval`.

Protocol (docs/LISA.md §5): one query per image (its first text), fixed prompt, the answer "[SEG]."
given in the input; prediction = mask logits > 0 at the original resolution; ignore pixels (255)
removed from prediction and ground truth; gIoU = mean per-query IoU, cIoU = ΣI / ΣU.
With several processes each rank evaluates a disjoint shard (EvalShardSampler) and the per-query
records are gathered and de-duplicated by (dataset index, query), so every sample counts exactly once.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from modlisa.console import progress as progress_bar
from modlisa.engine.grounding import grounding_accuracy, is_grounded
from modlisa.engine.task import SegmentationTask, subset_of
from modlisa.losses import LossWeights
from modlisa.metrics import IoUAccumulator
from modlisa.types import Batch

logger = logging.getLogger(__name__)

PROTOCOL = {"name": "lisa-reasonseg", "version": 1, "mode": "teacher",
            "prompt": "first text, first template", "threshold": "logits > 0",
            "ignore": "255 removed from prediction and ground truth"}


def autocast_context(device: torch.device, precision: str) -> Any:
    """``torch.autocast`` for an Accelerate ``mixed_precision`` value ("no" -> no autocast). Unlike
    Accelerate, fp16 autocast is also honoured on CPU (evaluation only: no grad scaler is needed)."""
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision)
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


@dataclass
class EvalResult:
    """metrics: giou, ciou, loss, num_queries, subsets{short,long}; records: one dict per query; examples: the
    first ``keep_examples`` queries of this process with their masks (``mask_examples``)."""

    metrics: dict[str, Any]
    records: list[dict[str, Any]] = field(default_factory=list)
    examples: list[dict[str, Any]] = field(default_factory=list)


def mask_examples(batch: Batch, pred_masks: list[torch.Tensor], limit: int) -> list[dict[str, Any]]:
    """Up to ``limit`` queries of the batch as {file, query, pred (H, W) bool, gt (H, W) uint8} numpy pictures."""
    out: list[dict[str, Any]] = []
    for b in range(batch.num_images):
        start = int(batch.offsets[b])
        for q in range(batch.masks[b].shape[0]):
            if len(out) >= limit:
                return out
            out.append({"file": batch.image_paths[b], "query": batch.queries[start + q],
                        "pred": (pred_masks[b][q] > 0).cpu().numpy(), "gt": batch.masks[b][q].cpu().numpy()})
    return out


DistractorFn = Callable[[int, tuple[int, int]], "np.ndarray | None"]


def query_records(batch: Batch, pred_masks: list[torch.Tensor], acc: IoUAccumulator,
                  distractors_of: DistractorFn | None = None) -> list[dict[str, Any]]:
    """Score each query of the batch (one [SEG] per query) and return its record.

    pred_masks: B tensors (n_b, H_b, W_b) of mask logits; batch.masks: B tensors (n_b, H_b, W_b) uint8.
    ``distractors_of(sample_id, (H, W))`` -> (n_d, H, W) bool masks of the image's other shapes or None; when
    given, each record gets ``grounded`` (see ``grounding.is_grounded``; None where no distractor is known).
    """
    records = []
    for b in range(batch.num_images):
        start = int(batch.offsets[b])
        logits, gts = pred_masks[b], batch.masks[b]
        if logits.shape[0] != gts.shape[0]:
            raise RuntimeError(
                f"{batch.image_paths[b]}: {logits.shape[0]} predicted masks for {gts.shape[0]} queries "
                "(each query must contain exactly one [SEG])"
            )
        distractors = None
        if distractors_of is not None and batch.sample_ids:
            distractors = distractors_of(batch.sample_ids[b], tuple(gts.shape[-2:]))
        for q in range(gts.shape[0]):
            is_sentence = bool(batch.is_sentence[start + q])
            i, u, iou = acc.update(logits[q] > 0, gts[q], subset=subset_of(is_sentence))
            grounded = None
            if distractors is not None:
                grounded = is_grounded((logits[q] > 0).cpu().numpy(), gts[q].cpu().numpy(), distractors)
            records.append({
                "index": batch.sample_ids[b] if batch.sample_ids else -1,
                "query_index": q,
                "file": batch.image_paths[b],
                "query": batch.queries[start + q],
                "is_sentence": is_sentence,
                "I": int(i), "U": int(u), "IoU": float(iou),
                **({"grounded": grounded} if distractors_of is not None else {}),
            })
    return records


def metrics_from_records(records: list[dict[str, Any]]) -> dict[str, Any]:
    """gIoU / cIoU overall and per subset, recomputed from per-query records."""
    acc = IoUAccumulator(subsets=("short", "long"))
    for r in records:
        acc.add(r["I"], r["U"], subset=subset_of(r["is_sentence"]))
    return acc.compute()


def _dedupe(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    seen: dict[tuple, dict[str, Any]] = {}
    for r in records:
        key = (r["index"], r["query_index"]) if r["index"] >= 0 else (r["file"], r["query_index"], r["query"])
        seen.setdefault(key, r)
    return sorted(seen.values(), key=lambda r: (r["index"], r["query_index"], r["file"]))


@torch.no_grad()
def evaluate(model: torch.nn.Module, loader: Any, *, device: torch.device, accelerator: Any = None,
             loss_weights: LossWeights | None = None, desc: str = "eval", progress: bool = True,
             sam_cache: Any = None, distractors_of: DistractorFn | None = None,
             autocast: Any = None, keep_examples: int = 0) -> EvalResult:
    """Run teacher-forced LISA evaluation of ``model`` (unwrapped: no collectives inside the loop).

    ``sam_cache`` (a ``SamEmbeddingCache``) serves frozen-SAM image embeddings instead of re-encoding.
    ``distractors_of``: see ``query_records``; adds ``grounding`` (accuracy, num_queries) to the metrics.
    ``autocast``: the precision context to run in (`modlisa eval`: ``autocast_context``); default: the
    accelerator's (the run's mixed precision, as in training).
    ``keep_examples``: keep the masks of this process's first N queries in ``EvalResult.examples``.
    """
    was_training = model.training
    model.eval()
    acc = IoUAccumulator(subsets=("short", "long"))
    records: list[dict[str, Any]] = []
    examples: list[dict[str, Any]] = []
    loss_sum, loss_count = 0.0, 0
    if autocast is None:
        autocast = accelerator.autocast() if accelerator is not None else contextlib.nullcontext()
    show = progress and (accelerator is None or accelerator.is_main_process)
    task = SegmentationTask(model, model, loss_weights or LossWeights(), sam_cache=sam_cache)
    with autocast:
        for batch in progress_bar(loader, enabled=show, desc=desc, leave=False, dynamic_ncols=True):
            batch = batch.to(device)
            out = task.forward(batch, task.sam_embeddings(batch))
            if len(examples) < keep_examples:
                examples += mask_examples(batch, out.pred_masks, keep_examples - len(examples))
            if loss_weights is not None:
                loss_sum += float(task.losses(batch, out)["loss"]) * batch.num_images
                loss_count += batch.num_images
            records.extend(query_records(batch, out.pred_masks, acc, distractors_of))
    if accelerator is not None and accelerator.num_processes > 1:
        from accelerate.utils import gather_object

        records = gather_object(records)
        totals = accelerator.reduce(torch.tensor([loss_sum, loss_count], device=device, dtype=torch.float64),
                                    reduction="sum")
        loss_sum, loss_count = float(totals[0]), int(totals[1])
    records = _dedupe(records)
    metrics = metrics_from_records(records)
    if distractors_of is not None:
        metrics["grounding"] = grounding_accuracy(records)
    metrics["loss"] = loss_sum / loss_count if loss_count else None
    metrics["protocol"] = PROTOCOL
    if was_training:
        model.train()
    return EvalResult(metrics=metrics, records=records, examples=examples)
