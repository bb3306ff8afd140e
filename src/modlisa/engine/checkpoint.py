"""Checkpoints: best model files, the resumable ``checkpoints/last`` folder, atomic writes, ``latest``.

Layout under ``checkpoint_dir``:
- ``best_model_epoch_{N}.pt``: trainable state dict, optimizer state dict, best val gIoU, metrics, config.
- ``last/``: Accelerate state (trainable weights only, optimizer, scheduler, RNG of every rank) plus
  ``trainer_state.json`` (epoch, position in the epoch, global step, best gIoU), written LAST: a folder
  without it is incomplete and is never resumed from.

Every file is written under a temporary name and renamed, so a process killed at any moment leaves the
previous checkpoint loadable.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

logger = logging.getLogger(__name__)

TRAINER_STATE = "trainer_state.json"
LAST, LAST_TMP, LAST_OLD = "last", "last.tmp", "last.old"


@dataclass
class TrainerState:
    """Where training stands: the next optimizer step is ``step_in_epoch`` of ``epoch`` (0-based)."""

    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0
    best_giou: float = -1.0
    best_epoch: int = -1
    best_path: str | None = None
    skipped_nonfinite_steps: int = 0
    partial: dict | None = None  # running sums of the interrupted epoch's training metrics


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` to ``path`` through a temporary file + fsync + rename."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as fh:
        torch.save(obj, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def atomic_write_text(path: str | Path, text: str) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def trainable_names(model: torch.nn.Module) -> list[str]:
    return [n for n, p in model.named_parameters() if p.requires_grad]


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The trainable parameters of ``model`` (unwrapped), detached, on CPU."""
    return {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}


def load_trainable_into(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load a trainable-only state dict; raise naming ``source`` when keys are missing or unexpected."""
    expected = set(trainable_names(model))
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise RuntimeError(
            f"{source}: checkpoint does not match the model's trainable parameters "
            f"(missing {len(missing)}: {missing[:5]}, unexpected {len(unexpected)}: {unexpected[:5]}); "
            "was it saved with the same model preset and adapter flags?"
        )
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in state.items():
            params[name].copy_(value.to(params[name].device, params[name].dtype))


# ---------------------------------------------------------------------- Accelerate hooks
def register_trainable_only_hooks(accelerator: Any, unwrapped: torch.nn.Module) -> None:
    """Make ``accelerator.save_state``/``load_state`` store only the trainable parameters of the model.

    A 7B LM with LoRA would otherwise write its frozen 14 GB every checkpoint.
    """

    def save_hook(models: list, weights: list, output_dir: str) -> None:
        for i, _ in enumerate(models):
            if i < len(weights):
                weights[i].clear()
                weights[i].update(trainable_state(unwrapped))

    def load_hook(models: list, input_dir: str) -> None:
        path = Path(input_dir) / "model.safetensors"
        load_trainable_into(unwrapped, load_file(str(path)), str(path))
        models.clear()  # loaded here; Accelerate must not load the full state dict again

    accelerator.register_save_state_pre_hook(save_hook)
    accelerator.register_load_state_pre_hook(load_hook)


# ---------------------------------------------------------------------- last/ (resumable)
def save_last(accelerator: Any, checkpoint_dir: str | Path, state: TrainerState) -> Path:
    """Write ``checkpoint_dir/last`` atomically on every rank's behalf; returns its path.

    All ranks call this (Accelerate writes each rank's RNG state). The folder is written as
    ``last.tmp``, completed with ``trainer_state.json``, then swapped in by the main process.
    """
    root = Path(checkpoint_dir)
    tmp, last, old = root / LAST_TMP, root / LAST, root / LAST_OLD
    if accelerator.is_main_process:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        atomic_write_text(tmp / TRAINER_STATE, json.dumps(asdict(state), indent=2))
        if last.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.replace(last, old)
        os.replace(tmp, last)
        shutil.rmtree(old, ignore_errors=True)
        _fsync_dir(root)
    accelerator.wait_for_everyone()
    return last


def is_complete(folder: Path) -> bool:
    return (folder / TRAINER_STATE).is_file() and (folder / "model.safetensors").is_file()


def resolve_resume(spec: str, checkpoint_dir: str | Path) -> Path | None:
    """``latest`` -> the newest complete ``last`` folder (or ``last.old`` after a crash mid-swap).

    Returns None for ``latest`` when no checkpoint exists yet (fresh start). A PATH must be complete.
    """
    root = Path(checkpoint_dir)
    if spec == "latest":
        for name in (LAST, LAST_OLD):
            if is_complete(root / name):
                return root / name
        return None
    path = Path(spec)
    if not path.is_dir():
        raise FileNotFoundError(f"resume_from_checkpoint {spec!r} is not a folder")
    if not is_complete(path):
        raise FileNotFoundError(
            f"resume_from_checkpoint {spec!r} is incomplete (no {TRAINER_STATE} or model.safetensors): "
            "it was probably interrupted while being written; use `latest`"
        )
    return path


def read_trainer_state(folder: Path) -> TrainerState:
    return TrainerState(**json.loads((folder / TRAINER_STATE).read_text(encoding="utf-8")))


# ---------------------------------------------------------------------- best model
def save_best(checkpoint_dir: str | Path, epoch: int, model: torch.nn.Module, optimizer: Any,
              best_giou: float, metrics: dict, config: dict, previous: str | None) -> str:
    """Write ``best_model_epoch_{epoch}.pt`` (1-based epoch in the name), then remove ``previous``."""
    path = Path(checkpoint_dir) / f"best_model_epoch_{epoch}.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_torch_save(
        {
            "model": trainable_state(model),
            "optimizer": optimizer.state_dict(),
            "best_val_giou": best_giou,
            "epoch": epoch,
            "metrics": metrics,
            "config": config,
        },
        path,
    )
    if previous and Path(previous) != path and Path(previous).exists():
        Path(previous).unlink()
    logger.info("saved best model (val gIoU %.4f) to %s", best_giou, path)
    return str(path)
