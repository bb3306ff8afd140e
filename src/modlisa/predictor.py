"""``Predictor``: one image, many queries (segment-anything's ``SamPredictor`` idea).

``set_image`` runs the image transforms of both branches and both image encoders ONCE per image (the SAM image
encoder is the costly part); each ``predict`` then renders one query's question, tokenises it and runs only the
language model and the mask decoder. The model itself stays tensor-in, tensor-out (``ModifiedLISA.generate``,
``ModifiedLISA.forward``). Used by ``modlisa predict`` (``predict.predict``), by ``modlisa eval``'s generate mode
and mask pictures, and by the web demo.

Modes:

- ``generate`` (LISA's chat behaviour): the model answers freely (greedy); one mask per generated ``[SEG]``;
  no ``[SEG]`` means no mask.
- ``teacher`` (LISA's evaluation protocol, docs/LISA.md §5): the answer "[SEG]." is given in the input, so there
  is always exactly one mask; the same numbers as ``modlisa eval`` for the same image and query.

The question is the fixed evaluation prompt of the query's kind when ``is_sentence`` is given, else the query text
itself (``question_for``).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from modlisa.config import ConfigError
from modlisa.data import prompts
from modlisa.data.collate import collate_samples, encode_ids
from modlisa.data.reasonseg import reserved_token_reason
from modlisa.types import Sample

if TYPE_CHECKING:
    from modlisa.model.mask_decoder import ImageFeatures

logger = logging.getLogger(__name__)

MODES = ("generate", "teacher")


def question_for(query: str, is_sentence: bool | None) -> str:
    """The user question: the fixed evaluation prompt of the query's kind, or the query itself."""
    return query if is_sentence is None else prompts.eval_question(query, is_sentence)


def check_query(query: str, mode: str, where: str = "") -> None:
    """ConfigError for an unknown ``mode``, an empty query or one holding a reserved token ([SEG], <image>...);
    ``where`` (e.g. the image path) prefixes the query messages."""
    if mode not in MODES:
        raise ConfigError(f"mode must be one of {', '.join(MODES)}; got {mode!r}")
    prefix = f"{where}: " if where else ""
    if not query.strip():
        raise ConfigError(f"{prefix}the query is empty")
    reason = reserved_token_reason("the query", query)
    if reason is not None:
        raise ConfigError(f"{prefix}{reason}")


@dataclass
class Prediction:
    """One query answered about the image of a ``Predictor``.

    text:   generate mode: the generated tokens decoded without the EOS ([SEG] kept, not stripped; ``answer``
            is it stripped); teacher mode: "[SEG]." (the answer given).
    logits: (n, H, W) float32 mask logits on the CPU at the image's original size, one per [SEG] (n = 0 when
            the generated answer has no [SEG]; always 1 in teacher mode); the masks are ``logits > 0``.
    """

    query: str
    question: str
    is_sentence: bool | None
    mode: str
    text: str
    logits: Tensor

    @property
    def answer(self) -> str:
        """The answer text without surrounding white space."""
        return self.text.strip()

    @property
    def has_seg(self) -> bool:
        return self.logits.shape[0] > 0

    @property
    def seg_count(self) -> int:
        return int(self.logits.shape[0])

    @property
    def masks(self) -> np.ndarray:
        """(n, H, W) bool: LISA's prediction, logits > 0."""
        return (self.logits > 0).numpy()

    def mask_union(self) -> np.ndarray:
        """(H, W) bool union of the masks (all False without [SEG])."""
        masks = self.masks
        return masks.any(axis=0) if len(masks) else np.zeros(tuple(self.logits.shape[1:]), dtype=bool)


@dataclass
class _EncodedImage:
    """What ``set_image`` computes once: the transformed inputs and the encoders' outputs, on the model's device.

    sam_image (3, S, S), vision_image (3, V, V) (native resolution: (3, h', w')), image_features (1, N, h),
    sam_embeddings: the image's ``ImageFeatures`` (SAM: (1, D, S/16, S/16); SAM-HQ: (embedding, early ViT block);
    SAM 2: a tuple of multi-scale tensors).
    """

    original_hw: tuple[int, int]
    resize_hw: tuple[int, int]
    sam_image: Tensor
    vision_image: Tensor
    image_features: Tensor
    sam_embeddings: ImageFeatures


