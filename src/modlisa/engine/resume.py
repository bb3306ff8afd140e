"""``--resume_from_checkpoint``: resolve and verify the checkpoint and compare its config before anything is
built (``plan_resume``), then load it into a built run (``resume``)."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modlisa.atomic import atomic_write_text
from modlisa.config import ConfigError, TrainingConfig, load_yaml
from modlisa.engine import checkpoint as ckpt
from modlisa.engine.build import RunParts
from modlisa.engine.run_folder import RunFolder, previous_run_marker

logger = logging.getLogger(__name__)


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
    legacy = RunFolder(root).config
    return load_yaml(legacy) if legacy.is_file() else None


def plan_resume(cfg: TrainingConfig, num_processes: int) -> ResumePlan:
    """Resolve and verify the checkpoint to resume, and compare its config with ``cfg`` (ConfigError on a
    change that breaks exactness, unless ``allow_config_change``). ``latest`` with no checkpoint starts fresh
    only in a folder that holds no earlier run."""
    if not cfg.resume_from_checkpoint:
        return ResumePlan()
    root = Path(cfg.output_dir)
    folder = ckpt.resolve_resume(cfg.resume_from_checkpoint, RunFolder(root).checkpoints)
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


def _apply_optimizer_changes(c: RunParts, cfg: TrainingConfig, changes: dict[str, Any]) -> None:
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


def resume(c: RunParts, cfg: TrainingConfig, plan: ResumePlan) -> tuple[ckpt.TrainerState, dict | None]:
    if plan.folder is None:
        return ckpt.TrainerState(), None
    folder = plan.folder
    if c.accelerator.is_main_process:
        ckpt.set_corrupt_aside(c.paths.checkpoints, folder)
    state = ckpt.load_last(c.accelerator, folder, c.scheduler)
    partial, state.partial = state.partial, None
    _apply_optimizer_changes(c, cfg, plan.changes)
    if c.accelerator.is_main_process:
        _trim_train_log(c.paths.train_log, state.global_step)
        if plan.changes:
            _record_changes(c.paths.config_changes, state, plan.changes)
        print(f"Resumed from {folder}: epoch {state.epoch + 1}, step {state.step_in_epoch} "
              f"(global step {state.global_step})")
    return state, partial
