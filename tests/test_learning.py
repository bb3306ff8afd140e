"""The tiny preset really learns: it overfits 8 synthetic images (val gIoU >= 0.9). No wall-clock assertion:
time belongs in benchmarks (docs/BENCHMARKS.md), never in a test."""

from __future__ import annotations

import logging
import shutil

import pytest

from modlisa.config import TrainingConfig
from modlisa.synthetic import make_dataset

STEPS = 300  # optimizer steps of the grounding test (about a minute on one CPU core)


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


@pytest.mark.slow
def test_tiny_model_follows_its_query(tmp_path):
    """Grounding, not objectness: 10 scenes of 4 distinct-colour shapes, each asked about all 4 shapes (one
    file each), trained with the bag-of-words prompt teacher. Scored with LISA's prompt through ``modlisa
    eval`` on those files: each image's own query must beat another image's query by a clear margin (a
    query-blind model scores the same with both, see test_grounding.py)."""
    import json

    from modlisa.cli import main
    from modlisa.synthetic import SceneOptions

    root = tmp_path / "data"
    options = SceneOptions(min_objects=4, max_objects=4, lookalike_prob=0.0, query_types=("attributes", "property"),
                           targets_per_scene=4)
    make_dataset(root, seed=2, num_train=10, num_val=0, num_test=0, image_size=64, progress=False, options=options)
    shutil.rmtree(root / "val")
    shutil.copytree(root / "train", root / "val")  # the same images asked different questions
    run = tmp_path / "run"
    cfg = TrainingConfig(
        data_root=str(root), output_dir=str(run), model="tiny", img_size=64, sam_image_size=64,
        batch_size=4, num_epochs=1, steps_per_epoch=STEPS, learning_rate=2e-3, warmup_steps=10,
        use_mixed_precision=False, cpu=True, use_lora=False, freeze_image_encoder=False, freeze_sam=False,
        freeze_text_encoder=False, queries_per_image=3, explanatory_prob=0.0, seed=0, bce_loss_weight=0.5,
        dice_loss_weight=2.0, log_every_steps=1000, seg_prompt_teacher_fraction=0.5,
    ).validate()
    from modlisa.engine.train import train

    logging.disable(logging.WARNING)
    try:
        train(cfg)
        assert main(["eval", "--checkpoint", str(run), "--split", "val", "--out", str(tmp_path / "eval")]) == 0
    finally:
        logging.disable(logging.NOTSET)
    result = json.loads((tmp_path / "eval" / "eval_val.json").read_text())
    own, wrong = result["giou"], result["wrong_query_baseline"]["giou"]
    print(f"own-query gIoU {own:.3f}, wrong-query gIoU {wrong:.3f}, grounding {result['grounding']}")
    assert own - wrong >= 0.15, (own, wrong)
    assert not any("do not depend on the query" in w for w in result["warnings"])
