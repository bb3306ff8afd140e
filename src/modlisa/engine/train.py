"""The Accelerate training loop: build, (resume), train epochs, validate, checkpoint, write the run folder.

Reads like a table of contents: ``train(cfg)`` -> ``build_run`` (model, data, optimizer: ``RunParts``) ->
``Trainer.fit`` -> per epoch ``train_epoch`` (``train_step`` = micro-batches through the shared
``engine.task.SegmentationTask`` + ``optimizer_step``) -> ``end_epoch`` (validation, metrics JSON, best and
last checkpoints).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator

from modlisa import console
from modlisa.atomic import append_line, atomic_write_text
from modlisa.config import TrainingConfig
from modlisa.data.dataset import check_training_data
from modlisa.engine import checkpoint as ckpt
from modlisa.engine.backends import (
    clip_parameters,
    make_accelerator,
    needs_every_gradient,
    zero_touch,
)
from modlisa.engine.build import RunParts, build_run
from modlisa.engine.dataset_figures import batch_sums, step_line_counts, summarise, zero_sums
from modlisa.engine.evaluate import evaluate
from modlisa.engine.meters import ThroughputMeter, peak_memory
from modlisa.engine.resume import ResumePlan, plan_resume, resume
from modlisa.engine.run_folder import hold_run_folder
from modlisa.engine.run_summary import write_summary
from modlisa.engine.task import PromptTeacher, SegmentationTask, update_iou
from modlisa.engine.tracking import TRACKED_MASKS, Trackers, mask_picture
from modlisa.metrics import IoUAccumulator
from modlisa.types import Batch
from modlisa.weights import save_best

logger = logging.getLogger(__name__)


class TrainingStopped(RuntimeError):
    """Raised when ``max_nonfinite_steps`` consecutive optimizer steps had a non-finite loss or gradient.

    The message names the step and the last good checkpoint (``checkpoints/last``, untouched by the bad
    steps); ``modlisa train`` prints it and exits with code 3.
    """


class Preemption:
    """While entered, SIGTERM (cluster preemption, `kill`) asks the loop to save ``checkpoints/last`` and stop
    at the next optimizer step instead of dying mid-epoch; the run resumes exactly with
    ``--resume_from_checkpoint latest``. The previous handler is restored on exit."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None

    def __enter__(self) -> Preemption:
        import signal
        import threading

        self.requested = False
        if threading.current_thread() is threading.main_thread():  # signals can only be set there
            self._previous = signal.signal(signal.SIGTERM, self._handler)
        return self

    def __exit__(self, *exc: Any) -> None:
        import signal

        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None

    def _handler(self, signum: int, frame: Any) -> None:
        self.requested = True
        logger.warning("SIGTERM received: saving checkpoints/last at the end of this optimizer step, then stopping")

    def on_any_rank(self, accelerator: Accelerator) -> bool:
        """True on every rank when any rank received SIGTERM (one small all-reduce per step when distributed)."""
        if accelerator.num_processes == 1:
            return self.requested
        flag = torch.tensor([1.0 if self.requested else 0.0], device=accelerator.device)
        return bool(accelerator.reduce(flag, reduction="sum").item() > 0)


def all_ranks_finite(accelerator: Any, finite: bool) -> bool:
    """True when ``finite`` holds on every rank (one tiny all-reduce in multi-process runs)."""
    if accelerator.num_processes == 1:
        return finite
    flag = torch.tensor([0.0 if finite else 1.0], device=accelerator.device)
    return float(accelerator.reduce(flag, reduction="sum").item()) == 0.0


class NonFiniteGuard:
    """Counts consecutive skipped (non-finite) optimizer steps; ``max_steps`` in a row raise TrainingStopped
    naming the step and the last good checkpoint under ``checkpoints``."""

    def __init__(self, max_steps: int, checkpoints: Path) -> None:
        self.max_steps, self.checkpoints, self.streak = max_steps, checkpoints, 0

    def healthy(self) -> None:
        """An optimizer step was applied: the streak ends."""
        self.streak = 0

    def skipped(self, state: ckpt.TrainerState, reason: str) -> None:
        """Count and log one skipped step (the next is ``state.global_step + 1``); stop after ``max_steps``."""
        step = state.global_step + 1
        self.streak += 1
        logger.warning("step %d: %s; optimizer step skipped (%d in a row, %d skipped in this run, stop at %d)",
                       step, reason, self.streak, state.skipped_nonfinite_steps, self.max_steps)
        if self.streak >= self.max_steps:
            good = ckpt.last_good_checkpoint(self.checkpoints)
            kept = f"last good checkpoint kept: {good}" if good else "no checkpoint had been written yet"
            raise TrainingStopped(
                f"stopped at step {step} (epoch {state.epoch + 1}): {self.streak} consecutive optimizer steps with "
                f"a non-finite loss or gradient (max_nonfinite_steps={self.max_steps}; last: {reason}); {kept}. "
                "Lower learning_rate or max_grad_norm, use bf16 or fp32, check the data, then resume with "
                "--resume_from_checkpoint latest."
            )


