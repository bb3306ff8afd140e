"""Numerical faults (issue 7.3): a non-finite loss or gradient skips the optimizer step, is counted and logged;
``max_nonfinite_steps`` in a row stop the run naming the step and keeping the last good checkpoint (exit 3
from the CLI); fp16 loss-scale overflows are reported, not hidden."""

from __future__ import annotations

import json
import logging
import math
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from accelerate.utils import DistributedType
from safetensors.torch import load_file

import modlisa.engine.task as task_module
from modlisa.cli import main
from modlisa.config import TrainingConfig
from modlisa.engine import checkpoint as ckpt
from modlisa.engine.run_folder import RunFolder
from modlisa.engine.train import Trainer, TrainingStopped, all_ranks_finite, train
from modlisa.synthetic import make_dataset


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    make_dataset(root, seed=0, num_train=8, num_val=2, num_test=1, image_size=64, progress=False)
    return root


def tiny_config(data_root: Path, out: Path, **overrides) -> TrainingConfig:
    cfg = TrainingConfig(
        data_root=str(data_root), output_dir=str(out), model="tiny", img_size=32, sam_image_size=32,
        batch_size=2, num_epochs=1, learning_rate=1e-3, warmup_steps=1, use_mixed_precision=False, cpu=True,
        log_every_steps=1, seed=5, queries_per_image=1, max_nonfinite_steps=3,
    )
    return replace(cfg, **overrides).validate()


def poison(monkeypatch, faults: dict[int, str]) -> None:
    """Make micro-batch n (1-based) produce a fault: "nan" (every loss term NaN: NaN gradients) or "inf"
    (total loss +inf, gradients finite). ``faults[0]`` applies to every call from ``min(faults)`` on."""
    real = task_module.compute_losses
    calls = [0]

    def compute_losses(*args, **kwargs):
        calls[0] += 1
        losses = real(*args, **kwargs)
        fault = faults.get(calls[0]) or (faults.get(0) if calls[0] >= min(k for k in faults if k) else None)
        if fault == "nan":
            return {k: v * float("nan") for k, v in losses.items()}
        if fault == "inf":
            return {**losses, "loss": losses["loss"] + float("inf")}
        return losses

    monkeypatch.setattr(task_module, "compute_losses", compute_losses)


def last_weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "checkpoints" / "last" / "model.safetensors"))


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_nonfinite_steps_are_skipped_counted_and_logged(data_root, tmp_path, monkeypatch, caplog):
    train(tiny_config(data_root, tmp_path / "clean", stop_after_steps=1))
    poison(monkeypatch, {2: "nan", 3: "inf"})
    with caplog.at_level(logging.WARNING, logger="modlisa.engine.train"):
        summary = train(tiny_config(data_root, tmp_path / "faulty"))  # 4 steps, steps 2 and 3 skipped
    assert summary["skipped_nonfinite_steps"] == 2 and summary["stopped_early"] is False
    assert "step 2: non-finite loss; optimizer step skipped (1 in a row" in caplog.text
    assert "step 3: non-finite loss; optimizer step skipped (2 in a row" in caplog.text
    record = json.loads((tmp_path / "faulty" / "outputs" / "metrics_epoch_1.json").read_text())
    assert record["skipped_nonfinite_steps"] == 2
    assert math.isfinite(record["train"]["loss"]) and math.isfinite(record["train"]["giou"])
    logged = [json.loads(line) for line in (tmp_path / "faulty" / "outputs" / "train_log.jsonl").open()]
    assert all(math.isfinite(r["loss"]) for r in logged if "loss" in r)


def test_skipped_steps_leave_the_weights_untouched(data_root, tmp_path, monkeypatch):
    train(tiny_config(data_root, tmp_path / "clean", stop_after_steps=1))
    poison(monkeypatch, {2: "nan", 3: "inf"})
    train(tiny_config(data_root, tmp_path / "faulty", stop_after_steps=3))
    assert_same(last_weights(tmp_path / "clean"), last_weights(tmp_path / "faulty"))


def test_k_in_a_row_stop_the_run_naming_the_step_and_keeping_the_last_good_checkpoint(data_root, tmp_path,
                                                                                      monkeypatch):
    train(tiny_config(data_root, tmp_path / "clean", num_epochs=2, stop_after_steps=2))  # same LR schedule
    poison(monkeypatch, {3: "nan", 0: "nan"})
    run = tmp_path / "faulty"
    with pytest.raises(TrainingStopped) as info:
        train(tiny_config(data_root, run, num_epochs=2, max_nonfinite_steps=2, save_every_steps=1))
    message = str(info.value)
    assert message.startswith("stopped at step 4 (epoch 1): 2 consecutive optimizer steps")
    assert f"last good checkpoint kept: {run / 'checkpoints' / 'last'}" in message
    state = ckpt.read_trainer_state(run / "checkpoints" / "last")
    assert state.global_step == 3 and state.skipped_nonfinite_steps == 1  # saved after skipped step 3
    weights = last_weights(run)
    assert all(torch.isfinite(w).all() for w in weights.values())
    assert_same(last_weights(tmp_path / "clean"), weights)  # = the weights after step 2
    summary = json.loads((run / "outputs" / "train_summary.json").read_text())
    assert summary["stopped_early"] is True and summary["stop_reason"] == message
    assert summary["skipped_nonfinite_steps"] == 2


def test_cli_reports_the_stop_in_one_line_with_exit_code_3(data_root, tmp_path, monkeypatch, capsys):
    poison(monkeypatch, {1: "nan", 0: "nan"})
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(tiny_config(data_root, tmp_path / "run", max_nonfinite_steps=1).to_dict()))
    code = main(["train", "--config", str(config)])
    _, err = capsys.readouterr()
    assert code == 3 and "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("modlisa train:")]
    assert lines == [line for line in lines if "stopped at step 1" in line] and len(lines) == 1
    assert "no checkpoint had been written yet" in lines[0]


