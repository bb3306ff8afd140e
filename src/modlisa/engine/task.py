"""One step of the reasoning-segmentation task, shared by training, evaluation and ``modlisa bench``.

``SegmentationTask.step(batch)``: frozen-SAM cache lookup, the model's forward, LISA's losses (CE + BCE +
DICE [+ focal]) and, while the bag-of-words prompt teacher is active, its distillation term. ``update_iou``
is the one per-query IoU loop of training and benchmarking (evaluation keeps per-query records through
``evaluate.query_records``). The task owns no optimizer and no loop state: ``engine.train.Trainer`` does.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from modlisa.engine.prompt_teacher import (
    BagOfWordsPrompt,
    count_seg_tokens,
    distill_loss,
    teacher_active,
    teacher_prompts,
)
from modlisa.losses import LossWeights, compute_losses
from modlisa.metrics import IoUAccumulator
from modlisa.types import Batch

if TYPE_CHECKING:
    from modlisa.model.mask_decoder import ImageFeatures


def subset_of(is_sentence: bool) -> str:
    """The LISA subset of a query: "long" (sentence) or "short" (phrase)."""
    return "long" if is_sentence else "short"


@dataclass
class PromptTeacher:
    """The bag-of-words prompt teacher and its schedule (``seg_prompt_teacher_*`` fields)."""

    module: BagOfWordsPrompt
    tokenizer: Any
    fraction: float  # of the optimizer steps during which the decoder reads the teacher's prompts
    distill_weight: float
    total_steps: int

    def prompts(self, batch: Batch, seg_token_id: int, global_step: int) -> Tensor | None:
        """(K, D) decoder prompts while active at ``global_step`` (K = [SEG] tokens of the batch), else None."""
        if not teacher_active(self.fraction, global_step, self.total_steps):
            return None
        counts = count_seg_tokens(batch.input_ids, seg_token_id)
        return teacher_prompts(self.module, self.tokenizer, batch.queries, counts, batch.input_ids.device)


@dataclass
class StepOutput:
    """losses: "loss" (weighted total, scalar) and each term; output: the model's ``LISAOutput``."""

    losses: dict[str, Tensor]
    output: Any


class SegmentationTask:
    """Cache lookup + forward + losses of one (device) batch.

    ``model`` is what runs the forward (possibly DDP-wrapped), ``unwrapped`` the ModifiedLISA itself (the
    SAM cache encodes with it). ``autocast`` is entered around cached SAM encodes (the forward's precision).
    """

    def __init__(self, model: nn.Module, unwrapped: nn.Module, loss_weights: LossWeights, *,
                 sam_cache: Any = None, teacher: PromptTeacher | None = None,
                 autocast: Callable[[], AbstractContextManager[Any]] | None = None) -> None:
        self.model, self.unwrapped, self.loss_weights = model, unwrapped, loss_weights
        self.sam_cache, self.teacher, self.autocast = sam_cache, teacher, autocast

    def sam_embeddings(self, batch: Batch) -> ImageFeatures | None:
        """Frozen-SAM ``ImageFeatures`` from the cache (SAM: (B, D, S/16, S/16); SAM 2: a tuple); None without a
        cache (the model encodes)."""
        if self.sam_cache is None:
            return None
        return self.sam_cache.lookup(self.unwrapped, batch, autocast=self.autocast)

    def teacher_prompts(self, batch: Batch, global_step: int | None) -> Tensor | None:
        """The prompt teacher's (K, D) prompts at ``global_step`` (training only), else None."""
        if self.teacher is None or global_step is None:
            return None
        return self.teacher.prompts(batch, self.unwrapped.seg_token_id, global_step)

    def forward(self, batch: Batch, sam_embeddings: ImageFeatures | None = None,
                teacher: Tensor | None = None) -> Any:
        """The model's ``LISAOutput`` for ``batch`` (decoder prompts from ``teacher`` when given)."""
        kwargs: dict[str, Any] = {}
        if sam_embeddings is not None:
            kwargs["sam_embeddings"] = sam_embeddings
        if teacher is not None:
            kwargs["decoder_prompts"] = teacher
        return self.model(batch, **kwargs)

    def losses(self, batch: Batch, out: Any, teacher: Tensor | None = None) -> dict[str, Tensor]:
        """LISA's losses of ``out`` against ``batch``; with ``teacher``, plus the weighted distillation term."""
        losses = compute_losses(out.logits, out.labels, out.pred_masks, batch.masks, self.loss_weights)
        if teacher is not None and self.teacher is not None:
            losses["seg_distill"] = distill_loss(out.seg_prompts, teacher)
            losses["loss"] = losses["loss"] + self.teacher.distill_weight * losses["seg_distill"]
        return losses

    def step(self, batch: Batch, global_step: int | None = None) -> StepOutput:
        """Cache lookup, forward and losses of one batch already on the device."""
        sam_embeddings = self.sam_embeddings(batch)
        teacher = self.teacher_prompts(batch, global_step)
        out = self.forward(batch, sam_embeddings, teacher)
        return StepOutput(self.losses(batch, out, teacher), out)


@torch.no_grad()
def update_iou(acc: IoUAccumulator, batch: Batch, pred_masks: list[Tensor]) -> None:
    """Add every query's intersection / union to ``acc`` (prediction = logits > 0), per LISA subset.

    pred_masks: B tensors (n_b, H_b, W_b) of mask logits; batch.masks: B tensors (n_b, H_b, W_b) uint8.
    """
    for b in range(batch.num_images):
        start = int(batch.offsets[b])
        for q in range(batch.masks[b].shape[0]):
            acc.update(pred_masks[b][q].detach() > 0, batch.masks[b][q],
                       subset=subset_of(batch.is_sentence[start + q]))
