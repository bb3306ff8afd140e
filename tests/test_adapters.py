"""Exactly which parameters train for each adapter flag, that exactly those get gradients, and the [SEG] row."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from modlisa.config import ConfigError, TrainingConfig  # noqa: E402
from modlisa.data import prompts  # noqa: E402
from modlisa.data.collate import collate_samples  # noqa: E402
from modlisa.model.adapters import (  # noqa: E402
    SegRowEmbedding,
    SegRowHead,
    apply_adapters,
    merge_adapters,
    trainable_parameter_names,
    unwrap_lm,
)
from modlisa.model.backbones import build_backbones, tiny_language_model  # noqa: E402
from modlisa.model.factory import build_model  # noqa: E402
from modlisa.model.lisa import ModifiedLISA  # noqa: E402
from modlisa.types import Sample  # noqa: E402

IMG, SAM = 64, 64


def cfg_with(**flags) -> TrainingConfig:
    return TrainingConfig(model="tiny", img_size=IMG, sam_image_size=SAM, **flags)


def make_batch(processors, tokenizer):
    rng = np.random.default_rng(0)
    samples = []
    for i, (h, w) in enumerate([(40, 50), (30, 64)]):
        image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        sam_image, resize_hw = processors.sam(image)
        samples.append(Sample(image_path=f"{i}.jpg", json_path=f"{i}.json", sam_image=sam_image,
                              vision_image=processors.vision(image), resize_hw=resize_hw, original_hw=(h, w),
                              questions=[prompts.eval_question("the blue square", False)] * 2,
                              answers=["Sure, [SEG].", "[SEG]."], queries=["a", "b"],
                              masks=torch.from_numpy((rng.random((2, h, w)) > 0.5).astype(np.uint8)),
                              is_sentence=False, index=i))
    return collate_samples(samples, tokenizer)


def loss_of(model, batch) -> torch.Tensor:
    out = model(batch)
    ce = F.cross_entropy(out.logits[:, :-1].flatten(0, 1), out.labels[:, 1:].flatten(), ignore_index=-100)
    return ce + sum(F.binary_cross_entropy_with_logits(p, (m == 1).float()) for p, m in zip(out.pred_masks, batch.masks))


def expected_trainable(model, cfg: TrainingConfig) -> set[str]:
    """The trainable set written out from the rules of the brief, by parameter-name prefix."""
    lm_prefix = "language_model.base_model.model." if cfg.use_lora else "language_model."
    names = [n for n, _ in model.named_parameters()]
    prefixes = ["sam.mask_decoder.", "text_hidden_fcs."]
    if not cfg.freeze_image_encoder:
        prefixes += ["vision_tower.", "projector."]
    if not cfg.freeze_sam:
        prefixes += ["sam.vision_encoder.", "sam.prompt_encoder.", "sam.shared_image_embedding."]
    if not cfg.freeze_text_encoder:
        prefixes += ["language_model."]
    expected = {n for n in names if n.startswith(tuple(prefixes))}
    if cfg.use_lora:
        expected |= {n for n in names if ".lora_A." in n or ".lora_B." in n}
    if cfg.freeze_text_encoder and cfg.train_embeddings == "full":
        expected |= {lm_prefix + "model.embed_tokens.weight", lm_prefix + "lm_head.weight"}
    if cfg.freeze_text_encoder and cfg.train_embeddings == "seg_row":
        expected |= {lm_prefix + "model.embed_tokens.delta", lm_prefix + "lm_head.delta"}
    return expected


def unused(names: set[str]) -> set[str]:
    """Trainable parameters that no loss reaches: SAM's IoU head (multimask_output=False), the vision tower's
    last layer and final norm (features come from layer -2), SAM's point/box/mask prompt embeddings."""
    prefixes = ("sam.mask_decoder.iou_prediction_head.", "vision_tower.encoder.layers.1.",
                "vision_tower.post_layernorm.", "sam.prompt_encoder.point_embed.",
                "sam.prompt_encoder.not_a_point_embed.", "sam.prompt_encoder.mask_embed.")
    return {n for n in names if n.startswith(prefixes)}


FLAG_SETS = [
    {},  # defaults: LoRA + [SEG] row, everything else frozen
    {"train_embeddings": "full"},  # LISA
    {"use_lora": False, "train_embeddings": "none"},
    {"use_lora": False, "train_embeddings": "seg_row"},
    {"freeze_image_encoder": False, "train_embeddings": "none"},
    {"freeze_sam": False},
    {"freeze_text_encoder": False, "use_lora": False},
    {"freeze_text_encoder": False, "freeze_image_encoder": False, "freeze_sam": False},
]


