"""The Accelerate training loop: build, (resume), train epochs, validate, checkpoint, write the run folder.

Reads like a table of contents: ``train(cfg)`` -> ``_setup`` -> per epoch ``_train_epoch`` ->
``evaluate`` -> ``_end_epoch`` (metrics JSON, best and last checkpoints).
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from modlisa.atomic import append_line, atomic_write_text
from modlisa.config import ConfigError, TrainingConfig, infer_sources, load_yaml, save_config
from modlisa.data.collate import check_max_length, make_collate_fn
from modlisa.data.dataset import ReasonSegDataset, check_training_data
from modlisa.engine import checkpoint as ckpt
from modlisa.engine.backends import (
    check_accumulation,
    clip_parameters,
    launched_backend,
    make_accelerator,
    needs_every_gradient,
    zero_touch,
)
from modlisa.engine.evaluate import evaluate, subset_of
from modlisa.engine.meters import ThroughputMeter, peak_memory
from modlisa.engine.prompt_teacher import (
    BagOfWordsPrompt,
    count_seg_tokens,
    distill_loss,
    idf_weights,
    teacher_active,
    teacher_prompts,
)
from modlisa.engine.run_folder import hold_run_folder, prepare_run_folder, previous_run_marker
from modlisa.engine.sam_cache import SamEmbeddingCache, build_sam_cache
from modlisa.engine.sampling import EvalShardSampler, TrainSampler
from modlisa.engine.schedule import lr_lambda
from modlisa.losses import LossWeights, compute_losses
from modlisa.metrics import IoUAccumulator
from modlisa.weights import save_best

logger = logging.getLogger(__name__)


class _Preemption:
    """SIGTERM (cluster preemption, `kill`) asks the loop to save ``checkpoints/last`` and stop at the next
    optimizer step instead of dying mid-epoch; the run resumes exactly with ``--resume_from_checkpoint latest``."""

    requested = False

    @classmethod
    def install(cls) -> Any:
        """Install the SIGTERM handler (main thread only); returns the previous handler for ``restore``."""
        import signal
        import threading

        cls.requested = False
        if threading.current_thread() is not threading.main_thread():
            return None
        return signal.signal(signal.SIGTERM, cls._handler)

    @staticmethod
    def restore(previous: Any) -> None:
        import signal

        if previous is not None:
            signal.signal(signal.SIGTERM, previous)

    @classmethod
    def _handler(cls, signum: int, frame: Any) -> None:
        cls.requested = True
        logger.warning("SIGTERM received: saving checkpoints/last at the end of this optimizer step, then stopping")


def _preempted(c: Components) -> bool:
    """True on every rank when any rank received SIGTERM (one small all-reduce per step when distributed)."""
    if c.accelerator.num_processes == 1:
        return _Preemption.requested
    flag = torch.tensor([1.0 if _Preemption.requested else 0.0], device=c.accelerator.device)
    return bool(c.accelerator.reduce(flag, reduction="sum").item() > 0)


class TrainingStopped(RuntimeError):
    """Raised when ``max_nonfinite_steps`` consecutive optimizer steps had a non-finite loss or gradient.

    The message names the step and the last good checkpoint (``checkpoints/last``, untouched by the bad
    steps); ``modlisa train`` prints it and exits with code 3.
    """


@dataclass
class RunPaths:
    root: Path

    @property
    def outputs(self) -> Path:
        return self.root / "outputs"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"


@dataclass
class Components:
    """Everything ``_setup`` builds for a run."""

    accelerator: Accelerator
    model: torch.nn.Module  # prepared (possibly DDP-wrapped)
    unwrapped: torch.nn.Module
    tokenizer: Any
    optimizer: Any
    scheduler: Any
    train_set: ReasonSegDataset
    train_sampler: TrainSampler
    train_loader: DataLoader
    val_loader: DataLoader | None
    steps_per_epoch: int
    total_steps: int
    paths: RunPaths
    loss_weights: LossWeights
    data_report: dict[str, Any] = field(default_factory=dict)
    sam_cache: SamEmbeddingCache | None = None  # frozen-SAM embeddings (engine/sam_cache.py)
    config: dict[str, Any] = field(default_factory=dict)  # cfg.to_dict(), stored in checkpoints/last
    prompt_teacher: BagOfWordsPrompt | None = None  # seg_prompt_teacher_fraction > 0 (engine/prompt_teacher.py)


@dataclass
class EpochStats:
    """Running sums of one epoch's training figures (saved inside mid-epoch checkpoints)."""

    loss_sum: float = 0.0
    terms: dict[str, float] = field(default_factory=dict)
    micro_batches: int = 0
    acc_state: list[float] | None = None


# ---------------------------------------------------------------------- setup
def _loader(dataset: Any, sampler: Any, cfg: TrainingConfig, collate: Any, seed: int) -> DataLoader:
    return DataLoader(
        dataset, batch_size=cfg.batch_size, sampler=sampler, collate_fn=collate,
        num_workers=cfg.num_workers, persistent_workers=False,
        generator=torch.Generator().manual_seed(seed),  # never consume the global RNG (exact resume)
    )


