"""Quantised training (bitsandbytes' CPU backend): 8-bit and 4-bit LoRA runs of the tiny preset train with a
finite, falling loss; a quantised run resumes exactly; its export de-quantises the LM, merges LoRA and
predicts the same masks."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from modlisa.config import TrainingConfig
from modlisa.synthetic import make_dataset

pytest.importorskip("bitsandbytes", reason="the quant extra: pip install 'modlisa[quant]'")


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synthetic")
    make_dataset(root, seed=0, num_train=8, num_val=3, num_test=2, image_size=64, progress=False)
    return root


def quant_config(data_root: Path, out: Path, bits: int, **overrides) -> TrainingConfig:
    """The tiny preset with its LM quantised and LoRA on q/v (a quantised LM trains through LoRA only)."""
    cfg = TrainingConfig(
        data_root=str(data_root), output_dir=str(out), model="tiny", img_size=64, sam_image_size=64,
        batch_size=2, num_epochs=2, steps_per_epoch=4, learning_rate=3e-3, warmup_steps=1, seed=3, cpu=True,
        use_mixed_precision=False, log_every_steps=1, queries_per_image=2, use_quantization=True,
        quantization_bits=bits, use_lora=True, freeze_text_encoder=True, lora_r=4, lora_alpha=8,
    )
    return replace(cfg, **overrides).validate()


def _train(cfg: TrainingConfig) -> dict:
    from modlisa.engine.train import train

    return train(cfg)


def _losses(run: Path) -> list[float]:
    lines = (run / "outputs" / "train_log.jsonl").read_text().splitlines()
    return [json.loads(line)["loss"] for line in lines if '"loss"' in line]


@pytest.mark.parametrize("bits", [8, 4])
def test_quantized_lm_trains_lora_with_a_falling_loss(data_root, tmp_path, bits):
    from modlisa.model.factory import build_model
    from modlisa.model.quantization import is_quantized

    cfg = quant_config(data_root, tmp_path / "run", bits)
    model, _, _ = build_model(cfg)
    layers = {type(m).__name__ for m in model.language_model.modules()}
    assert is_quantized(model.language_model) and ("Linear4bit" if bits == 4 else "Linear8bitLt") in layers
    assert not is_quantized(model.vision_tower) and not is_quantized(model.sam)
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert any("lora_A" in n for n in trainable) and all(p.dtype == torch.float32 for p in trainable.values())
    del model
    _train(cfg)
    losses = _losses(tmp_path / "run")
    assert len(losses) == 8 and all(np.isfinite(losses))
    assert np.mean(losses[-3:]) < np.mean(losses[:3])


def test_quantized_run_resumes_exactly(data_root, tmp_path):
    _train(quant_config(data_root, tmp_path / "a", 4))
    _train(quant_config(data_root, tmp_path / "b", 4, stop_after_steps=6))
    _train(quant_config(data_root, tmp_path / "b", 4, resume_from_checkpoint="latest"))
    wa = load_file(str(tmp_path / "a" / "checkpoints" / "last" / "model.safetensors"))
    wb = load_file(str(tmp_path / "b" / "checkpoints" / "last" / "model.safetensors"))
    assert wa.keys() == wb.keys() and any("lora_A" in k for k in wa)
    assert not any(t.dtype == torch.uint8 for t in wa.values())  # only what trains: no packed weights
    for name in wa:
        assert torch.equal(wa[name], wb[name]), name
    assert _losses(tmp_path / "a") == pytest.approx(_losses(tmp_path / "b"), rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("bits", [4, 8])
def test_export_of_a_quantized_run_dequantizes_and_predicts_the_same_masks(data_root, tmp_path, bits):
    from modlisa.model.quantization import is_quantized
    from modlisa.predictor import Predictor
    from modlisa.weights import export_checkpoint, load_checkpoint

    _train(quant_config(data_root, tmp_path / "run", bits, num_epochs=1))
    model, tokenizer, processors, cfg = load_checkpoint(tmp_path / "run")
    assert is_quantized(model.language_model)
    image = np.asarray(__import__("PIL.Image", fromlist=["Image"]).open(
        sorted((data_root / "test").glob("*.jpg"))[0]).convert("RGB"))
    before = Predictor(model, tokenizer, processors, cfg.max_length)
    before.set_image(image)
    export_checkpoint(tmp_path / "run", tmp_path / "export")
    exported, tok2, proc2, cfg2 = load_checkpoint(tmp_path / "export")
    assert not is_quantized(exported.language_model) and cfg2.use_quantization is False
    info = json.loads((tmp_path / "export" / "modlisa_export.json").read_text())
    assert info["lm_dequantized_from_bits"] == bits and info["lora_merged"] is True
    assert f"trained {bits}-bit" in (tmp_path / "export" / "README.md").read_text()
    after = Predictor(exported, tok2, proc2, cfg2.max_length)
    after.set_image(image)
    for query in ("the red circle", "the blue square"):
        a = before.predict(query, is_sentence=False, mode="teacher").logits
        b = after.predict(query, is_sentence=False, mode="teacher").logits
        assert torch.allclose(a, b, atol=1e-3, rtol=1e-3), float((a - b).abs().max())
        assert torch.equal(a > 0, b > 0)
