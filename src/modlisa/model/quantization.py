"""The language model in 8-bit (LLM.int8) or 4-bit (nf4, QLoRA) through bitsandbytes, on CPU or CUDA.

Only the LM's decoder linear layers are quantised (transformers' bitsandbytes integration keeps the
embeddings and the LM head in their own precision); the vision tower, the projector, SAM and
``text_hidden_fcs`` are never quantised. LoRA trains on top (``model/adapters.py``: peft's
``prepare_model_for_kbit_training`` puts the remaining trainable parts in fp32). The 4-bit compute dtype
follows the run's precision: float32 unless the run autocasts in bf16 / fp16.

Presets that load their LM with ``from_pretrained`` (composite, llava, lisa-7b) pass ``lm_load_kwargs``;
presets that build it in memory (tiny, and smol from its GGUF file) are quantised by ``quantize_in_memory``:
the LM is saved to a temporary folder and loaded back through the same integration. Export de-quantises
(``dequantized_merged_lm``): LoRA is merged into the de-quantised weights, never re-quantised.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import tempfile
from typing import Any

import torch
from torch import nn
from transformers import AutoModelForCausalLM, BitsAndBytesConfig

from modlisa.config import ConfigError, TrainingConfig

logger = logging.getLogger(__name__)

QUANT_EXTRA = "pip install 'modlisa[quant]'"
QUANTISED_LINEARS = ("Linear4bit", "Linear8bitLt")  # bitsandbytes module classes
# LLaVA checkpoints: only the language model is quantised
LLAVA_SKIP_MODULES = ["vision_tower", "multi_modal_projector", "lm_head"]


def bitsandbytes_available() -> bool:
    """True when ``bitsandbytes`` can be imported (checked without importing it)."""
    return importlib.util.find_spec("bitsandbytes") is not None


def compute_dtype(cfg: TrainingConfig) -> torch.dtype:
    """The 4-bit matmul dtype: the run's autocast dtype (bf16 / fp16), else float32."""
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.precision, torch.float32)


def quantization_config(bits: int, dtype: torch.dtype = torch.float32,
                        skip_modules: list[str] | None = None) -> BitsAndBytesConfig:
    """LLM.int8() for ``bits`` 8; nf4 weights with ``dtype`` compute for ``bits`` 4."""
    if bits == 8:
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=skip_modules)
    if bits == 4:
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype,
                                  llm_int8_skip_modules=skip_modules)
    raise ConfigError(f"quantization_bits must be 4 or 8, got {bits!r}")


def _device_map(cfg: TrainingConfig) -> dict[str, Any]:
    """The whole LM on this process's device: quantised weights cannot be moved after loading."""
    if cfg.cpu or not torch.cuda.is_available():
        return {"": "cpu"}
    return {"": int(os.environ.get("LOCAL_RANK", "0"))}


def check_quantization(cfg: TrainingConfig) -> None:
    """ConfigError naming the ``quant`` extra when bitsandbytes is missing."""
    if not bitsandbytes_available():
        raise ConfigError(f"use_quantization needs bitsandbytes: {QUANT_EXTRA} (or set use_quantization=false)")


def lm_load_kwargs(cfg: TrainingConfig, skip_modules: list[str] | None = None) -> dict[str, Any]:
    """Extra ``from_pretrained`` keyword arguments for the language model of ``cfg``: ``{}`` unless
    ``cfg.use_quantization``, then ``quantization_config`` and ``device_map`` (see ``_device_map``)."""
    if not cfg.use_quantization:
        return {}
    check_quantization(cfg)
    device_map = _device_map(cfg)
    logger.info("language model loads in %d-bit on %s", cfg.quantization_bits, device_map[""])
    return {"quantization_config": quantization_config(cfg.quantization_bits, compute_dtype(cfg), skip_modules),
            "device_map": device_map}