@pytest.mark.parametrize("flags", FLAG_SETS, ids=lambda f: ",".join(f"{k}={v}" for k, v in f.items()) or "defaults")
def test_trainable_set_and_gradients_match_flags(flags):
    cfg = cfg_with(**flags)
    torch.manual_seed(0)
    model, tokenizer, processors = build_model(cfg)
    names = set(trainable_parameter_names(model))
    assert names == expected_trainable(model, cfg)
    with torch.no_grad():  # non-zero LoRA B so that LoRA A is reached too
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.1)
    loss_of(model, make_batch(processors, tokenizer)).backward()
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
    assert with_grad == names - unused(names)
    assert all(model.get_parameter(n).grad.abs().sum() > 0 for n in with_grad if "lora_" in n or "delta" in n)


def test_seg_row_step_changes_only_the_seg_row():
    torch.manual_seed(0)
    model, tokenizer, processors = build_model(cfg_with(train_embeddings="seg_row"))
    lm = unwrap_lm(model.language_model)
    embed, head = lm.get_input_embeddings(), lm.get_output_embeddings()
    assert isinstance(embed, SegRowEmbedding) and isinstance(head, SegRowHead)
    vocab, seg = embed.num_embeddings, model.seg_token_id
    ids = torch.arange(vocab)
    eye = torch.eye(embed.embedding_dim)
    with torch.no_grad():
        before_embed, before_head = embed(ids).clone(), head(eye).clone()  # (V, h), (h, V)
        base_before = embed.base.weight.clone(), head.base.weight.clone()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    loss_of(model, make_batch(processors, tokenizer)).backward()
    optimizer.step()
    with torch.no_grad():
        changed_rows = (embed(ids) != before_embed).any(dim=1).nonzero().flatten().tolist()
        changed_cols = (head(eye) != before_head).any(dim=0).nonzero().flatten().tolist()
    assert changed_rows == [seg] and changed_cols == [seg]
    assert torch.equal(embed.base.weight, base_before[0]) and torch.equal(head.base.weight, base_before[1])


def _tied_model(cfg: TrainingConfig) -> ModifiedLISA:
    """A tiny model whose LM ties the input embedding and LM head (as SmolLM2 does)."""
    torch.manual_seed(0)
    parts = build_backbones(cfg)
    lm = tiny_language_model(parts.tokenizer)
    lm.config.tie_word_embeddings = True
    lm.tie_weights()
    assert lm.lm_head.weight is lm.model.embed_tokens.weight
    parts.language_model = lm
    model = ModifiedLISA.from_backbones(parts, vision_image_size=cfg.img_size)
    apply_adapters(model, cfg)
    return model, parts


def test_seg_row_with_tied_embeddings_shares_one_row():
    cfg = cfg_with(use_lora=False)
    model, parts = _tied_model(cfg)
    names = trainable_parameter_names(model)
    assert [n for n in names if n.startswith("language_model.")] == ["language_model.model.embed_tokens.delta"]
    lm = model.language_model
    assert lm.get_input_embeddings().delta is lm.get_output_embeddings().delta
    from modlisa.model.factory import build_processors

    processors = build_processors(cfg, parts)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1.0)
    loss_of(model, make_batch(processors, parts.tokenizer)).backward()
    optimizer.step()
    seg = model.seg_token_id
    with torch.no_grad():
        row_in = lm.get_input_embeddings()(torch.tensor([seg]))[0]
        row_out = lm.get_output_embeddings()(torch.eye(row_in.shape[0]))[:, seg]
    assert torch.allclose(row_in, row_out, atol=1e-6)  # still tied after the step
    assert not torch.allclose(row_in, lm.get_input_embeddings().base.weight[seg])


@pytest.mark.parametrize("tied", [False, True])
def test_merge_adapters_keeps_outputs(tied):
    cfg = cfg_with(lora_dropout=0.0)
    if tied:
        model, parts = _tied_model(cfg)
        tokenizer = parts.tokenizer
        from modlisa.model.factory import build_processors

        processors = build_processors(cfg, parts)
    else:
        torch.manual_seed(0)
        model, tokenizer, processors = build_model(cfg)
    batch = make_batch(processors, tokenizer)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(2):
        optimizer.zero_grad()
        loss_of(model, batch).backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        before = model(batch)
        merge_adapters(model)
        after = model(batch)
    lm = model.language_model
    assert type(lm).__name__ == "LlamaForCausalLM"
    assert type(lm.get_input_embeddings()).__name__ == "Embedding"
    assert type(lm.get_output_embeddings()).__name__ == "Linear"
    assert not any("lora" in n or "delta" in n for n, _ in model.named_parameters())
    assert torch.allclose(before.logits, after.logits, atol=1e-4)
    for x, y in zip(before.pred_masks, after.pred_masks):
        assert torch.allclose(x, y, atol=1e-3)


def test_bad_lora_target_is_a_config_error():
    with pytest.raises(ConfigError, match="lora_target_modules"):
        build_model(cfg_with(lora_target_modules=["no_such_proj"]))