@dataclass
class EpochStats:
    """Running sums of one epoch's training figures (saved inside mid-epoch checkpoints)."""

    loss_sum: float = 0.0
    terms: dict[str, float] = field(default_factory=dict)
    micro_batches: int = 0
    datasets: dict[str, float] = field(default_factory=dict)  # a mixture's per-dataset sums (dataset_figures.py)

    def add(self, losses: dict[str, torch.Tensor]) -> None:
        self.loss_sum += float(losses["loss"].detach())
        for k, v in losses.items():
            if k != "loss":
                self.terms[k] = self.terms.get(k, 0.0) + float(v.detach())
        self.micro_batches += 1

    def add_datasets(self, sums: dict[str, float]) -> None:
        for k, v in sums.items():
            self.datasets[k] = self.datasets.get(k, 0.0) + v

    def copy(self) -> EpochStats:
        return EpochStats(self.loss_sum, dict(self.terms), self.micro_batches, dict(self.datasets))

    def finite(self) -> bool:
        return math.isfinite(self.loss_sum) and all(math.isfinite(v) for v in self.terms.values())

    def means(self) -> dict[str, float]:
        """"loss" and every term, averaged over the micro-batches."""
        n = max(1, self.micro_batches)
        return {"loss": self.loss_sum / n, **{k: v / n for k, v in self.terms.items()}}


@dataclass
class StepRecord:
    """One optimizer step: its host micro-batches, images and queries, gradient norm, whether it was skipped."""

    batches: list[Batch] = field(default_factory=list)
    images: int = 0
    queries: int = 0
    grad_norm: float = float("nan")
    skipped: bool = False


class NullTimer:
    """The default step timer: regions cost nothing (``modlisa bench`` injects a ``ComponentTimer``)."""

    def region(self, name: str) -> AbstractContextManager[Any]:
        return contextlib.nullcontext()


