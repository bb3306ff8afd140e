"""``build_model(cfg)``: preset -> (ModifiedLISA, tokenizer, ImageProcessors).

Like segment-anything's ``build_sam.py``: small builders (``modlisa.model.backbones``) in a registry,
assembled here with the adapters and the image transforms.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from modlisa.config import VLM_PRESET_NAMES, ConfigError, TrainingConfig
from modlisa.model.adapters import apply_adapters
from modlisa.model.backbones import BACKBONE_BUILDERS, Backbones, build_backbones
from modlisa.model.lisa import ModifiedLISA
from modlisa.model.precision import apply_dtype_policy
from modlisa.model.random_init import random_init_prefixes
from modlisa.model.tokenizer import add_image_span_tokens as span_tokens
from modlisa.types import IM_END_TOKEN, IM_START_TOKEN, ConversationFormat

logger = logging.getLogger(__name__)

# preset name -> backbone builder (cfg -> Backbones)
model_registry: dict[str, Callable[[TrainingConfig], Backbones]] = BACKBONE_BUILDERS

LISA_7B_LLAVA = "llava-hf/llava-1.5-7b-hf"
LISA_7B_SAM = "facebook/sam-vit-huge"
LISA_7B_LLAVA_IMAGE_SIZE = 336  # CLIP ViT-L/14-336 of LLaVA-1.5
LISA_7B_SAM_IMAGE_SIZE = 1024  # SAM ViT-H's input size

# LISA's model settings (docs/LISA.md §2): LoRA r 8 / alpha 16 / dropout 0.05 on q_proj, v_proj; full
# embeddings + LM head; frozen vision tower, projector, SAM encoders.
LISA_7B_OVERRIDES: dict[str, Any] = {
    "use_lora": True,
    "lora_r": 8,
    "lora_alpha": 16,
    "lora_dropout": 0.05,
    "lora_target_modules": ["q_proj", "v_proj"],
    "train_embeddings": "full",
    "freeze_image_encoder": True,
    "freeze_text_encoder": True,
    "freeze_sam": True,
}


# The vlm presets' model settings: the published checkpoints (Hugging Face ids) and the sizes they take.
# img_size: the vision input of a fixed N image tokens (Qwen2.5-VL: (448 / 28)^2 = 256; Qwen3-VL: (512 / 32)^2 = 256;
# SmolVLM-256M: its SigLIP's 512 -> 64 after the 4x4 pixel shuffle); SAM 2.1 takes 1024 x 1024.
VLM_PRESET_FIELDS: dict[str, dict[str, Any]] = {
    "qwen2.5-vl-3b-sam2": {"vlm_model": "Qwen/Qwen2.5-VL-3B-Instruct", "img_size": 448,
                           "sam_model": "facebook/sam2.1-hiera-large"},
    "qwen3-vl-4b-sam2": {"vlm_model": "Qwen/Qwen3-VL-4B-Instruct", "img_size": 512,
                         "sam_model": "facebook/sam2.1-hiera-large"},
    "smolvlm-256m-sam2": {"vlm_model": "HuggingFaceTB/SmolVLM-256M-Instruct", "img_size": 512,
                          "sam_model": "facebook/sam2.1-hiera-tiny"},
}
SAM2_IMAGE_SIZE = 1024
# every vlm preset renders prompts with the checkpoint's chat template; the whole LM gets LoRA on q/v
VLM_OVERRIDES: dict[str, Any] = {"use_chat_template": True, "use_mm_start_end": False}


def _vlm_fields(cfg: TrainingConfig) -> dict[str, Any]:
    """``vlm``: chat template on; a named preset also fills its checkpoints and sizes (a ``vlm_model`` /
    ``sam_model`` the config gives replaces the checkpoint, which then keeps the config's sizes)."""
    changes = dict(VLM_OVERRIDES)
    preset = VLM_PRESET_FIELDS.get(cfg.model)
    if preset is None:
        return changes
    changes["vlm_model"] = cfg.vlm_model or preset["vlm_model"]
    changes["sam_model"] = cfg.sam_model or preset["sam_model"]
    changes["sam_kind"] = "sam2"
    if changes["vlm_model"] == preset["vlm_model"]:
        changes["img_size"] = preset["img_size"]
    if changes["sam_model"] == preset["sam_model"]:
        changes["sam_image_size"] = SAM2_IMAGE_SIZE
    return changes


def fixed_preset_fields(cfg: TrainingConfig) -> dict[str, Any]:
    """The model settings preset ``cfg.model`` (and ``cfg.init_from``) fix ({} for presets without any).

    ``lisa-7b``: the LISA overrides above; ``llava_model`` / ``sam_model`` default to LLaVA-1.5-7B and
    SAM ViT-H; with the default LLaVA-1.5 checkpoint ``img_size`` becomes 336 (its CLIP's own size), with the
    default SAM ``sam_image_size`` becomes 1024 (a SAM given in ``sam_model`` keeps the size it takes).
    (Its optimisation recipe is ``config.PRESET_RECIPES``: defaults the YAML / command line may override.)
    ``init_from``: the export folder's model settings (``weights.export_layout.INIT_FIELDS``: the composite
    preset on its subfolders, image sizes, projector, prompt format), over any preset's.
    """
    changes = _lisa_7b_fields(cfg) if cfg.model == "lisa-7b" else {}
    if cfg.model in VLM_PRESET_NAMES:
        changes = _vlm_fields(cfg)
    if cfg.init_from:
        from modlisa.weights.export_layout import init_fields

        changes.update(init_fields(cfg.init_from))
    return changes


def _lisa_7b_fields(cfg: TrainingConfig) -> dict[str, Any]:
    changes = dict(LISA_7B_OVERRIDES)
    changes["llava_model"] = cfg.llava_model or LISA_7B_LLAVA
    changes["sam_model"] = cfg.sam_model or LISA_7B_SAM
    if changes["llava_model"] == LISA_7B_LLAVA:
        changes["img_size"] = LISA_7B_LLAVA_IMAGE_SIZE
    if changes["sam_model"] == LISA_7B_SAM:
        changes["sam_image_size"] = LISA_7B_SAM_IMAGE_SIZE
    return changes


def apply_preset(cfg: TrainingConfig) -> TrainingConfig:
    """Return ``cfg`` with the preset's fixed model settings applied (``fixed_preset_fields``)."""
    changes = fixed_preset_fields(cfg)
    changed = {k: v for k, v in changes.items() if getattr(cfg, k) != v}
    if changed:
        who = f"init_from {cfg.init_from}" if cfg.init_from else f"{cfg.model} preset"
        logger.info("%s sets %s", who, ", ".join(f"{k}={v}" for k, v in changed.items()))
    return dataclasses.replace(cfg, **changes) if changes else cfg


def resolve_preset(cfg: TrainingConfig, sources: dict[str, str]) -> tuple[TrainingConfig, dict[str, str]]:
    """``apply_preset`` plus provenance: a fixed model setting the preset supplies or changes is marked
    ``preset``; one that overrides a value the user set (yaml / cli / api) is also warned about."""
    sources = dict(sources)
    from_init = set(fixed_preset_fields(dataclasses.replace(cfg, model="composite"))) if cfg.init_from else set()
    for name, value in fixed_preset_fields(cfg).items():
        given = getattr(cfg, name)
        if given != value and sources.get(name) in ("yaml", "cli", "api"):
            who = f"init_from {cfg.init_from} (the export's model)" if name in from_init else \
                f"{cfg.model} preset" + (" (LISA's model)" if cfg.model == "lisa-7b" else "")
            logger.warning("%s fixes %s=%r; the %s value %r is not used", who, name, value, sources[name], given)
        if given != value or sources.get(name, "default") == "default":
            sources[name] = "preset"
    return apply_preset(cfg), sources


def build_processors(cfg: TrainingConfig, parts: Backbones) -> Any:
    """``ImageProcessors``: SAM branch at ``sam_image_size`` (``SamTransform``, or ``Sam2Transform`` for a SAM 2
    decoder), vision branch at ``img_size`` with the tower's stats (the vlm preset's ``vlm_resolution: native``:
    ``NativeVisionTransform`` within the configured image processor's pixel bounds)."""
    from modlisa.data.transforms import Augmenter, ImageProcessors, NativeVisionTransform, VisionTransform
    from modlisa.model.mask_decoder import decoder_for

    vision: Any = VisionTransform(cfg.img_size, mean=parts.vision_mean, std=parts.vision_std)
    if parts.vlm is not None and cfg.vlm_resolution == "native":  # the image processor's own bounds (backbones)
        size = parts.vlm.image_processor.size
        vision = NativeVisionTransform(parts.vlm.family.size_multiple, int(size["shortest_edge"]),
                                       int(size["longest_edge"]), mean=parts.vision_mean, std=parts.vision_std)
    return ImageProcessors(sam=decoder_for(parts.sam).transform(cfg.sam_image_size), vision=vision,
                           augmenter=Augmenter() if cfg.augment else None)


def add_image_span_tokens(parts: Backbones) -> None:
    """Add ``<im_start>``/``<im_end>`` (LISA-7B-v1's ``use_mm_start_end``) as single tokens; grow the LM's
    embeddings when the tokenizer outgrows them (new rows are trained with ``train_embeddings: full``)."""
    tokenizer = parts.tokenizer
    try:
        span_tokens(tokenizer)
    except ValueError as err:
        raise ConfigError(f"use_mm_start_end: {err}") from None
    rows = parts.language_model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) > rows:
        parts.language_model.resize_token_embeddings(len(tokenizer))
        logger.info("use_mm_start_end: added %s/%s, LM token embeddings %d -> %d", IM_START_TOKEN, IM_END_TOKEN,
                    rows, len(tokenizer))


