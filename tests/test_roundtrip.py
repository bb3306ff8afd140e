"""A tiny run with LoRA (its frozen vision tower, LM and SAM are random) round-trips exactly, and `modlisa eval`
runs in the run's precision.

Before: checkpoints held only the trainable tensors and the frozen random weights were redrawn (unseeded) at
every load, so the same checkpoint evaluated to different gIoUs (3.71 / 3.64 / 3.71); and `modlisa eval` ran
without the bf16 autocast its in-training validation used.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from inference_helpers import make_data
from llava_fixtures import single_thread  # noqa: F401  (fixture)
from modlisa.cli.eval import main as main_eval
from modlisa.config import TrainingConfig
from modlisa.data.collate import collate_samples
from modlisa.data.dataset import ReasonSegDataset
from modlisa.engine.run_eval import run_eval
from modlisa.model.random_init import FROZEN_RANDOM_FILE
from modlisa.weights import export_checkpoint, load_checkpoint

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("single_thread")]
EXPORT_ATOL = 1e-4  # LoRA merging reorders float32 sums (tests/test_io.py)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    return make_data(tmp_path_factory.mktemp("synthetic"))


@pytest.fixture(scope="module")
def run_dir(data_root, tmp_path_factory) -> Path:
    """Tiny preset + LoRA (towers, LM and SAM frozen and random), bf16 autocast, one epoch of 4 steps."""
    from modlisa.engine.train import train

    out = tmp_path_factory.mktemp("run") / "run"
    cfg = TrainingConfig(data_root=str(data_root), output_dir=str(out), model="tiny", img_size=64, sam_image_size=64,
                         batch_size=2, num_epochs=1, learning_rate=1e-3, warmup_steps=2, cpu=True, seed=7,
                         use_mixed_precision=True, mixed_precision="bf16", use_lora=True, queries_per_image=2)
    train(cfg.validate())
    return out


def teacher_masks(model, tokenizer, processors, data_root: Path) -> list[torch.Tensor]:
    """Mask logits of the val split in fp32 (no autocast), one tensor per image."""
    ds = ReasonSegDataset(data_root, "val", processors.sam, processors.vision, train=False)
    with torch.no_grad():
        return [model(collate_samples([ds[i]], tokenizer, conversation=model.conversation)).pred_masks[0]
                for i in range(len(ds))]


def test_checkpoints_reload_the_same_model_whatever_the_rng(run_dir, data_root):
    best = next((run_dir / "checkpoints").glob("best_model_epoch_*.safetensors"))
    assert (run_dir / "checkpoints" / "last" / FROZEN_RANDOM_FILE).is_file()
    torch.manual_seed(123)
    reference = teacher_masks(*load_checkpoint(best)[:3], data_root)
    for source, overrides in ((best, None), (run_dir / "checkpoints" / "last", None), (best, {"seed": 999})):
        torch.manual_seed(len(str(source)))
        model, tokenizer, processors, _ = load_checkpoint(source, overrides)  # seed 999: only the file restores
        again = teacher_masks(model, tokenizer, processors, data_root)
        assert all(torch.equal(a, b) for a, b in zip(again, reference)), (source, overrides)


def test_export_and_eval_give_the_same_predictions(run_dir, data_root, tmp_path):
    best = next((run_dir / "checkpoints").glob("best_model_epoch_*.safetensors"))
    reference = teacher_masks(*load_checkpoint(best)[:3], data_root)
    export_checkpoint(run_dir, tmp_path / "export")
    exported = teacher_masks(*load_checkpoint(tmp_path / "export")[:3], data_root)
    for a, b in zip(exported, reference):
        torch.testing.assert_close(a, b, atol=EXPORT_ATOL, rtol=0)
    evals = []
    for k, checkpoint in enumerate((run_dir, run_dir, tmp_path / "export")):
        torch.manual_seed(k)
        assert main_eval(["--checkpoint", str(checkpoint), "--split", "val", "--out", str(tmp_path / f"e{k}"),
                          "--precision", "fp32", "--data_root", str(data_root)]) == 0
        evals.append([json.loads(line) for line in (tmp_path / f"e{k}" / "predictions_val.jsonl").read_text()
                      .splitlines()])
    assert evals[0] == evals[1]  # the same checkpoint: identical per-query I / U
    for a, b in zip(evals[0], evals[2]):  # the merged export: a pixel at the threshold may flip
        assert abs(a["I"] - b["I"]) <= 1 and abs(a["U"] - b["U"]) <= 1


def test_eval_uses_the_runs_precision_by_default(run_dir, data_root, tmp_path):
    result = run_eval(str(run_dir), str(data_root), "val", str(tmp_path / "run_precision"), batch_size=2)
    record = json.loads(Path(result["eval_json"]).read_text())
    assert (record["precision"], record["precision_source"]) == ("bf16", "run")
    validation = json.loads((run_dir / "outputs" / "metrics_epoch_1.json").read_text())["val"]
    assert record["giou"] == validation["giou"] and record["ciou"] == validation["ciou"]  # same autocast, weights
    flagged = run_eval(str(run_dir), str(data_root), "val", str(tmp_path / "fp32"), batch_size=2, precision="fp32")
    record = json.loads(Path(flagged["eval_json"]).read_text())
    assert (record["precision"], record["precision_source"]) == ("fp32", "flag")
