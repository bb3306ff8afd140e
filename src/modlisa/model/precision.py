"""Parameter dtypes of a run: fp32 master weights for what trains, 16-bit storage for what is frozen.

``apply_dtype_policy(model, precision)`` runs after the adapters are applied (the trainable set is known):

- every trainable parameter becomes float32, whatever dtype the checkpoint was saved in. An fp16 embedding
  trained under plain AdamW diverges at once (``eps=1e-8`` rounds to 0 in fp16, updates overflow); LISA
  avoids this through DeepSpeed's fp32 master weights, modlisa by keeping the trainable tensors themselves
  in fp32 (autocast runs the matmuls in 16 bits; the fp16 grad scaler needs fp32 gradients to unscale).
- frozen parameters keep the checkpoint's dtype (no extra memory), with one exception: a 16-bit checkpoint
  run under the OTHER 16-bit autocast dtype (llava-hf's fp16 weights under bf16) is converted to the
  autocast dtype, same size, because autocast cannot mix fp16 and bf16 tensors in one op (``cat``, ``where``).
- when the model then holds several floating dtypes, each parameterised leaf module casts its floating
  inputs to its own dtype while autocast is off (fp32 runs, evaluation in fp32): a frozen fp16 layer
  computes in fp16, a trainable fp32 one in fp32. Under autocast the hooks do nothing.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

import torch
from torch import nn

logger = logging.getLogger(__name__)

HALF_DTYPES = (torch.float16, torch.bfloat16)
AUTOCAST_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}
_HOOKED = "_modlisa_dtype_bridge"


def autocast_dtype(precision: str) -> torch.dtype | None:
    """The autocast dtype of an Accelerate ``mixed_precision`` value ("no" -> None)."""
    return AUTOCAST_DTYPES.get(precision)


def parameter_dtypes(model: nn.Module) -> dict[str, dict[str, int]]:
    """{"trainable": {dtype: count}, "frozen": {dtype: count}} of the floating parameters (for logs, tests)."""
    out: dict[str, Counter] = {"trainable": Counter(), "frozen": Counter()}
    for param in model.parameters():
        if param.is_floating_point():
            out["trainable" if param.requires_grad else "frozen"][str(param.dtype).replace("torch.", "")] += \
                param.numel()
    return {k: dict(v) for k, v in out.items()}


def _cast_inputs(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """Forward pre-hook: floating tensor arguments -> the module's parameter dtype, unless autocast is on."""
    tensors = [a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)]
    if not tensors or torch.is_autocast_enabled(tensors[0].device.type):
        return None
    dtype = next(p.dtype for p in module.parameters(recurse=False) if p.is_floating_point())  # current dtype

    def cast(value: Any) -> Any:
        if isinstance(value, torch.Tensor) and value.is_floating_point() and value.dtype != dtype:
            return value.to(dtype)
        return value

    return tuple(cast(a) for a in args), {k: cast(v) for k, v in kwargs.items()}


def _install_bridges(model: nn.Module) -> int:
    """Add the input-casting pre-hook to every leaf module with floating parameters; returns how many."""
    count = 0
    for module in model.modules():
        own = [p for p in module.parameters(recurse=False) if p.is_floating_point()]
        if not own or any(True for _ in module.children()) or hasattr(module, _HOOKED):
            continue
        setattr(module, _HOOKED, True)
        module.register_forward_pre_hook(_cast_inputs, with_kwargs=True)
        count += 1
    return count


def apply_dtype_policy(model: nn.Module, precision: str) -> dict[str, Any]:
    """Trainable parameters -> fp32; frozen 16-bit ones -> the autocast dtype when it is the other 16-bit
    format; input casts where dtypes meet. In place; returns what was done (also logged)."""
    target_half = autocast_dtype(precision)
    upcast, converted = 0, 0
    with torch.no_grad():
        for param in model.parameters():
            if not param.is_floating_point():
                continue
            if param.requires_grad and param.dtype != torch.float32:
                param.data = param.data.float()
                upcast += param.numel()
            elif (not param.requires_grad and target_half is not None and param.dtype in HALF_DTYPES
                  and param.dtype != target_half):
                param.data = param.data.to(target_half)
                converted += param.numel()
    dtypes = parameter_dtypes(model)
    mixed = len(set(dtypes["trainable"]) | set(dtypes["frozen"])) > 1
    bridges = _install_bridges(model) if mixed else 0
    if upcast:
        logger.info("trainable parameters upcast to fp32 master weights: %d values", upcast)
    if converted:
        logger.info("frozen 16-bit weights converted to %s for %s autocast (same memory): %d values",
                    str(target_half).replace("torch.", ""), precision, converted)
    return {"upcast_trainable": upcast, "converted_frozen": converted, "dtype_bridges": bridges, **dtypes}