def build_datasets(cfg: TrainingConfig, processors: Any) -> tuple[ReasonSegDataset, ReasonSegDataset | None]:
    common = {"sam_transform": processors.sam, "vision_transform": processors.vision, "strict": cfg.data_strict,
              "verify_images": True}
    train_set = ReasonSegDataset(cfg.data_root, "train", train=True, seed=cfg.seed,
                                 queries_per_image=cfg.queries_per_image, explanatory_prob=cfg.explanatory_prob,
                                 augmenter=processors.augmenter if cfg.augment else None,
                                 max_samples=cfg.max_train_samples, **common)
    try:
        val_set = ReasonSegDataset(cfg.data_root, "val", train=False, max_samples=cfg.max_val_samples, **common)
    except FileNotFoundError:
        logger.warning("no val split under %s: training without validation", cfg.data_root)
        val_set = None
    return train_set, val_set


def _setup(cfg: TrainingConfig, accelerator: Accelerator | None = None,
           sources: dict[str, str] | None = None) -> Components:
    from modlisa.model.factory import build_model, resolve_preset

    accelerator = accelerator or make_accelerator(cfg)
    set_seed(cfg.seed)
    paths = RunPaths(Path(cfg.output_dir))
    prepare_run_folder(paths.root, resuming=bool(cfg.resume_from_checkpoint), overwrite=cfg.overwrite_output_dir,
                       main_process=accelerator.is_main_process)
    if accelerator.is_main_process:  # the resolved config, and where each value came from
        resolved, resolved_sources = resolve_preset(cfg, sources or infer_sources(cfg))
        save_config(resolved, paths.outputs / "config.yaml", resolved_sources)
    accelerator.wait_for_everyone()
    model, tokenizer, processors = build_model(cfg)
    check_max_length(tokenizer, cfg.max_length)
    if launched_backend() == "fsdp":  # FSDP flattens each unit into ONE dtype: all fp32, sharded (untested on CPU)
        model.float()
    sam_cache = build_sam_cache(cfg, model, processors)
    train_set, val_set = build_datasets(cfg, processors)
    rank, world = accelerator.process_index, accelerator.num_processes
    accum = cfg.gradient_accumulation_steps
    steps_per_epoch = cfg.steps_per_epoch or max(1, len(train_set) // (cfg.batch_size * accum * world))
    train_sampler = TrainSampler(len(train_set), steps_per_epoch * accum * cfg.batch_size, seed=cfg.seed,
                                 rank=rank, world_size=world)
    collate = make_collate_fn(tokenizer, cfg.max_length, model.conversation)
    train_loader = _loader(train_set, train_sampler, cfg, collate, cfg.seed)
    val_loader = None
    if val_set is not None:
        val_loader = _loader(val_set, EvalShardSampler(len(val_set), rank=rank, world_size=world), cfg, collate,
                             cfg.seed)
    params = [p for p in model.parameters() if p.requires_grad]
    teacher = _build_prompt_teacher(cfg, model, tokenizer, accelerator, train_set)
    groups = [{"params": params}] + ([{"params": list(teacher.parameters())}] if teacher is not None else [])
    optimizer = torch.optim.AdamW(groups, lr=cfg.learning_rate, betas=(cfg.adam_beta1, cfg.adam_beta2),
                                  weight_decay=cfg.weight_decay)
    total_steps = steps_per_epoch * cfg.num_epochs
    # The scheduler is NOT prepared: Accelerate would step it once per process.
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg.warmup_steps, total_steps, cfg.lr_schedule))
    prepared_model, optimizer = accelerator.prepare(model, optimizer)
    check_accumulation(accelerator, cfg)
    # The scheduler's state goes into trainer_state.json (JSON), not a pickle: see checkpoint.save_last.
    ckpt.register_trainable_only_hooks(accelerator, model, teacher)
    data_report = {split: {"usable": len(ds), "skipped": ds.num_skipped,
                           "problems": [asdict(p) if hasattr(p, "__dataclass_fields__") else str(p)
                                        for p in ds.problems]}
                   for split, ds in (("train", train_set), ("val", val_set)) if ds is not None}
    weights = LossWeights(ce=cfg.ce_loss_weight, bce=cfg.bce_loss_weight, dice=cfg.dice_loss_weight,
                          focal=cfg.focal_loss_weight, focal_alpha=cfg.focal_alpha, focal_gamma=cfg.focal_gamma)
    return Components(accelerator, prepared_model, model, tokenizer, optimizer, scheduler, train_set,
                      train_sampler, train_loader, val_loader, steps_per_epoch, total_steps, paths, weights,
                      data_report, sam_cache=sam_cache, config=cfg.to_dict(), prompt_teacher=teacher)


def _build_prompt_teacher(cfg: TrainingConfig, model: torch.nn.Module, tokenizer: Any,
                          accelerator: Accelerator, train_set: ReasonSegDataset) -> BagOfWordsPrompt | None:
    """The bag-of-words prompt teacher when ``seg_prompt_teacher_fraction`` > 0, on the run's device (saved in
    ``checkpoints/last`` by the checkpoint hooks, for exact resume); None otherwise."""
    if cfg.seg_prompt_teacher_fraction <= 0:
        return None
    if launched_backend() == "deepspeed":
        raise ConfigError("seg_prompt_teacher_fraction > 0 cannot run under DeepSpeed (the teacher is not part of "
                          "the engine's model); use a DDP launch or a single process")
    weights = None
    if cfg.seg_prompt_teacher_idf:
        texts = [text for annotation in train_set.annotations for text in annotation.texts]
        weights = idf_weights(tokenizer, texts, len(tokenizer))
    dim = model.text_hidden_fcs[-1].out_features
    return BagOfWordsPrompt(len(tokenizer), dim, weights).to(accelerator.device)


