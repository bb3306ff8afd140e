"""Shared helpers of the inference tests (predict, eval modes, export): a tiny real run, scripted answers."""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import nn

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from modlisa.config import TrainingConfig  # noqa: E402
from modlisa.model.adapters import unwrap_lm  # noqa: E402
from modlisa.synthetic import make_dataset  # noqa: E402
from modlisa.types import SEG_TOKEN  # noqa: E402


def make_data(root: Path) -> Path:
    """The synthetic dataset of tests/test_train.py: 8 train, 5 val, 4 test images of 64 px."""
    make_dataset(root, seed=0, num_train=8, num_val=5, num_test=4, image_size=64, progress=False)
    return root


def train_tiny_run(data_root: Path, out: Path, epochs: int = 1) -> Path:
    """A real tiny training run (4 optimizer steps per epoch); returns the run folder."""
    from modlisa.engine.train import train

    cfg = TrainingConfig(
        data_root=str(data_root), output_dir=str(out), model="tiny", img_size=64, sam_image_size=64,
        batch_size=2, num_epochs=epochs, learning_rate=1e-3, warmup_steps=2, use_mixed_precision=False, cpu=True,
        freeze_image_encoder=False, freeze_sam=False, freeze_text_encoder=False, log_every_steps=100, seed=7,
        queries_per_image=2,
    )
    logging.disable(logging.WARNING)
    try:
        train(cfg.validate())
    finally:
        logging.disable(logging.NOTSET)
    return out


def draw_image(path: Path, width: int = 70, height: int = 50) -> Path:
    """A new picture (not in any dataset): grey background, a teal disc and an olive box."""
    image = Image.new("RGB", (width, height), (128, 128, 128))
    draw = ImageDraw.Draw(image)
    draw.ellipse((8, 8, 30, 30), fill=(20, 160, 150))
    draw.rectangle((40, 20, 62, 44), fill=(120, 120, 20))
    image.save(path)
    return path


class ScriptedHead(nn.Module):
    """LM head that forces a token script (one token per call) on top of the real logits."""

    def __init__(self, base: nn.Module, script: list[int] | None = None) -> None:
        super().__init__()
        self.base, self.script, self.calls = base, script or [0], 0

    @property
    def weight(self) -> torch.Tensor:
        return self.base.weight

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = self.base(hidden)
        token = self.script[min(self.calls, len(self.script) - 1)]
        self.calls += 1
        return logits.index_fill(-1, torch.tensor([token], device=logits.device), 1e4)


@contextlib.contextmanager
def scripted_answers(model: nn.Module, tokenizer, answers: list[list[str]]) -> Iterator[None]:
    """Make generation ``k`` of ``model`` produce the tokens ``answers[k % len(answers)]``.

    The hidden states stay the real model's, so the [SEG] embeddings (and masks) are real.
    """
    lm = unwrap_lm(model.language_model)
    base = lm.get_output_embeddings()
    head = ScriptedHead(base)
    scripts = [[tokenizer.convert_tokens_to_ids(t) for t in answer] for answer in answers]
    counter = itertools.count()
    original = model._greedy

    def greedy(*args, **kwargs):
        head.script, head.calls = scripts[next(counter) % len(scripts)], 0
        return original(*args, **kwargs)

    lm.set_output_embeddings(head)
    model._greedy = greedy
    try:
        yield
    finally:
        lm.set_output_embeddings(base)
        del model._greedy


def teacher_forced_masks(model: nn.Module, tokenizer, processors, image: np.ndarray, question: str,
                         answer: str) -> tuple[torch.Tensor, list[int]]:
    """One teacher-forced pass (eval mode) over the prompt of ``question`` + the ``answer`` text, as a generation
    would have seen it: (the first image's (n, H, W) mask logits, the [SEG] count per row)."""
    from modlisa.data import prompts
    from modlisa.types import Batch

    prompt, _ = prompts.format_conversation(question, None, tokenizer, model.conversation)
    ids = torch.tensor([tokenizer(prompt)["input_ids"] + tokenizer(answer, add_special_tokens=False)["input_ids"]])
    sam_image, resize_hw = processors.sam(image)
    hw = (int(image.shape[0]), int(image.shape[1]))
    batch = Batch(sam_images=sam_image[None], vision_images=processors.vision(image)[None], input_ids=ids,
                  attention_mask=torch.ones_like(ids), labels=torch.full_like(ids, -100), offsets=torch.tensor([0, 1]),
                  masks=[torch.zeros(1, *hw)], resize_hw=[resize_hw], original_hw=[hw], image_paths=["x"],
                  queries=["q"], is_sentence=[False])
    was_training = model.training
    model.eval()
    with torch.no_grad():
        forced = model(batch)
    model.train(was_training)
    return forced.pred_masks[0], forced.seg_counts.tolist()


SEG_ANSWER = [SEG_TOKEN, ".", "</s>"]
NO_SEG_ANSWER = ["N", "o", "</s>"]


def centre_mask_logits(model: nn.Module) -> torch.utils.hooks.RemovableHandle:
    """Subtract the median of each decoder call's low-res logits, so that a barely trained model (whose
    logits are all negative) gives partial masks, about half of the image: real masks to draw and score."""

    def hook(module, inputs, output):
        low_res = output[0]
        return (low_res - low_res.median(), *output[1:])

    return model.sam.mask_decoder.register_forward_hook(hook)


def fill_mask_logits(model: nn.Module) -> torch.utils.hooks.RemovableHandle:
    """Make every decoder logit positive: the predicted mask is the whole image."""

    def hook(module, inputs, output):
        return (output[0].abs() + 1.0, *output[1:])

    return model.sam.mask_decoder.register_forward_hook(hook)


def read_png(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image).copy()


def check_vlm_generation_is_teacher_forcing(predictor, image: np.ndarray) -> None:
    """A vlm-preset ``predictor`` (image set) scripted to answer "[SEG] [SEG]" by greedy KV-cache steps gives
    the masks of one teacher-forced pass over the prompt + that answer (``teacher_forced_masks``)."""
    from modlisa.data import prompts

    model, tokenizer = predictor.model, predictor.tokenizer
    vlm = model.vlm
    head = vlm.get_output_embeddings()
    script = [tokenizer.convert_tokens_to_ids(t) for t in [SEG_TOKEN, "Ġ", SEG_TOKEN, tokenizer.eos_token]]
    vlm.set_output_embeddings(ScriptedHead(head, script))
    try:
        result = predictor.predict("the red circle", is_sentence=False)
    finally:
        vlm.set_output_embeddings(head)
    assert result.text == f"{SEG_TOKEN} {SEG_TOKEN}" and result.logits.shape == (2, *image.shape[:2])
    masks, counts = teacher_forced_masks(model, tokenizer, predictor.processors, image,
                                         prompts.eval_question("the red circle", False), result.text)
    assert counts == [2] and torch.allclose(masks, result.logits, atol=1e-4)
