"""The console and the trackers of a training run: what a user watching it reads.

- piped to a file, `modlisa train` writes plain lines (no progress-bar frames), step lines carry the loss terms,
  gIoU / cIoU, lr, gradient norm, samples/s and the ETA of the run; the epoch blocks name gIoU and cIoU;
- TensorBoard event files and an MLflow file store hold per-step scalars (equal to train_log.jsonl) and the
  validation's mask pictures (read back with tensorboard's and mlflow's own readers).
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from modlisa import console
from modlisa.config import ConfigError, TrainingConfig
from modlisa.synthetic import make_dataset

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synthetic")
    make_dataset(root, seed=0, num_train=8, num_val=3, num_test=2, image_size=64, progress=False)
    return root


def tiny_config(data_root: Path, out: Path, **overrides) -> TrainingConfig:
    cfg = TrainingConfig(
        data_root=str(data_root), output_dir=str(out), model="tiny", img_size=64, sam_image_size=64,
        batch_size=2, num_epochs=2, learning_rate=1e-3, warmup_steps=2, use_mixed_precision=False, cpu=True,
        freeze_image_encoder=False, freeze_sam=False, freeze_text_encoder=False, log_every_steps=1, seed=7,
        queries_per_image=2)
    return replace(cfg, **overrides)


# ---------------------------------------------------------------------- console pieces
def test_durations_and_eta():
    assert console.format_duration(3725.2) == "1:02:05"
    assert console.format_duration(59.4) == "0:00:59"
    assert console.format_duration(float("nan")) == "?" and console.format_duration(-1) == "?"
    # the epoch's first step (loader start-up) is left out once there are others
    assert console.run_eta_seconds([9.0, 1.0, 3.0], steps_left=10) == pytest.approx(20.0)
    assert console.run_eta_seconds([4.0], steps_left=3) == pytest.approx(12.0)
    assert console.run_eta_seconds([1.0, 2.0], steps_left=0) == 0.0


def test_step_line_and_metrics_block_use_one_vocabulary():
    line = console.step_line(epoch=1, num_epochs=8, step=20, steps_per_epoch=94,
                             losses={"loss": 0.8123, "ce": 0.0031, "mask_bce": 0.2011, "mask_dice": 0.6081,
                                     "mask_focal": 0.0},
                             giou=0.4312, ciou=0.4655, lr=9.87e-4, grad_norm=1.234, samples_per_s=12.3,
                             peak_memory_gb=1.21, eta_s=312)
    with_focal = console.step_line(epoch=1, num_epochs=1, step=1, steps_per_epoch=1, losses={"loss": 1.0, "ce": 0.5,
                                   "mask_focal": 0.25}, giou=0, ciou=0, lr=0, grad_norm=0, samples_per_s=0,
                                   peak_memory_gb=0, eta_s=0, terms=("ce", "mask_focal"))
    assert "loss 1.0000 (ce 0.5000 focal 0.2500)" in with_focal
    assert line == ("epoch 1/8 step 20/94 | loss 0.8123 (ce 0.0031 bce 0.2011 dice 0.6081) | gIoU 0.4312 "
                    "cIoU 0.4655 | lr 9.87e-04 | grad-norm 1.234 | 12.30 samples/s | mem 1.21 GB | ETA 0:05:12")
    block = console.metrics_block("val", {"loss": 0.5, "iou": 0.3, "giou": 0.3, "ciou": 0.4, "num_queries": 5})
    assert "gIoU" in block and "cIoU" in block and not re.search(r"(?<![gc])IoU", block)


def test_bars_only_on_a_terminal_and_tqdm_disable_is_honoured(monkeypatch):
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    assert console.bars_enabled(Tty()) and not console.bars_enabled(io.StringIO())
    for value, enabled in (("1", False), ("true", False), ("0", True), ("false", True), ("", True)):
        monkeypatch.setenv("TQDM_DISABLE", value)
        assert console.bars_enabled(Tty()) is enabled, value
    monkeypatch.setenv("TQDM_DISABLE", "1")
    stream = Tty()
    for _ in console.progress(range(3), file=stream, desc="x"):
        pass
    assert stream.getvalue() == ""


def test_unknown_or_unavailable_trackers_are_config_errors(data_root, tmp_path):
    with pytest.raises(ConfigError, match="unknown tracker 'wandb'"):
        tiny_config(data_root, tmp_path / "r", report_to="tensorboard,wandb").validate()
    for value in ("none", "", None):
        tiny_config(data_root, tmp_path / "r", report_to=value).validate()


# ---------------------------------------------------------------------- a real run piped to a file
@pytest.mark.slow
def test_training_piped_to_a_file_writes_plain_step_lines(data_root, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    env.pop("TQDM_DISABLE", None)
    log = tmp_path / "train.log"
    with log.open("w") as handle:
        done = subprocess.run(
            [sys.executable, "-m", "modlisa.cli", "train", "--config", str(REPO / "configs" / "demo.yaml"),
             "--data_root", str(data_root), "--output_dir", str(tmp_path / "run"), "--img_size", "64",
             "--sam_image_size", "64", "--batch_size", "2", "--num_epochs", "2", "--steps_per_epoch", "4",
             "--log_every_steps", "1",
             "--queries_per_image", "2"],
            stdout=handle, stderr=subprocess.STDOUT, env=env, cwd=REPO, timeout=600)
    text = log.read_text()
    assert done.returncode == 0, text[-3000:]
    assert "\r" not in text and "\x1b[" not in text  # no bar frames, no cursor codes
    steps = [line for line in text.splitlines() if line.startswith("epoch ") and " step " in line]
    assert len(steps) == 8  # 8 images / batch 2 = 4 steps per epoch, 2 epochs, every step logged
    for line in steps:
        assert re.search(r"\| lr \d\.\d\de[-+]\d\d \| grad-norm \d+\.\d{3} \| \d+\.\d\d samples/s \|", line), line
        assert re.search(r"gIoU \d\.\d{4} cIoU \d\.\d{4}", line) and re.search(r"ETA \d+:\d\d:\d\d$", line), line
    assert steps[-1].endswith("ETA 0:00:00")
    assert not re.search(r"(?<![gc])IoU", text)  # one vocabulary: gIoU and cIoU only
    logged = [json.loads(x) for x in (tmp_path / "run" / "outputs" / "train_log.jsonl").read_text().splitlines()]
    first = next(r for r in logged if r.get("global_step") == 1 and "lr" in r)
    assert f"lr {first['lr']:.2e}" in steps[0] and f"grad-norm {first['grad_norm']:.3f}" in steps[0]


# ---------------------------------------------------------------------- TensorBoard and MLflow, read back
@pytest.mark.slow
def test_tensorboard_and_mlflow_hold_per_step_scalars_and_mask_pictures(data_root, tmp_path, monkeypatch):
    pytest.importorskip("tensorboard", reason="tensorboard is in the dev extra; install modlisa[dev]")
    pytest.importorskip("mlflow", reason="mlflow-skinny is in the dev extra; install modlisa[dev]")
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from modlisa.engine.train import train

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    run = tmp_path / "run"
    train(tiny_config(data_root, run, report_to="tensorboard,mlflow", num_epochs=1,
                      eval_every_steps=2).validate())
    out = run / "outputs"
    logged = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]
    steps = [r for r in logged if "lr" in r]
    assert [r["global_step"] for r in steps] == [1, 2, 3, 4]

    events = EventAccumulator(str(out / "tensorboard"), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    tags = events.Tags()
    for key in ("loss", "ce", "mask_bce", "mask_dice", "giou", "ciou", "lr", "grad_norm", "samples_per_s",
                "peak_memory_gb"):
        values = {e.step: e.value for e in events.Scalars(f"train/{key}")}
        assert sorted(values) == [1, 2, 3, 4], key
        for r in steps:
            assert values[r["global_step"]] == pytest.approx(r[key], rel=1e-6), key
    assert {e.step for e in events.Scalars("val/giou")} == {2, 4}  # eval_every_steps 2, then the epoch's end (once)
    mask_tags = [t for t in tags["images"] if t.startswith("val/masks/")]
    assert len(mask_tags) == 3  # 3 val images, one query each (TRACKED_MASKS = 4)
    picture = events.Images(mask_tags[0])[0]
    assert max(picture.width, picture.height) == 64 and len(picture.encoded_image_string) > 100  # image size

    client = MlflowClient((out / "mlruns").resolve().as_uri())
    run_id = (out / "mlflow_run_id.txt").read_text().strip()
    history = {m.step: m.value for m in client.get_metric_history(run_id, "train/loss")}
    assert history == pytest.approx({r["global_step"]: r["loss"] for r in steps})
    assert [m.step for m in client.get_metric_history(run_id, "val/ciou")] == [2, 4]
    assert client.get_run(run_id).data.params["model"] == "tiny"
    assert client.get_run(run_id).info.status == "FINISHED"
    images = [f.path for f in client.list_artifacts(run_id, "images")]
    assert sum(p.endswith(".png") for p in images) == 6  # 3 pictures x 2 validations
    png = next(p for p in images if p.endswith(".png") and "val_masks_0+step+2+" in p)
    local = client.download_artifacts(run_id, png, str(tmp_path))
    from PIL import Image

    tb_picture = next(e for e in events.Images("val/masks/0") if e.step == 2)
    from_tb = np.asarray(Image.open(io.BytesIO(tb_picture.encoded_image_string)).convert("RGB"))
    assert from_tb.shape[2] == 3 and max(from_tb.shape[:2]) == 64
    assert np.array_equal(np.asarray(Image.open(local).convert("RGB")), from_tb)  # one picture, both trackers