# ---------------------------------------------------------------------- one optimizer step
def _teacher_prompts(c: Components, batch: Any, global_step: int) -> torch.Tensor | None:
    """(K, D) bag-of-words prompts for the mask decoder while the prompt teacher is active, else None."""
    if c.prompt_teacher is None or not teacher_active(c.config["seg_prompt_teacher_fraction"], global_step,
                                                      c.total_steps):
        return None
    counts = count_seg_tokens(batch.input_ids, c.unwrapped.seg_token_id)
    return teacher_prompts(c.prompt_teacher, c.tokenizer, batch.queries, counts, c.accelerator.device)


def _micro_batch(c: Components, batch: Any, acc: IoUAccumulator, stats: EpochStats, global_step: int = 0) -> bool:
    """Forward + backward of one micro-batch inside ``accelerator.accumulate`` (engine/backends.py: the loss
    is scaled by 1/accumulation and gradients synchronised on the last micro-batch, by every backend).
    Returns ``accelerator.sync_gradients``: True when this micro-batch completes an optimizer step."""
    batch = batch.to(c.accelerator.device)
    sam_embeddings = cached_sam_embeddings(c, batch)
    teacher = _teacher_prompts(c, batch, global_step)
    with c.accelerator.accumulate(c.model):
        out = c.model(batch, sam_embeddings=sam_embeddings, decoder_prompts=teacher)
        losses = compute_losses(out.logits, out.labels, out.pred_masks, batch.masks, c.loss_weights)
        if teacher is not None:
            losses["seg_distill"] = distill_loss(out.seg_prompts, teacher)
            losses["loss"] = losses["loss"] + c.config["seg_prompt_distill_weight"] * losses["seg_distill"]
        loss = losses["loss"]
        if needs_every_gradient(c.accelerator):  # DeepSpeed: the same gradient set on every rank
            loss = loss + zero_touch([p for p in c.unwrapped.parameters() if p.requires_grad])
        c.accelerator.backward(loss)
        sync = c.accelerator.sync_gradients
    stats.loss_sum += float(losses["loss"].detach())
    for k, v in losses.items():
        if k != "loss":
            stats.terms[k] = stats.terms.get(k, 0.0) + float(v.detach())
    stats.micro_batches += 1
    with torch.no_grad():
        for b in range(batch.num_images):
            start = int(batch.offsets[b])
            for q in range(batch.masks[b].shape[0]):
                acc.update(out.pred_masks[b][q].detach() > 0, batch.masks[b][q],
                           subset=subset_of(batch.is_sentence[start + q]))
    return sync


def cached_sam_embeddings(c: Components, batch: Any) -> torch.Tensor | None:
    """(B, D, S/16, S/16) frozen-SAM embeddings from the run's cache (autocast as in the forward); None
    when the run has no cache (the model then encodes ``batch.sam_images`` itself)."""
    if c.sam_cache is None:
        return None
    return c.sam_cache.lookup(c.unwrapped, batch, autocast=c.accelerator.autocast)



def _all_ranks_finite(c: Components, finite: bool) -> bool:
    """True when ``finite`` holds on every rank (one tiny all-reduce in multi-process runs)."""
    if c.accelerator.num_processes == 1:
        return finite
    flag = torch.tensor([0.0 if finite else 1.0], device=c.accelerator.device)
    return float(c.accelerator.reduce(flag, reduction="sum").item()) == 0.0


def _loss_scale(c: Components) -> float | None:
    scaler = getattr(c.accelerator, "scaler", None)
    return float(scaler.get_scale()) if scaler is not None else None


def _count_nonfinite(c: Components, cfg: TrainingConfig, state: ckpt.TrainerState, streak: list[int],
                     reason: str) -> None:
    """Count and log one skipped step; raise TrainingStopped after ``max_nonfinite_steps`` in a row."""
    step = state.global_step + 1
    streak[0] += 1
    logger.warning("step %d: %s; optimizer step skipped (%d in a row, %d skipped in this run, stop at %d)",
                   step, reason, streak[0], state.skipped_nonfinite_steps, cfg.max_nonfinite_steps)
    if streak[0] >= cfg.max_nonfinite_steps:
        good = ckpt.last_good_checkpoint(c.paths.checkpoints)
        kept = f"last good checkpoint kept: {good}" if good else "no checkpoint had been written yet"
        raise TrainingStopped(
            f"stopped at step {step} (epoch {state.epoch + 1}): {streak[0]} consecutive optimizer steps with a "
            f"non-finite loss or gradient (max_nonfinite_steps={cfg.max_nonfinite_steps}; last: {reason}); "
            f"{kept}. Lower learning_rate or max_grad_norm, use bf16 or fp32, check the data, then resume "
            "with --resume_from_checkpoint latest."
        )


