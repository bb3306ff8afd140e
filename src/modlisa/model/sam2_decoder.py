"""SAM 2 as LISA's mask decoder: the [SEG] prompt through transformers' ``Sam2Model``.

The wiring is ``Sam2Model.forward``'s, with the projected [SEG] embedding as the one sparse prompt token of a
query instead of the prompt encoder's points / boxes:

- encode (``Sam2Decoder.encode``): the Hiera backbone + FPN neck (``vision_encoder``), the two high-resolution
  FPN levels projected by the mask decoder's ``conv_s0`` / ``conv_s1``, ``no_memory_embedding`` added to the
  lowest-resolution level (the image embedding) -- exactly ``Sam2Model.get_image_embeddings``, with gradients.
  These are the "image features" the SAM cache keeps: a tuple ``(feat_s0, feat_s1, image_embeddings)`` of
  (B, D/8, S/4, S/4), (B, D/4, S/8, S/8) and (B, D, S/16, S/16) tensors (D = 256 in every released SAM 2).
  ``conv_s0`` / ``conv_s1`` and ``no_memory_embedding`` therefore count as image-encoder parts: they are frozen
  with ``freeze_sam`` like the backbone (``Sam2Decoder.encoder``), so a cached image never goes stale.
- decode (``Sam2Decoder.decode``): ``mask_decoder`` with the image embedding, the image-wide positional
  embedding, the n prompts of an image as the point-batch dimension (sparse (1, n, 1, D)), the prompt encoder's
  no-mask embedding as the dense prompt, ``high_resolution_features=[feat_s0, feat_s1]`` and
  ``multimask_output=False``; mask slot 0 is always read (``dynamic_multimask_via_stability`` is switched off:
  LISA trains that slot, and evaluation must read what training trained).
- postprocess (``postprocess_masks``): SAM 2 stretches the image to S x S without padding (``Sam2Transform``),
  so the (n, 1, S/4, S/4) logits are resized bilinearly straight to the original (H, W), as
  ``Sam2Processor.post_process_masks(..., binarize=False)`` does.

Shapes: B images, n prompts of one image, D = decoder hidden size, S = SAM 2 input size, (H, W) original size.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import (
    Sam2Config,
    Sam2HieraDetConfig,
    Sam2MaskDecoderConfig,
    Sam2Model,
    Sam2PromptEncoderConfig,
    Sam2VisionConfig,
)

from modlisa.config import ConfigError
from modlisa.model.random_init import torch_default_init

SAM2_MODEL_TYPES = ("sam2", "sam2_video")  # the Hub's facebook/sam2.1-* folders say sam2_video; Sam2Model loads them
SAM2_PROMPT_DIM = 256  # D of every released SAM 2 (decoder, prompt encoder and FPN widths)
TINY_SAM2_MULTIPLE = 32  # the tiny Hiera pools three times after a stride-4 patch embedding and tiles 8x8 windows

# Sam2Features: (feat_s0 (B, D/8, S/4, S/4), feat_s1 (B, D/4, S/8, S/8), image_embeddings (B, D, S/16, S/16))
Sam2Features = tuple[Tensor, Tensor, Tensor]


def is_sam2_config(config: Any) -> bool:
    """True for a ``Sam2Config`` (or the Hub's ``sam2_video`` config of the same checkpoints)."""
    return getattr(config, "model_type", None) in SAM2_MODEL_TYPES


def sam2_image_size(sam: Sam2Model) -> int:
    """S, the square input size of ``sam`` (its prompt encoder's ``image_size``)."""
    size = sam.config.prompt_encoder_config.image_size
    return int(size[0] if isinstance(size, (list, tuple)) else size)


def single_mask_output(sam: Sam2Model) -> Sam2Model:
    """Make ``sam``'s decoder return mask slot 0 for ``multimask_output=False`` in eval mode too (in place).

    ``Sam2MaskDecoder`` otherwise swaps in one of its multimask outputs at evaluation when slot 0 looks
    unstable; LISA's [SEG] prompt trains slot 0 only. The config says so too, so ``save_pretrained`` keeps it.
    """
    sam.config.mask_decoder_config.dynamic_multimask_via_stability = False
    sam.mask_decoder.dynamic_multimask_via_stability = False
    return sam


def tiny_sam2(image_size: int) -> Sam2Model:
    """Random SAM 2: Hiera with 1/1/2/1 blocks of widths 16/32/64/128, FPN and decoder at D = 256.

    ``image_size`` (S) must be a multiple of 32. Features: (B, 32, S/4, S/4), (B, 64, S/8, S/8),
    (B, 256, S/16, S/16). Linear / conv layers of the image encoder and mask decoder get PyTorch's default
    init, as the tiny SAM does (``backbones.tiny_sam``: Hugging Face's std-0.02 init leaves the decoder deaf to
    its sparse prompt).
    """
    if image_size % TINY_SAM2_MULTIPLE:
        raise ConfigError(f"sam_image_size must be a multiple of {TINY_SAM2_MULTIPLE} for the tiny SAM 2, got "
                          f"{image_size}")
    widths = [16, 32, 64, 128]
    backbone = Sam2HieraDetConfig(hidden_size=widths[0], num_attention_heads=1, image_size=[image_size, image_size],
                                  blocks_per_stage=[1, 1, 2, 1], embed_dim_per_stage=widths,
                                  num_attention_heads_per_stage=[1, 1, 2, 2], window_size_per_stage=[8, 4, 8, 4],
                                  global_attention_blocks=[3])
    vision = Sam2VisionConfig(backbone_config=backbone, backbone_channel_list=widths[::-1],
                              backbone_feature_sizes=[[image_size // s, image_size // s] for s in (4, 8, 16)],
                              fpn_hidden_size=SAM2_PROMPT_DIM)
    config = Sam2Config(
        vision_config=vision,
        prompt_encoder_config=Sam2PromptEncoderConfig(hidden_size=SAM2_PROMPT_DIM, image_size=image_size,
                                                      patch_size=16),
        mask_decoder_config=Sam2MaskDecoderConfig(hidden_size=SAM2_PROMPT_DIM, mlp_dim=512, num_hidden_layers=2,
                                                  num_attention_heads=8, iou_head_hidden_dim=SAM2_PROMPT_DIM),
    )
    sam = Sam2Model(config)
    torch_default_init([sam.vision_encoder, sam.mask_decoder])
    return single_mask_output(sam)


def postprocess_masks(low_res: Tensor, original_hw: tuple[int, int]) -> Tensor:
    """SAM 2 logits (n, 1, h, w) -> (n, H, W) float32: one bilinear resize to (H, W) (no padding to crop)."""
    masks = F.interpolate(low_res.float(), size=tuple(original_hw), mode="bilinear", align_corners=False)
    return masks[:, 0]


class Sam2Decoder:
    """The mask-decoder interface (``model.mask_decoder.SegDecoder``) for a transformers ``Sam2Model``."""

    kind = "sam2"

    def image_size(self, sam: Sam2Model) -> int:
        return sam2_image_size(sam)

    def prompt_dim(self, sam: Sam2Model) -> int:
        return int(sam.config.mask_decoder_config.hidden_size)

    def encoder(self, sam: Sam2Model) -> nn.Module:
        """A view (no copies) of the parts that make ``encode``'s output: backbone + neck, ``conv_s0``,
        ``conv_s1`` and ``no_memory_embedding``."""
        extra = nn.ParameterDict({"no_memory_embedding": sam.no_memory_embedding})
        return nn.ModuleDict({"vision_encoder": sam.vision_encoder, "conv_s0": sam.mask_decoder.conv_s0,
                              "conv_s1": sam.mask_decoder.conv_s1, "no_memory": extra})

    def transform(self, image_size: int) -> Any:
        from modlisa.data.transforms import Sam2Transform

        return Sam2Transform(image_size)

    def encode(self, sam: Sam2Model, images: Tensor) -> Sam2Features:
        """(B, 3, S, S) ``Sam2Transform`` images -> ``Sam2Features`` (``Sam2Model.get_image_embeddings``)."""
        dtype = next(sam.vision_encoder.parameters()).dtype
        batch = images.shape[0]
        maps = sam.get_image_features(images.to(dtype), return_dict=True).fpn_hidden_states  # (hw, B, C) each
        maps = list(maps)
        maps[-1] = maps[-1] + sam.no_memory_embedding
        feat_s0, feat_s1, embeddings = (m.permute(1, 2, 0).reshape(batch, -1, *size)
                                        for m, size in zip(maps, sam.backbone_feature_sizes))
        return feat_s0, feat_s1, embeddings

    def decode_tokens(self, sam: Sam2Model, sparse: Tensor, features: Sam2Features) -> Tensor:
        """Low-res logits (n, 1, S/4, S/4) of ONE image for sparse prompts (n, T, D) (T tokens per query).

        ``features``: one image's ``Sam2Features`` without the batch dimension.
        """
        feat_s0, feat_s1, embeddings = features
        dtype = sam.mask_decoder.iou_token.weight.dtype
        height, width = embeddings.shape[-2:]
        dense = sam.prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(1, -1, height, width)
        low_res, _, _, _ = sam.mask_decoder(
            image_embeddings=embeddings.unsqueeze(0).to(dtype),
            image_positional_embeddings=sam.get_image_wide_positional_embeddings().to(dtype),
            sparse_prompt_embeddings=sparse.unsqueeze(0).to(dtype),
            dense_prompt_embeddings=dense.to(dtype),
            multimask_output=False,
            high_resolution_features=[feat_s0.unsqueeze(0).to(dtype), feat_s1.unsqueeze(0).to(dtype)],
        )  # (1, n, 1, S/4, S/4)
        return low_res[0]

    def decode(self, sam: Sam2Model, prompts: Tensor, features: Sam2Features, resize_hw: tuple[int, int],
               original_hw: tuple[int, int]) -> Tensor:
        """(n, D) prompts of one image -> (n, H, W) float32 logits; ``resize_hw`` is unused (no padding)."""
        num = prompts.shape[0]
        if num == 0:
            return features[-1].new_zeros((0, *original_hw), dtype=torch.float32)
        return postprocess_masks(self.decode_tokens(sam, prompts.unsqueeze(1), features), original_hw)
