"""Loading the language model in 8-bit or 4-bit (nf4) through bitsandbytes; CUDA only."""

from __future__ import annotations

import importlib.util
import logging
import os
from typing import Any

import torch
from transformers import BitsAndBytesConfig

from modlisa.config import ConfigError, TrainingConfig

logger = logging.getLogger(__name__)


def bitsandbytes_available() -> bool:
    """True when ``bitsandbytes`` can be imported (checked without importing it)."""
    return importlib.util.find_spec("bitsandbytes") is not None


def quantization_config(bits: int) -> BitsAndBytesConfig:
    """LLM.int8() for ``bits`` 8; nf4 weights with bfloat16 compute for ``bits`` 4."""
    if bits == 8:
        return BitsAndBytesConfig(load_in_8bit=True)
    if bits == 4:
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                  bnb_4bit_compute_dtype=torch.bfloat16)
    raise ConfigError(f"quantization_bits must be 4 or 8, got {bits!r}")


def lm_load_kwargs(cfg: TrainingConfig) -> dict[str, Any]:
    """Extra ``from_pretrained`` keyword arguments for the language model of ``cfg``.

    ``{}`` unless ``cfg.use_quantization``; then ``quantization_config`` (8-bit, or 4-bit nf4 with bf16
    compute when ``cfg.quantization_bits == 4``) and ``device_map`` placing the whole LM on this process's
    GPU (``LOCAL_RANK``, 0 outside a distributed launch): quantised weights cannot be moved after loading.
    Raises ConfigError when CUDA is unavailable (or ``cfg.cpu``) or bitsandbytes is not installed.
    """
    if not cfg.use_quantization:
        return {}
    if cfg.cpu or not torch.cuda.is_available():
        raise ConfigError(
            "use_quantization needs a CUDA GPU (bitsandbytes has no CPU path here); "
            "set use_quantization=false or run on a GPU machine"
        )
    if not bitsandbytes_available():
        raise ConfigError("use_quantization needs bitsandbytes: `pip install bitsandbytes` (or set use_quantization=false)")
    device = int(os.environ.get("LOCAL_RANK", "0"))
    logger.info("language model will load in %d-bit on cuda:%d", cfg.quantization_bits, device)
    return {"quantization_config": quantization_config(cfg.quantization_bits), "device_map": {"": device}}