def _average_gradients(c: Components, params: list[torch.nn.Parameter]) -> None:
    """Average the gradients of ``params`` (outside the DDP module) over all ranks, in place."""
    if c.accelerator.num_processes == 1:
        return
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        p.grad.copy_(c.accelerator.reduce(p.grad, reduction="mean"))


def _skip_step(c: Components) -> None:
    """Drop this step's gradients. With an fp16 grad scaler, close the unscale_ done by clipping."""
    c.optimizer.zero_grad(set_to_none=True)
    scaler = getattr(c.accelerator, "scaler", None)
    if scaler is not None:
        scaler.update()


def _optimizer_step(c: Components, cfg: TrainingConfig, state: ckpt.TrainerState, streak: list[int],
                    loss_finite: bool = True) -> tuple[float, bool]:
    """Clip, check finiteness, step optimizer + scheduler. Returns (gradient norm (may be nan/inf), skipped).

    A non-finite loss (on any rank) or gradient norm skips the optimizer step; it is counted in
    ``state.skipped_nonfinite_steps`` and logged, and ``max_nonfinite_steps`` in a row raise TrainingStopped.
    With fp16 the grad scaler skips overflowing steps itself: each one is logged with the new loss scale
    and counted (``fp16_overflow_steps`` too); it only counts towards the stop once the loss scale is below 1,
    where the gradients overflow unscaled.
    """
    params = clip_parameters(c.accelerator, c.model, c.unwrapped)
    if c.prompt_teacher is not None:  # not inside the prepared model: average its gradients over ranks here
        teacher_params = list(c.prompt_teacher.parameters())
        _average_gradients(c, teacher_params)
        params = params + teacher_params
    max_norm = cfg.max_grad_norm if cfg.max_grad_norm > 0 else float("inf")
    norm = c.accelerator.clip_grad_norm_(params, max_norm)  # DeepSpeed: clipped in its step; the norm it saw
    grad_norm = float(norm) if norm is not None else float("nan")
    loss_finite = _all_ranks_finite(c, loss_finite)
    fp16 = cfg.precision == "fp16"
    skipped = not loss_finite or (not fp16 and not math.isfinite(grad_norm))
    if skipped:
        _skip_step(c)
        state.skipped_nonfinite_steps += 1
        reason = "non-finite loss" if not loss_finite else f"non-finite gradient norm ({grad_norm})"
        _count_nonfinite(c, cfg, state, streak, reason)
    else:
        c.optimizer.step()
        skipped = fp16 and bool(c.accelerator.optimizer_step_was_skipped)
        if skipped:
            state.skipped_nonfinite_steps += 1
            state.fp16_overflow_steps += 1
            scale = _loss_scale(c)
            logger.warning("step %d: fp16 loss-scale overflow (gradient norm %s): the grad scaler skipped the "
                           "optimizer step; loss scale now %s (%d overflow steps in this run)",
                           state.global_step + 1, grad_norm, scale, state.fp16_overflow_steps)
            if scale is not None and scale < 1.0:
                _count_nonfinite(c, cfg, state, streak, f"fp16 gradients overflow at loss scale {scale}")
        else:
            streak[0] = 0
        c.optimizer.zero_grad(set_to_none=True)
    c.scheduler.step()
    state.global_step += 1
    state.step_in_epoch += 1
    return grad_norm, skipped


# ---------------------------------------------------------------------- one epoch
def _live_line(step: int, total: int, stats: EpochStats, acc: IoUAccumulator, meter: ThroughputMeter) -> str:
    m = acc.compute()
    mem, _ = peak_memory(meter.device)
    loss = stats.loss_sum / max(1, stats.micro_batches)
    return (f"Step {step}/{total} | Loss: {loss:.4f} | IoU: {m['ciou']:.4f} | gIoU: {m['giou']:.4f} | "
            f"Iter/s: {meter.iter_per_sec:.2f} | Mem: {mem:.2f}GB")


def _log_jsonl(path: Path, record: dict[str, Any]) -> None:
    append_line(path, json.dumps(record))


def _restore_stats(state: ckpt.TrainerState, partial: dict | None, acc: IoUAccumulator) -> EpochStats:
    if not partial:
        return EpochStats()
    stats = EpochStats(loss_sum=partial["loss_sum"], terms=partial["terms"], micro_batches=partial["micro_batches"])
    acc.load_state_tensor(torch.tensor(partial["acc_state"], dtype=torch.float64))
    return stats


def _train_epoch(c: Components, cfg: TrainingConfig, state: ckpt.TrainerState, partial: dict | None,
                 streak: list[int]) -> dict[str, Any] | None:
    """Train the rest of epoch ``state.epoch``. Returns the epoch's train metrics, None if stopped early."""
    acc = IoUAccumulator(subsets=("short", "long"))
    stats = _restore_stats(state, partial, acc)
    main = c.accelerator.is_main_process
    c.train_sampler.set_epoch(state.epoch, skip=state.step_in_epoch * cfg.gradient_accumulation_steps * cfg.batch_size)
    c.train_set.set_epoch(state.epoch)
    meter = ThroughputMeter(c.accelerator.device)
    meter.start()
    c.model.train()
    bar = tqdm(total=c.steps_per_epoch, initial=state.step_in_epoch, desc=f"epoch {state.epoch + 1}/{cfg.num_epochs}",
               disable=not main, dynamic_ncols=True, leave=False)
    try:  # the bar is cleared however the epoch ends (TrainingStopped, a data error, Ctrl-C)
        finished = _run_steps(c, cfg, state, streak, stats, acc, meter, bar)
    finally:
        bar.close()
    return _epoch_train_metrics(c, stats, acc, meter) if finished else None


