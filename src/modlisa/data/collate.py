"""Batching: tokenise each query's conversation, mask the labels, pad, stack the images.

Each query of each Sample becomes one token row ``prompt + answer + end-of-turn`` (prompts.format_conversation);
labels are -100 on the prompt and on padding, so only the assistant answer is learned (docs/LISA.md §3).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Sequence
from typing import Any

import torch

from modlisa.data import prompts
from modlisa.types import IGNORE_INDEX, IMAGE_TOKEN, SEG_TOKEN, Batch, ConversationFormat, Sample

logger = logging.getLogger(__name__)


class TooLongError(ValueError):
    """A conversation does not fit ``max_length`` without cutting its prompt, answer or [SEG]."""


def encode_ids(text: str, tokenizer: Any) -> list[int]:
    """Token ids of ``text`` with the tokenizer's usual special tokens (its BOS), unless the text
    already starts with the BOS string (chat templates often write it), which would double it."""
    bos = getattr(tokenizer, "bos_token", None)
    add_special = not (bos and text.startswith(bos))
    return list(tokenizer(text, add_special_tokens=add_special)["input_ids"])


def encode_query(
    question: str, answer: str, tokenizer: Any, max_length: int, query: str = "",
    conversation: ConversationFormat | None = None, extra_turns: Sequence[tuple[str, str]] = (),
) -> tuple[list[int], list[int]]:
    """(input_ids, labels) of one conversation that fits ``max_length`` tokens.

    The truncation rule: text after the answer's [SEG] is cut at ``max_length`` (a long explanation); a
    conversation that still does not fit gets its QUERY shortened at the end, token by token, until it does
    (logged as a warning). Raises ValueError naming the query when the prompt is not a token prefix of the full
    text, when the row does not hold exactly one image token, when the prompt holds a [SEG], or (TooLongError)
    when even an empty query does not fit (``max_length`` too small for the templates).
    """
    try:
        return _encode(question, answer, tokenizer, max_length, query, conversation, extra_turns)
    except TooLongError:
        if not query.strip() or query.strip() not in question:
            raise
    return _encode_shortened(question, answer, tokenizer, max_length, query.strip(), conversation)


def _encode_shortened(question: str, answer: str, tokenizer: Any, max_length: int,
                      query: str, conversation: ConversationFormat | None = None
                      ) -> tuple[list[int], list[int]]:
    """``encode_query`` with the longest prefix (in tokens) of ``query`` that fits (binary search)."""
    tokens = tokenizer(query, add_special_tokens=False)["input_ids"]
    low, high, best = 0, len(tokens) - 1, None
    while low <= high:
        keep = (low + high) // 2
        short = tokenizer.decode(tokens[:keep]).strip()
        try:
            best = _encode(question.replace(query, short, 1), answer, tokenizer, max_length, short, conversation)
            low = keep + 1
        except TooLongError:
            high = keep - 1
    if best is None:
        raise TooLongError(f"query {query[:60]!r}: does not fit max_length={max_length} even when emptied; raise "
                           "max_length")
    logger.warning("query %r: shortened to %d of its %d tokens to fit max_length=%d", query[:60], high + 1,
                   len(tokens), max_length)
    return best


def minimum_max_length(tokenizer: Any) -> int:
    """The smallest ``max_length`` that holds every template with an empty query and a one-[SEG] answer."""
    questions = [*prompts.SHORT_QUESTIONS, *prompts.LONG_QUESTIONS, *prompts.EXPLANATORY_QUESTIONS]
    longest = 0
    for question in questions:
        for answer in prompts.ANSWERS:
            prompt, full = prompts.format_conversation(question.format(x="").strip(), answer, tokenizer)
            ids, seg_id = encode_ids(full, tokenizer), tokenizer.convert_tokens_to_ids(SEG_TOKEN)
            longest = max(longest, ids.index(seg_id) + 1 if seg_id in ids else len(ids))
    return longest + 1


def check_max_length(tokenizer: Any, max_length: int) -> None:
    """ConfigError when ``max_length`` cannot hold the prompt templates and a one-[SEG] answer."""
    from modlisa.config import ConfigError

    need = minimum_max_length(tokenizer)
    if max_length < need:
        raise ConfigError(f"max_length={max_length} is below the {need} tokens that the prompt templates and an "
                          f"answer need with this tokenizer (empty query); set max_length >= {need} (LISA: 512)")


def shorten_query(query: str, tokenizer: Any, max_tokens: int) -> str:
    """``query`` cut at the end to at most ``max_tokens`` tokens (whole tokens; logged when cut)."""
    tokens = tokenizer(query, add_special_tokens=False)["input_ids"]
    if len(tokens) <= max_tokens:
        return query
    logger.warning("query %r: shortened to %d of its %d tokens (max_length)", query[:60], max_tokens, len(tokens))
    return tokenizer.decode(tokens[:max(0, max_tokens)]).strip()


def _encode(
    question: str, answer: str, tokenizer: Any, max_length: int, query: str = "",
    conversation: ConversationFormat | None = None, extra_turns: Sequence[tuple[str, str]] = (),
) -> tuple[list[int], list[int]]:
    """(input_ids, labels) truncated from the right; TooLongError when the cut would hit the prompt or [SEG]."""
    turns = prompts.format_turns([(question, answer), *extra_turns], tokenizer, conversation)
    prompt, full = turns[0][0], turns[-1][1]
    ids, prompt_ids = encode_ids(full, tokenizer), encode_ids(prompt, tokenizer)
    name = f"query {query or question!r}"
    learned = _learned_spans(turns, ids, tokenizer, name)
    image_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    seg_id = tokenizer.convert_tokens_to_ids(SEG_TOKEN)
    if ids.count(image_id) != 1:
        raise ValueError(f"{name}: expected exactly one {IMAGE_TOKEN} token, found {ids.count(image_id)}")
    if seg_id in prompt_ids:
        raise ValueError(f"{name}: the question holds the special token {SEG_TOKEN}; remove it")
    if len(ids) > max_length:
        if len(prompt_ids) >= max_length or ids[max_length:].count(seg_id) > 0:
            raise TooLongError(f"{name}: {len(ids)} tokens (prompt {len(prompt_ids)}) do not fit max_length="
                             f"{max_length} without cutting the answer or its {SEG_TOKEN}; "
                             "raise max_length or shorten the query")
        ids = ids[:max_length]
    labels = [IGNORE_INDEX] * len(ids)
    for start, end in learned:
        labels[start:end] = ids[start:end]
    return ids, labels


def _learned_spans(turns: Sequence[tuple[str, str]], ids: list[int], tokenizer: Any, name: str
                   ) -> list[tuple[int, int]]:
    """The token spans [start, end) of ``ids`` holding the answers of ``turns`` ((prompt_i, full_i) text
    prefixes, ``prompts.format_turns``); the last one runs to the end. ValueError when a prefix's tokens are not
    a prefix of ``ids`` (a tokenizer merging tokens across a turn boundary)."""
    spans = []
    for i, (prompt, full) in enumerate(turns):
        start = len(_prefix_ids(prompt, ids, tokenizer, name))
        end = len(ids) if i == len(turns) - 1 else len(_prefix_ids(full, ids, tokenizer, name))
        spans.append((start, end))
    return spans


def _prefix_ids(text: str, ids: list[int], tokenizer: Any, name: str) -> list[int]:
    prefix = encode_ids(text, tokenizer)
    if ids[: len(prefix)] != prefix:
        raise ValueError(f"{name}: the tokenised prompt is not a prefix of the tokenised conversation; "
                         "this tokenizer merges tokens across the prompt/answer boundary")
    return prefix


def _encode_for(sample: Sample, question: str, answer: str, tokenizer: Any, max_length: int,
                query: str, conversation: ConversationFormat | None = None) -> tuple[list[int], list[int]]:
    """``encode_query`` whose errors name the sample's annotation file (DataError, one line, exit 2)."""
    from modlisa.data.reasonseg import DataError

    try:
        return encode_query(question, answer, tokenizer, max_length, query, conversation, sample.extra_turns)
    except ValueError as err:
        raise DataError(sample.json_path or sample.image_path or "query", str(err)) from err


