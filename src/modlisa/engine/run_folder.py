"""The run folder of a training run: its layout (``RunFolder``, the contract of docs/TRAINING_GUIDE.md that
the engine writes and the report reads), refusing to mix a fresh run into an earlier one's files, and the lock
of a live run. No torch here: the report imports this module."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import socket
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from modlisa.atomic import atomic_write_text, remove_quietly, write_error
from modlisa.config import ConfigError

logger = logging.getLogger(__name__)

@dataclass(frozen=True)
class RunFolder:
    """Every path of a run folder::

        ROOT/outputs/config.yaml, config_sources.yaml, config_changes.json   the resolved config, its sources
                     train_log.jsonl, metrics_epoch_N.json, train_summary.json  training
                     eval_NAME.json, predictions_NAME.jsonl, eval_NAME_masks/   `modlisa eval` (NAME = split[_generate])
                     bench.json                                                 `modlisa bench`
        ROOT/checkpoints/best_model_epoch_N.safetensors + .json, last/         weights (modlisa.weights)
    """

    root: Path

    RUN_FILES = ("config.yaml", "train_log.jsonl", "train_summary.json", "bench.json")  # any marks outputs/
    EPOCH_FILE = re.compile(r"^metrics_epoch_(\d+)\.json$")
    SPLIT_FILE = re.compile(r"^(eval_\w+\.json|predictions_\w+\.jsonl)$")

    @property
    def outputs(self) -> Path:
        return self.root / "outputs"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def last(self) -> Path:
        return self.checkpoints / "last"

    @property
    def config(self) -> Path:
        return self.outputs / "config.yaml"

    @property
    def config_changes(self) -> Path:
        return self.outputs / "config_changes.json"

    @property
    def train_log(self) -> Path:
        return self.outputs / "train_log.jsonl"

    @property
    def train_summary(self) -> Path:
        return self.outputs / "train_summary.json"

    @property
    def bench(self) -> Path:
        return self.outputs / "bench.json"

    def metrics_epoch(self, epoch: int) -> Path:
        return self.outputs / f"metrics_epoch_{epoch}.json"

    @staticmethod
    def eval_name(split: str, mode: str = "teacher") -> str:
        """``split`` for LISA's protocol (teacher), ``split_generate`` for free generation."""
        return split if mode == "teacher" else f"{split}_{mode}"

    def eval_json(self, name: str) -> Path:
        return self.outputs / f"eval_{name}.json"

    def predictions(self, name: str) -> Path:
        return self.outputs / f"predictions_{name}.jsonl"

    def eval_masks(self, name: str) -> Path:
        return self.outputs / f"eval_{name}_masks"

    def markers(self) -> tuple[Path, ...]:
        """Files whose presence shows that the folder already holds a training run."""
        return self.train_log, self.metrics_epoch(1), self.last


def previous_run_marker(root: Path) -> Path | None:
    """The first file showing that ``root`` already holds a training run, or None."""
    for marker in RunFolder(root).markers():
        if marker.exists():
            return marker
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
    folder = RunFolder(root)
    if marker is not None and not resuming:
        logger.warning("overwrite_output_dir: removing the previous run's outputs/ and checkpoints/ in %s", root)
        for sub in (folder.outputs, folder.checkpoints):
            shutil.rmtree(sub, ignore_errors=True)
    for sub in (folder.outputs, folder.checkpoints):
        try:
            sub.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise write_error(sub, err, "create the folder") from err


# ---------------------------------------------------------------------- the run-folder lock
LOCK_FILE = ".modlisa.lock"  # held (OS file lock, through filelock) by the main process of a live run
OWNER_FILE = ".modlisa.lock.json"  # who holds it: pid, host, start time, command line
RUN_LOCKED_EXIT = 5


class RunFolderLocked(RuntimeError):
    """Another live process holds the run folder; ``modlisa`` prints the message and exits with 5."""


def _owner_info() -> dict[str, Any]:
    return {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "command": " ".join(sys.argv)[:500]}


def _read_owner(root: Path) -> dict[str, Any]:
    try:
        owner = json.loads((root / OWNER_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return owner if isinstance(owner, dict) else {}


def _pid_alive(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RunFolderLock:
    """The lock of one run folder: ``acquire`` (non-blocking) or RunFolderLocked naming the holder."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._lock = FileLock(str(self.root / LOCK_FILE), timeout=0, thread_local=False)

    def acquire(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        try:
            self._lock.acquire(timeout=0)
        except Timeout:
            raise RunFolderLocked(self._held_message()) from None
        previous = _read_owner(self.root)
        if previous and previous.get("pid") != os.getpid():
            alive = previous.get("host") == socket.gethostname() and _pid_alive(previous.get("pid"))
            logger.warning("%s: stale lock of PID %s on host %s (%s) taken over", self.root / OWNER_FILE,
                           previous.get("pid"), previous.get("host"),
                           "that PID is in use by another process now" if alive else "that process is gone")
        atomic_write_text(self.root / OWNER_FILE, json.dumps(_owner_info(), indent=2))

    def _held_message(self) -> str:
        owner = _read_owner(self.root)
        who = (f"PID {owner.get('pid', '?')} on host {owner.get('host', '?')} since {owner.get('started', '?')}"
               if owner else "another process")
        return (f"output_dir {self.root} is in use by a live run ({who}; lock {self.root / LOCK_FILE}): wait for it "
                "to finish or stop it; train, resume and --overwrite_output_dir are refused while it runs")

    def release(self) -> None:
        if not self._lock.is_locked:
            return
        remove_quietly(self.root / OWNER_FILE)
        self._lock.release()


@contextlib.contextmanager
def hold_run_folder(root: Path, accelerator: Any) -> Iterator[RunFolderLock | None]:
    """Hold the lock of ``root`` for the block (main process; every rank learns whether it got it)."""
    lock = RunFolderLock(root) if accelerator.is_main_process else None
    message = None
    if lock is not None:
        try:
            lock.acquire()
        except RunFolderLocked as err:
            message = str(err)
    if accelerator.num_processes > 1:
        from accelerate.utils import broadcast_object_list

        message = broadcast_object_list([message], from_process=0)[0]
    if message is not None:
        raise RunFolderLocked(message)
    try:
        yield lock
    finally:
        if lock is not None:
            lock.release()
