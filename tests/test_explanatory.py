"""LISA's explanatory sampling (docs/LISA.md §3): one choice per explained image, for all its queries.

LISA's ``reason_seg_dataset.py`` run on ReasonSeg yields, on images with an explanation, about 46 % "[SEG] +
explanation", 44 % "[SEG]" only and 10 % text-only sequences (no [SEG], no mask). modlisa used to give
3 % / 97 % / 0 % (an explanation for the first query with p = 0.1, never text-only).
"""

from __future__ import annotations

import random
from collections import Counter

import torch

from modlisa.data import prompts
from modlisa.data.collate import collate_samples
from modlisa.data.dataset import (
    SEG_EXPLANATION,
    SEG_ONLY,
    TEXT_ONLY,
    ReasonSegDataset,
    item_seed,
    train_dialogue,
)
from modlisa.data.transforms import SamTransform, VisionTransform
from modlisa.types import SEG_TOKEN, Annotation
from reasonseg_fixtures import GOOD_TRAIN_TEXTS, make_reasonseg

EXPLANATION = "Scissors have two blades that cut paper."
DRAWS = 6000


def explained(is_sentence: bool = False) -> Annotation:
    return Annotation(json_path="a.json", image_path="a.jpg", texts=list(GOOD_TRAIN_TEXTS), is_sentence=is_sentence,
                      explanation=EXPLANATION)


def kind_of(question: str, answer: str) -> str:
    """Classify one sequence by its answer, as the audit of LISA's dataset did."""
    if SEG_TOKEN not in answer:
        return TEXT_ONLY
    return SEG_EXPLANATION if answer.endswith(" " + EXPLANATION) else SEG_ONLY


def test_three_shares_over_many_draws_match_lisa():
    sequences: Counter = Counter()
    for i in range(DRAWS):
        dialogue = train_dialogue(explained(is_sentence=i % 2 == 1), random.Random(item_seed(0, 0, i)), 3, 0.1)
        kinds = {kind_of(q, a) for q, a in zip(dialogue.questions, dialogue.answers)}
        assert kinds == {dialogue.kind}  # ONE choice per image, applied to all its sampled queries
        sequences.update(kind_of(q, a) for q, a in zip(dialogue.questions, dialogue.answers))
    total = sum(sequences.values())
    shares = {k: v / total for k, v in sequences.items()}
    print("shares over", total, "sequences:", {k: round(100 * v, 1) for k, v in shares.items()})
    assert abs(shares[TEXT_ONLY] - 0.10) < 0.015
    assert abs(shares[SEG_EXPLANATION] - 0.45) < 0.025
    assert abs(shares[SEG_ONLY] - 0.45) < 0.025


def test_each_kind_is_built_as_lisa_builds_it():
    seen = {}
    for i in range(200):
        dialogue = train_dialogue(explained(), random.Random(i), 3, 0.1)
        seen.setdefault(dialogue.kind, dialogue)
    text, both, seg = seen[TEXT_ONLY], seen[SEG_EXPLANATION], seen[SEG_ONLY]
    # text only: question "<image>\n{query}" (the raw query), answer = the explanation, no mask
    assert text.questions == text.queries and text.answers == [EXPLANATION] * 3 and text.num_masks == 0
    # [SEG] + explanation: "{query} {explanatory question}", answer "{random answer} {explanation}"
    for question, answer, query in zip(both.questions, both.answers, both.queries):
        assert question in {t.format(x=query) for t in prompts.EXPLANATORY_QUESTIONS}
        assert answer in {f"{a} {EXPLANATION}" for a in prompts.ANSWERS}
    assert both.num_masks == 3
    for question, answer, query in zip(seg.questions, seg.answers, seg.queries):  # short phrase: lower-cased
        assert question in {t.format(x=query.lower()) for t in prompts.SHORT_QUESTIONS} and answer in prompts.ANSWERS
    rendered, _ = prompts.format_conversation(text.questions[0], None)
    assert rendered.endswith(f"USER: <image>\n{text.queries[0]} ASSISTANT:")
    unexplained = Annotation("b.json", "b.jpg", list(GOOD_TRAIN_TEXTS), False, explanation=None)
    assert {train_dialogue(unexplained, random.Random(i), 3, 1.0).kind for i in range(50)} == {SEG_ONLY}


def test_text_only_item_has_no_mask_and_trains_through_the_model(tmp_path):
    from modlisa.losses import compute_losses
    from modlisa.model.factory import build_model
    from test_io import tiny_cfg

    root = make_reasonseg(tmp_path, n_train=2)
    torch.manual_seed(0)
    model, tokenizer, processors = build_model(tiny_cfg(img_size=32, sam_image_size=32))
    ds = ReasonSegDataset(root, "train", processors.sam, processors.vision, train=True, explanatory_prob=1.0)
    text_item, plain_item = ds[0], ds[1]  # train_00 has the explanation, train_01 none
    assert text_item.masks.shape == (0, *text_item.original_hw) and text_item.answers == ["Scissors cut paper."] * 3
    assert plain_item.masks.shape[0] == 3
    batch = collate_samples([text_item, plain_item], tokenizer)
    assert batch.num_queries == 6 and batch.offsets.tolist() == [0, 3, 6]
    assert (batch.labels[:3] != -100).any()  # the explanation is learned as text
    out = model(batch)
    assert out.pred_masks[0].shape[0] == 0 and out.pred_masks[1].shape[0] == 3
    losses = compute_losses(out.logits, out.labels, out.pred_masks, batch.masks)
    losses["loss"].backward()
    assert torch.isfinite(losses["loss"])
    assert ReasonSegDataset(root, "train", SamTransform(32), VisionTransform(32), train=True,
                            explanatory_prob=0.0)[0].masks.shape[0] == 3
