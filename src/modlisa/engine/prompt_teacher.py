"""Bag-of-words prompt distillation: a training-time recipe that makes a from-scratch LM's [SEG] follow its query.

Why (docs/TRAINING_GUIDE.md, "Why the decoder stops listening"): with a random-initialised LM the [SEG] state
carries the query only faintly at first, the SAM mask decoder learns "segment every shape" from the image in
~25 steps and stops listening to its prompt, and a deaf decoder gives the LM no gradient towards the query:
the run ends query-blind (own-query gIoU = wrong-query gIoU).

The recipe (``seg_prompt_teacher_fraction`` > 0): for the first part of the optimizer steps the mask decoder
reads a learned bag-of-words prompt of each query (3 x the mean of per-token embeddings, which carries the
query from step 1), while LISA's prompt ``text_hidden_fcs([SEG])`` is regressed onto it (a relative squared
error, weight ``seg_prompt_distill_weight``, logged as ``seg_distill``). After that phase, and at every
evaluation, the decoder reads LISA's prompt only: the trained model is plain LISA, and the teacher is not
part of the model or its weights files (it is saved in ``checkpoints/last`` only, for exact resume).

Written here rather than taken from a library: no library implements a prompt teacher for a mask decoder.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

BOW_SCALE = 3.0  # the teacher's prompt norm at init: comparable to a trained LISA prompt's (measured)


class BagOfWordsPrompt(nn.Module):
    """Query tokens -> one SAM prompt embedding: ``BOW_SCALE`` x the mean of learned per-token embeddings,
    weighted by each token's ``token_weights`` (default 1; ``idf_weights`` gives rare words more say)."""

    def __init__(self, vocab_size: int, dim: int, token_weights: Tensor | None = None) -> None:
        super().__init__()
        self.words = nn.Embedding(vocab_size, dim)
        weights = torch.ones(vocab_size) if token_weights is None else token_weights.float()
        if weights.shape != (vocab_size,):
            raise ValueError(f"token_weights must be ({vocab_size},), got {tuple(weights.shape)}")
        self.register_buffer("token_weights", weights, persistent=False)  # derived from the data, not saved

    def forward(self, token_ids: Sequence[Tensor]) -> Tensor:
        """K 1-D int64 tensors of token ids (any lengths) -> (K, D) prompts (a query with no token -> zeros)."""
        rows = [self._pool(ids) for ids in token_ids]
        if not rows:
            return self.words.weight.new_zeros(0, self.words.embedding_dim)
        return torch.stack(rows) * BOW_SCALE

    def _pool(self, ids: Tensor) -> Tensor:
        """(n,) token ids -> (D,) their weighted mean embedding (zeros when n == 0)."""
        if not len(ids):
            return self.words.weight.new_zeros(self.words.embedding_dim)
        weights = self.token_weights[ids]
        return (weights[:, None] * self.words(ids)).sum(0) / weights.sum().clamp_min(1e-12)


def idf_weights(tokenizer: Any, texts: Sequence[str], vocab_size: int) -> Tensor:
    """(vocab_size,) smoothed inverse document frequency of every token over ``texts``:
    log((1 + N) / (1 + df)) + 1, as scikit-learn's TfidfVectorizer; template words ("the", "shape", "which")
    get ~1, words that name the target ~log N. Tokens absent from ``texts`` get the maximum."""
    df = torch.zeros(vocab_size)
    for text in texts:
        ids = torch.tensor(sorted(set(tokenizer(text, add_special_tokens=False)["input_ids"])), dtype=torch.long)
        df[ids] += 1
    return torch.log((1.0 + len(texts)) / (1.0 + df)) + 1.0


def seg_queries(queries: Sequence[str], seg_counts: Tensor) -> list[str]:
    """The query of every [SEG] in the model's order: Q row queries, (Q,) [SEG] counts -> K strings."""
    return [q for q, n in zip(queries, seg_counts.tolist()) for _ in range(int(n))]


def teacher_prompts(teacher: BagOfWordsPrompt, tokenizer: Any, queries: Sequence[str], seg_counts: Tensor,
                    device: torch.device) -> Tensor:
    """(K, D) teacher prompts for a batch: one per [SEG], from its row's raw query text."""
    texts = seg_queries(queries, seg_counts)
    ids = [torch.tensor(tokenizer(t, add_special_tokens=False)["input_ids"], dtype=torch.long, device=device)
           for t in texts]
    return teacher(ids)


def count_seg_tokens(input_ids: Tensor, seg_token_id: int) -> Tensor:
    """(Q, L) token ids -> (Q,) number of [SEG] tokens per row (the rows' order of the model's prompts)."""
    return (input_ids == seg_token_id).sum(1)


def distill_loss(student: Tensor, teacher: Tensor) -> Tensor:
    """Relative squared error ||student - teacher||^2 / ||teacher||^2 over all K prompts (teacher detached).

    student, teacher: (K, D). Returns a float32 scalar (0 with no [SEG], still part of the graph).
    """
    target = teacher.detach().float()
    if target.numel() == 0:
        return student.float().sum() * 0.0
    return (student.float() - target).pow(2).sum() / target.pow(2).sum().clamp_min(1e-12)


def teacher_active(fraction: float, global_step: int, total_steps: int) -> bool:
    """True while optimizer step ``global_step`` (0-based) is inside the first ``fraction`` of the run."""
    return fraction > 0 and global_step < fraction * total_steps

