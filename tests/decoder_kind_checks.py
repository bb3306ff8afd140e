"""Checks every mask-decoder kind (SAM 2: tests/test_sam2.py, SAM-HQ: tests/test_sam_hq.py) passes the same way: the
frozen-SAM cache serves what the encoder gives (memory and disk), training with the cache equals training without,
and a run's checkpoint, its export and a re-save predict the same masks (Predictor included)."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file

from inference_helpers import SEG_ANSWER, scripted_answers
from modlisa.config import TrainingConfig
from modlisa.data.collate import collate_samples
from modlisa.data.dataset import ReasonSegDataset
from modlisa.engine.sam_cache import SamEmbeddingCache
from modlisa.model.lisa import ModifiedLISA
from modlisa.predictor import Predictor
from modlisa.synthetic import make_dataset

ConfigFn = Callable[..., TrainingConfig]  # (data_root, out, **overrides) -> the kind's run config


def decoder_run_cfg(kind: str, size: int, data_root: Path | str, out: Path | str, **overrides) -> TrainingConfig:
    """The tiny preset with a random ``kind`` decoder (``sam_kind``) at ``size`` (vision and SAM input), a short
    CPU run; ``overrides`` replace any field."""
    cfg = TrainingConfig(data_root=str(data_root), output_dir=str(out), model="tiny", sam_kind=kind,
                         img_size=size, sam_image_size=size, batch_size=2, num_epochs=1, learning_rate=1e-3,
                         warmup_steps=1, use_mixed_precision=False, cpu=True, log_every_steps=1, seed=3,
                         queries_per_image=2, use_lora=False)
    return replace(cfg, **overrides)


def make_decoder_data(root: Path, size: int) -> Path:
    """Synthetic ReasonSeg data at ``size``: 4 train, 2 val, 1 test images."""
    make_dataset(root, seed=0, num_train=4, num_val=2, num_test=1, image_size=size, progress=False)
    return root


def build_with_batch(cfg: TrainingConfig) -> tuple[ModifiedLISA, object, object, object]:
    """(model, tokenizer, processors, batch of 2 train images with 2 queries each) of ``cfg``."""
    from modlisa.model.factory import build_model

    torch.set_num_threads(1)
    model, tokenizer, processors = build_model(cfg)
    ds = ReasonSegDataset(cfg.data_root, "train", processors.sam, processors.vision, train=True, seed=0)
    return model, tokenizer, processors, collate_samples([ds[0], ds[1]], tokenizer)


def check_cache_round_trip(model: ModifiedLISA, processors, batch, disk_dir: Path
                           ) -> tuple[tuple[torch.Tensor, ...], int]:
    """The batch's masks from the model's own encoding, from the memory cache and from a second cache reading the
    first one's disk entries are equal; returns the cached features (a tuple) and the memory cache's bytes, for
    the kind's own shape and size checks."""
    model.eval()
    cache = SamEmbeddingCache(model, processors.sam, disk_dir=disk_dir)
    with torch.no_grad():
        cached = cache.lookup(model, batch)
        plain = model(batch).pred_masks
        from_cache = model(batch, sam_embeddings=cached).pred_masks
        again = SamEmbeddingCache(model, processors.sam, disk_dir=disk_dir)
        from_disk = model(batch, sam_embeddings=again.lookup(model, batch)).pred_masks
    assert isinstance(cached, tuple)
    assert (again.stats.disk_hits, again.stats.misses) == (batch.num_images, 0)
    for a, b, c in zip(plain, from_cache, from_disk):
        assert torch.equal(a, b) and torch.equal(a, c)
    return cached, cache.memory_bytes