# ---------------------------------------------------------------------- the trainer
class Trainer:
    """Owns a run's loop state: where training stands (``state``), the epoch's running figures, the non-finite
    guard and preemption. ``fit`` -> ``train_epoch`` -> ``train_step`` (micro-batches + ``optimizer_step``)
    -> ``end_epoch``; ``modlisa bench`` times ``train_step`` through ``timer``."""

    def __init__(self, cfg: TrainingConfig, parts: RunParts, state: ckpt.TrainerState | None = None) -> None:
        self.cfg, self.parts = cfg, parts
        self.accelerator = parts.accelerator
        self.state = state or ckpt.TrainerState()
        self.guard = NonFiniteGuard(cfg.max_nonfinite_steps, parts.paths.checkpoints)
        self.preemption = Preemption()
        self.timer: Any = NullTimer()
        self.stats = EpochStats()
        self.acc = IoUAccumulator(subsets=("short", "long"))
        # a mixture's datasets: per-dataset counts and losses are kept for them (none for ReasonSeg alone)
        names = getattr(getattr(parts, "train_set", None), "dataset_names", None)
        self.dataset_names: list[str] = list(names()) if callable(names) else []
        self.trackers = Trackers(None, parts.paths.outputs, {})  # opened by ``fit`` (``report_to``)
        teacher = None
        if parts.prompt_teacher is not None:
            teacher = PromptTeacher(parts.prompt_teacher, parts.tokenizer, cfg.seg_prompt_teacher_fraction,
                                    cfg.seg_prompt_distill_weight, parts.total_steps)
        self.task = SegmentationTask(parts.model, parts.unwrapped, parts.loss_weights, sam_cache=parts.sam_cache,
                                     teacher=teacher, autocast=getattr(self.accelerator, "autocast", None))

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    # ------------------------------------------------------------------ the run
    def fit(self, partial: dict | None = None) -> dict[str, Any]:
        """Train the remaining epochs; returns the run's summary (also written to ``train_summary.json``)."""
        cfg, records, stopped = self.cfg, [], False
        if cfg.report_to and self.is_main:
            flat = {k: v for k, v in cfg.to_dict().items() if isinstance(v, (int, float, str, bool))}
            self.trackers = Trackers(cfg.report_to, self.parts.paths.outputs, flat)
        with self.preemption, contextlib.closing(self.trackers):
            try:
                while self.state.epoch < cfg.num_epochs:
                    train_metrics = self.train_epoch(partial)
                    partial = None
                    if train_metrics is None:
                        stopped = True
                        break
                    records.append(self.end_epoch(train_metrics))
            except TrainingStopped as stop:
                write_summary(self.parts, self.state, records, True, str(stop))
                raise
        reason = ("sigterm" if self.preemption.requested else "stop_after_steps") if stopped else None
        return write_summary(self.parts, self.state, records, stopped, reason)

    # ------------------------------------------------------------------ one epoch
    def train_epoch(self, partial: dict | None = None) -> dict[str, Any] | None:
        """Train the rest of epoch ``state.epoch``. Returns its train metrics, None when the run stops early."""
        cfg, parts, state = self.cfg, self.parts, self.state
        self._restore_stats(partial)
        parts.train_sampler.set_epoch(state.epoch,
                                      skip=state.step_in_epoch * cfg.gradient_accumulation_steps * cfg.batch_size)
        parts.train_set.set_epoch(state.epoch)
        meter = ThroughputMeter(self.accelerator.device)
        meter.start()
        parts.model.train()
        bar = console.progress(total=parts.steps_per_epoch, initial=state.step_in_epoch, enabled=self.is_main,
                               desc=f"epoch {state.epoch + 1}/{cfg.num_epochs}", dynamic_ncols=True, leave=False)
        try:  # the bar is cleared however the epoch ends (TrainingStopped, a data error, Ctrl-C)
            finished = self._run_steps(iter(parts.train_loader), meter, bar)
        finally:
            bar.close()
        return self._epoch_train_metrics(meter) if finished else None

    def _run_steps(self, batches: Iterator[Batch], meter: ThroughputMeter, bar: Any) -> bool:
        """The epoch's optimizer steps; False when ``stop_after_steps`` or SIGTERM ended the run (``last`` saved)."""
        cfg, state = self.cfg, self.state
        while state.step_in_epoch < self.parts.steps_per_epoch:
            try:
                record = self.train_step(batches)
            except StopIteration:  # the loader ran dry (it yields exactly the epoch's micro-batches)
                break
            meter.step(record.images * self.accelerator.num_processes)
            bar.update(1)
            self.after_step(meter, record.grad_norm, bar)
            if (cfg.stop_after_steps and state.global_step >= cfg.stop_after_steps) \
                    or self.preemption.on_any_rank(self.accelerator):
                self.save_last()
                return False
        return True

    # ------------------------------------------------------------------ one optimizer step
    def train_step(self, batches: Iterator[Batch]) -> StepRecord:
        """``gradient_accumulation_steps`` micro-batches from ``batches``, then the optimizer step. A step with a
        non-finite loss (on any rank) is skipped and its losses and IoUs leave the epoch's figures."""
        record = StepRecord()
        before = self._snapshot()
        for _ in range(self.cfg.gradient_accumulation_steps):
            with self.timer.region("data_wait"):
                host_batch = next(batches)
            self.micro_batch(host_batch)
            record.batches.append(host_batch)
            record.images += host_batch.num_images
            record.queries += host_batch.num_queries
        loss_finite = self.stats.finite()
        if not loss_finite:
            self._rollback(before)
        with self.timer.region("optimizer"):
            record.grad_norm, record.skipped = self.optimizer_step(loss_finite)
        return record

    def micro_batch(self, host_batch: Batch) -> None:
        """Forward + backward of one micro-batch inside ``accelerator.accumulate`` (engine/backends.py: the loss
        is scaled by 1/accumulation and gradients synchronised on the last micro-batch, by every backend)."""
        timer, task = self.timer, self.task
        with timer.region("host_to_device"):
            batch = host_batch.to(self.accelerator.device)
        with timer.region("sam_cache"):
            sam_embeddings = task.sam_embeddings(batch)
            teacher = task.teacher_prompts(batch, self.state.global_step)
        with self.accelerator.accumulate(self.parts.model):
            with timer.region("forward_other"):
                out = task.forward(batch, sam_embeddings, teacher)
            with timer.region("loss"):
                losses = task.losses(batch, out, teacher)
                loss = losses["loss"]
                if needs_every_gradient(self.accelerator):  # DeepSpeed: the same gradient set on every rank
                    loss = loss + zero_touch([p for p in self.parts.unwrapped.parameters() if p.requires_grad])
            with timer.region("backward"):
                self.accelerator.backward(loss)
        with timer.region("metrics"):
            self.stats.add(losses)
            update_iou(self.acc, batch, out.pred_masks)
            if self.dataset_names:
                self.stats.add_datasets(batch_sums(batch, out.logits, out.labels, out.pred_masks))

    def optimizer_step(self, loss_finite: bool = True) -> tuple[float, bool]:
        """Clip, check finiteness, step optimizer + scheduler. Returns (gradient norm (may be nan/inf), skipped).

        A non-finite loss (on any rank) or gradient norm skips the optimizer step; it is counted in
        ``state.skipped_nonfinite_steps`` and by the guard (``max_nonfinite_steps`` in a row stop the run).
        With fp16 the grad scaler skips overflowing steps itself: each one is logged with the new loss scale and
        counted (``fp16_overflow_steps`` too); it only counts towards the stop once the loss scale is below 1,
        where the gradients overflow unscaled.
        """
        grad_norm = self._clip_gradients()
        loss_finite = all_ranks_finite(self.accelerator, loss_finite)
        fp16 = self.cfg.precision == "fp16"
        if not loss_finite or (not fp16 and not math.isfinite(grad_norm)):
            self._skip_step()
            reason = "non-finite loss" if not loss_finite else f"non-finite gradient norm ({grad_norm})"
            self.guard.skipped(self.state, reason)
            skipped = True
        else:
            self.parts.optimizer.step()
            skipped = fp16 and bool(self.accelerator.optimizer_step_was_skipped)
            if skipped:
                self._fp16_overflow(grad_norm)
            else:
                self.guard.healthy()
            self.parts.optimizer.zero_grad(set_to_none=True)
        self.parts.scheduler.step()
        self.state.global_step += 1
        self.state.step_in_epoch += 1
        return grad_norm, skipped

    def _clip_gradients(self) -> float:
        """Clip every trainable gradient (the prompt teacher's averaged over ranks first); the norm before."""
        parts = self.parts
        params = clip_parameters(self.accelerator, parts.model, parts.unwrapped)
        if parts.prompt_teacher is not None:  # not inside the prepared model: average its gradients here
            teacher_params = list(parts.prompt_teacher.parameters())
            _average_gradients(self.accelerator, teacher_params)
            params = params + teacher_params
        max_norm = self.cfg.max_grad_norm if self.cfg.max_grad_norm > 0 else float("inf")
        norm = self.accelerator.clip_grad_norm_(params, max_norm)  # DeepSpeed: clipped in its step
        return float(norm) if norm is not None else float("nan")

    def _skip_step(self) -> None:
        """Drop this step's gradients. With an fp16 grad scaler, close the unscale_ done by clipping."""
        self.state.skipped_nonfinite_steps += 1
        self.parts.optimizer.zero_grad(set_to_none=True)
        scaler = getattr(self.accelerator, "scaler", None)
        if scaler is not None:
            scaler.update()

    def _fp16_overflow(self, grad_norm: float) -> None:
        """The grad scaler skipped the step: count and log it; below loss scale 1 it counts towards the stop."""
        state = self.state
        state.skipped_nonfinite_steps += 1
        state.fp16_overflow_steps += 1
        scaler = getattr(self.accelerator, "scaler", None)
        scale = float(scaler.get_scale()) if scaler is not None else None
        logger.warning("step %d: fp16 loss-scale overflow (gradient norm %s): the grad scaler skipped the optimizer "
                       "step; loss scale now %s (%d overflow steps in this run)", state.global_step + 1, grad_norm,
                       scale, state.fp16_overflow_steps)
        if scale is not None and scale < 1.0:
            self.guard.skipped(state, f"fp16 gradients overflow at loss scale {scale}")

    # ------------------------------------------------------------------ after a step
    def after_step(self, meter: ThroughputMeter, grad_norm: float, bar: Any) -> None:
        """Log the step line, validate and save ``last`` when their step intervals say so."""
        cfg, parts, state = self.cfg, self.parts, self.state
        if self.is_main and (state.step_in_epoch % cfg.log_every_steps == 0
                             or state.step_in_epoch == parts.steps_per_epoch):
            figures = self._step_figures(meter, grad_norm)
            line = self._step_line(figures, meter)
            if self.dataset_names:
                line += f" | {step_line_counts(self.stats.datasets)}"
            bar.write(line)
            _log_jsonl(parts.paths.train_log, {"epoch": state.epoch + 1, "step": state.step_in_epoch,
                                               "global_step": state.global_step, **figures, "time": time.time()})
            self.trackers.log_scalars({f"train/{k}": v for k, v in figures.items() if k != "iter_time"},
                                      state.global_step)
        # the epoch's last step is validated by ``end_epoch``: not twice
        if cfg.eval_every_steps and state.global_step % cfg.eval_every_steps == 0 and parts.val_loader is not None \
                and state.step_in_epoch < parts.steps_per_epoch:
            result = self._validate(progress=False)
            if self.is_main:
                _log_jsonl(parts.paths.train_log, {"global_step": state.global_step,
                                                   "val": _brief(result.metrics)})
                self._track_validation(result)
            parts.model.train()
        if cfg.save_every_steps and state.global_step % cfg.save_every_steps == 0 \
                and state.step_in_epoch < parts.steps_per_epoch:
            self.save_last()

    def _step_figures(self, meter: ThroughputMeter, grad_norm: float) -> dict[str, float]:
        """The logged step's figures: the epoch's running loss terms, gIoU and cIoU; lr, gradient norm,
        step time, throughput and peak memory (``train_log.jsonl``, trackers, the step line)."""
        m = self.acc.compute()
        return {**self.stats.means(), "giou": m["giou"], "ciou": m["ciou"],
                "lr": float(self.parts.optimizer.param_groups[0]["lr"]), "grad_norm": grad_norm,
                "iter_time": meter.iteration_times[-1], "iter_per_sec": meter.iter_per_sec,
                "samples_per_s": meter.samples_per_sec, "peak_memory_gb": peak_memory(meter.device)[0],
                **self._dataset_step_figures()}

    def _dataset_step_figures(self) -> dict[str, float]:
        """A mixture's running per-dataset images and losses this epoch (``<dataset>/<figure>``, losses omitted
        while a dataset has contributed nothing)."""
        out = {}
        for name, figures in summarise(self.stats.datasets).items():
            for key in ("images", "ce", "mask_bce", "mask_dice"):
                if figures[key] is not None:
                    out[f"{name}/{key}"] = float(figures[key])
        return out

    def _step_line(self, figures: dict[str, float], meter: ThroughputMeter) -> str:
        cfg, parts, state = self.cfg, self.parts, self.state
        eta = console.run_eta_seconds(meter.iteration_times, parts.total_steps - state.global_step)
        return console.step_line(epoch=state.epoch + 1, num_epochs=cfg.num_epochs, step=state.step_in_epoch,
                                 steps_per_epoch=parts.steps_per_epoch, losses=figures, giou=figures["giou"],
                                 ciou=figures["ciou"], lr=figures["lr"], grad_norm=figures["grad_norm"],
                                 samples_per_s=figures["samples_per_s"], peak_memory_gb=figures["peak_memory_gb"],
                                 eta_s=eta, terms=("ce", "mask_bce", "mask_dice")
                                 + (("mask_focal",) if cfg.focal_loss_weight > 0 else ()))

    def _validate(self, progress: bool = True) -> Any:
        parts = self.parts
        return evaluate(parts.unwrapped, parts.val_loader, device=self.accelerator.device, accelerator=self.accelerator,
                        loss_weights=parts.loss_weights, sam_cache=parts.sam_cache, desc="val", progress=progress,
                        keep_examples=TRACKED_MASKS if self.trackers else 0)

    def _track_validation(self, result: Any) -> None:
        """Validation figures and a few predicted masks to the trackers, at the current optimizer step."""
        if not self.trackers:
            return
        m, step = result.metrics, self.state.global_step
        values = {"val/loss": m.get("loss"), "val/giou": m.get("giou"), "val/ciou": m.get("ciou")}
        for subset, figures in (m.get("subsets") or {}).items():
            values.update({f"val/{subset}/giou": figures.get("giou"), f"val/{subset}/ciou": figures.get("ciou")})
        self.trackers.log_scalars(values, step)
        self.trackers.log_images({f"val/masks/{k}": mask_picture(ex) for k, ex in enumerate(result.examples)}, step)

    # ------------------------------------------------------------------ epoch figures
    def _restore_stats(self, partial: dict | None) -> None:
        self.acc = IoUAccumulator(subsets=("short", "long"))
        self.stats = EpochStats(datasets=zero_sums(self.dataset_names))
        if partial:
            self.stats = EpochStats(loss_sum=partial["loss_sum"], terms=partial["terms"],
                                    micro_batches=partial["micro_batches"],
                                    datasets=partial.get("datasets") or zero_sums(self.dataset_names))
            self.acc.load_state_tensor(torch.tensor(partial["acc_state"], dtype=torch.float64))

    def _snapshot(self) -> tuple[EpochStats, torch.Tensor]:
        return self.stats.copy(), self.acc.state_tensor()

    def _rollback(self, snapshot: tuple[EpochStats, torch.Tensor]) -> None:
        stats, acc_state = snapshot
        self.stats = stats.copy()
        self.acc.load_state_tensor(acc_state)

    def _reduced_stats(self) -> EpochStats:
        """The epoch's sums over all ranks (the accumulator is all-reduced in place)."""
        accelerator, stats = self.accelerator, self.stats
        if accelerator.num_processes == 1:
            return stats
        self.acc.all_reduce(lambda t: accelerator.reduce(t.to(accelerator.device), reduction="sum").cpu())
        keys, names = sorted(stats.terms), sorted(stats.datasets)
        t = torch.tensor([stats.loss_sum, stats.micro_batches, *[stats.terms[k] for k in keys],
                          *[stats.datasets[k] for k in names]], dtype=torch.float64, device=accelerator.device)
        t = accelerator.reduce(t, reduction="sum").cpu().tolist()
        return EpochStats(loss_sum=t[0], micro_batches=int(t[1]), terms=dict(zip(keys, t[2:2 + len(keys)])),
                          datasets=dict(zip(names, t[2 + len(keys):])))

    def _epoch_train_metrics(self, meter: ThroughputMeter) -> dict[str, Any]:
        stats = self._reduced_stats()
        m = self.acc.compute()
        datasets = {"datasets": summarise(stats.datasets)} if self.dataset_names else {}
        return {**stats.means(), "iou": m["giou"], "giou": m["giou"], "ciou": m["ciou"],
                "num_queries": m["num_queries"], **meter.summary(), **datasets}

    # ------------------------------------------------------------------ end of epoch, checkpoints
    def end_epoch(self, train_metrics: dict[str, Any]) -> dict[str, Any]:
        """Validate, write ``metrics_epoch_N.json``, save the best model when val gIoU improved, save ``last``."""
        parts, state = self.parts, self.state
        val = None
        if parts.val_loader is not None:
            result = self._validate()
            if self.is_main:
                self._track_validation(result)
            val = _brief(result.metrics)
            val["iou"] = val["giou"]  # the run-folder contract's name for gIoU (docs/ARCHITECTURE.md)
        epoch = state.epoch + 1
        record = {"epoch": epoch, "global_step": state.global_step, "train": train_metrics, "val": val,
                  "lr": parts.scheduler.get_last_lr()[0], "skipped_nonfinite_steps": state.skipped_nonfinite_steps,
                  "data": {k: {"usable": v["usable"], "skipped": v["skipped"]} for k, v in parts.data_report.items()}}
        state.epoch, state.step_in_epoch = epoch, 0
        if val is not None and val["giou"] > state.best_giou and self.is_main:
            self._save_best(epoch, val["giou"], record)
        state.best_giou, state.best_epoch = _broadcast(self.accelerator, [state.best_giou, state.best_epoch])
        if self.is_main:
            self._report_epoch(epoch, record, train_metrics, val)
        self.write_last()
        return record

    def _save_best(self, epoch: int, giou: float, record: dict[str, Any]) -> None:
        parts, state = self.parts, self.state
        # DeepSpeed shards the optimizer states (its state_dict needs every rank): checkpoints/last holds them
        optimizer = None if getattr(self.accelerator, "deepspeed_engine_wrapped", None) is not None else parts.optimizer
        state.best_path = save_best(parts.paths.checkpoints, epoch, parts.unwrapped, optimizer, giou, record,
                                    self.cfg.to_dict(), state.best_path)
        state.best_giou, state.best_epoch = giou, epoch

    def _report_epoch(self, epoch: int, record: dict, train_metrics: dict, val: dict | None) -> None:
        atomic_write_text(self.parts.paths.metrics_epoch(epoch), json.dumps(record, indent=2))
        print(f"\nepoch {epoch}/{self.cfg.num_epochs} done (step {self.state.global_step})")
        print(console.metrics_block("train", train_metrics))
        if val is not None:
            print(console.metrics_block("val", val))
        self.trackers.log_scalars({"epoch": epoch, "train/epoch_giou": train_metrics["giou"],
                                   "train/epoch_ciou": train_metrics["ciou"]}, self.state.global_step)

    def save_last(self) -> None:
        """``checkpoints/last`` mid-epoch: the epoch's running figures go into the trainer state."""
        self.state.partial = {"loss_sum": self.stats.loss_sum, "terms": self.stats.terms,
                              "micro_batches": self.stats.micro_batches, "acc_state": self.acc.state_tensor().tolist(),
                              "datasets": self.stats.datasets}
        self.write_last()
        self.state.partial = None

    def write_last(self) -> None:
        """``checkpoints/last`` with the scheduler state and the run's config in its trainer state (JSON)."""
        parts, state = self.parts, self.state
        state.scheduler, state.num_processes = parts.scheduler.state_dict(), self.accelerator.num_processes
        state.config = parts.config
        try:
            ckpt.save_last(self.accelerator, parts.paths.checkpoints, state)
        finally:
            state.scheduler = None


