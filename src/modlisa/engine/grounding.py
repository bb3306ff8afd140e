"""Does the model follow its query? The wrong-query baseline and grounding accuracy.

A model that segments salient objects whatever it is asked scores plausibly on ReasonSeg-like data, and
nothing in gIoU / cIoU alone shows it. Two checks expose it:

- **Wrong-query baseline**: every image is scored against its own ground truth, but asked another image's
  query (deterministically paired, same short/long kind, a different text). A model that reads its query
  scores far lower here; a query-blind model scores the same as with its own query.
- **Grounding accuracy** (data that lists the non-target shapes, as ``modlisa make-data`` writes them
  under ``distractors``): the share of queries whose predicted mask overlaps the target more than any
  distractor, overlap measured as IoU so that large distractors get no advantage.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from modlisa.types import Annotation, Sample

# gIoU points (fractions) within which own-query and wrong-query scores count as "the same".
QUERY_BLIND_MARGIN = 0.05


def _partner(members: list[int], k: int, texts: Sequence[str]) -> int:
    """The member half-way round the list from position ``k`` whose first text differs from k's own
    (the first candidate when every text is the same)."""
    n = len(members)
    own = texts[members[k]]
    candidates = [members[(k + n // 2 + step) % n] for step in range(n)]
    candidates = [c for c in candidates if c != members[k]]
    return next((c for c in candidates if texts[c] != own), candidates[0])


def wrong_query_partners(annotations: Sequence[Annotation]) -> list[int] | None:
    """For each annotation, the index of the annotation whose query it is asked in the wrong-query baseline.

    Pairs stay within the short / long subsets (the whole split where a subset has one member); the pairing
    depends only on the order of ``annotations``. ``None`` when the split has fewer than two annotations.
    """
    n = len(annotations)
    if n < 2:
        return None
    texts = [a.texts[0] for a in annotations]
    partners = [0] * n
    for flag in (False, True):
        members = [i for i, a in enumerate(annotations) if a.is_sentence == flag]
        pool = members if len(members) > 1 else list(range(n))
        for i in members:
            partners[i] = _partner(pool, pool.index(i), texts)
    return partners


class WrongQueryDataset(torch.utils.data.Dataset):
    """An evaluation dataset whose item ``i`` is image ``i`` with its own ground truth, asked the query of
    item ``partners[i]`` (LISA's evaluation prompt for that query's kind)."""

    def __init__(self, dataset: Any, partners: Sequence[int]) -> None:
        if len(partners) != len(dataset):
            raise ValueError(f"{len(partners)} partners for {len(dataset)} items")
        self.dataset, self.partners = dataset, list(partners)
        self.annotations = dataset.annotations

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Sample:
        sample = self.dataset[index]
        own, other = self.annotations[index], self.annotations[self.partners[index]]
        asked = dataclasses.replace(own, texts=other.texts, is_sentence=other.is_sentence)
        questions, answers, queries = self.dataset._eval_dialogue(asked)
        return dataclasses.replace(sample, questions=questions, answers=answers, queries=queries)


def distractor_masks(annotation: Annotation, hw: tuple[int, int]) -> np.ndarray | None:
    """(n_d, H, W) bool masks of the annotation's distractor shapes (LISA's rasterisation), or None when the
    annotation lists none."""
    from modlisa.data.reasonseg import mask_from_shapes

    if not annotation.distractors:
        return None
    return np.stack([mask_from_shapes([shape], hw) == 1 for shape in annotation.distractors])


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 0.0


def is_grounded(pred: np.ndarray, gt: np.ndarray, distractors: np.ndarray) -> bool:
    """True when the (H, W) bool prediction overlaps the target (gt == 1) more than every distractor
    (n_d, H, W), by IoU; an empty prediction is never grounded. Ignore pixels (255) are removed first."""
    keep = gt != 255
    pred, target = pred & keep, (gt == 1) & keep
    own = _iou(pred, target)
    return own > 0 and all(own > _iou(pred, d & keep) for d in distractors)


def grounding_accuracy(records: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """Share of records with ``grounded`` True among those that have the field; None when none has it."""
    flags = [r["grounded"] for r in records if r.get("grounded") is not None]
    if not flags:
        return None
    return {"accuracy": sum(flags) / len(flags), "num_queries": len(flags)}


def query_blind_warning(metrics: dict[str, Any], wrong: dict[str, Any] | None,
                        margin: float = QUERY_BLIND_MARGIN) -> str | None:
    """A warning when the own-query gIoU is within ``margin`` of the wrong-query baseline's (or below it)."""
    if wrong is None or not metrics.get("num_queries"):
        return None
    gap = metrics["giou"] - wrong["giou"]
    if gap >= margin:
        return None
    return (f"the masks do not depend on the query: gIoU {100 * metrics['giou']:.2f} with each image's own query "
            f"vs {100 * wrong['giou']:.2f} with another image's query (gap {100 * gap:.2f} points, under "
            f"{100 * margin:.0f}); the model segments the same thing whatever it is asked")
