"""The mask-decoder interface ``ModifiedLISA`` calls: SAM (``model/seg.py``), SAM-HQ (``model/sam_hq_decoder.py``)
or SAM 2 (``model/sam2_decoder.py``).

A decoder kind is a stateless object; every method takes the Hugging Face model (``ModifiedLISA.sam``: a
``SamModel``, ``SamHQModel`` or ``Sam2Model``) so its weights keep their names in checkpoints and exports::

    features = decoder.encode(sam, images)              # (B, 3, S, S) -> ImageFeatures (cacheable)
    masks = decoder.decode(sam, prompts, features_at(features, b), resize_hw, original_hw)   # (n, H, W)

``ImageFeatures`` is what the frozen image encoder makes of a batch and what the SAM cache stores: one
(B, D, S/16, S/16) tensor for SAM, a tuple of B-first tensors for SAM-HQ (image embedding, early ViT block)
and SAM 2 (its high-resolution levels and image embedding). The helpers below index, stack and move either form.

Kinds: ``sam`` (LISA's), ``sam_hq`` and ``sam2``; ``decoder_for(sam)`` picks by the model's class.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol, Union

import torch
from torch import Tensor, nn
from transformers import Sam2Model, SamHQModel, SamModel

from modlisa.model.sam2_decoder import SAM2_MODEL_TYPES, Sam2Decoder
from modlisa.model.sam_hq_decoder import SAM_HQ_MODEL_TYPE, SamHQDecoder
from modlisa.model.seg import decode_masks

ImageFeatures = Union[Tensor, tuple[Tensor, ...]]  # noqa: UP007 (a runtime alias)


class SegDecoder(Protocol):
    """What ``ModifiedLISA`` needs of a mask decoder kind (shapes: B images, n prompts of one image, D prompt dim,
    S input size, (h', w') resized image inside the S x S input, (H, W) original size)."""

    kind: str

    def image_size(self, sam: nn.Module) -> int:
        """S, the square input size of the image encoder."""

    def prompt_dim(self, sam: nn.Module) -> int:
        """D, the width of one sparse prompt token (what ``text_hidden_fcs`` projects [SEG] to)."""

    def encoder(self, sam: nn.Module) -> nn.Module:
        """The parts that make ``encode``'s output (frozen with ``freeze_sam``; fingerprinted by the cache)."""

    def transform(self, image_size: int) -> Any:
        """The image transform of the kind: (H, W, 3) uint8 -> ((3, S, S) float32, (h', w'))."""

    def encode(self, sam: nn.Module, images: Tensor) -> ImageFeatures:
        """(B, 3, S, S) transformed images -> the batch's ``ImageFeatures``."""

    def decode(self, sam: nn.Module, prompts: Tensor, features: ImageFeatures, resize_hw: tuple[int, int],
               original_hw: tuple[int, int]) -> Tensor:
        """(n, D) prompts of ONE image (its features: ``features_at``) -> (n, H, W) float32 mask logits, one
        sparse token per prompt, no-mask dense prompt, ``multimask_output=False``."""


class SamDecoder:
    """LISA's SAM: ``SamModel`` image embeddings (B, D, S/16, S/16); decoding in ``model/seg.py``."""

    kind = "sam"

    def image_size(self, sam: SamModel) -> int:
        return int(sam.config.vision_config.image_size)

    def prompt_dim(self, sam: SamModel) -> int:
        return int(sam.config.mask_decoder_config.hidden_size)

    def encoder(self, sam: SamModel) -> nn.Module:
        return sam.vision_encoder

    def transform(self, image_size: int) -> Any:
        from modlisa.data.transforms import SamTransform

        return SamTransform(image_size)

    def encode(self, sam: SamModel, images: Tensor) -> Tensor:
        encoder = sam.vision_encoder
        return encoder(pixel_values=images.to(next(encoder.parameters()).dtype)).last_hidden_state

    def decode(self, sam: SamModel, prompts: Tensor, features: Tensor, resize_hw: tuple[int, int],
               original_hw: tuple[int, int]) -> Tensor:
        return decode_masks(sam, prompts, features, resize_hw, original_hw, self.image_size(sam))


def sam_class(model_type: str) -> type[nn.Module] | None:
    """The transformers class of a mask-decoder checkpoint's config ``model_type`` (sam, sam_hq, sam2 or the Hub's
    sam2_video), None for any other."""
    if model_type in SAM2_MODEL_TYPES:
        return Sam2Model
    return {SAM_HQ_MODEL_TYPE: SamHQModel, "sam": SamModel}.get(model_type)


def decoder_for(sam: nn.Module) -> SegDecoder:
    """The decoder kind of a Hugging Face ``SamModel`` / ``SamHQModel`` / ``Sam2Model``; TypeError for anything
    else. (None of the three subclasses another; the most specific classes are still tested first.)"""
    if isinstance(sam, Sam2Model):
        return Sam2Decoder()
    if isinstance(sam, SamHQModel):
        return SamHQDecoder()
    if isinstance(sam, SamModel):
        return SamDecoder()
    raise TypeError("the mask decoder must be a transformers SamModel, SamHQModel or Sam2Model, got "
                    f"{type(sam).__name__}")


# ---------------------------------------------------------------------- ImageFeatures helpers
def map_features(fn: Callable[[Tensor], Tensor], features: ImageFeatures) -> ImageFeatures:
    """``fn`` applied to the tensor, or to each tensor of the tuple."""
    return tuple(fn(f) for f in features) if isinstance(features, tuple) else fn(features)


def features_at(features: ImageFeatures, index: int | Tensor | list[int]) -> ImageFeatures:
    """Rows ``index`` of every tensor (an int drops the batch dimension: one image's features)."""
    return map_features(lambda f: f[index], features)


def stack_features(items: Sequence[ImageFeatures]) -> ImageFeatures:
    """Per-image features (no batch dimension) -> a batch: ``torch.stack`` per tensor."""
    if isinstance(items[0], tuple):
        return tuple(torch.stack([item[level] for item in items]) for level in range(len(items[0])))
    return torch.stack(list(items))


def features_nbytes(features: ImageFeatures) -> int:
    """Bytes held by the tensor(s)."""
    parts = features if isinstance(features, tuple) else (features,)
    return sum(t.numel() * t.element_size() for t in parts)
