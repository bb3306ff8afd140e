"""What trains: freezing, LoRA on the LM, and the [SEG]-row-only embedding option.

``apply_adapters`` freezes everything, then enables (docs/LISA.md §2 for the LISA set):

- vision tower + projector        iff not ``freeze_image_encoder``
- SAM image + prompt encoder      iff not ``freeze_sam`` (with SAM's positional matrix)
- SAM mask decoder, text_hidden_fcs: always
- the whole LM                    iff not ``freeze_text_encoder`` (then ``train_embeddings`` is moot)
- LoRA (peft) on the LM only      iff ``use_lora``
- ``train_embeddings``: "full" = input embedding + LM head; "seg_row" = only the [SEG] row of both,
  as small separate parameters (``SegRowEmbedding``/``SegRowHead``); "none" = neither.
"""

from __future__ import annotations

import logging
import re

import torch
from torch import Tensor, nn

from modlisa.config import ConfigError, TrainingConfig

logger = logging.getLogger(__name__)


class _SegRowDelta(nn.Module):
    """A frozen ``base`` module + a trainable delta vector (h,) for the [SEG] token's row."""

    def __init__(self, base: nn.Module, seg_id: int, delta: nn.Parameter) -> None:
        super().__init__()
        self.base = base
        self.seg_id = int(seg_id)
        self.delta = delta

    @property
    def weight(self) -> Tensor:
        """The frozen base matrix (without the delta); for code that inspects ``.weight``."""
        return self.base.weight


class SegRowEmbedding(_SegRowDelta):
    """Frozen input embedding + a trainable delta added to the [SEG] row: (…,) ids -> (…, h).

    ``delta`` (h,) starts at zero, so the wrapped module computes exactly what ``base`` did.
    """

    @property
    def num_embeddings(self) -> int:
        return int(self.base.weight.shape[0])

    @property
    def embedding_dim(self) -> int:
        return int(self.base.weight.shape[1])

    def forward(self, input_ids: Tensor) -> Tensor:
        out = self.base(input_ids)
        is_seg = (input_ids == self.seg_id).unsqueeze(-1).to(out.dtype)
        return out + is_seg * self.delta.to(out.dtype)


class SegRowHead(_SegRowDelta):
    """Frozen LM head + a trainable delta added to the [SEG] output row: (…, h) -> (…, vocab)."""

    @property
    def bias(self) -> Tensor | None:
        return getattr(self.base, "bias", None)

    def forward(self, hidden: Tensor) -> Tensor:
        logits = self.base(hidden)
        extra = (hidden @ self.delta.to(hidden.dtype)).unsqueeze(-1).to(logits.dtype)  # (…, 1)
        index = torch.tensor([self.seg_id], device=logits.device)
        return logits.index_add(-1, index, extra)


# ---------------------------------------------------------------------- helpers
def unwrap_lm(language_model: nn.Module) -> nn.Module:
    """The transformers model inside a peft wrapper (or the model itself)."""
    get_base = getattr(language_model, "get_base_model", None)
    return get_base() if callable(get_base) else language_model


def _embedding_tied(lm: nn.Module) -> bool:
    head = lm.get_output_embeddings()
    return head is not None and head.weight is lm.get_input_embeddings().weight


def wrap_seg_rows(language_model: nn.Module, seg_id: int) -> None:
    """Install ``SegRowEmbedding``/``SegRowHead``; tied embeddings share ONE delta (the tie is kept)."""
    lm = unwrap_lm(language_model)
    embed = lm.get_input_embeddings()
    if isinstance(embed, SegRowEmbedding):
        return
    head = lm.get_output_embeddings()
    tied = _embedding_tied(lm)
    delta = nn.Parameter(torch.zeros(embed.weight.shape[1], device=embed.weight.device))
    lm.set_input_embeddings(SegRowEmbedding(embed, seg_id, delta))
    if head is not None:
        head_delta = delta if tied else nn.Parameter(torch.zeros_like(delta))
        lm.set_output_embeddings(SegRowHead(head, seg_id, head_delta))


def _apply_lora(model: nn.Module, cfg: TrainingConfig) -> None:
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    lm = model.language_model
    if cfg.use_quantization:
        lm = prepare_model_for_kbit_training(lm, use_gradient_checkpointing=cfg.gradient_checkpointing)
        lm.requires_grad_(False)
    targets: list[str] | str = list(cfg.lora_target_modules)
    scope = getattr(model, "lora_scope", None)  # the vlm preset: only the text model's modules (not its vision's)
    if scope:
        targets = rf"{re.escape(scope)}\..*\.({'|'.join(re.escape(t) for t in targets)})"
    lora = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=targets, bias="none", task_type="CAUSAL_LM")
    try:
        model.language_model = get_peft_model(lm, lora)
    except ValueError as exc:
        raise ConfigError(f"lora_target_modules {cfg.lora_target_modules}: {exc}") from None