def _run_steps(c: Components, cfg: TrainingConfig, state: ckpt.TrainerState, streak: list[int], stats: EpochStats,
               acc: IoUAccumulator, meter: ThroughputMeter, bar: Any) -> bool:
    """The optimizer steps of the epoch; False when ``stop_after_steps`` ended the run (``last`` saved)."""
    images_in_step = 0
    before = _snapshot(stats, acc)
    for batch in c.train_loader:
        sync = _micro_batch(c, batch, acc, stats, state.global_step)
        images_in_step += batch.num_images
        if not sync:
            continue
        loss_finite = math.isfinite(stats.loss_sum) and all(math.isfinite(v) for v in stats.terms.values())
        if not loss_finite:  # a skipped step's losses and IoUs do not enter the epoch's figures
            _rollback(stats, acc, before)
        grad_norm, _ = _optimizer_step(c, cfg, state, streak, loss_finite)
        before = _snapshot(stats, acc)
        meter.step(images_in_step * c.accelerator.num_processes)
        images_in_step = 0
        bar.update(1)
        _after_step(c, cfg, state, stats, acc, meter, grad_norm, bar)
        if (cfg.stop_after_steps and state.global_step >= cfg.stop_after_steps) or _preempted(c):
            _save_last(c, state, stats, acc)
            return False
    return True


def _snapshot(stats: EpochStats, acc: IoUAccumulator) -> tuple[float, dict[str, float], int, torch.Tensor]:
    return stats.loss_sum, dict(stats.terms), stats.micro_batches, acc.state_tensor()


def _rollback(stats: EpochStats, acc: IoUAccumulator,
              snapshot: tuple[float, dict[str, float], int, torch.Tensor]) -> None:
    stats.loss_sum, terms, stats.micro_batches, acc_state = snapshot
    stats.terms = dict(terms)
    acc.load_state_tensor(acc_state)


def _after_step(c: Components, cfg: TrainingConfig, state: ckpt.TrainerState, stats: EpochStats,
                acc: IoUAccumulator, meter: ThroughputMeter, grad_norm: float, bar: Any) -> None:
    main = c.accelerator.is_main_process
    if main and (state.step_in_epoch % cfg.log_every_steps == 0 or state.step_in_epoch == c.steps_per_epoch):
        line = _live_line(state.step_in_epoch, c.steps_per_epoch, stats, acc, meter)
        bar.write(line)
        m = acc.compute()
        _log_jsonl(c.paths.outputs / "train_log.jsonl", {
            "epoch": state.epoch + 1, "step": state.step_in_epoch, "global_step": state.global_step,
            "loss": stats.loss_sum / max(1, stats.micro_batches),
            **{k: v / max(1, stats.micro_batches) for k, v in stats.terms.items()},
            "giou": m["giou"], "ciou": m["ciou"], "lr": _optimizer_lr(c), "grad_norm": grad_norm,
            "iter_time": meter.iteration_times[-1], "iter_per_sec": meter.iter_per_sec,
            "peak_memory_gb": peak_memory(meter.device)[0], "time": time.time(),
        })
    if cfg.eval_every_steps and state.global_step % cfg.eval_every_steps == 0 and c.val_loader is not None:
        result = evaluate(c.unwrapped, c.val_loader, device=c.accelerator.device, accelerator=c.accelerator,
                          loss_weights=c.loss_weights, sam_cache=c.sam_cache, desc="val", progress=False)
        if main:
            _log_jsonl(c.paths.outputs / "train_log.jsonl", {"global_step": state.global_step, "val": _brief(result.metrics)})
        c.model.train()
    if cfg.save_every_steps and state.global_step % cfg.save_every_steps == 0 and state.step_in_epoch < c.steps_per_epoch:
        _save_last(c, state, stats, acc)


def _optimizer_lr(c: Components) -> float:
    """The learning rate the (prepared) optimizer will apply next: its first param group's, as set by the
    scheduler (for DeepSpeed, the ZeRO optimizer's own group: proof the schedule reaches the engine)."""
    return float(c.optimizer.param_groups[0]["lr"])


def _save_last(c: Components, state: ckpt.TrainerState, stats: EpochStats, acc: IoUAccumulator) -> None:
    state.partial = {"loss_sum": stats.loss_sum, "terms": stats.terms, "micro_batches": stats.micro_batches,
                     "acc_state": acc.state_tensor().tolist()}
    _write_last(c, state)
    state.partial = None


def _write_last(c: Components, state: ckpt.TrainerState) -> None:
    """``checkpoints/last`` with the scheduler state and the run's config in its trainer state (JSON)."""
    state.scheduler, state.num_processes = c.scheduler.state_dict(), c.accelerator.num_processes
    state.config = c.config
    try:
        ckpt.save_last(c.accelerator, c.paths.checkpoints, state)
    finally:
        state.scheduler = None