def _pad(rows: Sequence[list[int]], value: int) -> torch.Tensor:
    """(len(rows), L) int64, right-padded with ``value``."""
    length = max(len(r) for r in rows)
    out = torch.full((len(rows), length), value, dtype=torch.int64)
    for i, row in enumerate(rows):
        out[i, : len(row)] = torch.tensor(row, dtype=torch.int64)
    return out


def _stack_images(samples: Sequence[Sample], attr: str) -> torch.Tensor:
    shapes = {tuple(getattr(s, attr).shape) for s in samples}
    if len(shapes) != 1:
        raise ValueError(f"cannot batch {attr}: samples have different shapes {sorted(shapes)}")
    return torch.stack([getattr(s, attr) for s in samples])


def _pad_vision_images(samples: Sequence[Sample]) -> torch.Tensor:
    """B (3, h', w') vision images -> (B, 3, max h', max w'), zero-padded bottom/right (native resolution gives
    every image its own size; the model reads each back at ``Batch.vision_hw``)."""
    images = [s.vision_image for s in samples]
    if len({tuple(im.shape) for im in images}) == 1:
        return torch.stack(images)
    height, width = max(im.shape[-2] for im in images), max(im.shape[-1] for im in images)
    out = images[0].new_zeros((len(images), images[0].shape[0], height, width))
    for b, image in enumerate(images):
        out[b, :, :image.shape[-2], :image.shape[-1]] = image
    return out


