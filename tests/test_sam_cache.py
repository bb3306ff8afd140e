"""Frozen-SAM embedding cache: identical results with and without it, keys that never go stale, disk cache."""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from modlisa.config import TrainingConfig
from modlisa.data.collate import collate_samples
from modlisa.data.dataset import ReasonSegDataset
from modlisa.engine.sam_cache import SamEmbeddingCache, build_sam_cache, encoder_fingerprint
from modlisa.model import backbones
from modlisa.model.factory import build_model
from modlisa.synthetic import make_dataset

_TINY_SAM = backbones.tiny_sam


def informative_tiny_sam(image_size: int):
    """The tiny SAM with its neck convolutions re-drawn (Kaiming): Hugging Face's init leaves them at ~1e-10,
    so the random encoder's embeddings would be ~1e-20 and a cache test would compare zeros."""
    sam = _TINY_SAM(image_size)
    with torch.no_grad():
        for module in sam.vision_encoder.neck.modules():
            if isinstance(module, torch.nn.Conv2d):
                torch.nn.init.kaiming_normal_(module.weight)
    return sam


@pytest.fixture(autouse=True)
def _informative_sam(monkeypatch):
    monkeypatch.setattr(backbones, "tiny_sam", informative_tiny_sam)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synthetic")
    make_dataset(root, seed=0, num_train=6, num_val=3, num_test=1, image_size=64, progress=False)
    return root


def tiny_config(data_root: Path, out: Path, **overrides) -> TrainingConfig:
    cfg = TrainingConfig(
        data_root=str(data_root), output_dir=str(out), model="tiny", img_size=64, sam_image_size=64,
        batch_size=2, num_epochs=2, learning_rate=1e-3, warmup_steps=1, use_mixed_precision=False, cpu=True,
        freeze_image_encoder=False, freeze_sam=True, freeze_text_encoder=False, log_every_steps=1, seed=3,
        queries_per_image=2,
    )
    return replace(cfg, **overrides)


def _model_and_batch(data_root: Path, cfg: TrainingConfig, indices=(0, 1)):
    torch.manual_seed(0)
    model, tokenizer, processors = build_model(cfg)
    ds = ReasonSegDataset(data_root, "train", processors.sam, processors.vision, train=True, seed=0)
    batch = collate_samples([ds[i] for i in indices], tokenizer)
    return model, processors, batch


def test_training_is_identical_with_and_without_cache(data_root, tmp_path):
    from modlisa.engine.train import train

    plain = train(tiny_config(data_root, tmp_path / "plain").validate())
    cached = train(tiny_config(data_root, tmp_path / "cached", sam_cache=True).validate())
    logs = [[json.loads(line) for line in (tmp_path / name / "outputs" / "train_log.jsonl").read_text().splitlines()]
            for name in ("plain", "cached")]
    assert len(logs[0]) == len(logs[1]) == 6
    for a, b in zip(*logs):
        for key in ("loss", "ce", "mask_bce", "mask_dice", "giou", "ciou", "grad_norm"):
            assert a[key] == b[key], key
    wa = load_file(str(tmp_path / "plain" / "checkpoints" / "last" / "model.safetensors"))
    wb = load_file(str(tmp_path / "cached" / "checkpoints" / "last" / "model.safetensors"))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert [e["val"] for e in plain["epochs"]] == [e["val"] for e in cached["epochs"]]


def test_cache_returns_the_encoder_output_and_counts_hits(data_root):
    cfg = tiny_config(data_root, Path("unused"))
    model, processors, batch = _model_and_batch(data_root, cfg, indices=(0, 1, 0))
    cache = SamEmbeddingCache(model, processors.sam)
    first = cache.lookup(model, batch)
    with torch.no_grad():
        direct = model.encode_sam(batch.sam_images)
    assert first.shape == (3, 256, 4, 4)
    assert float(first.abs().mean()) > 1e-4  # real embeddings, not the ~0 of an uninformative encoder
    assert torch.equal(first[0], first[2])  # the repeated image is encoded once
    assert torch.allclose(first, direct, atol=1e-6)
    assert (cache.stats.misses, cache.stats.memory_hits) == (2, 1)
    second = cache.lookup(model, batch)
    assert torch.equal(first, second)
    assert (cache.stats.misses, cache.stats.memory_hits, len(cache)) == (2, 4, 2)
    assert cache.memory_bytes == 2 * 256 * 4 * 4 * 4


