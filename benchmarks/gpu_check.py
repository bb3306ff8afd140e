"""GPU check: bf16 training steps of two random-weight ModifiedLISA models, in under 8 minutes on one GPU.

(a) "small": Qwen2.5-0.5B-sized LM + CLIP ViT-L/14 (224) + SAM ViT-B (1024); LoRA, [SEG] rows, the SAM
    encoder running every step (no cache);
(b) "7b":    Llama-2-7B-sized LM (LLaVA-1.5-7B) + CLIP ViT-L/14-336 + SAM ViT-H (1024) with the single-GPU
    recipe of configs/single_gpu_24gb.yaml (LoRA, [SEG] rows, gradient checkpointing, SAM cache, bf16;
    frozen weights stored in bf16; 4-bit is left out: random weights cannot go through bitsandbytes loading).

Weights are random (no download): the models are built directly on the GPU from their configs through a
builder registered in the model registry, on synthetic ReasonSeg-format data (1024 px images). Each run is
``modlisa.bench.training_bench.run_bench``: warm-up, synchronised steps, component split, FLOPs
(``torch.utils.flop_counter``), MFU against a bf16 matmul measured in the same process, peak memory
(``torch.cuda.max_memory_allocated``) beside the memory planner's estimate.

    python benchmarks/gpu_check.py [--only small|7b] [--steps 8] [--out gpu_check.json]
    python benchmarks/gpu_check.py --smoke     # toy sizes on CPU (what the test suite runs), ~1 minute

Tokenizer: the byte-level tokenizer (offline), so text spans are ~230 tokens per query instead of ~80.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from transformers import (
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
)

from modlisa.bench import architectures as A
from modlisa.bench.training_bench import BenchOptions, run_bench
from modlisa.config import TrainingConfig, config_from_dict, load_yaml
from modlisa.model.backbones import BACKBONE_BUILDERS, Backbones, VisionProjector, resize_vocabulary
from modlisa.model.tokenizer import build_byte_tokenizer
from modlisa.synthetic import make_dataset
from modlisa.types import CLIP_MEAN, CLIP_STD

logger = logging.getLogger("gpu_check")
REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "configs" / "single_gpu_24gb.yaml"


@dataclass
class Check:
    """One model to run: backbone configs (SAM's at ``sam_image_size``), image sizes and the training flags."""

    name: str
    lm: PretrainedConfig
    vision: PretrainedConfig
    sam: SamConfig
    img_size: int
    sam_image_size: int
    flags: dict[str, Any]


def _checks(smoke: bool) -> list[Check]:
    small_flags = {"use_lora": True, "lora_r": 16, "lora_alpha": 32, "train_embeddings": "seg_row",
                   "freeze_image_encoder": True, "freeze_text_encoder": True, "freeze_sam": True,
                   "gradient_checkpointing": False, "sam_cache": False}
    recipe = {k: v for k, v in load_yaml(RECIPE).items()
              if k not in ("data_root", "output_dir", "model", "llava_model", "sam_model", "sam_cache_dir",
                           "img_size", "sam_image_size", "num_epochs", "steps_per_epoch", "use_quantization")}
    recipe["gradient_accumulation_steps"] = 1
    if smoke:
        lm = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=1024, tie_word_embeddings=False)
        vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                  patch_size=16)
        sam = _sam_at({"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
                       "global_attn_indexes": [1], "mlp_dim": 64, "window_size": 4}, 128)
        return [Check("small", lm, vision, sam, 64, 128, small_flags),
                Check("7b", Qwen2Config(**{**lm.to_dict(), "model_type": "qwen2"}), vision, sam, 64, 128,
                      recipe)]
    # the checkpoints' own configs (local / Hugging Face cache), else the planner's copies of them
    llava = A.checkpoint_config("llava-hf/llava-1.5-7b-hf", "llava_model")
    return [Check("small", A.checkpoint_config("Qwen/Qwen2.5-0.5B", "language_model"),
                  A.checkpoint_config("openai/clip-vit-large-patch14", "vision_model").vision_config,
                  A.checkpoint_config("facebook/sam-vit-base", "sam_model"), 224, 1024, small_flags),
            Check("7b", llava.get_text_config(), llava.vision_config,
                  A.checkpoint_config("facebook/sam-vit-huge", "sam_model"), 336, 1024, recipe)]


def _sam_at(encoder: dict[str, Any], image_size: int) -> SamConfig:
    """SamConfig with the given image-encoder sizes at ``image_size`` (prompt encoder grid to match)."""
    vision = SamVisionConfig(**{**encoder, "image_size": image_size})
    prompt = SamPromptEncoderConfig(image_size=image_size, patch_size=vision.patch_size)
    return SamConfig(vision_config=vision.to_dict(), prompt_encoder_config=prompt.to_dict())


