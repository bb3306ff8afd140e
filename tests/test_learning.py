"""The tiny preset really learns: it overfits 8 synthetic images (val gIoU >= 0.9). No wall-clock assertion:
time belongs in benchmarks (docs/BENCHMARKS.md), never in a test."""

from __future__ import annotations

import logging
import shutil

import pytest

from modlisa.config import TrainingConfig
from modlisa.data.synthetic import make_dataset


@pytest.mark.slow
def test_tiny_overfits_eight_samples(tmp_path):
    root = tmp_path / "data"
    make_dataset(root, seed=1, num_train=8, num_val=0, num_test=0, image_size=64, progress=False)
    shutil.rmtree(root / "val")
    shutil.copytree(root / "train", root / "val")  # evaluate (LISA protocol) on the 8 training images
    cfg = TrainingConfig(
        data_root=str(root), output_dir=str(tmp_path / "run"), model="tiny", img_size=64, sam_image_size=64,
        batch_size=8, num_epochs=70, steps_per_epoch=1, learning_rate=1e-3, warmup_steps=5,
        use_mixed_precision=False, cpu=True, freeze_image_encoder=False, freeze_sam=False,
        freeze_text_encoder=False, queries_per_image=1, explanatory_prob=0.0, seed=0,
        bce_loss_weight=0.5, dice_loss_weight=2.0, log_every_steps=1000,
    ).validate()
    from modlisa.engine.train import train

    logging.disable(logging.WARNING)
    try:
        summary = train(cfg)
    finally:
        logging.disable(logging.NOTSET)
    gious = [e["val"]["giou"] for e in summary["epochs"]]
    print(f"val gIoU every 10 steps: {[round(g, 3) for g in gious[9::10]]}")
    assert gious[0] < 0.2  # it starts knowing nothing
    assert summary["best_val_giou"] >= 0.9, gious[-10:]