# ---------------------------------------------------------------------- fp16 (Accelerate's scaler path)
class Fp16Accelerator:
    """Accelerate's native-fp16 behaviour that ``Trainer.optimizer_step`` relies on, run on CPU with a real
    ``GradScaler``: clipping unscales the gradients; the optimizer step goes through the scaler, which
    skips it (and halves the scale) when they are not finite."""

    num_processes = 1
    device = torch.device("cpu")
    distributed_type = DistributedType.NO

    def __init__(self, optimizer: torch.optim.Optimizer, init_scale: float) -> None:
        self.scaler = torch.amp.GradScaler("cpu", init_scale=init_scale)
        self.inner = optimizer
        self.optimizer_step_was_skipped = False

    def backward(self, loss: torch.Tensor) -> None:
        self.scaler.scale(loss).backward()

    def clip_grad_norm_(self, params, max_norm: float) -> torch.Tensor:
        self.scaler.unscale_(self.inner)
        return torch.nn.utils.clip_grad_norm_(params, max_norm)


class ScaledOptimizer:
    def __init__(self, accelerator: Fp16Accelerator) -> None:
        self.accelerator = accelerator

    def step(self) -> None:
        before = self.accelerator.scaler.get_scale()
        self.accelerator.scaler.step(self.accelerator.inner)
        self.accelerator.scaler.update()
        self.accelerator.optimizer_step_was_skipped = self.accelerator.scaler.get_scale() < before

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.accelerator.inner.zero_grad(set_to_none=set_to_none)


def fp16_parts(tmp_path: Path, init_scale: float) -> tuple[Trainer, torch.nn.Parameter]:
    weight = torch.nn.Parameter(torch.ones(3))
    inner = torch.optim.SGD([weight], lr=0.1)
    accelerator = Fp16Accelerator(inner, init_scale)
    params = torch.nn.ParameterList([weight])
    c = SimpleNamespace(accelerator=accelerator, unwrapped=params, model=params, prompt_teacher=None,
                        optimizer=ScaledOptimizer(accelerator), paths=RunFolder(tmp_path), loss_weights=None,
                        sam_cache=None, scheduler=torch.optim.lr_scheduler.LambdaLR(inner, lambda step: 1.0))
    cfg = TrainingConfig(use_mixed_precision=True, mixed_precision="fp16", max_nonfinite_steps=2)
    return Trainer(cfg, c), weight


def overflowing_backward(trainer: Trainer, weight: torch.Tensor) -> None:
    """A finite loss (0) whose gradient is infinite: sqrt'(0)."""
    trainer.accelerator.backward(torch.sqrt(weight - weight.detach()).sum())


def test_fp16_overflow_is_reported_and_counted_not_hidden(tmp_path, caplog):
    trainer, weight = fp16_parts(tmp_path, init_scale=2.0**16)
    state = trainer.state
    for _ in range(3):  # healthy fp16 runs overflow now and then: never a stop while the scale is >= 1
        overflowing_backward(trainer, weight)
        with caplog.at_level(logging.WARNING, logger="modlisa.engine.train"):
            _, skipped = trainer.optimizer_step()
        assert skipped
    assert torch.equal(weight.detach(), torch.ones(3))
    assert state.fp16_overflow_steps == 3 and state.skipped_nonfinite_steps == 3 and trainer.guard.streak == 0
    assert "step 1: fp16 loss-scale overflow" in caplog.text and "loss scale now 32768.0" in caplog.text
    assert "loss scale now 8192.0 (3 overflow steps in this run)" in caplog.text
    trainer.accelerator.backward((weight * 2).sum())
    _, skipped = trainer.optimizer_step()
    assert not skipped and not torch.equal(weight.detach(), torch.ones(3))


def test_fp16_overflow_below_scale_one_counts_towards_the_stop(tmp_path):
    trainer, weight = fp16_parts(tmp_path, init_scale=0.5)
    overflowing_backward(trainer, weight)
    trainer.optimizer_step()
    assert trainer.guard.streak == 1
    overflowing_backward(trainer, weight)
    with pytest.raises(TrainingStopped, match=r"stopped at step 2 .*fp16 gradients overflow at loss scale 0.125"):
        trainer.optimizer_step()


def test_fp16_nonfinite_loss_is_skipped_and_the_scaler_keeps_working(tmp_path):
    trainer, weight = fp16_parts(tmp_path, init_scale=2.0**10)
    state = trainer.state
    trainer.accelerator.backward((weight * float("inf")).sum())
    _, skipped = trainer.optimizer_step(loss_finite=False)
    assert skipped and trainer.guard.streak == 1 and state.fp16_overflow_steps == 0
    trainer.accelerator.backward((weight * 2).sum())  # the scaler's unscale_ of the skipped step was closed
    _, skipped = trainer.optimizer_step()
    assert not skipped and trainer.guard.streak == 0 and not torch.equal(weight.detach(), torch.ones(3))


def test_ranks_agree_on_a_nonfinite_loss():
    class TwoRanks:
        num_processes, device = 2, torch.device("cpu")

        def __init__(self, other_rank_bad: bool) -> None:
            self.other = 1.0 if other_rank_bad else 0.0

        def reduce(self, tensor: torch.Tensor, reduction: str) -> torch.Tensor:
            assert reduction == "sum"
            return tensor + self.other

    assert all_ranks_finite(TwoRanks(False), True) is True
    assert all_ranks_finite(TwoRanks(True), True) is False
    assert all_ranks_finite(TwoRanks(False), False) is False