def _reduce_stats(c: Components, stats: EpochStats, acc: IoUAccumulator) -> EpochStats:
    if c.accelerator.num_processes == 1:
        return stats
    acc.all_reduce(lambda t: c.accelerator.reduce(t.to(c.accelerator.device), reduction="sum").cpu())
    keys = sorted(stats.terms)
    t = torch.tensor([stats.loss_sum, stats.micro_batches, *[stats.terms[k] for k in keys]],
                     dtype=torch.float64, device=c.accelerator.device)
    t = c.accelerator.reduce(t, reduction="sum").cpu().tolist()
    return EpochStats(loss_sum=t[0], micro_batches=int(t[1]), terms=dict(zip(keys, t[2:])))


def _epoch_train_metrics(c: Components, stats: EpochStats, acc: IoUAccumulator, meter: ThroughputMeter) -> dict:
    stats = _reduce_stats(c, stats, acc)
    m = acc.compute()
    n = max(1, stats.micro_batches)
    return {
        "loss": stats.loss_sum / n, **{k: v / n for k, v in stats.terms.items()},
        "iou": m["giou"], "giou": m["giou"], "ciou": m["ciou"], "num_queries": m["num_queries"],
        **meter.summary(),
    }


# ---------------------------------------------------------------------- end of epoch
def _brief(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in metrics.items() if k != "protocol"}


def _print_block(title: str, metrics: dict[str, Any]) -> None:
    names = [("loss", "Loss"), ("iou", "IoU"), ("giou", "gIoU"), ("ciou", "cIoU"), ("iter_per_sec", "Iter/s"),
             ("avg_iter_time", "Avg iter time (s)"), ("epoch_time", "Epoch time (s)"),
             ("samples_per_sec", "Samples/s"), ("peak_memory_gb", "Peak memory (GB)")]
    print(f"{title}:")
    for key, label in names:
        if metrics.get(key) is not None:
            print(f"  {label}: {metrics[key]:.4f}")


def _end_epoch(c: Components, cfg: TrainingConfig, state: ckpt.TrainerState, train_metrics: dict) -> dict:
    val = None
    if c.val_loader is not None:
        result = evaluate(c.unwrapped, c.val_loader, device=c.accelerator.device, accelerator=c.accelerator,
                          loss_weights=c.loss_weights, sam_cache=c.sam_cache, desc="val")
        val = _brief(result.metrics)
        val["iou"] = val["giou"]
    epoch = state.epoch + 1
    record = {"epoch": epoch, "global_step": state.global_step, "train": train_metrics, "val": val,
              "lr": c.scheduler.get_last_lr()[0], "skipped_nonfinite_steps": state.skipped_nonfinite_steps,
              "data": {k: {"usable": v["usable"], "skipped": v["skipped"]} for k, v in c.data_report.items()}}
    state.epoch, state.step_in_epoch = epoch, 0
    if val is not None and val["giou"] > state.best_giou and c.accelerator.is_main_process:
        # DeepSpeed shards the optimizer states (its state_dict needs every rank): checkpoints/last holds them
        optimizer = None if getattr(c.accelerator, "deepspeed_engine_wrapped", None) is not None else c.optimizer
        state.best_path = save_best(c.paths.checkpoints, epoch, c.unwrapped, optimizer, val["giou"], record,
                                    cfg.to_dict(), state.best_path)
        state.best_giou, state.best_epoch = val["giou"], epoch
    state_list = [state.best_giou, state.best_epoch]
    state.best_giou, state.best_epoch = _broadcast(c, state_list)
    if c.accelerator.is_main_process:
        atomic_write_text(c.paths.outputs / f"metrics_epoch_{epoch}.json", json.dumps(record, indent=2))
        print(f"\nEpoch {epoch}/{cfg.num_epochs}")
        _print_block("Training Metrics", train_metrics)
        if val is not None:
            _print_block("Validation Metrics", val)
        if c.accelerator.trackers:
            c.accelerator.log({"train/loss": train_metrics["loss"], "train/giou": train_metrics["giou"],
                               **({"val/giou": val["giou"], "val/ciou": val["ciou"]} if val else {})}, step=epoch)
    _write_last(c, state)
    return record


def _broadcast(c: Components, values: list[float]) -> tuple[float, int]:
    if c.accelerator.num_processes == 1:
        return values[0], int(values[1])
    from accelerate.utils import broadcast_object_list

    out = broadcast_object_list(list(values), from_process=0)
    return float(out[0]), int(out[1])


