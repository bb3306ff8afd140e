"""``outputs/train_summary.json``: the run's outcome (best model, steps, skipped steps, data counts, per-epoch
records, per-rank weight checksums), written when training ends however it ends."""

from __future__ import annotations

import json
import logging
from typing import Any

import torch

from modlisa.atomic import atomic_write_text
from modlisa.engine import checkpoint as ckpt
from modlisa.engine.build import RunParts

logger = logging.getLogger(__name__)


def _epoch_records(c: RunParts, state: ckpt.TrainerState, records: list[dict]) -> list[dict]:
    """Every finished epoch's record: this process's, and those of earlier processes (a resumed run) read
    back from ``outputs/metrics_epoch_N.json``."""
    mine = {r["epoch"]: r for r in records}
    for epoch in range(1, state.epoch + 1):
        path = c.paths.metrics_epoch(epoch)
        if epoch not in mine and path.is_file():
            try:
                mine[epoch] = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as err:
                logger.warning("%s: unreadable (%s); left out of train_summary.json", path, err)
    return [mine[e] for e in sorted(mine)]


def applied_optimizer_steps(c: RunParts) -> int:
    """Optimizer updates actually applied: the DeepSpeed engine's step count, else AdamW's per-parameter
    ``step`` state (the highest). Equals ``global_step`` minus skipped steps when accumulation is right."""
    wrapped = getattr(c.accelerator, "deepspeed_engine_wrapped", None)
    if wrapped is not None:
        return int(wrapped.engine.global_steps)
    steps = [int(s["step"]) for s in c.optimizer.state.values() if isinstance(s, dict) and "step" in s]
    return max(steps, default=0)


def _rank_checksums(c: RunParts) -> list[float]:
    """One checksum of the trainable weights (and the prompt teacher's) per rank (equal on all ranks when DDP
    kept them in sync)."""
    from accelerate.utils import gather_object

    params = [p for p in c.unwrapped.parameters() if p.requires_grad]
    params += list(c.prompt_teacher.parameters()) if c.prompt_teacher is not None else []
    with torch.no_grad():
        total = sum(float(p.double().sum()) + float(p.double().abs().sum()) for p in params)
    return [float(x) for x in gather_object([total])] if c.accelerator.num_processes > 1 else [total]


def _data_summary(c: RunParts) -> dict[str, Any]:
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


def write_summary(c: RunParts, state: ckpt.TrainerState, records: list[dict], stopped: bool,
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
        atomic_write_text(c.paths.train_summary, json.dumps(summary, indent=2, default=str))
    return summary