def vlm_model(parts: Backbones, vision_image_size: int) -> ModifiedLISA:
    """The vlm preset's ``VLMLISA`` from ``build_vlm`` output (``parts.language_model`` is the whole VLM)."""
    from modlisa.model.vlm import VLMLISA
    from modlisa.types import IMAGE_TOKEN, SEG_TOKEN

    tok = parts.tokenizer
    model = VLMLISA(parts.vision_tower, parts.projector, parts.language_model, parts.sam,
                    seg_token_id=tok.convert_tokens_to_ids(SEG_TOKEN), image_token_id=tok.convert_tokens_to_ids(IMAGE_TOKEN),
                    vision_image_size=vision_image_size, family=parts.vlm.family,
                    model_image_token_id=parts.vlm.model_image_token_id)
    model.image_processor = parts.vlm.image_processor
    return model


def build_model(cfg: TrainingConfig) -> tuple[ModifiedLISA, Any, Any]:
    """Build the model of preset ``cfg.model``, its tokenizer (with [SEG]/<image>) and image processors."""
    if cfg.model not in model_registry:
        raise ConfigError(f"model must be one of {', '.join(model_registry)}; got {cfg.model!r}")
    cfg = apply_preset(cfg)
    # A model is a function of its config: random initialisations (tiny parts, new projector, added token
    # rows, LoRA A) draw from cfg.seed, as after the training loop's set_seed (model/random_init.py).
    torch.manual_seed(cfg.seed)
    parts = build_backbones(cfg)
    if cfg.projector == "linear":  # LLaVA-v1 / LISA-7B-v1: one Linear instead of LLaVA-1.5's MLP
        vision_dim = parts.vision_tower.config.hidden_size
        parts.projector = nn.Linear(vision_dim, parts.language_model.config.get_text_config().hidden_size)
    if cfg.use_mm_start_end:
        add_image_span_tokens(parts)
    model = ModifiedLISA.from_backbones(parts, vision_image_size=cfg.img_size) if parts.vlm is None else \
        vlm_model(parts, cfg.img_size)
    model.conversation = ConversationFormat.from_config(cfg)
    if parts.vlm is not None:  # the checkpoint's processor decides how the image reads in the prompt
        model.conversation = dataclasses.replace(model.conversation, template_image=parts.vlm.family.template_image,
                                                 image_text=parts.vlm.family.image_text)
    model.random_init_prefixes = random_init_prefixes(cfg)  # frozen random parts are saved with checkpoints
    model.pack_queries = bool(cfg.pack_queries)  # one LM sequence per image in training (model/packing.py)
    if cfg.init_from:  # the export's projector, [SEG] head and vision wiring, before adapters freeze / wrap
        from modlisa.weights.export_layout import load_init_weights

        load_init_weights(model, cfg.init_from)
    apply_adapters(model, cfg)
    apply_dtype_policy(model, cfg.precision)  # fp32 master weights for what trains (model/precision.py)
    if cfg.gradient_checkpointing:
        model.enable_gradient_checkpointing()
    return model, parts.tokenizer, build_processors(cfg, parts)
