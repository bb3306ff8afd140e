"""The resumable ``checkpoints/last`` folder: write it atomically, find a good one, load it, compare configs.

Layout of ``last/`` (weights I/O helpers from ``modlisa.weights``):
- Accelerate's state: ``model.safetensors`` (trainable weights only), ``optimizer.bin``, ``random_states_{rank}.pkl``
  (and ``scaler.pt`` with fp16); these are read back with ``torch.load(weights_only=True)`` only.
- ``trainer_state.json``: epoch, position in the epoch, global step, best gIoU, the scheduler state and the
  run's config (plain JSON, ``format_version`` 2).
- ``SHA256SUMS``: the SHA-256 of every file above, written LAST: a folder without it is incomplete and is never
  resumed from; every listed file is verified (and no unlisted file accepted) before anything is loaded.

The folder is written as ``last.tmp``, then swapped in: the previous ``last`` becomes ``last.old`` and is KEPT
(the previous good state), so a corrupt ``last`` falls back to it. A kill at any moment leaves a complete
folder that ``find_latest`` returns. A failed write (disk full, any OSError) removes ``last.tmp`` and raises
``WriteError``: ``last`` and ``last.old`` are untouched.

Tests inject save hooks with ``add_save_hook`` (called at the points ``tmp`` and ``swap``); nothing here
reads the environment.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch

from modlisa.atomic import WriteError, atomic_write_text, fsync_dir, remove_quietly, write_error
from modlisa.config import ConfigError
from modlisa.weights.files import (
    MANIFEST,
    MODEL_FILE,
    TORCH_LOAD_ERRORS,
    TRAINER_STATE,
    CheckpointError,
    WeightsError,
    read_json_file,
    read_safetensors,
    read_torch_safely,
    verify_folder,
    write_manifest,
    write_safetensors,
)
from modlisa.weights.trainable import load_state_into, trainable_state

logger = logging.getLogger(__name__)

LAST, LAST_TMP, LAST_OLD, LAST_CORRUPT = "last", "last.tmp", "last.old", "last.corrupt"
FORMAT_VERSION = 2
LEGACY_SCHEDULER_FILE = "custom_checkpoint_0.pkl"  # the scheduler state of modlisa < format 2

__all__ = ["CheckpointError", "TrainerState", "add_save_hook", "find_latest", "load_last", "save_last"]


@dataclass
class TrainerState:
    """Where training stands: the next optimizer step is ``step_in_epoch`` of ``epoch`` (0-based)."""

    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0
    best_giou: float = -1.0
    best_epoch: int = -1
    best_path: str | None = None
    skipped_nonfinite_steps: int = 0  # all skipped optimizer steps (non-finite loss/gradient, fp16 overflow)
    fp16_overflow_steps: int = 0  # of which: steps the fp16 grad scaler skipped
    partial: dict | None = None  # running sums of the interrupted epoch's training metrics
    scheduler: dict | None = None  # the LR scheduler's state_dict
    config: dict | None = None  # the run's TrainingConfig (compared on resume)
    num_processes: int = 1
    format_version: int = FORMAT_VERSION


# ---------------------------------------------------------------------- injectable save hooks (tests)
SaveHook = Callable[[str, int], None]
_save_hooks: list[SaveHook] = []


def add_save_hook(hook: SaveHook) -> Callable[[], None]:
    """Call ``hook(point, global_step)`` at the save points ``tmp`` (``last.tmp`` written by Accelerate, not
    yet completed) and ``swap`` (``last`` renamed to ``last.old``, ``last.tmp`` not yet renamed). For tests
    (e.g. to kill the process there). Returns a function that removes the hook."""
    _save_hooks.append(hook)
    return lambda: _save_hooks.remove(hook) if hook in _save_hooks else None


def _at(point: str, global_step: int) -> None:
    for hook in list(_save_hooks):
        hook(point, global_step)


# ---------------------------------------------------------------------- Accelerate hooks
PROMPT_TEACHER_FILE = "prompt_teacher.safetensors"  # the training-only prompt teacher (engine/prompt_teacher.py)


def register_trainable_only_hooks(accelerator: Any, unwrapped: torch.nn.Module,
                                  prompt_teacher: torch.nn.Module | None = None) -> None:
    """Make ``accelerator.save_state``/``load_state`` store only the trainable parameters of the model.

    A 7B LM with LoRA would otherwise write its frozen 14 GB every checkpoint. A run's ``prompt_teacher``
    (not part of the model) is saved beside them in ``prompt_teacher.safetensors``, so that resume is exact.
    """

    from modlisa.model.random_init import load_frozen_random_file, save_frozen_random_file

    def save_hook(models: list, weights: list, output_dir: str) -> None:
        for i, _ in enumerate(models):
            if i < len(weights):
                weights[i].clear()
                weights[i].update(trainable_state(unwrapped))
        if accelerator.is_main_process:  # frozen random-initialised weights, which no pretrained source holds
            save_frozen_random_file(unwrapped, output_dir)
            if prompt_teacher is not None:
                state = {k: v.detach().cpu().contiguous() for k, v in prompt_teacher.state_dict().items()}
                write_safetensors(state, Path(output_dir) / PROMPT_TEACHER_FILE, kind="prompt_teacher")

    def load_hook(models: list, input_dir: str) -> None:
        path = Path(input_dir) / MODEL_FILE
        load_state_into(unwrapped, read_safetensors(path), str(path))
        load_frozen_random_file(unwrapped, input_dir)
        if prompt_teacher is not None:
            teacher_path = Path(input_dir) / PROMPT_TEACHER_FILE
            if not teacher_path.is_file():
                raise CheckpointError(f"{input_dir}: no {PROMPT_TEACHER_FILE}, but this run has "
                                      "seg_prompt_teacher_fraction > 0: resume with the checkpoint's config")
            load_state_into(prompt_teacher, read_safetensors(teacher_path), str(teacher_path))
        models.clear()  # loaded here; Accelerate must not load the full state dict again

    accelerator.register_save_state_pre_hook(save_hook)
    accelerator.register_load_state_pre_hook(load_hook)


# ---------------------------------------------------------------------- write
def _any_rank(accelerator: Any, flag: bool) -> bool:
    """True on every rank when ``flag`` holds on any rank."""
    if getattr(accelerator, "num_processes", 1) == 1:
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=accelerator.device)
    return bool(accelerator.reduce(value, reduction="sum").item() > 0)


def _complete_tmp(tmp: Path, state: TrainerState) -> None:
    """Write ``trainer_state.json`` then ``SHA256SUMS`` (the commit marker) into ``tmp``."""
    _at("tmp", state.global_step)
    atomic_write_text(tmp / TRAINER_STATE, _state_json(state))
    write_manifest(tmp)


def _swap_in(root: Path, state: TrainerState) -> Path:
    """``last`` -> ``last.old`` (the previous one, kept), ``last.tmp`` -> ``last``."""
    tmp, last, old = root / LAST_TMP, root / LAST, root / LAST_OLD
    if last.exists():
        remove_quietly(old)
        os.replace(last, old)
        _at("swap", state.global_step)
    os.replace(tmp, last)
    fsync_dir(root)
    return last


def save_last(accelerator: Any, checkpoint_dir: str | Path, state: TrainerState) -> Path:
    """Write ``checkpoint_dir/last`` atomically on every rank's behalf; returns its path.

    All ranks call this (Accelerate writes each rank's RNG state). A failure on any rank removes ``last.tmp``
    and raises WriteError on every rank; ``last`` and ``last.old`` stay as they were.
    """
    root = Path(checkpoint_dir)
    tmp = root / LAST_TMP
    if accelerator.is_main_process:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    error: BaseException | None = None
    try:
        accelerator.save_state(str(tmp))
    except (OSError, RuntimeError) as err:
        error = err
    accelerator.wait_for_everyone()
    if _any_rank(accelerator, error is not None):
        if accelerator.is_main_process:
            remove_quietly(tmp)
        raise write_error(tmp, error or OSError("another process failed to write its part"), "write") from error
    last = root / LAST
    if accelerator.is_main_process:
        try:
            _complete_tmp(tmp, state)
            last = _swap_in(root, state)
        except OSError as err:
            remove_quietly(tmp)
            raise err if isinstance(err, WriteError) else write_error(root / LAST, err) from err
    accelerator.wait_for_everyone()
    return last


def _state_json(state: TrainerState) -> str:
    return json.dumps(asdict(state), indent=2)


# ---------------------------------------------------------------------- find
def is_complete(folder: Path) -> bool:
    """True for a folder ``save_last`` finished (SHA256SUMS written last), or a complete legacy folder."""
    folder = Path(folder)
    if not ((folder / TRAINER_STATE).is_file() and (folder / MODEL_FILE).is_file()):
        return False
    if (folder / MANIFEST).is_file():
        return True
    try:
        values = read_json_file(folder / TRAINER_STATE, "trainer state")
    except CheckpointError:
        return False
    return isinstance(values, dict) and "format_version" not in values


def _check(folder: Path) -> None:
    """CheckpointError when ``folder`` is not a complete, verified checkpoint."""
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: not a folder")
    if not is_complete(folder):
        raise CheckpointError(f"{folder}: incomplete (no {TRAINER_STATE}, {MODEL_FILE} or {MANIFEST}): it was "
                              "interrupted while being written")
    verify_folder(folder)
    read_trainer_state(folder)


def find_latest(checkpoint_dir: str | Path) -> Path | None:
    """The newest GOOD checkpoint: ``last``, else ``last.old`` (a crash mid-swap, or a corrupt ``last``).

    Candidates are verified (SHA256SUMS); one that fails is logged and skipped. Returns None when neither
    exists; raises CheckpointError naming each candidate's problem when some exist but none is good.
    """
    root = Path(checkpoint_dir)
    problems = []
    for name in (LAST, LAST_OLD):
        folder = root / name
        if not folder.exists():
            continue
        try:
            _check(folder)
        except CheckpointError as err:
            problems.append(str(err))
            continue
        for problem in problems:
            logger.warning("skipping a bad checkpoint: %s; using the previous one, %s", problem, folder)
        return folder
    if problems:
        raise CheckpointError(f"no good checkpoint to resume in {root}: {' | '.join(problems)}. Resume from another "
                              "checkpoint folder, or start over with --overwrite_output_dir true")
    return None


def resolve_resume(spec: str, checkpoint_dir: str | Path) -> Path | None:
    """``latest`` -> ``find_latest`` (None when there is no checkpoint yet). A PATH must be a good checkpoint
    folder; a run folder (holding ``checkpoints/``) stands for its latest checkpoint."""
    if spec == "latest":
        return find_latest(checkpoint_dir)
    path = Path(spec)
    if (path / "checkpoints").is_dir() and not (path / TRAINER_STATE).exists():
        latest = find_latest(path / "checkpoints")
        if latest is None:
            raise FileNotFoundError(f"resume_from_checkpoint {spec!r}: the run folder has no complete checkpoint")
        return latest
    if not path.is_dir():
        raise FileNotFoundError(f"resume_from_checkpoint {spec!r} is not a folder")
    if not is_complete(path):
        raise FileNotFoundError(
            f"resume_from_checkpoint {spec!r} is incomplete (no {TRAINER_STATE}, {MODEL_FILE} or {MANIFEST}): "
            "it was probably interrupted while being written; use `latest`"
        )
    _check(path)
    return path


def last_good_checkpoint(checkpoint_dir: str | Path) -> Path | None:
    """The checkpoint ``--resume_from_checkpoint latest`` would load now (verified), or None."""
    try:
        return find_latest(checkpoint_dir)
    except CheckpointError:
        return None


def set_corrupt_aside(checkpoint_dir: Path, used: Path) -> None:
    """After falling back to ``last.old``: move a bad ``last`` to ``last.corrupt`` (kept for inspection), so
    that the next save keeps ``last.old`` as the previous good checkpoint."""
    last = checkpoint_dir / LAST
    if used.name != LAST_OLD or Path(used).parent.resolve() != Path(checkpoint_dir).resolve() or not last.exists():
        return
    aside = checkpoint_dir / LAST_CORRUPT
    remove_quietly(aside)
    os.replace(last, aside)
    logger.warning("moved the bad %s to %s (kept for inspection; delete it when done)", last, aside)


# ---------------------------------------------------------------------- read
def read_trainer_state(folder: Path) -> TrainerState:
    """The ``TrainerState`` of a checkpoint folder; CheckpointError naming the file when it is corrupt."""
    path = Path(folder) / TRAINER_STATE
    values = read_json_file(path, "trainer state")
    known = {f.name: f for f in fields(TrainerState)}
    if not isinstance(values, dict) or not set(values) <= set(known):
        extra = sorted(set(values) - set(known)) if isinstance(values, dict) else type(values).__name__
        raise CheckpointError(f"{path}: not a modlisa trainer state (unexpected {extra})")
    values.setdefault("format_version", 1)
    numbers = ("epoch", "step_in_epoch", "global_step", "best_epoch", "skipped_nonfinite_steps",
               "fp16_overflow_steps", "num_processes")
    bad = [k for k in numbers if k in values and (not isinstance(values[k], int) or isinstance(values[k], bool)
                                                  or values[k] < (-1 if k == "best_epoch" else 0))]
    if bad or not isinstance(values.get("best_giou", -1.0), (int, float)):
        raise CheckpointError(f"{path}: not a modlisa trainer state (bad value of {', '.join(bad) or 'best_giou'})")
    return TrainerState(**values)


def _check_rng_files(folder: Path, process_index: int) -> None:
    """Accelerate swallows a failed RNG load (the run would then not be exact): read this rank's file first,
    with ``weights_only=True`` (numpy arrays allowed, nothing else)."""
    from accelerate.utils.other import load as accelerate_load

    path = folder / f"random_states_{process_index}.pkl"
    if not path.is_file():
        raise CheckpointError(f"{path}: missing (the checkpoint was written by fewer processes?); resume with the "
                              "same number of processes")
    try:
        accelerate_load(path, map_location="cpu")
    except TORCH_LOAD_ERRORS as err:
        reason = " ".join(str(err).split())[:160] or type(err).__name__
        raise CheckpointError(f"{path}: not a readable RNG state with weights_only=True ({reason}); use another "
                              "checkpoint") from None


def load_last(accelerator: Any, folder: Path, scheduler: Any) -> TrainerState:
    """Load a verified checkpoint folder into the prepared model/optimizer/scaler, the scheduler and the RNGs.

    Every file goes through checksums first; optimizer, scaler and RNG states are read with
    ``weights_only=True`` (Accelerate's reader), the weights from safetensors, the rest from JSON.
    """
    _check(folder)
    state = read_trainer_state(folder)
    _check_rng_files(folder, accelerator.process_index)
    try:
        accelerator.load_state(str(folder))
    except (WeightsError, FileNotFoundError):
        raise
    except TORCH_LOAD_ERRORS as err:
        reason = " ".join(str(err).split())[:200] or type(err).__name__
        raise CheckpointError(f"{folder}: cannot load the training state ({reason}); use another checkpoint") from None
    _load_scheduler(folder, state, scheduler)
    return state


def _load_scheduler(folder: Path, state: TrainerState, scheduler: Any) -> None:
    values = state.scheduler
    if values is None and (folder / LEGACY_SCHEDULER_FILE).is_file():
        values = read_torch_safely(folder / LEGACY_SCHEDULER_FILE, what="scheduler state")
    if not isinstance(values, dict):
        raise CheckpointError(f"{folder / TRAINER_STATE}: no scheduler state; the checkpoint cannot be resumed exactly")
    try:
        scheduler.load_state_dict(values)
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{folder / TRAINER_STATE}: bad scheduler state ({err})") from None
    state.scheduler = None


# ---------------------------------------------------------------------- config changes on resume
# Fields that may change on resume without changing the trained weights (logging, saving, I/O, stopping).
RESUME_SAFE_FIELDS = frozenset({
    "resume_from_checkpoint", "overwrite_output_dir", "allow_config_change", "output_dir", "log_every_steps",
    "eval_every_steps", "save_every_steps", "num_workers", "report_to", "stop_after_steps", "max_nonfinite_steps",
    "data_strict", "sam_cache_dir", "max_val_samples",
})


def config_changes(saved: dict[str, Any], current: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """``{field: (checkpoint value, new value)}`` of the changes that break an exact resume."""
    return {name: (saved.get(name), value) for name, value in current.items()
            if name not in RESUME_SAFE_FIELDS and name in saved and not _same_value(name, saved[name], value)}


def _same_value(name: str, saved: Any, current: Any) -> bool:
    """Equal values; ``data_root`` compared as resolved paths (runs record it absolute, older runs relative)."""
    if name == "data_root" and isinstance(saved, str) and isinstance(current, str):
        return Path(saved).resolve() == Path(current).resolve()
    return saved == current


def check_resume_config(saved: dict[str, Any] | None, current: dict[str, Any], allow: bool, source: Path
                        ) -> dict[str, tuple[Any, Any]]:
    """Refuse (ConfigError) a resume whose config differs from the checkpoint's in a field that breaks
    exactness, unless ``allow``; returns the changes (logged as warnings when allowed)."""
    if saved is None:
        logger.warning("%s holds no config (older modlisa): config changes cannot be checked", source)
        return {}
    changes = config_changes(saved, current)
    if changes and not allow:
        listed = ", ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in sorted(changes.items()))
        raise ConfigError(f"resume from {source}: the config differs from the checkpoint's ({listed}); an exact "
                          "resume needs the run's own config (outputs/config.yaml). Undo the change, or pass "
                          "--allow_config_change true to continue with it (recorded in outputs/config_changes.json)")
    for name, (old, new) in sorted(changes.items()):
        logger.warning("resume: %s changed from %r to %r (allow_config_change: the run is no longer exact)",
                       name, old, new)
    return changes