def builder(check: Check, device: torch.device, frozen_dtype: torch.dtype) -> Callable[[TrainingConfig], Backbones]:
    """A backbone builder making random-weight parts on ``device`` (LM, vision in ``frozen_dtype``; SAM fp32)."""

    def build(cfg: TrainingConfig) -> Backbones:
        tokenizer = build_byte_tokenizer()
        start = time.perf_counter()
        with torch.device(device):
            vision = CLIPVisionModel(A.vision_at(check.vision, cfg.img_size))
            language_model = AutoModelForCausalLM.from_config(check.lm, dtype=frozen_dtype)
            sam = SamModel(check.sam)
            projector = VisionProjector(vision.config.hidden_size, check.lm.hidden_size)
        vision.to(frozen_dtype)
        projector.to(frozen_dtype)
        resize_vocabulary(language_model, tokenizer)
        logger.info("%s: built random backbones on %s in %.1f s", check.name, device, time.perf_counter() - start)
        return Backbones(vision, projector, language_model, sam, tokenizer, CLIP_MEAN, CLIP_STD)

    return build


def architecture(check: Check, frozen_dtype: torch.dtype) -> A.Architecture:
    vision = A.vision_at(check.vision, check.img_size)
    return A.Architecture(vision, check.lm, check.sam, {"vision": frozen_dtype, "lm": frozen_dtype,
                                                        "sam": torch.float32}, "byte", True, check.name)


def run_check(check: Check, data_root: Path, device: torch.device, opts: BenchOptions) -> dict[str, Any]:
    """Register the check's builder, benchmark it, and return the figures to print."""
    frozen = torch.bfloat16
    name = f"gpu-check-{check.name}"
    BACKBONE_BUILDERS[name] = builder(check, device, frozen)
    values = {"data_root": str(data_root), "model": "tiny", "img_size": check.img_size,
              "sam_image_size": check.sam_image_size, "batch_size": 2, "queries_per_image": 3,
              "use_mixed_precision": True, "mixed_precision": "bf16", "cpu": device.type == "cpu",
              "num_epochs": 1, "warmup_steps": 2, **check.flags,
              "num_workers": 0 if device.type == "cpu" else check.flags.get("num_workers", 4)}
    cfg = replace(config_from_dict(values), model=name)  # validation knows only the presets: set after it
    try:
        result = run_bench(cfg, opts, arch=architecture(check, frozen))
    finally:
        del BACKBONE_BUILDERS[name]
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return result


def summary_line(name: str, result: dict[str, Any]) -> dict[str, Any]:
    t, plan = result["train"], result["memory_plan"]
    return {"check": name, "samples_per_s": t["samples_per_s"], "step_ms_median": 1000 * t["step_time_s"]["median"],
            "peak_memory_gb": t["memory"]["peak_gb"], "memory_kind": t["memory"]["kind"],
            "planner_estimate_gb": plan["estimate_gb"], "mfu": t.get("mfu"),
            "peak_bf16_tflops": result["peak_matmul"]["flops_per_s"] / 1e12,
            "tflops_per_step": t.get("flops_per_step", 0.0) / 1e12}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="toy sizes on CPU (for the test suite)")
    parser.add_argument("--only", choices=["small", "7b"], default=None)
    parser.add_argument("--steps", type=int, default=None, help="measured steps (default 8; smoke 2)")
    parser.add_argument("--out", default=None, help="JSON with both bench results (default: $OUT/gpu_check.json "
                                                    "when $OUT is set)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if not args.smoke and not torch.cuda.is_available():
        print("gpu_check: no CUDA GPU here; run with --smoke for the CPU toy version", file=sys.stderr)
        return 2
    device = torch.device("cpu" if args.smoke else "cuda")
    steps = args.steps or (2 if args.smoke else 8)
    opts = BenchOptions(warmup_steps=1 if args.smoke else 4, steps=steps, eval_steps=1 if args.smoke else 3,
                        matmul_n=256 if args.smoke else None, saved_activations=args.smoke)
    start = time.perf_counter()
    results, lines = {}, []
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        make_dataset(tmp, seed=0, num_train=8, num_val=2, num_test=1, image_size=128 if args.smoke else 1024,
                     progress=False)
        for check in _checks(args.smoke):
            if args.only and check.name != args.only:
                continue
            results[check.name] = run_check(check, Path(tmp), device, opts)
            lines.append(summary_line(check.name, results[check.name]))
            print(json.dumps(lines[-1]), flush=True)
    print(f"\n{'check':<6} {'samples/s':>10} {'ms/step':>9} {'peak GB':>8} {'plan GB':>8} {'MFU':>7} {'peak TFLOP/s':>13}")
    for line in lines:
        print(f"{line['check']:<6} {line['samples_per_s']:10.2f} {line['step_ms_median']:9.1f} "
              f"{line['peak_memory_gb']:8.2f} {line['planner_estimate_gb']:8.2f} {line['mfu'] or 0:7.3f} "
              f"{line['peak_bf16_tflops']:13.1f}")
    print(f"total {time.perf_counter() - start:.0f} s on {device}")
    out = args.out or (str(Path(os.environ["OUT"]) / "gpu_check.json") if os.environ.get("OUT") else None)
    if out:
        Path(out).write_text(json.dumps({"summary": lines, "results": results}, indent=2, default=str))
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
