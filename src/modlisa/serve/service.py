"""``SegmentService``: one loaded model answering queries from several callers (web app, terminal).

One ``Predictor`` behind a lock: ``ask`` encodes an image only when it differs from the last one (the costly SAM
image encoder runs once per image, then each query runs the language model and the mask decoder), so that a
user asking several questions about one picture pays the image encoders once. Inputs are checked before the
lock is taken (``ConfigError`` with a message meant for the user); the query is shortened in generate mode as
``modlisa predict`` does. ``example_images`` gives a couple of pictures to try: the checkpoint's test split
when its ``data_root`` is present, else scenes of the synthetic generator.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from modlisa.config import ConfigError
from modlisa.data.collate import minimum_max_length, shorten_query
from modlisa.data.reasonseg import DataError, load_annotation
from modlisa.predict import PredictionResult
from modlisa.predictor import MODES, Predictor, check_query

logger = logging.getLogger(__name__)

# how the query becomes the question (predictor.question_for): value -> is_sentence
QUESTION_FORMS: dict[str, bool | None] = {"as typed": None, "phrase": False, "sentence": True}


def form_of(is_sentence: bool | None) -> str:
    """The ``QUESTION_FORMS`` key of ``is_sentence``."""
    return next(k for k, v in QUESTION_FORMS.items() if v is is_sentence)


def check_image(image: Any) -> np.ndarray:
    """``image`` as a contiguous (H, W, 3) uint8 RGB array; ConfigError when there is none or it is not one."""
    if image is None:
        raise ConfigError("no image: upload one or pick an example")
    array = np.asarray(image)
    if array.ndim == 2:  # grey
        array = np.repeat(array[:, :, None], 3, axis=2)
    if array.ndim != 3 or array.shape[2] not in (3, 4) or min(array.shape[:2]) < 1:
        raise ConfigError(f"expected an RGB image, got an array of shape {tuple(array.shape)}")
    if array.dtype != np.uint8:
        raise ConfigError(f"expected 8-bit pixels, got {array.dtype}")
    return np.ascontiguousarray(array[:, :, :3])


def image_digest(image: np.ndarray) -> str:
    """A key that differs for any two different images (shape and pixels)."""
    digest = hashlib.sha256(repr(image.shape).encode())
    digest.update(image.tobytes())
    return digest.hexdigest()


class SegmentService:
    """A loaded model answering queries, one at a time, for any number of callers (threads).

    Args:
        model, tokenizer, processors: as ``weights.load_checkpoint`` returns them (the model already on its
            device).
        max_length: the checkpoint's ``TrainingConfig.max_length``.
        mode: the default mode ("generate" or "teacher"); ``ask`` may override it per query.
        max_new_tokens: the generate-mode answer budget.
    """

    def __init__(self, model: torch.nn.Module, tokenizer: Any, processors: Any, *, max_length: int = 512,
                 mode: str = "generate", max_new_tokens: int = 32) -> None:
        if mode not in MODES:
            raise ConfigError(f"mode must be one of {', '.join(MODES)}; got {mode!r}")
        self.predictor = Predictor(model, tokenizer, processors, max_length)
        self.tokenizer = tokenizer
        self.max_length = int(max_length)
        self.mode = mode
        self.max_new_tokens = int(max_new_tokens)
        self.lock = threading.Lock()
        self._image_key: str | None = None
        self.images_encoded = 0  # how many times the image encoders ran (tests, logs)

    def ask(self, image: Any, query: str | None, *, is_sentence: bool | None = None, mode: str | None = None,
            image_path: str = "") -> PredictionResult:
        """Answer ``query`` about ``image`` ((H, W, 3) uint8 RGB). ConfigError for a missing image, an empty or
        reserved-token query or an unknown mode; the image is encoded only when it is not the last one."""
        mode = mode or self.mode
        array = check_image(image)
        query = (query or "").strip()
        check_query(query, mode)
        if mode == "generate":  # teacher mode: the collate's rule shortens a query that does not fit
            query = shorten_query(query, self.tokenizer, self.max_length - minimum_max_length(self.tokenizer))
        key = image_digest(array)
        with self.lock:
            if key != self._image_key or not self.predictor.is_image_set:
                self._image_key = None
                self.predictor.set_image(array)
                self._image_key = key
                self.images_encoded += 1
            prediction = self.predictor.predict(query, is_sentence=is_sentence, mode=mode,
                                                max_new_tokens=self.max_new_tokens)
        logger.info("%s %r -> %r (%d mask%s)", mode, query[:60], prediction.answer[:60], prediction.seg_count,
                    "" if prediction.seg_count == 1 else "s")
        return PredictionResult(query=prediction.query, question=prediction.question, is_sentence=is_sentence,
                                mode=mode, text=prediction.text, logits=prediction.logits, image_path=image_path,
                                image=array)


@dataclass(frozen=True)
class ExampleImage:
    """A picture to try and a query that fits it (``is_sentence`` says its kind)."""

    path: Path
    query: str
    is_sentence: bool


def _split_examples(split_dir: Path, count: int) -> list[ExampleImage]:
    examples = []
    for image in sorted(split_dir.glob("*.jpg")):
        json_path = image.with_suffix(".json")
        if not json_path.is_file():
            continue
        try:
            ann = load_annotation(json_path, image)
        except DataError as err:
            logger.debug("example %s skipped: %s", image, err)
            continue
        if ann.texts and ann.texts[0].strip():
            examples.append(ExampleImage(image, ann.texts[0].strip(), bool(ann.is_sentence)))
        if len(examples) == count:
            break
    return examples


def example_images(data_root: str | Path | None, folder: str | Path, count: int = 2, *, seed: int = 0,
                   image_size: int = 128) -> list[ExampleImage]:
    """``count`` example pictures with their queries: the first images of ``data_root``/test when that folder
    has annotated images, else scenes of the synthetic generator (seed ``seed``, test split, ``image_size`` px)
    written as PNG into ``folder``."""
    if data_root:
        test_dir = Path(data_root) / "test"
        if test_dir.is_dir():
            found = _split_examples(test_dir, count)
            if found:
                return found
    from modlisa.synthetic import generate_example

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    examples = []
    for index in range(count):
        example = generate_example(seed, "test", index, image_size)
        path = folder / f"example_{index}.png"
        example.image.save(path)
        examples.append(ExampleImage(path, example.texts[0], example.is_sentence))
    return examples
