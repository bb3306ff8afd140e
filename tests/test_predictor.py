"""Predictor: one set_image, many queries; the same masks as separate predictions and as the plain model pass."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from inference_helpers import scripted_answers  # noqa: E402
from modlisa.config import ConfigError, TrainingConfig  # noqa: E402
from modlisa.data import prompts  # noqa: E402
from modlisa.data.collate import collate_samples  # noqa: E402
from modlisa.model.factory import build_model  # noqa: E402
from modlisa.predict import predict  # noqa: E402
from modlisa.predictor import Predictor  # noqa: E402
from modlisa.types import SEG_TOKEN, Sample  # noqa: E402

QUERIES = [("the red circle", False), ("Which shape is on the left of the square?", True), ("segment it", None)]
TWO_SEG = [[SEG_TOKEN, "Ġ", SEG_TOKEN, "</s>"], [SEG_TOKEN, ".", "</s>"], ["N", "o", "</s>"]]


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return build_model(TrainingConfig(model="tiny", img_size=64, sam_image_size=64))


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return np.random.default_rng(3).integers(0, 256, (45, 61, 3), dtype=np.uint8)


class CallCounter:
    """Counts the forward calls of a module (a forward hook)."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.calls = 0
        self.handle = module.register_forward_hook(self._count)

    def _count(self, module, inputs, output) -> None:
        self.calls += 1


@pytest.fixture()
def counters(tiny):
    model = tiny[0]
    sam, vision = CallCounter(model.sam.vision_encoder), CallCounter(model.vision_tower)
    yield sam, vision
    sam.handle.remove()
    vision.handle.remove()


def _plain_teacher_logits(model, tokenizer, processors, image, query, is_sentence):
    """The model's plain teacher-forced pass on one query, nothing cached (the path before the Predictor)."""
    sam_image, resize_hw = processors.sam(image)
    sample = Sample(image_path="", json_path="", sam_image=sam_image, vision_image=processors.vision(image),
                    resize_hw=resize_hw, original_hw=image.shape[:2],
                    questions=[query if is_sentence is None else prompts.eval_question(query, is_sentence)],
                    answers=[prompts.EVAL_ANSWER], queries=[query],
                    masks=torch.zeros(1, *image.shape[:2], dtype=torch.uint8), is_sentence=False)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return model(collate_samples([sample], tokenizer, 512, model.conversation)).pred_masks[0]
    finally:
        model.train(was_training)


@pytest.mark.parametrize("mode", ["teacher", "generate"])
def test_one_image_three_queries_equal_three_separate_predictions(tiny, image, counters, mode):
    model, tokenizer, processors = tiny
    sam_calls, vision_calls = counters
    predictor = Predictor(model, tokenizer, processors)
    with scripted_answers(model, tokenizer, TWO_SEG):
        predictor.set_image(image)
        shared = [predictor.predict(q, is_sentence=s, mode=mode) for q, s in QUERIES]
    assert (sam_calls.calls, vision_calls.calls) == (1, 1)  # both image encoders ran once for 3 queries
    with scripted_answers(model, tokenizer, TWO_SEG):
        separate = [predict(model, tokenizer, processors, "img.png", q, is_sentence=s, mode=mode, image=image)
                    for q, s in QUERIES]
    assert (sam_calls.calls, vision_calls.calls) == (4, 4)  # predict() encodes its image each time
    for one, other in zip(shared, separate):
        assert one.question == other.question and one.text.strip() == other.answer
        assert one.logits.dtype == torch.float32 and one.logits.shape[1:] == (45, 61)
        assert torch.equal(one.logits, other.logits)
    counts = [p.seg_count for p in shared]
    assert counts == ([1, 1, 1] if mode == "teacher" else [2, 1, 0])
    if mode == "teacher":
        for (query, is_sentence), one in zip(QUERIES, shared):
            plain = _plain_teacher_logits(model, tokenizer, processors, image, query, is_sentence)
            assert torch.equal(one.logits, plain)


def test_predict_needs_an_image_and_a_valid_query(tiny, image):
    model, tokenizer, processors = tiny
    predictor = Predictor(model, tokenizer, processors)
    assert not predictor.is_image_set
    with pytest.raises(RuntimeError, match="set_image"):
        predictor.predict("the red circle")
    predictor.set_image(image)
    assert predictor.is_image_set
    with pytest.raises(ConfigError, match="mode must be one of"):
        predictor.predict("the red circle", mode="chat")
    with pytest.raises(ConfigError, match="the query is empty"):
        predictor.predict("  ")
    with pytest.raises(ConfigError, match="reserves"):
        predictor.predict(f"the {SEG_TOKEN} circle")
    predictor.reset_image()
    assert not predictor.is_image_set


def test_predictor_restores_the_training_mode(tiny, image):
    model, tokenizer, processors = tiny
    model.train()
    predictor = Predictor(model, tokenizer, processors)
    predictor.set_image(image)
    assert model.training
    result = predictor.predict("the red circle", is_sentence=False, mode="teacher")
    assert model.training and result.seg_count == 1 and not result.logits.requires_grad