class Predictor:
    """Answer many queries about one image with a ``ModifiedLISA``: ``set_image`` once, then ``predict``.

    Args:
        model: a ``ModifiedLISA`` (as ``build_model`` / ``load_checkpoint`` return it); its ``conversation``
            says how prompts are rendered.
        tokenizer: its tokenizer (with ``<image>`` and ``[SEG]``).
        processors: its ``ImageProcessors`` (``.sam``, ``.vision``).
        max_length: the token budget of a teacher-mode conversation (``TrainingConfig.max_length``): a query that
            does not fit is cut by the collate's rule. Generate mode passes the query whole (``predict.predict``
            cuts it first with ``collate.shorten_query``).

    Every call runs in eval mode without gradients and restores the model's training mode afterwards. Run
    ``set_image`` and ``predict`` under the same autocast (if any): the cached encodings keep its precision.
    """

    def __init__(self, model: torch.nn.Module, tokenizer: Any, processors: Any, max_length: int = 512) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.processors = processors
        self.max_length = int(max_length)
        self._image: _EncodedImage | None = None

    @classmethod
    def from_pretrained(cls, folder_or_repo_id: str | os.PathLike[str], **kwargs: Any) -> Predictor:
        """A Predictor on an export folder or Hub repo id (``ModifiedLISA.from_pretrained``): model, tokenizer,
        image processors and the export's ``max_length``. Keywords: ``revision``, ``cache_dir``, ``token``,
        ``device`` (``modlisa.weights.hub.load_pretrained``)."""
        from modlisa.weights.hub import load_pretrained

        model, tokenizer, processors, cfg = load_pretrained(folder_or_repo_id, **kwargs)
        return cls(model, tokenizer, processors, max_length=cfg.max_length)

    @property
    def device(self) -> torch.device:
        return next(self.model.text_hidden_fcs.parameters()).device

    @property
    def is_image_set(self) -> bool:
        return self._image is not None

    @contextlib.contextmanager
    def _inference(self) -> Iterator[None]:
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                yield
        finally:
            self.model.train(was_training)

    def set_image(self, image: np.ndarray) -> None:
        """Transform ``image`` ((H, W, 3) uint8 RGB) for both branches and encode it once (vision tower +
        projector, SAM image encoder); replaces the previous image."""
        self._image = None
        sam_image, resize_hw = self.processors.sam(image)
        vision_image = self.processors.vision(image)
        device = self.device
        sam_image, vision_image = sam_image.to(device), vision_image.to(device)
        with self._inference():
            image_features = self.model.encode_images(vision_image.unsqueeze(0))
            sam_embeddings = self.model.encode_sam(sam_image.unsqueeze(0))
        self._image = _EncodedImage(original_hw=(int(image.shape[0]), int(image.shape[1])),
                                    resize_hw=(int(resize_hw[0]), int(resize_hw[1])), sam_image=sam_image,
                                    vision_image=vision_image, image_features=image_features,
                                    sam_embeddings=sam_embeddings)

    def reset_image(self) -> None:
        """Forget the image (and free its encodings)."""
        self._image = None

    def predict(self, query: str, *, is_sentence: bool | None = None, mode: str = "generate",
                max_new_tokens: int = 32) -> Prediction:
        """Answer ``query`` about the image of ``set_image``.

        ``is_sentence`` True/False wraps the query in the fixed evaluation question of its kind; None uses the
        query verbatim (LISA's chat behaviour). ``mode`` "generate": free greedy answer of at most
        ``max_new_tokens`` tokens, one mask per [SEG]; "teacher": the answer "[SEG]." given, one mask.
        Raises ConfigError for a bad mode or query, RuntimeError when no image is set.
        """
        check_query(query, mode)
        if self._image is None:
            raise RuntimeError("Predictor.predict: no image; call set_image(image) first")
        question = question_for(query, is_sentence)
        with self._inference():
            if mode == "teacher":
                text, logits = prompts.EVAL_ANSWER, self._teacher_forced(self._image, query, question, is_sentence)
            else:
                text, logits = self._generate(self._image, question, max_new_tokens)
        return Prediction(query=query, question=question, is_sentence=is_sentence, mode=mode, text=text,
                          logits=logits.detach().float().cpu())

    def _teacher_forced(self, image: _EncodedImage, query: str, question: str,
                        is_sentence: bool | None) -> Tensor:
        """(1, H, W) mask logits with the answer "[SEG]." given in the input (LISA's evaluation protocol)."""
        height, width = image.original_hw
        sample = Sample(image_path="", json_path="", sam_image=image.sam_image, vision_image=image.vision_image,
                        resize_hw=image.resize_hw, original_hw=image.original_hw, questions=[question],
                        answers=[prompts.EVAL_ANSWER], queries=[query],
                        masks=torch.zeros(1, height, width, dtype=torch.uint8), is_sentence=bool(is_sentence),
                        index=0)
        batch = collate_samples([sample], self.tokenizer, self.max_length, self.model.conversation)
        out = self.model(batch.to(self.device), sam_embeddings=image.sam_embeddings,
                         image_features=image.image_features)
        return out.pred_masks[0]

    def _generate(self, image: _EncodedImage, question: str, max_new_tokens: int) -> tuple[str, Tensor]:
        """(answer text, (n, H, W) mask logits) by greedy generation from the question's prompt."""
        tokenizer = self.tokenizer
        prompt, _ = prompts.format_conversation(question, None, tokenizer, self.model.conversation)
        input_ids = torch.tensor([encode_ids(prompt, tokenizer)], dtype=torch.int64, device=self.device)
        new_ids, masks = self.model.generate(input_ids, image.image_features, image.sam_embeddings, image.resize_hw,
                                             image.original_hw, max_new_tokens=max_new_tokens,
                                             eos_token_id=tokenizer.eos_token_id,
                                             pad_token_id=tokenizer.pad_token_id,
                                             vision_hw=tuple(image.vision_image.shape[-2:]))
        ids = new_ids.tolist()
        text = tokenizer.decode([t for t in ids if t != tokenizer.eos_token_id], skip_special_tokens=False)
        logger.debug("generated %d tokens (%d [SEG]): %r", len(ids), masks.shape[0], text)
        return text, masks