def keep_one_cpu_layout(module: nn.Module) -> nn.Module:
    """Turn off bitsandbytes' eval-time repacking of 4-bit CPU weights (AVX512-BF16 machines): it converts the
    weights during validation to a layout with bf16 scales that training then keeps using, so that a run's
    numerics would depend on whether it validated before (and an exact resume would not be exact). Returns
    ``module``."""
    for layer in module.modules():
        if hasattr(layer, "support_avx512bf16_for_cpu"):
            layer.support_avx512bf16_for_cpu = False
    return module


def quantize_in_memory(language_model: nn.Module, cfg: TrainingConfig) -> nn.Module:
    """``language_model`` (built in memory) reloaded in ``cfg.quantization_bits`` bits; unchanged when
    ``cfg.use_quantization`` is off. Deterministic: the same weights give the same quantised model."""
    if not cfg.use_quantization:
        return language_model
    kwargs = lm_load_kwargs(cfg)
    with tempfile.TemporaryDirectory(prefix="modlisa-quant-") as folder:
        language_model.save_pretrained(folder, safe_serialization=True)
        quantised = AutoModelForCausalLM.from_pretrained(folder, **kwargs)
    return keep_one_cpu_layout(quantised)


def is_quantized(module: nn.Module) -> bool:
    """True when any bitsandbytes linear layer is inside ``module``."""
    return any(type(m).__name__ in QUANTISED_LINEARS for m in module.modules())


def quantized_module_prefixes(module: nn.Module) -> tuple[str, ...]:
    """``name.`` of every bitsandbytes linear layer in ``module`` (their packed tensors are rebuilt, not saved)."""
    return tuple(f"{name}." for name, m in module.named_modules() if type(m).__name__ in QUANTISED_LINEARS)


def _dequantized_state(base: nn.Module) -> dict[str, torch.Tensor]:
    """float32 weights of ``base`` (a transformers LM, possibly inside peft): bitsandbytes layers de-quantised,
    LoRA deltas added, peft's ``base_layer`` / ``lora_*`` names folded back to the plain LM's names."""
    from transformers.integrations.bitsandbytes import dequantize_bnb_weight

    state: dict[str, torch.Tensor] = {}
    for name, module in base.named_modules():
        if hasattr(module, "get_delta_weight") and hasattr(module, "base_layer"):  # a peft LoRA layer
            target, layer = name, module.base_layer
            delta = sum(module.get_delta_weight(a) for a in module.active_adapters if a in module.lora_A)
        elif type(module).__name__ in QUANTISED_LINEARS and not name.endswith("base_layer"):
            target, layer, delta = name, module, 0
        else:
            continue
        weight = dequantize_bnb_weight(layer.weight, getattr(layer, "state", None)).float()
        state[f"{target}.weight"] = weight + delta
        if layer.bias is not None:
            state[f"{target}.bias"] = layer.bias.detach().float()
    return state


def dequantized_merged_lm(base: nn.Module) -> nn.Module:
    """A plain float32 transformers model of ``base``'s class from ``base`` (a quantised causal LM or image-text-to-
    text model, LoRA layers injected by peft in place, i.e. ``adapters.unwrap_lm`` of a peft model): its quantised
    weights de-quantised, LoRA merged into them (exactly W + BA * scaling, not re-quantised). Every other weight is
    copied as it is."""
    merged = _dequantized_state(base)
    config = base.config.__class__.from_dict(base.config.to_dict())
    for key in ("quantization_config", "_pre_quantization_dtype"):
        if hasattr(config, key):
            delattr(config, key)
    plain = type(base)._from_config(config, dtype=torch.float32)  # its own class: a causal LM or a whole VLM
    names = set(plain.state_dict())
    rest = {k.replace(".base_layer", ""): v for k, v in base.state_dict().items()
            if "lora_" not in k and k.replace(".base_layer", "") in names and k.replace(".base_layer", "") not in merged}
    state = {**rest, **merged}
    missing = sorted(names - set(state))
    if missing:
        raise RuntimeError(f"de-quantising the language model left {len(missing)} weights unset: {missing[:5]}")
    plain.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()}, strict=False)
    logger.info("language model de-quantised to float32 (%d quantised layers, LoRA merged into them)",
                len(merged) - sum(k.endswith(".bias") for k in merged))
    return plain
