"""Generate-mode evaluation: the model answers freely, and only an emitted [SEG] yields a mask.

This is the second, separately named mode of docs/LISA.md §5 (LISA's own numbers use teacher mode,
``engine.evaluate``). Per annotation: the first text, the fixed question of its kind
(``prompts.eval_question``), greedy generation (``Predictor.predict``, generate mode). The mask of the FIRST
generated [SEG] is thresholded at 0 and scored with the same IoU rules; an answer without [SEG] scores
an empty prediction. ``seg_rate`` = fraction of answers with at least one [SEG]. Single process.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from modlisa.console import progress as progress_bar
from modlisa.data.reasonseg import annotation_mask, load_image_rgb
from modlisa.engine.evaluate import PROTOCOL, EvalResult, metrics_from_records, subset_of
from modlisa.metrics import intersection_union, query_iou
from modlisa.predictor import Predictor
from modlisa.types import Annotation

logger = logging.getLogger(__name__)

GENERATE_PROTOCOL = {**PROTOCOL, "mode": "generate",
                     "answer": "generated greedily from the fixed question (no answer given)",
                     "mask": "first generated [SEG]; an answer without [SEG] is an empty prediction"}


@dataclass
class GeneratedQuery:
    """One annotation answered freely.

    logits: (H, W) float32 mask logits of the first [SEG], or None without [SEG].
    gt:     (H, W) uint8 ground truth in {0, 1, 255}; image: (H, W, 3) uint8 RGB.
    """

    text: str
    seg_count: int
    logits: torch.Tensor | None
    gt: np.ndarray
    image: np.ndarray

    @property
    def prediction(self) -> np.ndarray:
        """(H, W) bool prediction: logits > 0, all False without [SEG]."""
        if self.logits is None:
            return np.zeros(self.gt.shape, dtype=bool)
        return (self.logits > 0).numpy()


def image_and_gt(ann: Annotation) -> tuple[np.ndarray, np.ndarray]:
    """(image (H, W, 3) uint8 RGB, ground truth (H, W) uint8 in {0, 1, 255}) of ``ann``; DataError naming
    its file when the polygons do not fit the image."""
    image = load_image_rgb(ann.image_path)
    return image, annotation_mask(ann, image.shape[:2])


def generate_query(predictor: Predictor, ann: Annotation, *, max_new_tokens: int = 32) -> GeneratedQuery:
    """Answer the first text of ``ann`` with its fixed evaluation question; keep the first [SEG] mask."""
    image, gt = image_and_gt(ann)
    predictor.set_image(image)
    result = predictor.predict(ann.texts[0], is_sentence=ann.is_sentence, max_new_tokens=max_new_tokens)
    logits = result.logits[0] if result.seg_count else None
    return GeneratedQuery(text=result.text, seg_count=result.seg_count, logits=logits, gt=gt, image=image)


def generated_record(index: int, ann: Annotation, query: GeneratedQuery) -> dict[str, Any]:
    """The predictions-file record of one generated answer (teacher fields + answer, has_seg, gt_area)."""
    inter, union = intersection_union(query.prediction, query.gt)
    return {
        "index": index, "query_index": 0, "file": ann.image_path, "query": ann.texts[0],
        "is_sentence": ann.is_sentence, "I": inter, "U": union, "IoU": query_iou(inter, union),
        "answer": query.text, "has_seg": query.seg_count > 0, "seg_count": query.seg_count,
        "gt_area": int((query.gt == 1).sum()),
    }


def add_seg_rates(metrics: dict[str, Any], records: list[dict[str, Any]]) -> dict[str, Any]:
    """Add ``num_with_seg`` and ``seg_rate`` (0.0 for no query) overall and to each subset."""
    groups = {None: records}
    groups.update({name: [r for r in records if subset_of(r["is_sentence"]) == name]
                   for name in metrics.get("subsets", {})})
    for name, group in groups.items():
        target = metrics if name is None else metrics["subsets"][name]
        with_seg = sum(1 for r in group if r["has_seg"])
        target["num_with_seg"] = with_seg
        target["seg_rate"] = with_seg / len(group) if group else 0.0
    return metrics


def evaluate_generate(model: torch.nn.Module, tokenizer: Any, processors: Any, annotations: list[Annotation], *,
                      max_new_tokens: int = 32, desc: str = "eval generate", progress: bool = True) -> EvalResult:
    """Generate-mode evaluation of ``annotations`` (index = position in the list, as in teacher mode).

    Returns metrics (giou, ciou, num_queries, subsets, seg_rate, num_with_seg, protocol, loss=None) and
    one record per annotation. The model runs in eval mode without gradients (the ``Predictor``'s rule).
    """
    predictor = Predictor(model, tokenizer, processors)
    records = []
    for index, ann in enumerate(progress_bar(annotations, enabled=progress, desc=desc, leave=False, dynamic_ncols=True)):
        query = generate_query(predictor, ann, max_new_tokens=max_new_tokens)
        records.append(generated_record(index, ann, query))
        logger.debug("%s: %r (%d [SEG]) IoU %.4f", ann.image_path, query.text, query.seg_count, records[-1]["IoU"])
    metrics = add_seg_rates(metrics_from_records(records), records)
    metrics["loss"] = None
    metrics["protocol"] = GENERATE_PROTOCOL
    return EvalResult(metrics=metrics, records=records)
