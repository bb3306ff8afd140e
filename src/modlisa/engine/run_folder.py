"""The run folder of a training run: refuse to mix a fresh run into an earlier one's files."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from modlisa.config import ConfigError

logger = logging.getLogger(__name__)

RUN_MARKERS = ("outputs/train_log.jsonl", "outputs/metrics_epoch_1.json", "checkpoints/last")


def previous_run_marker(root: Path) -> Path | None:
    """The first file showing that ``root`` already holds a training run, or None."""
    for marker in RUN_MARKERS:
        if (root / marker).exists():
            return root / marker
    return None


def prepare_run_folder(root: Path, *, resuming: bool, overwrite: bool, main_process: bool = True) -> None:
    """Make ``root/outputs`` and ``root/checkpoints`` ready for a run (every rank calls it; rank 0 writes).

    A fresh run (not resuming) into a folder that already holds a run raises ConfigError unless
    ``overwrite``; with ``overwrite`` the earlier ``outputs/`` and ``checkpoints/`` are removed (nothing else).
    """
    marker = previous_run_marker(root)
    if marker is not None and not resuming and not overwrite:
        raise ConfigError(
            f"output_dir {root} already holds a run ({marker}); resume it with "
            "--resume_from_checkpoint latest, or start over with --overwrite_output_dir true"
        )
    if not main_process:
        return
    if marker is not None and not resuming:
        logger.warning("overwrite_output_dir: removing the previous run's outputs/ and checkpoints/ in %s", root)
        for sub in ("outputs", "checkpoints"):
            shutil.rmtree(root / sub, ignore_errors=True)
    (root / "outputs").mkdir(parents=True, exist_ok=True)
    (root / "checkpoints").mkdir(parents=True, exist_ok=True)
