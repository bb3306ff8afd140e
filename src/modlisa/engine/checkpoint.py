"""Checkpoints: best model files, the resumable ``checkpoints/last`` folder, atomic writes, ``latest``.

Layout under ``checkpoint_dir``:
- ``best_model_epoch_{N}.pt``: trainable state dict, optimizer state dict, best val gIoU, metrics, config.
- ``last/``: Accelerate state (trainable weights only, optimizer, scheduler, RNG of every rank) plus
  ``trainer_state.json`` (epoch, position in the epoch, global step, best gIoU), written LAST: a folder
  without it is incomplete and is never resumed from.

Every file is written under a temporary name and renamed, so a process killed at any moment leaves the
previous checkpoint loadable: ``last`` is swapped in as ``last.tmp`` -> ``last`` with the previous one kept
as ``last.old`` during the swap, and ``resolve_resume("latest")`` only ever returns a complete folder.

Test-only hook: the environment variable ``MODLISA_TEST_SLEEP_IN_SAVE=POINT:SECONDS[:STEP]`` makes
``save_last`` sleep at ``POINT`` (in saves of global step >= STEP, default 0) so that a test can kill the
process there: ``tmp`` (``last.tmp`` written by Accelerate, ``trainer_state.json`` not yet) or ``swap``
(the previous ``last`` renamed to ``last.old``, ``last.tmp`` not yet renamed to ``last``). Never set it
outside tests.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import shutil
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from modlisa.model.io import WeightsError, _matches

logger = logging.getLogger(__name__)

TRAINER_STATE = "trainer_state.json"
LAST, LAST_TMP, LAST_OLD = "last", "last.tmp", "last.old"
TEST_SLEEP_ENV = "MODLISA_TEST_SLEEP_IN_SAVE"


class CheckpointError(ValueError):
    """A checkpoint folder is unreadable or corrupt: the message names the file."""


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


def _fsync_tree(folder: Path) -> None:
    """fsync every file under ``folder`` and the folder itself (contents durable before a rename)."""
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            with open(path, "rb") as fh:
                os.fsync(fh.fileno())
    _fsync_dir(folder)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file + fsync + rename."""
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


def load_trainable_into(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str, *,
                        allowed_missing: Iterable[str] = (), allowed_unexpected: Iterable[str] = ()
                        ) -> dict[str, list[str]]:
    """Load a trainable-only state dict into ``model`` in place; nothing is copied unless it matches.

    Missing keys (trainable parameters absent from ``state``) and unexpected keys (entries that are not
    trainable parameters) are logged; any not matched by ``allowed_missing`` / ``allowed_unexpected``
    (exact names or fnmatch patterns such as ``"sam.*"``) raise WeightsError naming ``source`` and the keys.
    Shape mismatches always raise. Returns ``{"loaded", "missing", "unexpected"}`` name lists.
    """
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    missing, unexpected = sorted(set(params) - set(state)), sorted(set(state) - set(params))
    if missing or unexpected:
        logger.warning("%s: %d missing key(s) %s, %d unexpected key(s) %s", source, len(missing), missing[:10],
                       len(unexpected), unexpected[:10])
    bad_missing = [n for n in missing if not _matches(n, allowed_missing)]
    bad_unexpected = [n for n in unexpected if not _matches(n, allowed_unexpected)]
    if bad_missing or bad_unexpected:
        raise WeightsError(
            f"{source}: checkpoint does not match the model's trainable parameters "
            f"(missing {len(bad_missing)}: {bad_missing[:5]}, unexpected {len(bad_unexpected)}: {bad_unexpected[:5]}); "
            "was it saved with the same model preset and adapter flags (use_lora, lora_*, train_embeddings, "
            "freeze_*)?"
        )
    loaded = [n for n in params if n in state]
    bad_shapes = [f"{n}: checkpoint {tuple(state[n].shape)} vs model {tuple(params[n].shape)}"
                  for n in loaded if tuple(state[n].shape) != tuple(params[n].shape)]
    if bad_shapes:
        raise WeightsError(f"{source}: {len(bad_shapes)} shape mismatch(es): {'; '.join(bad_shapes[:5])}")
    with torch.no_grad():
        for name in loaded:
            params[name].copy_(state[name].to(params[name].device, params[name].dtype))
    return {"loaded": loaded, "missing": missing, "unexpected": unexpected}


