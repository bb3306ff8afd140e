"""Weights I/O on the tiny preset: trainable save/load (exact), key checks, merged export and reload."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from modlisa.config import TrainingConfig
from modlisa.data.collate import collate_samples
from modlisa.data.prompts import eval_question
from modlisa.model.factory import build_model
from modlisa.types import SEG_TOKEN, Batch, Sample
from modlisa.weights import (
    WeightsError,
    export_merged,
    load_exported,
    load_trainable,
    save_trainable,
    trainable_state_dict,
)

# LoRA merging and [SEG]-row folding reorder float32 sums (W x + s B A x  vs  (W + s B A) x): the exported
# model's mask logits agree with the trained model's to this tolerance, not bit for bit.
EXPORT_ATOL = 1e-4


def tiny_cfg(**overrides) -> TrainingConfig:
    values = {"model": "tiny", "img_size": 64, "sam_image_size": 64, "cpu": True, "use_mixed_precision": False}
    return TrainingConfig(**{**values, **overrides})


def build(seed: int = 0, **overrides):
    torch.manual_seed(seed)
    return build_model(tiny_cfg(**overrides))


def make_batch(tokenizer, processors) -> Batch:
    """One 40x48 image with two queries (one short, one sentence), masks at the original size."""
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(40, 48, 3), dtype=np.uint8)
    sam_image, resize_hw = processors.sam(image)
    masks = torch.zeros(2, 40, 48, dtype=torch.uint8)
    masks[0, 5:20, 10:30] = 1
    masks[1, 20:35, 4:16] = 1
    sample = Sample(
        image_path="x.jpg", json_path="x.json", sam_image=sam_image, vision_image=processors.vision(image),
        resize_hw=tuple(resize_hw), original_hw=(40, 48),
        questions=[eval_question("the square", False), eval_question("Where would you sit?", True)],
        answers=["[SEG].", "Sure, [SEG]."], queries=["the square", "Where would you sit?"], masks=masks,
        is_sentence=False,
    )
    return collate_samples([sample], tokenizer)


def train_steps(model, batch: Batch, steps: int = 2) -> None:
    """A few AdamW steps on CE + mask BCE so that LoRA B, [SEG] deltas, fcs and decoder move off their init."""
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    for _ in range(steps):
        out = model(batch)
        logits, labels = out.logits[:, :-1], out.labels[:, 1:]
        ce = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1))
        bce = torch.nn.functional.binary_cross_entropy_with_logits(out.pred_masks[0], batch.masks[0].float())
        optimizer.zero_grad()
        (ce + bce).backward()
        optimizer.step()
    model.eval()


def forward_eval(model, batch: Batch):
    model.eval()
    with torch.no_grad():
        return model(batch)


@pytest.fixture(scope="module")
def trained():
    """(model, tokenizer, processors, cfg, batch) of the tiny preset after two optimizer steps."""
    model, tokenizer, processors = build()
    batch = make_batch(tokenizer, processors)
    train_steps(model, batch)
    lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert lora_b and all(p.abs().sum() > 0 for p in lora_b)
    return model, tokenizer, processors, tiny_cfg(), batch


def test_trainable_state_dict_holds_exactly_the_trained_parts(trained):
    model = trained[0]
    names = list(trainable_state_dict(model))
    assert any("lora_A" in n for n in names) and any("lora_B" in n for n in names)
    assert any(n.startswith("text_hidden_fcs.") for n in names)
    assert any(n.startswith("sam.mask_decoder.") for n in names)
    assert any(n.endswith(".delta") for n in names)  # [SEG]-row deltas (train_embeddings=seg_row)
    assert not any(n.startswith(("vision_tower.", "sam.vision_encoder.", "projector.")) for n in names)
    assert not any("base_layer" in n for n in names)


def test_save_load_gives_identical_outputs(trained, tmp_path):
    model, _, _, _, batch = trained
    path = save_trainable(model, tmp_path / "trainable.safetensors")
    fresh, _, _ = build()  # same seed: same frozen weights, untrained LoRA / heads
    reference = forward_eval(model, batch)
    before = forward_eval(fresh, batch)
    assert not torch.equal(before.pred_masks[0], reference.pred_masks[0])
    report = load_trainable(fresh, path)
    assert report["missing"] == [] and report["unexpected"] == []
    assert len(report["loaded"]) == len(trainable_state_dict(model))
    after = forward_eval(fresh, batch)
    assert torch.equal(after.pred_masks[0], reference.pred_masks[0])
    assert torch.equal(after.logits, reference.logits)


def test_missing_key_is_a_clear_error_unless_allowed(trained, tmp_path):
    model = trained[0]
    state = {k: v.clone() for k, v in trainable_state_dict(model).items()}
    dropped = next(k for k in state if k.startswith("text_hidden_fcs."))
    del state[dropped]
    path = tmp_path / "partial.safetensors"
    save_file(state, str(path))
    fresh, _, _ = build()
    with pytest.raises(WeightsError, match=rf"partial\.safetensors.*missing 1 key.*{dropped}"):
        load_trainable(fresh, path)
    report = load_trainable(fresh, path, allowed_missing=["text_hidden_fcs.*"])
    assert report["missing"] == [dropped]
    assert torch.equal(dict(fresh.named_parameters())[dropped], dict(build()[0].named_parameters())[dropped])


def test_unexpected_key_is_a_clear_error_unless_allowed(trained, tmp_path):
    model = trained[0]
    state = {k: v.clone() for k, v in trainable_state_dict(model).items()}
    state["not_in_model.weight"] = torch.zeros(3)
    state["projector.linear_1.weight"] = model.projector.linear_1.weight.detach().clone()  # frozen here
    path = tmp_path / "extra.safetensors"
    save_file(state, str(path))
    fresh, _, _ = build()
    with pytest.raises(WeightsError, match=r"extra\.safetensors.*unexpected 2 key.*not_in_model\.weight"):
        load_trainable(fresh, path)
    report = load_trainable(fresh, path, allowed_unexpected=["not_in_model.weight", "projector.*"])
    assert sorted(report["unexpected"]) == ["not_in_model.weight", "projector.linear_1.weight"]


def test_shape_mismatch_and_bad_file_are_clear_errors(trained, tmp_path):
    model = trained[0]
    state = {k: v.clone() for k, v in trainable_state_dict(model).items()}
    key = next(k for k in state if k.startswith("text_hidden_fcs."))
    state[key] = torch.zeros(2, 2)
    save_file(state, str(tmp_path / "shape.safetensors"))
    with pytest.raises(WeightsError, match=rf"shape\.safetensors.*shape mismatch.*{key}"):
        load_trainable(model, tmp_path / "shape.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(WeightsError, match=r"junk\.safetensors: not a readable safetensors file"):
        load_trainable(model, tmp_path / "junk.safetensors")
    with pytest.raises(FileNotFoundError, match="nope.safetensors"):
        load_trainable(model, tmp_path / "nope.safetensors")


def test_export_then_load_exported_gives_the_same_masks(trained, tmp_path):
    model, tokenizer, processors, cfg, batch = trained
    reference = forward_eval(model, batch)
    trainable_before = {k: v.clone() for k, v in trainable_state_dict(model).items()}
    out = export_merged(model, tokenizer, cfg, tmp_path / "export", processors=processors)

    # the trained model is untouched (the merge ran on a copy)
    assert {k: v for k, v in trainable_state_dict(model).items()}.keys() == trainable_before.keys()
    assert all(torch.equal(v, trainable_before[k]) for k, v in trainable_state_dict(model).items())
    assert torch.equal(forward_eval(model, batch).pred_masks[0], reference.pred_masks[0])

    for name in ("language_model/config.json", "language_model/tokenizer.json", "vision_tower/config.json",
                 "vision_tower/preprocessor_config.json", "sam/config.json", "modlisa_heads.safetensors",
                 "modlisa_config.yaml", "modlisa_export.json", "README.md"):
        assert (out / name).is_file(), name
    saved_cfg = yaml.safe_load((out / "modlisa_config.yaml").read_text())
    assert saved_cfg["model"] == "composite" and saved_cfg["use_lora"] is False
    assert (saved_cfg["language_model"], saved_cfg["vision_model"], saved_cfg["sam_model"]) == (
        "language_model", "vision_tower", "sam")
    lm_weights = load_file(str(out / "language_model" / "model.safetensors"))
    assert not any("lora" in k or "base_layer" in k or k.endswith(".delta") for k in lm_weights)
    assert sorted({k.split(".")[0] for k in load_file(str(out / "modlisa_heads.safetensors"))}) == [
        "projector", "text_hidden_fcs"]
    assert json.loads((out / "modlisa_export.json").read_text())["lora_merged"] is True

    loaded, tok2, proc2, cfg2 = load_exported(out)
    assert not any("lora" in n for n, _ in loaded.named_parameters())
    assert cfg2.use_lora is False and cfg2.model == "composite"
    assert proc2.vision.mean == processors.vision.mean and proc2.vision.std == processors.vision.std
    text = f"USER: <image>\nWhere? ASSISTANT: {SEG_TOKEN}."
    assert tok2(text)["input_ids"] == tokenizer(text)["input_ids"]
    result = forward_eval(loaded, make_batch(tok2, proc2))
    diff = (result.pred_masks[0] - reference.pred_masks[0]).abs().max().item()
    print(f"export round trip: max |mask logit difference| = {diff:.2e} (tolerance {EXPORT_ATOL})")
    assert diff <= EXPORT_ATOL
    torch.testing.assert_close(result.logits, reference.logits, atol=EXPORT_ATOL, rtol=0)
    confident = reference.pred_masks[0].abs() > EXPORT_ATOL
    assert torch.equal((result.pred_masks[0] > 0)[confident], (reference.pred_masks[0] > 0)[confident])


def test_export_in_place_merges_the_model_itself(trained, tmp_path):
    trained_model, tokenizer, processors, cfg, batch = trained
    model = copy.deepcopy(trained_model)
    reference = forward_eval(model, batch)
    export_merged(model, tokenizer, cfg, tmp_path / "export", processors=processors, in_place=True)
    assert not any("lora" in n or n.endswith(".delta") for n, _ in model.named_parameters())
    loaded, *_ = load_exported(tmp_path / "export")
    torch.testing.assert_close(forward_eval(loaded, batch).pred_masks[0], reference.pred_masks[0],
                               atol=EXPORT_ATOL, rtol=0)


def test_export_refuses_a_non_empty_folder(trained, tmp_path):
    model, tokenizer, processors, cfg, _ = trained
    (tmp_path / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError, match="not empty"):
        export_merged(model, tokenizer, cfg, tmp_path, processors=processors)


def test_load_exported_names_missing_parts(tmp_path):
    (tmp_path / "modlisa_config.yaml").write_text("model: composite\n")
    with pytest.raises(FileNotFoundError, match=r"not a complete modlisa export: missing modlisa_heads"):
        load_exported(tmp_path)
