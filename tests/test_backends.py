"""One gradient-accumulation path (Accelerate's ``accumulate()``) under one process, DDP and DeepSpeed.

The DeepSpeed config is generated from the TrainingConfig: before, Accelerate's DeepSpeed defaults
(``gradient_accumulation_steps: 1`` in configs/accelerate/deepspeed_zero2.yaml) made the engine step every
micro-batch while the loop accumulated by hand, the bug class of LISA #210.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import pytest

from modlisa.config import TrainingConfig
from modlisa.engine.backends import deepspeed_config, deepspeed_plugin

REPO = Path(__file__).resolve().parents[1]
LISA = TrainingConfig(model="lisa-7b", batch_size=2, gradient_accumulation_steps=10, max_grad_norm=1.0,
                      use_mixed_precision=True, mixed_precision="bf16")


def test_deepspeed_config_comes_from_the_training_config(caplog):
    config = deepspeed_config(LISA, world_size=8)
    assert config["train_micro_batch_size_per_gpu"] == 2 and config["gradient_accumulation_steps"] == 10
    assert config["train_batch_size"] == 2 * 10 * 8  # LISA: 2 images x 10 accumulation x 8 GPUs
    assert config["gradient_clipping"] == 1.0 and config["zero_optimization"]["stage"] == 2
    assert config["bf16"] == {"enabled": True} and config["fp16"]["enabled"] is False
    user = {"gradient_accumulation_steps": 1, "zero_optimization": {"stage": 2, "reduce_bucket_size": 5e8},
            "wall_clock_breakdown": False}
    with caplog.at_level(logging.WARNING):
        merged = deepspeed_config(LISA, world_size=8, base=user)
    assert merged["gradient_accumulation_steps"] == 10 and "gradient_accumulation_steps=1 replaced" in caplog.text
    assert merged["zero_optimization"]["reduce_bucket_size"] == 5e8 and merged["wall_clock_breakdown"] is False


def test_deepspeed_plugin_ignores_the_launchers_accumulation(monkeypatch):
    pytest.importorskip("deepspeed", reason="DeepSpeed is in the dev extra; install modlisa[dev]")
    for name, value in {"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "2",
                        "ACCELERATE_GRADIENT_ACCUMULATION_STEPS": "1", "ACCELERATE_GRADIENT_CLIPPING": "1.0",
                        "ACCELERATE_CONFIG_DS_FIELDS": "gradient_accumulation_steps,gradient_clipping,zero_stage",
                        "WORLD_SIZE": "8"}.items():
        monkeypatch.setenv(name, value)
    plugin = deepspeed_plugin(LISA)
    assert plugin.gradient_accumulation_steps == 10 and plugin.deepspeed_config["gradient_accumulation_steps"] == 10
    assert plugin.deepspeed_config["train_batch_size"] == 160 and plugin.zero_stage == 2
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "false")
    assert deepspeed_plugin(LISA) is None


def test_one_process_counts_micro_batches_and_optimizer_updates(tmp_path):
    from modlisa.engine.train import train
    from modlisa.synthetic import make_dataset

    make_dataset(tmp_path / "data", seed=0, num_train=8, num_val=2, num_test=1, image_size=64, progress=False)
    cfg = TrainingConfig(data_root=str(tmp_path / "data"), output_dir=str(tmp_path / "run"), model="tiny",
                         img_size=64, sam_image_size=64, batch_size=1, gradient_accumulation_steps=3,
                         steps_per_epoch=2, num_epochs=1, learning_rate=1e-3, warmup_steps=1, cpu=True,
                         use_mixed_precision=False, log_every_steps=1, queries_per_image=2, explanatory_prob=0.0)
    summary = train(cfg.validate())
    assert summary["gradient_accumulation_steps"] == 3
    assert summary["global_step"] == summary["optimizer_updates"] == 2  # AdamW stepped once per 3 micro-batches
    record = json.loads((tmp_path / "run" / "outputs" / "metrics_epoch_1.json").read_text())
    assert record["train"]["num_queries"] == 2 * 3 * 1 * 2  # steps x accumulation x batch x queries
    log = [json.loads(line) for line in (tmp_path / "run" / "outputs" / "train_log.jsonl").read_text().splitlines()]
    assert [r["global_step"] for r in log] == [1, 2]


@pytest.mark.slow
def test_deepspeed_two_ranks_accumulate_like_one_process(tmp_path):
    """2 DeepSpeed ranks x 2 micro-batches = 1 process x 4 micro-batches (the same 4 images per step)."""
    pytest.importorskip("deepspeed", reason="DeepSpeed is in the dev extra; install modlisa[dev]")
    sys.path.insert(0, str(REPO / "benchmarks"))
    import backends_check

    config = backends_check.write_config(tmp_path)
    single = backends_check.run_backend("single", config, tmp_path, timeout=600)
    deep = backends_check.run_backend("deepspeed", config, tmp_path, timeout=600)
    assert "error" not in single and "error" not in deep, (single.get("error"), deep.get("error"))
    assert deep["distributed_type"] == "DEEPSPEED" and deep["num_processes"] == 2 and len(deep["checksums"]) == 2
    steps = backends_check.STEPS_PER_EPOCH * backends_check.EPOCHS
    assert deep["optimizer_steps"] == deep["optimizer_updates"] == single["optimizer_updates"] == steps
    assert deep["gradient_accumulation_steps"] == 2 and single["gradient_accumulation_steps"] == 4
    assert deep["lr"] == single["lr"]
    # the gradient before clipping: the loss is scaled once by 1/accumulation (AdamW + clipping would hide a
    # wrong scale in the weights, not here); steps 1-3, before float differences compound
    assert deep["grad_norm"][:3] == pytest.approx(single["grad_norm"][:3], rel=1e-3)
    assert deep["checksums"][0] == deep["checksums"][1]
    assert deep["epoch_train_loss"] == pytest.approx(single["epoch_train_loss"], abs=2e-3)
    assert deep["checksums"][0] == pytest.approx(single["checksums"][0], rel=1e-4)


def test_backend_table_lists_every_run():
    sys.path.insert(0, str(REPO / "benchmarks"))
    import backends_check

    records = [{"backend": "single", "distributed_type": "NO", "num_processes": 1, "gradient_accumulation_steps": 4,
                "optimizer_steps": 6, "optimizer_updates": 6, "lr": [1e-3], "grad_norm": [2.0],
                "epoch_train_loss": [7.0, 6.0],
                "checksums": [1.0]},
               {"backend": "fsdp", "error": "launched with fsdp but Accelerate set up MULTI_CPU"}]
    backends_check.compare(records)
    table = backends_check.markdown(records)
    assert "| single | NO | 1 x 1 x 4 | 6 / 6 |" in table and "| fsdp | did not run |" in table
