"""SAM-HQ as LISA's mask decoder: the [SEG] prompt through transformers' ``SamHQModel``.

SAM-HQ (Ke et al., "Segment Anything in High Quality") is SAM's ViT image encoder and prompt encoder with a
mask decoder that adds a High-Quality Output Token and fuses an EARLY ViT feature map into the mask features.
The wiring is ``SamHQModel.forward``'s, with the projected [SEG] embedding as the one sparse prompt token of a
query instead of the prompt encoder's points / boxes:

- encode (``SamHQDecoder.encode``): ``vision_encoder`` gives the image embedding (after the neck) and
  ``intermediate_embeddings``: the output of every global-attention ViT block. The mask decoder reads only the
  FIRST of them (``SamHQMaskDecoder.forward``: ``intermediate_embeddings[0]``), so the cacheable features are
  the tuple ``(image_embeddings, early_vit)`` of (B, D, S/16, S/16) and (B, S/16, S/16, C) tensors (C = the
  ViT width: 768 / 1024 / 1280 for vit_b / l / h; channels-last, as the encoder gives it). Keeping only
  the first block's map is a quarter of what all four would cost in the SAM cache (ViT-H at 1024: 21 MB
  instead of 84 MB per image, plus 4 MB of embedding).
- decode (``SamHQDecoder.decode``): ``mask_decoder`` with the image embedding, the image-wide positional
  embedding, the n prompts of an image as the point-batch dimension (sparse (1, n, 1, D)), the prompt encoder's
  no-mask embedding as the dense prompt, ``intermediate_embeddings=[early_vit]``, ``multimask_output=False``
  and ``hq_token_only=False``: ``SamHQModel.forward``'s default (and the original ``SamPredictor``'s), whose
  mask is SAM's slot-0 logits PLUS the HQ token's logits. Both terms train (LISA trains the whole decoder).
- postprocess: SAM's (``model/seg.py``: ``postprocess_masks``), since SAM-HQ takes SAM's input (resize the
  longest side to S, pad to S x S: ``SamTransform``) -- ``SamHQProcessor.post_process_masks(...,
  binarize=False)`` is ``SamImageProcessor``'s.

``SamHQModel`` is NOT a subclass of ``SamModel`` (both derive from ``PreTrainedModel``), so
``mask_decoder.decoder_for`` can test the classes in any order.

Shapes: B images, n prompts of one image, D = decoder hidden size (256), C = ViT width, S = input size,
(h', w') resized image inside S x S, (H, W) original size.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from transformers import (
    SamHQConfig,
    SamHQMaskDecoderConfig,
    SamHQModel,
    SamHQPromptEncoderConfig,
    SamHQVisionConfig,
)

from modlisa.config import ConfigError
from modlisa.model.random_init import torch_default_init
from modlisa.model.seg import mask_decoder_inputs, postprocess_masks

SAM_HQ_MODEL_TYPE = "sam_hq"
SAM_HQ_PROMPT_DIM = 256  # D of every released SAM-HQ (SAM's)
HQ_TOKEN_ONLY = False  # SamHQModel.forward's default: SAM's slot-0 mask + the HQ token's mask
TINY_VIT = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "patch_size": 16, "mlp_dim": 256,
            "window_size": 8, "global_attn_indexes": (0, 1)}  # block 0 global: its output is the early feature

# SamHQFeatures: (image_embeddings (B, D, S/16, S/16), early_vit (B, S/16, S/16, C))
SamHQFeatures = tuple[Tensor, Tensor]


def is_sam_hq_config(config: Any) -> bool:
    """True for a ``SamHQConfig`` (model_type ``sam_hq``)."""
    return getattr(config, "model_type", None) == SAM_HQ_MODEL_TYPE


def tiny_sam_hq(image_size: int) -> SamHQModel:
    """Random SAM-HQ: ViT (hidden 64, 2 global-attention blocks, patch 16) at ``image_size``, decoder at D = 256.

    Features: (B, 256, S/16, S/16) and block 0's output (B, S/16, S/16, 64). Initialised as the tiny SAM is
    (``backbones.tiny_sam``): PyTorch's default init for the encoder and decoder, std-1 random-Fourier
    positional matrix.
    """
    if image_size % 16:
        raise ConfigError(f"sam_image_size must be a multiple of 16 for the tiny SAM-HQ, got {image_size}")
    config = SamHQConfig(
        vision_config=SamHQVisionConfig(image_size=image_size, output_channels=SAM_HQ_PROMPT_DIM, **TINY_VIT),
        prompt_encoder_config=SamHQPromptEncoderConfig(hidden_size=SAM_HQ_PROMPT_DIM, image_size=image_size,
                                                       patch_size=16),
        mask_decoder_config=SamHQMaskDecoderConfig(hidden_size=SAM_HQ_PROMPT_DIM, mlp_dim=512, num_hidden_layers=2,
                                                   num_attention_heads=8, iou_head_hidden_dim=SAM_HQ_PROMPT_DIM,
                                                   vit_dim=TINY_VIT["hidden_size"]),
    )
    sam = SamHQModel(config)
    with torch.no_grad():
        sam.shared_image_embedding.positional_embedding.normal_(0.0, 1.0)
    torch_default_init([sam.vision_encoder, sam.mask_decoder])
    return sam


class SamHQDecoder:
    """The mask-decoder interface (``model.mask_decoder.SegDecoder``) for a transformers ``SamHQModel``."""

    kind = "sam_hq"

    def image_size(self, sam: SamHQModel) -> int:
        return int(sam.config.vision_config.image_size)

    def prompt_dim(self, sam: SamHQModel) -> int:
        return int(sam.config.mask_decoder_config.hidden_size)

    def encoder(self, sam: SamHQModel) -> nn.Module:
        """The ViT (+ neck): it makes both features; the decoder's ViT-fusion convs train with the decoder."""
        return sam.vision_encoder

    def transform(self, image_size: int) -> Any:
        from modlisa.data.transforms import SamTransform

        return SamTransform(image_size)

    def encode(self, sam: SamHQModel, images: Tensor) -> SamHQFeatures:
        """(B, 3, S, S) ``SamTransform`` images -> (image_embeddings (B, D, S/16, S/16), early_vit (B, S/16,
        S/16, C)): ``SamHQModel.get_image_embeddings`` with gradients, only the first intermediate kept."""
        encoder = sam.vision_encoder
        out = encoder(pixel_values=images.to(next(encoder.parameters()).dtype))
        if not out.intermediate_embeddings:
            raise ValueError("the SAM-HQ image encoder has no global-attention block (vision_config."
                             "global_attn_indexes is empty): its mask decoder has no early ViT feature to fuse")
        return out.last_hidden_state, out.intermediate_embeddings[0]

    def decode_tokens(self, sam: SamHQModel, sparse: Tensor, features: SamHQFeatures) -> Tensor:
        """Low-res logits (n, 1, S/4, S/4) of ONE image for sparse prompts (n, T, D) (T tokens per query).

        ``features``: one image's ``SamHQFeatures`` without the batch dimension.
        """
        embeddings, early_vit = features
        inputs = mask_decoder_inputs(sam, embeddings, sparse)  # SAM's, then the HQ decoder's early ViT feature
        early = early_vit.unsqueeze(0).to(inputs["image_embeddings"].dtype)
        low_res, _ = sam.mask_decoder(**inputs, multimask_output=False, hq_token_only=HQ_TOKEN_ONLY,
                                      intermediate_embeddings=[early])  # (1, n, 1, S/4, S/4)
        return low_res[0]

    def decode(self, sam: SamHQModel, prompts: Tensor, features: SamHQFeatures, resize_hw: tuple[int, int],
               original_hw: tuple[int, int]) -> Tensor:
        """(n, D) prompts of one image -> (n, H, W) float32 logits (SAM's postprocessing)."""
        if prompts.shape[0] == 0:
            return features[0].new_zeros((0, *original_hw), dtype=torch.float32)
        low_res = self.decode_tokens(sam, prompts.unsqueeze(1), features)
        return postprocess_masks(low_res, resize_hw, original_hw, self.image_size(sam))