# ---------------------------------------------------------------------- entry point
def _trim_train_log(path: Path, global_step: int) -> None:
    """Keep the records of ``train_log.jsonl`` up to ``global_step`` (a resumed run logs the later steps
    again) and drop a line cut by a kill."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and int(record.get("global_step", 0)) <= global_step:
            kept.append(line)
    atomic_write_text(path, "".join(f"{line}\n" for line in kept))


@dataclass
class ResumePlan:
    """What ``--resume_from_checkpoint`` resolved to, checked before anything is built or written."""

    folder: Path | None = None
    changes: dict[str, tuple[Any, Any]] = field(default_factory=dict)


def _saved_config(folder: Path, state: ckpt.TrainerState, root: Path) -> dict[str, Any] | None:
    """The config the checkpoint was trained with (its trainer state; a legacy one: outputs/config.yaml)."""
    if state.config is not None:
        return {**state.config, "num_processes": state.num_processes}
    legacy = root / "outputs" / "config.yaml"
    return load_yaml(legacy) if legacy.is_file() else None


def _plan_resume(cfg: TrainingConfig, num_processes: int) -> ResumePlan:
    """Resolve and verify the checkpoint to resume, and compare its config with ``cfg`` (ConfigError on a
    change that breaks exactness, unless ``allow_config_change``). ``latest`` with no checkpoint starts fresh
    only in a folder that holds no earlier run."""
    if not cfg.resume_from_checkpoint:
        return ResumePlan()
    root = Path(cfg.output_dir)
    folder = ckpt.resolve_resume(cfg.resume_from_checkpoint, root / "checkpoints")
    if folder is None:
        marker = previous_run_marker(root)
        if marker is not None:
            raise ConfigError(f"resume_from_checkpoint latest: {root} holds a run ({marker}) but no checkpoint to "
                              "resume (checkpoints/last is missing); start over with --overwrite_output_dir true, "
                              "or resume from a checkpoint folder")
        logger.info("resume_from_checkpoint=latest: no checkpoint yet in %s, starting fresh", root)
        return ResumePlan()
    state = ckpt.read_trainer_state(folder)
    current = {**cfg.to_dict(), "num_processes": num_processes}
    changes = ckpt.check_resume_config(_saved_config(folder, state, root), current, cfg.allow_config_change,
                                       folder)
    return ResumePlan(folder, changes)


def _apply_optimizer_changes(c: Components, cfg: TrainingConfig, changes: dict[str, Any]) -> None:
    """With ``allow_config_change``: a changed lr / weight decay / betas takes effect after the resume."""
    if not {"learning_rate", "weight_decay", "adam_beta1", "adam_beta2", "warmup_steps", "lr_schedule",
            "num_epochs"} & set(changes):
        return
    c.scheduler.base_lrs = [cfg.learning_rate] * len(c.optimizer.param_groups)
    for group, lmbda in zip(c.optimizer.param_groups, c.scheduler.lr_lambdas):
        group.update(initial_lr=cfg.learning_rate, weight_decay=cfg.weight_decay,
                     betas=(cfg.adam_beta1, cfg.adam_beta2), lr=cfg.learning_rate * lmbda(c.scheduler.last_epoch))
    c.scheduler._last_lr = [group["lr"] for group in c.optimizer.param_groups]


def _record_changes(path: Path, state: ckpt.TrainerState, changes: dict[str, tuple[Any, Any]]) -> None:
    """Append the accepted config changes to ``outputs/config_changes.json``."""
    history = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else []
    history.append({"global_step": state.global_step, "epoch": state.epoch, "time": time.time(),
                    "changes": {k: {"checkpoint": old, "new": new} for k, (old, new) in changes.items()}})
    atomic_write_text(path, json.dumps(history, indent=2, default=str))


def _resume(c: Components, cfg: TrainingConfig, plan: ResumePlan) -> tuple[ckpt.TrainerState, dict | None]:
    if plan.folder is None:
        return ckpt.TrainerState(), None
    folder = plan.folder
    if c.accelerator.is_main_process:
        ckpt.set_corrupt_aside(c.paths.checkpoints, folder)
    state = ckpt.load_last(c.accelerator, folder, c.scheduler)
    partial, state.partial = state.partial, None
    _apply_optimizer_changes(c, cfg, plan.changes)
    if c.accelerator.is_main_process:
        _trim_train_log(c.paths.outputs / "train_log.jsonl", state.global_step)
        if plan.changes:
            _record_changes(c.paths.outputs / "config_changes.json", state, plan.changes)
        print(f"Resumed from {folder}: epoch {state.epoch + 1}, step {state.step_in_epoch} "
              f"(global step {state.global_step})")
    return state, partial


def _epoch_records(c: Components, state: ckpt.TrainerState, records: list[dict]) -> list[dict]:
    """Every finished epoch's record: this process's, and those of earlier processes (a resumed run) read
    back from ``outputs/metrics_epoch_N.json``."""
    mine = {r["epoch"]: r for r in records}
    for epoch in range(1, state.epoch + 1):
        path = c.paths.outputs / f"metrics_epoch_{epoch}.json"
        if epoch not in mine and path.is_file():
            try:
                mine[epoch] = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as err:
                logger.warning("%s: unreadable (%s); left out of train_summary.json", path, err)
    return [mine[e] for e in sorted(mine)]


def applied_optimizer_steps(c: Components) -> int:
    """Optimizer updates actually applied: the DeepSpeed engine's step count, else AdamW's per-parameter
    ``step`` state (the highest). Equals ``global_step`` minus skipped steps when accumulation is right."""
    wrapped = getattr(c.accelerator, "deepspeed_engine_wrapped", None)
    if wrapped is not None:
        return int(wrapped.engine.global_steps)
    steps = [int(s["step"]) for s in c.optimizer.state.values() if isinstance(s, dict) and "step" in s]
    return max(steps, default=0)


def _rank_checksums(c: Components) -> list[float]:
    """One checksum of the trainable weights (and the prompt teacher's) per rank (equal on all ranks when DDP
    kept them in sync)."""
    from accelerate.utils import gather_object

    params = [p for p in c.unwrapped.parameters() if p.requires_grad]
    params += list(c.prompt_teacher.parameters()) if c.prompt_teacher is not None else []
    with torch.no_grad():
        total = sum(float(p.double().sum()) + float(p.double().abs().sum()) for p in params)
    return [float(x) for x in gather_object([total])] if c.accelerator.num_processes > 1 else [total]


def _data_summary(c: Components) -> dict[str, Any]:
    """Per split: usable items, files skipped at the scan and at load time, problem counts by kind."""
    sets = {"train": c.train_set, "val": c.val_loader.dataset if c.val_loader is not None else None}
    out: dict[str, Any] = {}
    for split, ds in sets.items():
        if ds is None:
            continue
        by_kind: dict[str, int] = {}
        for problem in ds.problems:
            key = f"{problem.kind} ({problem.severity})"
            by_kind[key] = by_kind.get(key, 0) + 1
        out[split] = {"usable": len(ds), "skipped": ds.num_skipped, "skipped_at_load": len(ds.load_failures),
                      "errors": sum(p.is_error for p in ds.problems),
                      "warnings": sum(not p.is_error for p in ds.problems), "problems_by_kind": by_kind,
                      "skipped_files": sorted({p.file for p in ds.problems if p.is_error} | set(ds.load_failures))}
    return out


def _summary(c: Components, state: ckpt.TrainerState, records: list[dict], stopped: bool,
             stop_reason: str | None) -> dict[str, Any]:
    """Write ``outputs/train_summary.json`` (main process) and return it."""
    checksums = _rank_checksums(c)
    num_processes = c.accelerator.num_processes
    updates = applied_optimizer_steps(c)
    backend = str(c.accelerator.distributed_type).replace("DistributedType.", "")
    # Release the DDP wrapper (its gloo/NCCL reducer) while every rank is still connected, then tear the
    # process group down together: a rank that outlives its peer can otherwise hang in that teardown.
    c.accelerator.wait_for_everyone()
    c.model = c.unwrapped
    c.accelerator.free_memory()
    c.accelerator.end_training()
    summary = {"output_dir": str(c.paths.root), "best_val_giou": state.best_giou, "best_epoch": state.best_epoch,
               "best_checkpoint": state.best_path, "global_step": state.global_step, "stopped_early": stopped,
               "stop_reason": stop_reason, "skipped_nonfinite_steps": state.skipped_nonfinite_steps,
               "fp16_overflow_steps": state.fp16_overflow_steps, "data": _data_summary(c),
               "epochs": _epoch_records(c, state, records), "has_validation": c.val_loader is not None,
               "num_processes": num_processes, "rank_param_checksums": checksums, "backend": backend,
               "gradient_accumulation_steps": c.accelerator.gradient_accumulation_steps,
               "optimizer_updates": updates}
    if c.accelerator.is_main_process:
        atomic_write_text(c.paths.outputs / "train_summary.json", json.dumps(summary, indent=2, default=str))
    return summary


def train(cfg: TrainingConfig, sources: dict[str, str] | None = None) -> dict[str, Any]:
    """Run training as configured; returns a summary (best gIoU, paths, per-epoch records, data counts).

    ``sources`` ({field: default | preset | yaml | cli}, from ``config_and_sources_from_args``) is written as
    ``outputs/config_sources.yaml`` beside the resolved ``config.yaml``; without it, sources are inferred.
    ``data_strict``: the train and val splits are checked first (images verified) and ONE DataError lists
    every bad file before any model is built. The run folder is locked for the whole run (``hold_run_folder``:
    a second train, resume or overwrite of a live run is refused). A resume is verified and its config compared
    before anything is built. TrainingStopped (non-finite steps) is raised after the summary, with
    ``stop_reason``, is written.
    """
    if cfg.data_strict:
        check_training_data(cfg.data_root)
    accelerator = make_accelerator(cfg)
    with hold_run_folder(Path(cfg.output_dir), accelerator):
        plan = _plan_resume(cfg, accelerator.num_processes)
        return _train(cfg, accelerator, plan, sources)


def _train(cfg: TrainingConfig, accelerator: Accelerator, plan: ResumePlan,
           sources: dict[str, str] | None = None) -> dict[str, Any]:
    c = _setup(cfg, accelerator, sources)
    state, partial = _resume(c, cfg, plan)
    if cfg.report_to and c.accelerator.is_main_process:
        c.accelerator.init_trackers("modlisa", config={k: v for k, v in cfg.to_dict().items()
                                                       if isinstance(v, (int, float, str, bool))})
    records: list[dict] = []
    streak, stopped = [0], False
    previous_handler = _Preemption.install()
    try:
        while state.epoch < cfg.num_epochs:
            train_metrics = _train_epoch(c, cfg, state, partial, streak)
            partial = None
            if train_metrics is None:
                stopped = True
                break
            records.append(_end_epoch(c, cfg, state, train_metrics))
    except TrainingStopped as stop:
        _summary(c, state, records, True, str(stop))
        raise
    finally:
        _Preemption.restore(previous_handler)
    reason = ("sigterm" if _Preemption.requested else "stop_after_steps") if stopped else None
    return _summary(c, state, records, stopped, reason)