def check_training_with_cache_equals_without(make_cfg: ConfigFn, data_root: Path, tmp_path: Path,
                                             monkeypatch) -> dict[str, torch.Tensor]:
    """Two 2-step runs, sam_cache off / on (the cached one's batches served by the cache): the same logged losses
    and grad norms, the same weights bit for bit; returns the weights."""
    from modlisa.engine.train import train

    served = []
    lookup = SamEmbeddingCache.lookup
    monkeypatch.setattr(SamEmbeddingCache, "lookup", lambda self, *a, **k: served.append(1) or lookup(self, *a, **k))
    for name, cached in (("plain", False), ("cached", True)):
        train(make_cfg(data_root, tmp_path / name, stop_after_steps=2, max_val_samples=1, sam_cache=cached).validate())
    logs = [[json.loads(line) for line in (tmp_path / name / "outputs" / "train_log.jsonl").read_text().splitlines()]
            for name in ("plain", "cached")]
    assert len(logs[0]) == len(logs[1]) == 2 and len(served) >= 2  # the cached run's batches came from the cache
    for a, b in zip(*logs):
        assert all(a[key] == b[key] for key in ("loss", "ce", "mask_bce", "mask_dice", "grad_norm"))
    weights = [load_file(str(tmp_path / name / "checkpoints" / "last" / "model.safetensors"))
               for name in ("plain", "cached")]
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    return weights[0]


def _teacher_masks(model: ModifiedLISA, batch) -> list[torch.Tensor]:
    model.eval()
    with torch.no_grad():
        return model.predict_teacher_forced(batch).pred_masks


def _predictor_masks(predictor: Predictor, image: np.ndarray) -> list[torch.Tensor]:
    """Generate (scripted to answer [SEG]) and teacher masks of one query, the image encoded once."""
    predictor.set_image(image)
    assert isinstance(predictor._image.sam_embeddings, tuple)
    with scripted_answers(predictor.model, predictor.tokenizer, [SEG_ANSWER]):
        generated = predictor.predict("the red shape", is_sentence=False, mode="generate", max_new_tokens=4)
    assert generated.seg_count == 1
    return [generated.logits, predictor.predict("the red shape", is_sentence=False, mode="teacher").logits]


def check_export_round_trip(make_cfg: ConfigFn, data_root: Path, tmp_path: Path, sam_class: str) -> ModifiedLISA:
    """A 1-step run; its checkpoint, `modlisa export` of it and a save_pretrained of the export give the same
    teacher masks, and a Predictor on the trained and the reloaded model the same generate / teacher masks.
    Returns the exported model (for the kind's own checks)."""
    from modlisa.cli import main
    from modlisa.engine.train import train
    from modlisa.weights import load_checkpoint

    torch.set_num_threads(1)
    run = tmp_path / "run"
    train(make_cfg(data_root, run, stop_after_steps=1, max_val_samples=1).validate())
    trained, tokenizer, processors, _ = load_checkpoint(run)
    assert type(trained.sam).__name__ == sam_class
    ds = ReasonSegDataset(data_root, "val", processors.sam, processors.vision, train=False)
    batch = collate_samples([ds[0], ds[1]], tokenizer)
    expected = _teacher_masks(trained, batch)
    assert main(["export", "--checkpoint", str(run), "--out", str(tmp_path / "export")]) == 0
    exported = ModifiedLISA.from_pretrained(tmp_path / "export")
    assert type(exported.sam).__name__ == sam_class
    saved = ModifiedLISA.from_pretrained(exported.save_pretrained(tmp_path / "again"))
    for model in (exported, saved):
        for a, b in zip(expected, _teacher_masks(model, batch)):
            assert torch.equal(a, b)
    image = np.asarray(Image.open(sorted((data_root / "val").glob("*.jpg"))[0]).convert("RGB"))
    answers = [_predictor_masks(Predictor(trained, tokenizer, processors), image),
               _predictor_masks(Predictor.from_pretrained(tmp_path / "again"), image)]
    assert answers[0][0].shape == (1, *image.shape[:2])
    assert all(torch.equal(a, b) for a, b in zip(*answers))
    return exported