def test_changed_image_size_or_weights_never_hit_stale_entries(data_root, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(data_root, root)
    cfg = tiny_config(root, tmp_path)
    model, processors, batch = _model_and_batch(root, cfg)
    cache = SamEmbeddingCache(model, processors.sam)
    cache.lookup(model, batch)
    path = batch.image_paths[0]
    old_key = cache.key(path, "r")
    image = Image.open(path).convert("RGB")
    image.putpixel((0, 0), (255 - image.getpixel((0, 0))[0], 0, 0))
    image.save(path)  # same name, new content
    assert cache.key(path, "r") != old_key
    _, processors_128, _ = _model_and_batch(root, replace(cfg, sam_image_size=128))
    assert SamEmbeddingCache(model, processors_128.sam).key(path, "r") != cache.key(path, "r")
    other, _, _ = _model_and_batch(root, cfg)
    with torch.no_grad():
        other.sam.vision_encoder.patch_embed.projection.weight.add_(1e-3)
    assert encoder_fingerprint(other.sam.vision_encoder) != encoder_fingerprint(model.sam.vision_encoder)
    assert cache.key(path, "dev=cpu|autocast=off") != cache.key(path, "dev=cpu|autocast=torch.bfloat16")


def test_disk_cache_is_reused_and_recovers_from_a_corrupt_entry(data_root, tmp_path, caplog):
    cfg = tiny_config(data_root, tmp_path)
    model, processors, batch = _model_and_batch(data_root, cfg)
    first = SamEmbeddingCache(model, processors.sam, disk_dir=tmp_path / "cache")
    expected = first.lookup(model, batch)
    files = sorted((tmp_path / "cache").rglob("*.safetensors"))
    assert len(files) == 2 and first.stats.disk_writes == 2
    assert not list((tmp_path / "cache").rglob("*.tmp"))  # atomic writes leave no temporary file
    again = SamEmbeddingCache(model, processors.sam, disk_dir=tmp_path / "cache")
    assert torch.equal(again.lookup(model, batch), expected)
    assert (again.stats.disk_hits, again.stats.misses) == (2, 0)
    files[0].write_bytes(b"not a safetensors file")
    third = SamEmbeddingCache(model, processors.sam, disk_dir=tmp_path / "cache")
    with caplog.at_level(logging.WARNING, logger="modlisa.engine.sam_cache"):
        recovered = third.lookup(model, batch)  # one image re-encoded alone: equal up to float rounding
    assert torch.allclose(recovered, expected, rtol=1e-4, atol=1e-4)  # batch of 1 vs 2: matmul rounding
    assert third.stats.misses == 1 and "unreadable entry" in caplog.text
    assert load_file(str(files[0]))["embedding"].shape == (256, 4, 4)  # the entry was rewritten


def test_cache_is_disabled_with_a_reason(data_root, caplog):
    cfg = tiny_config(data_root, Path("unused"), sam_cache=True)
    model, processors, _ = _model_and_batch(data_root, cfg)
    assert isinstance(build_sam_cache(cfg, model, processors), SamEmbeddingCache)
    assert build_sam_cache(replace(cfg, sam_cache=False), model, processors) is None
    with caplog.at_level(logging.WARNING, logger="modlisa.engine.sam_cache"):
        assert build_sam_cache(replace(cfg, freeze_sam=False), model, processors) is None
        assert build_sam_cache(replace(cfg, augment=True), model, processors) is None
    assert "freeze_sam is false" in caplog.text and "augment is on" in caplog.text
    model.sam.vision_encoder.requires_grad_(True)
    with pytest.raises(ValueError, match="frozen SAM image encoder"):
        SamEmbeddingCache(model, processors.sam)


def test_evaluation_with_cache_equals_without(data_root):
    from torch.utils.data import DataLoader

    from modlisa.data.collate import make_collate_fn
    from modlisa.engine.evaluate import evaluate

    cfg = tiny_config(data_root, Path("unused"))
    torch.manual_seed(0)
    model, tokenizer, processors = build_model(cfg)
    val = ReasonSegDataset(data_root, "val", processors.sam, processors.vision, train=False)
    loader = DataLoader(val, batch_size=2, collate_fn=make_collate_fn(tokenizer))
    cache = SamEmbeddingCache(model, processors.sam)
    device = torch.device("cpu")
    plain = evaluate(model, loader, device=device, progress=False)
    cold = evaluate(model, loader, device=device, progress=False, sam_cache=cache)
    warm = evaluate(model, loader, device=device, progress=False, sam_cache=cache)
    assert plain.records == cold.records == warm.records
    assert cache.stats.misses == 3 and cache.stats.memory_hits == 3


def test_sam_cache_dir_config(data_root, tmp_path):
    from modlisa.config import ConfigError

    cfg = tiny_config(data_root, tmp_path, sam_cache=True, sam_cache_dir=str(tmp_path / "disk"))
    model, processors, batch = _model_and_batch(data_root, cfg.validate())
    cache = build_sam_cache(cfg, model, processors)
    cache.lookup(model, batch)
    assert cache.summary()["disk_writes"] == 2 and len(list((tmp_path / "disk").rglob("*.safetensors"))) == 2
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="sam_cache_dir"):
        replace(cfg, sam_cache_dir=str(tmp_path / "file")).validate()
