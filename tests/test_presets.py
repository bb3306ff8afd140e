"""Presets carry their recipe: ``--model lisa-7b`` alone gives LISA's optimisation settings (docs/LISA.md §6)
unless the YAML or the command line says otherwise, and the run folder records where each value came from.
configs/lisa7b.yaml itself trains a tiny fp16 llava-hf stand-in for 30 finite steps on CPU."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from llava_fixtures import (
    save_tiny_llava,
    single_thread,  # noqa: F401  (fixture)
)
from modlisa.cli.config_args import add_config_arguments, config_and_sources_from_args
from modlisa.config import (
    PRESET_RECIPES,
    SOURCES_FILE,
    TrainingConfig,
    infer_sources,
)

REPO = Path(__file__).resolve().parents[1]
LISA_RECIPE = {"learning_rate": 3e-4, "adam_beta1": 0.9, "adam_beta2": 0.95, "weight_decay": 0.0,
               "warmup_steps": 100, "max_grad_norm": 1.0, "batch_size": 2, "gradient_accumulation_steps": 10,
               "steps_per_epoch": 500, "num_epochs": 10, "use_mixed_precision": True, "mixed_precision": "bf16"}

pytestmark = pytest.mark.usefixtures("single_thread")


def resolve(argv: list[str]):
    parser = argparse.ArgumentParser()
    add_config_arguments(parser)
    return config_and_sources_from_args(parser.parse_args(argv))


def test_model_lisa_7b_alone_gives_lisas_recipe():
    cfg, sources = resolve(["--model", "lisa-7b"])
    for name, value in LISA_RECIPE.items():
        assert getattr(cfg, name) == value, name
        assert sources[name] == "preset", name
    assert sources["model"] == "cli" and sources["seed"] == "default"
    assert set(LISA_RECIPE) <= set(PRESET_RECIPES["lisa-7b"])


def test_explicit_values_win_over_the_recipe(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("model: lisa-7b\nwarmup_steps: 5\nlearning_rate: 0.001\n")
    cfg, sources = resolve(["--config", str(config), "--learning_rate", "1e-4", "--batch_size", "1"])
    assert (cfg.warmup_steps, sources["warmup_steps"]) == (5, "yaml")
    assert (cfg.learning_rate, sources["learning_rate"]) == (1e-4, "cli")
    assert (cfg.batch_size, sources["batch_size"]) == (1, "cli")
    assert (cfg.gradient_accumulation_steps, sources["gradient_accumulation_steps"]) == (10, "preset")
    tiny, tiny_sources = resolve(["--model", "tiny"])  # no recipe: the defaults
    assert tiny.learning_rate == TrainingConfig().learning_rate and tiny_sources["learning_rate"] == "default"


def test_sources_of_a_config_built_in_code():
    sources = infer_sources(TrainingConfig(model="lisa-7b", learning_rate=3e-4, seed=1))
    assert (sources["learning_rate"], sources["seed"], sources["img_size"]) == ("preset", "api", "default")


@pytest.mark.slow
def test_lisa7b_yaml_trains_a_tiny_fp16_llava_30_finite_steps(tmp_path):
    from accelerate.state import AcceleratorState

    from modlisa.cli import main
    from modlisa.model.backbones import tiny_sam
    from modlisa.synthetic import make_dataset

    # A fresh `modlisa train` process starts with no Accelerate state; an earlier in-process run of the suite
    # left one with another mixed precision, which Accelerate refuses to change.
    AcceleratorState._reset_state(reset_partial_state=True)
    llava = save_tiny_llava(tmp_path / "llava", dtype=torch.float16, chat_template=True)  # as llava-hf ships
    torch.manual_seed(0)
    tiny_sam(64).save_pretrained(tmp_path / "sam")
    make_dataset(tmp_path / "data", seed=0, num_train=6, num_val=2, num_test=1, image_size=64, progress=False)
    out = tmp_path / "run"
    code = main(["train", "--config", str(REPO / "configs" / "lisa7b.yaml"), "--llava_model", llava,
                 "--sam_model", str(tmp_path / "sam"), "--img_size", "64", "--sam_image_size", "64",
                 "--data_root", str(tmp_path / "data"), "--dataset", "reason_seg",  # the yaml's mixture: test_mixture
                 "--output_dir", str(out), "--num_epochs", "1",
                 "--steps_per_epoch", "30", "--gradient_accumulation_steps", "1", "--batch_size", "1",
                 "--num_workers", "0", "--log_every_steps", "1", "--cpu", "true"])
    assert code == 0
    summary = json.loads((out / "outputs" / "train_summary.json").read_text())
    assert summary["global_step"] == 30 and summary["skipped_nonfinite_steps"] == 0
    losses = [json.loads(line)["loss"] for line in (out / "outputs" / "train_log.jsonl").read_text().splitlines()
              if "loss" in json.loads(line)]
    assert len(losses) == 30 and all(math.isfinite(v) for v in losses)
    resolved = yaml.safe_load((out / "outputs" / "config.yaml").read_text())
    assert resolved["model"] == "lisa-7b" and resolved["train_embeddings"] == "full" and resolved["lora_r"] == 8
    sources = yaml.safe_load((out / "outputs" / SOURCES_FILE).read_text())
    assert set(sources) == set(resolved) and set(sources.values()) <= {"default", "preset", "yaml", "cli"}
    assert sources["llava_model"] == sources["batch_size"] == "cli"
    assert sources["learning_rate"] == sources["lora_r"] == "yaml"
    assert sources["seed"] == "default"
    weights = load_file(str(out / "checkpoints" / "last" / "model.safetensors"))
    embed = next(v for k, v in weights.items() if k.endswith("embed_tokens.weight"))
    assert embed.dtype == torch.float32 and all(torch.isfinite(v).all() for v in weights.values())