def collate_samples(samples: list[Sample], tokenizer: Any, max_length: int = 512,
                    conversation: ConversationFormat | None = None) -> Batch:
    """Batch B samples into Q >= B token rows; see ``types.Batch`` for the tensor shapes.

    ``conversation``: how prompts are rendered (LLaVA v1 by default; ``ConversationFormat``).
    """
    if not samples:
        raise ValueError("collate_samples: empty list of samples")
    if tokenizer.pad_token_id is None:
        raise ValueError("collate_samples: the tokenizer has no pad token (see model.tokenizer.add_special_tokens)")
    ids_rows: list[list[int]] = []
    label_rows: list[list[int]] = []
    queries: list[str] = []
    is_sentence: list[bool] = []
    offsets = [0]
    for sample in samples:
        if not len(sample.questions) == len(sample.answers) == len(sample.queries):
            raise ValueError(f"{sample.json_path}: questions, answers and queries differ in number")
        seg_count = sum(answer.count(SEG_TOKEN) for answer in sample.answers)
        if seg_count != sample.masks.shape[0]:
            raise ValueError(f"{sample.json_path}: {sample.masks.shape[0]} masks for {seg_count} {SEG_TOKEN} "
                             "tokens in the answers (one mask per [SEG]; text-only answers have none)")
        for question, answer, query in zip(sample.questions, sample.answers, sample.queries):
            ids, labels = _encode_for(sample, question, answer, tokenizer, max_length, query, conversation)
            ids_rows.append(ids)
            label_rows.append(labels)
            queries.append(query)
            is_sentence.append(sample.is_sentence)
        offsets.append(len(ids_rows))
    input_ids = _pad(ids_rows, int(tokenizer.pad_token_id))
    attention_mask = _pad([[1] * len(r) for r in ids_rows], 0)
    indices = [s.index for s in samples]
    return Batch(
        sam_images=_stack_images(samples, "sam_image"),
        vision_images=_pad_vision_images(samples),
        input_ids=input_ids,
        attention_mask=attention_mask,
        labels=_pad(label_rows, IGNORE_INDEX),
        offsets=torch.tensor(offsets, dtype=torch.int64),
        masks=[s.masks for s in samples],
        resize_hw=[s.resize_hw for s in samples],
        original_hw=[s.original_hw for s in samples],
        image_paths=[s.image_path for s in samples],
        queries=queries,
        is_sentence=is_sentence,
        sample_ids=indices if all(i >= 0 for i in indices) else [],
        sources=[s.source for s in samples],
        vision_hw=[(int(s.vision_image.shape[-2]), int(s.vision_image.shape[-1])) for s in samples],
    )


def make_collate_fn(tokenizer: Any, max_length: int = 512,
                    conversation: ConversationFormat | None = None) -> Callable[[list[Sample]], Batch]:
    """A picklable ``collate_fn`` for DataLoader (workers included)."""
    return functools.partial(collate_samples, tokenizer=tokenizer, max_length=max_length, conversation=conversation)