def read_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file; CheckpointError naming it when it is unreadable."""
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"{path}: not a readable safetensors file ({err})") from err


def read_torch_file(path: str | Path) -> Any:
    """``torch.load`` of a checkpoint file on CPU; CheckpointError naming it when it is unreadable."""
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except (pickle.UnpicklingError, EOFError, OSError, RuntimeError, ValueError) as err:
        raise CheckpointError(f"{path}: not a readable checkpoint file ({err})") from err


# ---------------------------------------------------------------------- Accelerate hooks
def register_trainable_only_hooks(accelerator: Any, unwrapped: torch.nn.Module) -> None:
    """Make ``accelerator.save_state``/``load_state`` store only the trainable parameters of the model.

    A 7B LM with LoRA would otherwise write its frozen 14 GB every checkpoint.
    """

    from modlisa.model.random_init import load_frozen_random_file, save_frozen_random_file

    def save_hook(models: list, weights: list, output_dir: str) -> None:
        for i, _ in enumerate(models):
            if i < len(weights):
                weights[i].clear()
                weights[i].update(trainable_state(unwrapped))
        if accelerator.is_main_process:  # frozen random-initialised weights, which no pretrained source holds
            save_frozen_random_file(unwrapped, output_dir)

    def load_hook(models: list, input_dir: str) -> None:
        path = Path(input_dir) / "model.safetensors"
        load_trainable_into(unwrapped, read_weights(path), str(path))
        load_frozen_random_file(unwrapped, input_dir)
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
        _test_sleep("tmp", state.global_step)
        atomic_write_text(tmp / TRAINER_STATE, json.dumps(asdict(state), indent=2))
        _fsync_tree(tmp)
        if last.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.replace(last, old)
            _test_sleep("swap", state.global_step)
        os.replace(tmp, last)
        _fsync_dir(root)
        shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return last


def _test_sleep(point: str, global_step: int) -> None:
    """Test-only: sleep at ``point`` when ``MODLISA_TEST_SLEEP_IN_SAVE=POINT:SECONDS[:STEP]`` names it."""
    spec = os.environ.get(TEST_SLEEP_ENV)
    if not spec:
        return
    name, seconds, min_step = (spec.split(":") + ["0", "0"])[:3]
    if name == point and global_step >= int(min_step or 0):
        logger.warning("%s=%s: sleeping %s s at save point %r of step %d (test hook)", TEST_SLEEP_ENV, spec,
                       seconds, point, global_step)
        time.sleep(float(seconds or 0))


def is_complete(folder: Path) -> bool:
    """True for a folder ``save_last`` finished: ``trainer_state.json`` (written last) and the weights."""
    return (folder / TRAINER_STATE).is_file() and (folder / "model.safetensors").is_file()


def resolve_resume(spec: str, checkpoint_dir: str | Path) -> Path | None:
    """``latest`` -> the newest complete ``last`` folder (or ``last.old`` after a crash mid-swap).

    Returns None for ``latest`` when no checkpoint exists yet (fresh start). A PATH must be complete; a
    run folder (holding ``checkpoints/``) stands for its latest checkpoint.
    """
    root = Path(checkpoint_dir)
    if spec == "latest":
        for name in (LAST, LAST_OLD):
            if is_complete(root / name):
                return root / name
        if (root / LAST).exists():
            logger.warning("%s is incomplete (no %s or model.safetensors): not resumable", root / LAST,
                           TRAINER_STATE)
        return None
    path = Path(spec)
    if (path / "checkpoints").is_dir() and not is_complete(path):
        latest = resolve_resume("latest", path / "checkpoints")
        if latest is None:
            raise FileNotFoundError(f"resume_from_checkpoint {spec!r}: the run folder has no complete checkpoint")
        return latest
    if not path.is_dir():
        raise FileNotFoundError(f"resume_from_checkpoint {spec!r} is not a folder")
    if not is_complete(path):
        raise FileNotFoundError(
            f"resume_from_checkpoint {spec!r} is incomplete (no {TRAINER_STATE} or model.safetensors): "
            "it was probably interrupted while being written; use `latest`"
        )
    return path


def read_trainer_state(folder: Path) -> TrainerState:
    """The ``TrainerState`` of a checkpoint folder; CheckpointError naming the file when it is corrupt."""
    path = Path(folder) / TRAINER_STATE
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{path}: unreadable trainer state ({err})") from err
    known = {f.name for f in fields(TrainerState)}
    if not isinstance(values, dict) or not set(values) <= known:
        extra = sorted(set(values) - known) if isinstance(values, dict) else type(values).__name__
        raise CheckpointError(f"{path}: not a modlisa trainer state (unexpected {extra})")
    return TrainerState(**values)


def last_good_checkpoint(checkpoint_dir: str | Path) -> Path | None:
    """The checkpoint ``--resume_from_checkpoint latest`` would load now, or None."""
    return resolve_resume("latest", checkpoint_dir)


# ---------------------------------------------------------------------- best model
def save_best(checkpoint_dir: str | Path, epoch: int, model: torch.nn.Module, optimizer: Any,
              best_giou: float, metrics: dict, config: dict, previous: str | None) -> str:
    """Write ``best_model_epoch_{epoch}.pt`` (1-based epoch in the name), then remove ``previous``."""
    path = Path(checkpoint_dir) / f"best_model_epoch_{epoch}.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    from modlisa.model.random_init import FROZEN_RANDOM_KEY, frozen_random_state

    atomic_torch_save(
        {
            "model": trainable_state(model),
            FROZEN_RANDOM_KEY: frozen_random_state(model),  # random-initialised frozen weights (may be empty)
            "optimizer": optimizer.state_dict() if optimizer is not None else {},  # None: DeepSpeed (sharded)
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
