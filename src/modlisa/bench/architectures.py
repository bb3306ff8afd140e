"""Architecture of a run WITHOUT its weights: the backbone configs and a parameter-free skeleton.

The memory planner needs sizes, not weights: the configs of the vision tower, the LM and SAM come from
the preset (tiny sizes, SmolLM2-135M, local folders or the Hugging Face cache via ``AutoConfig``) or, for
the well-known checkpoints below, from built-in copies of their configs (so planning a 7B run needs no
download). ``build_skeleton`` instantiates the model on the ``meta`` device (no memory, < 1 s even for 7B)
and applies the run's adapters (``apply_adapters``), so parameter counts and the trainable set are exactly
those of the real run.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Any

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    CLIPVisionConfig,
    CLIPVisionModel,
    LlamaConfig,
    PretrainedConfig,
    Qwen2Config,
    SamConfig,
    SamModel,
    SamPromptEncoderConfig,
    SamVisionConfig,
    SiglipVisionConfig,
    SiglipVisionModel,
)

from modlisa.config import ConfigError, TrainingConfig
from modlisa.model.backbones import TINY_LM, TINY_VISION, VisionProjector, tiny_sam
from modlisa.model.lisa import ModifiedLISA

logger = logging.getLogger(__name__)

# ---------------------------------------------------------------------- built-in configs of known checkpoints
CLIP_L14_336 = {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24, "num_attention_heads": 16,
                "patch_size": 14, "image_size": 336, "projection_dim": 768}
CLIP_L14_224 = {**CLIP_L14_336, "image_size": 224}
LLAMA2_7B = {"hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32, "num_attention_heads": 32,
             "num_key_value_heads": 32, "vocab_size": 32064, "max_position_embeddings": 4096,
             "tie_word_embeddings": False}
QWEN25_05B = {"hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24, "num_attention_heads": 14,
              "num_key_value_heads": 2, "vocab_size": 151936, "max_position_embeddings": 32768,
              "tie_word_embeddings": True}
SMOLLM2_135M = {"hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30, "num_attention_heads": 9,
                "num_key_value_heads": 3, "head_dim": 64, "vocab_size": 49152, "tie_word_embeddings": True}
SAM_VIT = {  # image encoder sizes of the released SAM checkpoints
    "facebook/sam-vit-base": {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
                              "global_attn_indexes": [2, 5, 8, 11], "mlp_dim": 3072},
    "facebook/sam-vit-large": {"hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16,
                               "global_attn_indexes": [5, 11, 17, 23], "mlp_dim": 4096},
    "facebook/sam-vit-huge": {"hidden_size": 1280, "num_hidden_layers": 32, "num_attention_heads": 16,
                              "global_attn_indexes": [7, 15, 23, 31], "mlp_dim": 5120},
}
# (vision config, LM config class + sizes, weight dtype of the checkpoint)
KNOWN_LLAVA = {
    "llava-hf/llava-1.5-7b-hf": (CLIP_L14_336, LLAMA2_7B, torch.float16),
}
KNOWN_LM = {
    "Qwen/Qwen2.5-0.5B": (Qwen2Config, QWEN25_05B, torch.bfloat16),
    "Qwen/Qwen2.5-0.5B-Instruct": (Qwen2Config, QWEN25_05B, torch.bfloat16),
}
KNOWN_VISION = {
    "openai/clip-vit-large-patch14": (CLIP_L14_224, torch.float32),
    "openai/clip-vit-large-patch14-336": (CLIP_L14_336, torch.float32),
}
SPECIAL_TOKENS = 2  # <image> and [SEG] added to a pretrained tokenizer


@dataclass
class Architecture:
    """Configs and stored weight dtypes of one run's backbones (no weights).

    dtypes: part -> dtype of the stored weights ("vision", "lm", "sam"); random presets are float32,
    pretrained checkpoints load in their own dtype (transformers' ``dtype="auto"``).
    """

    vision: PretrainedConfig
    lm: PretrainedConfig
    sam: SamConfig
    dtypes: dict[str, torch.dtype]
    tokenizer: str  # "byte" (a byte-level tokenizer) or "bpe" (the tiny preset's word-level BPE, real LMs)
    drop_cls: bool = True
    source: str = ""

    @property
    def num_image_tokens(self) -> int:
        """N image tokens per image at the run's ``img_size`` (set on ``vision.image_size``)."""
        return (self.vision.image_size // self.vision.patch_size) ** 2

    def describe(self) -> dict[str, Any]:
        lm, v, s = self.lm, self.vision, self.sam.vision_config
        return {
            "source": self.source,
            "vision": {"type": v.model_type, "hidden": v.hidden_size, "layers": v.num_hidden_layers,
                       "image_size": v.image_size, "patch": v.patch_size, "tokens": self.num_image_tokens},
            "lm": {"type": lm.model_type, "hidden": lm.hidden_size, "layers": lm.num_hidden_layers,
                   "heads": lm.num_attention_heads, "kv_heads": getattr(lm, "num_key_value_heads", None),
                   "intermediate": lm.intermediate_size, "vocab": lm.vocab_size},
            "sam": {"hidden": s.hidden_size, "layers": s.num_hidden_layers, "heads": s.num_attention_heads,
                    "image_size": s.image_size, "global_attn_indexes": list(s.global_attn_indexes)},
            "weight_dtypes": {k: str(v).replace("torch.", "") for k, v in self.dtypes.items()},
        }


# ---------------------------------------------------------------------- configs per source
def _auto_config(name: str, what: str) -> PretrainedConfig:
    try:
        return AutoConfig.from_pretrained(name)
    except (OSError, ValueError) as err:
        raise ConfigError(f"memory planner: cannot read the config of {what} {name!r} ({err}); pass a local "
                          "folder or a Hugging Face id present in the local cache") from None


def _config_dtype(config: PretrainedConfig, default: torch.dtype = torch.float32) -> torch.dtype:
    dtype = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype, None)
    return dtype if isinstance(dtype, torch.dtype) else default


def sam_vit_config(encoder: dict[str, Any], image_size: int) -> SamConfig:
    """SamConfig with the given image-encoder sizes at ``image_size`` (prompt encoder grid to match)."""
    vision = SamVisionConfig(**{**encoder, "image_size": image_size})
    prompt = SamPromptEncoderConfig(image_size=image_size, patch_size=vision.patch_size)
    return SamConfig(vision_config=vision.to_dict(), prompt_encoder_config=prompt.to_dict())


def sam_config(cfg: TrainingConfig) -> tuple[SamConfig, torch.dtype]:
    """SAM's config: the tiny random SAM when ``sam_model`` is unset, else the checkpoint's."""
    if not cfg.sam_model:
        with torch.device("meta"):
            return tiny_sam(cfg.sam_image_size).config, torch.float32
    if cfg.sam_model in SAM_VIT:
        return sam_vit_config(SAM_VIT[cfg.sam_model], cfg.sam_image_size), torch.float32
    config = _auto_config(cfg.sam_model, "sam_model")
    return config, _config_dtype(config)


def _vision_at(config: PretrainedConfig, img_size: int) -> PretrainedConfig:
    config = type(config)(**{**config.to_dict(), "image_size": img_size})
    return config


def _tiny(cfg: TrainingConfig) -> tuple[PretrainedConfig, PretrainedConfig, dict, str]:
    from modlisa.model.tokenizer import build_word_tokenizer

    vocab = len(build_word_tokenizer())
    lm = LlamaConfig(vocab_size=vocab, tie_word_embeddings=False, **TINY_LM)
    return CLIPVisionConfig(image_size=cfg.img_size, **TINY_VISION), lm, {"vision": torch.float32,
                                                                            "lm": torch.float32}, "bpe"


def _smol(cfg: TrainingConfig) -> tuple[PretrainedConfig, PretrainedConfig, dict, str]:
    lm = LlamaConfig(**{**SMOLLM2_135M, "vocab_size": SMOLLM2_135M["vocab_size"] + SPECIAL_TOKENS})
    return (CLIPVisionConfig(image_size=cfg.img_size, **TINY_VISION), lm,
            {"vision": torch.float32, "lm": torch.float32}, "bpe")


def _composite(cfg: TrainingConfig) -> tuple[PretrainedConfig, PretrainedConfig, dict, str]:
    if cfg.vision_model in KNOWN_VISION:
        sizes, vdtype = KNOWN_VISION[cfg.vision_model]
        vision: PretrainedConfig = CLIPVisionConfig(**sizes)
    else:
        vision = _auto_config(str(cfg.vision_model), "vision_model")
        vision = getattr(vision, "vision_config", vision)
        vdtype = _config_dtype(vision)
    if cfg.language_model in KNOWN_LM:
        cls, sizes, ldtype = KNOWN_LM[cfg.language_model]
        lm = cls(**{**sizes, "vocab_size": sizes["vocab_size"] + SPECIAL_TOKENS})
    else:
        lm = _auto_config(str(cfg.language_model), "language_model").get_text_config()
        ldtype = _config_dtype(lm)
    return _vision_at(vision, cfg.img_size), lm, {"vision": vdtype, "lm": ldtype}, "bpe"


def _llava(cfg: TrainingConfig) -> tuple[PretrainedConfig, PretrainedConfig, dict, str]:
    from modlisa.model.factory import apply_preset

    cfg = apply_preset(cfg)
    if cfg.llava_model in KNOWN_LLAVA:
        vsizes, lsizes, dtype = KNOWN_LLAVA[cfg.llava_model]
        vision: PretrainedConfig = CLIPVisionConfig(**vsizes)
        lm: PretrainedConfig = LlamaConfig(**lsizes)
    else:
        config = _auto_config(str(cfg.llava_model), "llava_model")
        vision, lm, dtype = config.vision_config, config.get_text_config(), _config_dtype(config)
    return _vision_at(vision, cfg.img_size), lm, {"vision": dtype, "lm": dtype}, "bpe"


BUILDERS = {"tiny": _tiny, "smol": _smol, "composite": _composite, "llava": _llava, "lisa-7b": _llava}


def architecture_for(cfg: TrainingConfig) -> Architecture:
    """The backbone configs and weight dtypes of ``cfg``'s preset (ConfigError when unreadable)."""
    if cfg.model not in BUILDERS:
        raise ConfigError(f"memory planner: unknown model preset {cfg.model!r}")
    if cfg.model == "lisa-7b":
        from modlisa.model.factory import apply_preset

        cfg = apply_preset(cfg)
    vision, lm, dtypes, tokenizer = BUILDERS[cfg.model](cfg)
    sam, sam_dtype = sam_config(cfg)
    drop_cls = vision.model_type.startswith("clip")
    source = {"tiny": "tiny random configs", "smol": "SmolLM2-135M + tiny vision/SAM"}.get(
        cfg.model, ", ".join(str(x) for x in (cfg.llava_model, cfg.vision_model, cfg.language_model,
                                               cfg.sam_model) if x))
    return Architecture(vision, lm, sam, {**dtypes, "sam": sam_dtype}, tokenizer, drop_cls, source)


# ---------------------------------------------------------------------- meta skeleton
def _vision_module(config: PretrainedConfig) -> torch.nn.Module:
    if isinstance(config, SiglipVisionConfig) or config.model_type.startswith("siglip"):
        return SiglipVisionModel(config)
    return CLIPVisionModel(config)


def build_skeleton(arch: Architecture, cfg: TrainingConfig) -> ModifiedLISA:
    """ModifiedLISA on the meta device with ``cfg``'s adapters applied (quantisation left out)."""
    with torch.device("meta"):
        vision = _vision_module(arch.vision)
        lm = AutoModelForCausalLM.from_config(arch.lm)
        sam = SamModel(arch.sam)
        projector = VisionProjector(arch.vision.hidden_size, arch.lm.hidden_size)
        vocab = arch.lm.vocab_size
        model = ModifiedLISA(vision, projector, lm, sam, seg_token_id=vocab - 1, image_token_id=vocab - 2,
                             vision_image_size=arch.vision.image_size, drop_cls=arch.drop_cls)
    from modlisa.model.adapters import apply_adapters

    adapters_cfg = dataclasses.replace(cfg, use_quantization=False)
    with torch.device("meta"):
        apply_adapters(model, adapters_cfg)
    return model