def _set_embeddings(model: nn.Module, mode: str) -> None:
    lm = unwrap_lm(model.language_model)
    if mode == "full":
        lm.get_input_embeddings().weight.requires_grad_(True)
        head = lm.get_output_embeddings()
        if head is not None:
            head.weight.requires_grad_(True)
    elif mode == "seg_row":
        wrap_seg_rows(model.language_model, model.seg_token_id)
    elif mode != "none":
        raise ConfigError(f"train_embeddings must be seg_row, full or none; got {mode!r}")


def apply_adapters(model: nn.Module, cfg: TrainingConfig) -> None:
    """Freeze / unfreeze the parts of a ``ModifiedLISA`` and add LoRA / [SEG]-row parameters, in place."""
    model.requires_grad_(False)
    if not cfg.freeze_image_encoder:
        model.vision_tower.requires_grad_(True)
        model.projector.requires_grad_(True)
    if not cfg.freeze_sam:
        model.sam.vision_encoder.requires_grad_(True)
        model.sam.prompt_encoder.requires_grad_(True)
        model.sam.shared_image_embedding.requires_grad_(True)
    model.sam.mask_decoder.requires_grad_(True)
    # what makes the image features (SAM 2: also the decoder's conv_s0/conv_s1 and no_memory_embedding) trains
    # only with freeze_sam false: the frozen-SAM cache keeps those features
    model.sam_image_encoder.requires_grad_(not cfg.freeze_sam)
    model.text_hidden_fcs.requires_grad_(True)
    if cfg.use_lora:
        _apply_lora(model, cfg)
    if not cfg.freeze_text_encoder:
        model.language_model.requires_grad_(True)
        logger.info("freeze_text_encoder=false: the whole LM trains (train_embeddings=%s is moot)",
                    cfg.train_embeddings)
        if cfg.freeze_image_encoder:  # a VLM's LM holds its vision tower: that stays frozen
            model.vision_tower.requires_grad_(False)
            model.projector.requires_grad_(False)
    else:
        _set_embeddings(model, cfg.train_embeddings)
    total = sum(_logical_numel(p) for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    logger.info("trainable parameters: %d of %d (%.3f%%)", trainable, total, 100.0 * trainable / max(total, 1))


def _logical_numel(param: torch.Tensor) -> int:
    """Values a parameter stands for: a packed 4-bit weight (two values a byte) counts its unpacked shape."""
    shape = getattr(getattr(param, "quant_state", None), "shape", None)
    return int(torch.Size(shape).numel()) if shape is not None else param.numel()


def trainable_parameter_names(model: nn.Module) -> list[str]:
    """Names (``named_parameters`` order, shared tensors once) of the parameters that require grad."""
    return [name for name, param in model.named_parameters() if param.requires_grad]


# ---------------------------------------------------------------------- export support
def fold_seg_rows(language_model: nn.Module) -> None:
    """Add the [SEG]-row deltas into the base embedding / head weights and remove the wrappers, in place."""
    lm = unwrap_lm(language_model)
    embed, head = lm.get_input_embeddings(), lm.get_output_embeddings()
    if not isinstance(embed, SegRowEmbedding):
        return
    shared = isinstance(head, SegRowHead) and head.delta is embed.delta
    scale = getattr(embed.base, "embed_scale", 1.0)  # scaled embeddings (Gemma) multiply in forward
    if shared and float(scale) != 1.0:
        logger.warning("folding a [SEG] delta into TIED scaled embeddings: the LM-head row changes by delta/scale")
    with torch.no_grad():
        embed.base.weight[embed.seg_id] += (embed.delta / scale).to(embed.base.weight.dtype)
        if isinstance(head, SegRowHead) and not shared:
            head.base.weight[head.seg_id] += head.delta.to(head.base.weight.dtype)
    lm.set_input_embeddings(embed.base)
    if isinstance(head, SegRowHead):
        lm.set_output_embeddings(head.base)


def merge_adapters(model: nn.Module) -> None:
    """Make ``model.language_model`` a plain transformers LM again: fold [SEG] rows, merge LoRA (in place).
    A quantised LM is de-quantised to float32 with LoRA merged into it (never re-quantised)."""
    from modlisa.model.quantization import dequantized_merged_lm, is_quantized

    fold_seg_rows(model.language_model)
    if is_quantized(model.language_model):
        model.language_model = dequantized_merged_lm(unwrap_lm(model.language_model))
    elif hasattr(model.language_model, "merge_and_unload"):
        model.language_model = model.language_model.merge_and_unload()
