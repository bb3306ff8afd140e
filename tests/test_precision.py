"""fp32 master weights: a llava-hf checkpoint saved in fp16 trains under fp32, fp16 (grad scaler) and bf16.

Before modlisa kept trainable tensors in fp32, the fp16 embedding + LM head of ``train_embeddings: full``
trained in fp16 under AdamW: the loss was non-finite from step 2 (fp32), the grad scaler refused fp16
gradients (fp16), and bf16 autocast crashed on fp16 weights (bf16).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from llava_fixtures import (
    IMG,
    save_tiny_llava,
    single_thread,  # noqa: F401  (fixture)
)
from modlisa.config import TrainingConfig
from modlisa.data.collate import collate_samples
from modlisa.data.prompts import eval_question
from modlisa.losses import compute_losses
from modlisa.model.factory import build_model
from modlisa.model.precision import apply_dtype_policy, parameter_dtypes
from modlisa.types import Sample

PRECISIONS = {"fp32": (False, "bf16"), "fp16": (True, "fp16"), "bf16": (True, "bf16")}

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def llava_fp16(tmp_path_factory) -> str:
    return save_tiny_llava(tmp_path_factory.mktemp("llava") / "fp16", dtype=torch.float16, chat_template=False)


def llava_cfg(folder: str, precision: str, **overrides) -> TrainingConfig:
    use_mp, mp = PRECISIONS[precision]
    values = {"model": "llava", "llava_model": folder, "img_size": IMG, "sam_image_size": 64, "cpu": True,
              "train_embeddings": "full", "use_mixed_precision": use_mp, "mixed_precision": mp}
    return TrainingConfig(**{**values, **overrides})


def square_batch(tokenizer, processors):
    """One 48x64 image (a bright square on noise) with a short and a sentence query about the square."""
    rng = np.random.default_rng(0)
    image = rng.integers(0, 80, size=(48, 64, 3), dtype=np.uint8)
    image[10:30, 20:44] = 230
    masks = torch.zeros(2, 48, 64, dtype=torch.uint8)
    masks[:, 10:30, 20:44] = 1
    sam_image, resize_hw = processors.sam(image)
    sample = Sample(image_path="x.jpg", json_path="x.json", sam_image=sam_image,
                    vision_image=processors.vision(image), resize_hw=tuple(resize_hw), original_hw=(48, 64),
                    questions=[eval_question("the square", False), eval_question("What is bright?", True)],
                    answers=["Sure, [SEG].", "It is [SEG]."], queries=["the square", "What is bright?"],
                    masks=masks, is_sentence=False)
    return collate_samples([sample], tokenizer)


def train_loop(model, batch, precision: str, steps: int = 30, lr: float = 1e-3) -> list[float]:
    """``steps`` AdamW steps on LISA's loss, autocast as ``precision`` says, fp16 with a grad scaler."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.95), weight_decay=0.0)
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision)
    scaler = torch.amp.GradScaler("cpu") if precision == "fp16" else None
    model.train()
    losses = []
    for _ in range(steps):
        with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            out = model(batch)
            loss = compute_losses(out.logits, out.labels, out.pred_masks, batch.masks)["loss"]
        losses.append(float(loss.detach()))
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
    return losses


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp32", "fp16", "bf16"])
def test_fp16_llava_checkpoint_trains_30_steps(llava_fp16, precision):
    torch.manual_seed(0)
    model, tokenizer, processors = build_model(llava_cfg(llava_fp16, precision))
    dtypes = parameter_dtypes(model)
    assert set(dtypes["trainable"]) == {"float32"}  # master weights, whatever the checkpoint holds
    frozen_half = "bfloat16" if precision == "bf16" else "float16"  # fp16 weights under bf16: same size
    lm = {n: p for n, p in model.named_parameters() if n.startswith("language_model.")}
    assert lm["language_model.base_model.model.model.embed_tokens.weight"].dtype == torch.float32
    assert lm["language_model.base_model.model.model.layers.0.mlp.up_proj.weight"].dtype == getattr(torch, frozen_half)
    assert model.vision_tower.get_input_embeddings().weight.dtype == getattr(torch, frozen_half)
    losses = train_loop(model, square_batch(tokenizer, processors), precision)
    print(f"{precision}: losses {[round(v, 3) for v in losses[:3]]} ... {[round(v, 3) for v in losses[-3:]]}")
    assert all(math.isfinite(v) for v in losses), losses
    assert sum(losses[-5:]) / 5 < 0.8 * sum(losses[:5]) / 5, losses
    weights = [p for p in model.parameters() if p.requires_grad]
    assert all(torch.isfinite(p).all() for p in weights)


def test_policy_keeps_frozen_storage_and_makes_trainable_fp32():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2)).half()
    model[0].requires_grad_(False)
    report = apply_dtype_policy(model, "no")
    assert model[0].weight.dtype == torch.float16 and model[1].weight.dtype == torch.float32
    assert report["upcast_trainable"] == 10 and report["dtype_bridges"] == 2
    out = model(torch.randn(3, 4))  # fp32 input -> fp16 layer -> fp32 layer: the input casts bridge them
    assert out.dtype == torch.float32
    converted = torch.nn.Linear(4, 4).half().requires_grad_(False)
    assert apply_dtype_policy(converted, "bf16")["converted_frozen"] == 20
    assert converted.weight.dtype == torch.bfloat16


def test_memory_planner_counts_fp32_master_weights_of_an_fp16_checkpoint():
    from pathlib import Path

    from modlisa.bench import memory_plan
    from modlisa.config import config_from_dict, load_yaml

    repo = Path(__file__).resolve().parents[1]
    cfg = config_from_dict(load_yaml(repo / "configs" / "lisa7b.yaml"))  # llava-1.5-7b-hf: fp16 weights
    plan = memory_plan.estimate(TrainingConfig(**{**cfg.to_dict(), "data_root": "missing"}))
    trainable = plan["trainable_params"]  # LoRA + the whole embedding and LM head (2 x 32064 x 4096) + decoder
    assert trainable > 2 * 32000 * 4096
    gb = 1024**3
    assert plan["terms_gb"]["gradients"] * gb == pytest.approx(4 * trainable)
    assert plan["terms_gb"]["optimizer_states"] * gb == pytest.approx(8 * trainable)
    frozen = plan["params_total"] - trainable
    lm_vision_frozen_bytes = plan["terms_gb"]["weights"] * gb - 4 * trainable
    assert lm_vision_frozen_bytes < 2.6 * frozen  # frozen LLaVA weights stay 16-bit (SAM ViT-H is fp32)
