"""TrainingConfig: YAML + CLI loading, type coercion, validation messages, CLI exit codes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from modlisa.config import ConfigError, TrainingConfig, config_from_dict, load_yaml

REPO = Path(__file__).resolve().parents[1]


def test_seed_field_names_and_defaults():
    cfg = TrainingConfig()
    assert (cfg.num_epochs, cfg.batch_size, cfg.learning_rate, cfg.img_size) == (10, 2, 1e-4, 224)
    assert (cfg.lora_r, cfg.lora_alpha, cfg.use_lora, cfg.use_quantization) == (16, 32, True, False)
    assert cfg.use_mixed_precision is True and cfg.mixed_precision in ("fp16", "bf16")
    for name in ("data_root", "gradient_accumulation_steps", "freeze_image_encoder", "freeze_text_encoder",
                 "freeze_sam"):
        assert hasattr(cfg, name)


def test_coercion_from_strings():
    cfg = config_from_dict({"batch_size": "3", "use_lora": "false", "learning_rate": "3e-4",
                            "lora_target_modules": "q_proj,k_proj", "steps_per_epoch": "none"})
    assert cfg.batch_size == 3 and cfg.use_lora is False and cfg.learning_rate == 3e-4
    assert cfg.lora_target_modules == ["q_proj", "k_proj"] and cfg.steps_per_epoch is None


@pytest.mark.parametrize(
    ("values", "needle"),
    [
        ({"bogus_field": 1}, "unknown field(s) bogus_field"),
        ({"batch_size": "two"}, "batch_size must be of type int"),
        ({"use_lora": "maybe"}, "use_lora must be of type bool"),
        ({"batch_size": 2.5}, "batch_size must be of type int"),
    ],
)
def test_bad_values_name_the_field(values, needle):
    with pytest.raises(ConfigError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        config_from_dict(values)


@pytest.mark.parametrize(
    ("values", "needle"),
    [
        ({"learning_rate": -1e-4}, "learning_rate must be > 0"),
        ({"batch_size": 0}, "batch_size must be > 0"),
        ({"mixed_precision": "fp16"}, "mixed_precision=fp16 needs a CUDA GPU"),
        ({"use_quantization": True, "freeze_text_encoder": False}, "a quantised LM's base weights cannot train"),
        ({"model": "gpt5"}, "model must be one of"),
        ({"train_embeddings": "all"}, "train_embeddings must be one of"),
        ({"model": "composite"}, "model=composite needs vision_model"),
        ({"explanatory_prob": 2.0}, "explanatory_prob must be in"),
        ({"data_root": "/nonexistent/folder"}, "data_root '/nonexistent/folder' is not a folder"),
    ],
)
def test_validation_messages(values, needle, tmp_path):
    values = {"data_root": str(tmp_path), **values}
    cfg = config_from_dict(values)
    with pytest.raises(ConfigError, match=needle):
        cfg.validate(cuda_available=False)


def test_shipped_configs_load_and_validate():
    for path in sorted((REPO / "configs").glob("*.yaml")):
        cfg = config_from_dict(load_yaml(path), source=str(path))
        cfg.validate(check_paths=False, cuda_available=True)


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "modlisa.cli", *args], capture_output=True, text=True,
                          env=env, cwd=REPO, timeout=120)


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--bogus", "1"], "unknown option --bogus; see `modlisa train --help`"),
        (["--lerning_rate", "1e-3"], "unknown option --lerning_rate (did you mean --learning_rate?)"),
        (["--learning_rate", "-1"], "learning_rate must be > 0"),
        (["--data_root", "/nonexistent/x"], "data_root '/nonexistent/x' is not a folder"),
        (["--mixed_precision", "fp16", "--cpu", "true"], "mixed_precision=fp16 needs a CUDA GPU"),
        (["--config", "/nonexistent.yaml"], "config file /nonexistent.yaml does not exist"),
    ],
)
def test_cli_wrong_config_one_line_exit_2(args, needle, tmp_path):
    base = ["train", "--data_root", str(tmp_path)] if "--data_root" not in args else ["train"]
    result = _cli(*base, *args)
    assert result.returncode == 2, result.stderr
    assert needle in result.stderr
    assert "Traceback" not in result.stderr
    error_lines = [line for line in result.stderr.splitlines() if "error" in line]
    assert len(error_lines) == 1, result.stderr