def _average_gradients(accelerator: Any, params: list[torch.nn.Parameter]) -> None:
    """Average the gradients of ``params`` (outside the DDP module) over all ranks, in place."""
    if accelerator.num_processes == 1:
        return
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        p.grad.copy_(accelerator.reduce(p.grad, reduction="mean"))


def _log_jsonl(path: Path, record: dict[str, Any]) -> None:
    append_line(path, json.dumps(record))


def _brief(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in metrics.items() if k != "protocol"}


def _broadcast(accelerator: Any, values: list[float]) -> tuple[float, int]:
    if accelerator.num_processes == 1:
        return values[0], int(values[1])
    from accelerate.utils import broadcast_object_list

    out = broadcast_object_list(list(values), from_process=0)
    return float(out[0]), int(out[1])


# ---------------------------------------------------------------------- entry point
def train(cfg: TrainingConfig, sources: dict[str, str] | None = None) -> dict[str, Any]:
    """Run training as configured; returns a summary (best gIoU, paths, per-epoch records, data counts).

    ``sources`` ({field: default | preset | yaml | cli}, from ``cli.config_args``) is written as
    ``outputs/config_sources.yaml`` beside the resolved ``config.yaml``; without it, sources are inferred.
    ``data_strict``: the train and val splits are checked first (images verified) and ONE DataError lists
    every bad file before any model is built. The run folder is locked for the whole run (``hold_run_folder``:
    a second train, resume or overwrite of a live run is refused). A resume is verified and its config compared
    before anything is built. TrainingStopped (non-finite steps) is raised after the summary, with
    ``stop_reason``, is written.
    """
    cfg = replace(cfg, data_root=str(Path(cfg.data_root).resolve()))  # recorded absolute: eval from anywhere
    if cfg.data_strict:
        check_training_data(cfg.data_root)
    accelerator = make_accelerator(cfg)
    with hold_run_folder(Path(cfg.output_dir), accelerator):
        plan = plan_resume(cfg, accelerator.num_processes)
        return _train(cfg, accelerator, plan, sources)


def _train(cfg: TrainingConfig, accelerator: Accelerator, plan: ResumePlan,
           sources: dict[str, str] | None = None) -> dict[str, Any]:
    parts = build_run(cfg, accelerator, sources)
    state, partial = resume(parts, cfg, plan)
    return Trainer(cfg, parts, state).fit(partial)
