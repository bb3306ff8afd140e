"""Weights files: safetensors read/write, SHA-256 checksums (``SHA256SUMS`` manifests, ``sha256sum -c``
format), and the one reader of legacy ``torch.save`` files (``weights_only=True``, never a pickle that can
run code). Every error names the file.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import struct
import zipfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

import modlisa
from modlisa.atomic import atomic_write_text, atomic_write_with

logger = logging.getLogger(__name__)

MANIFEST = "SHA256SUMS"  # one "<sha256>  <relative path>" line per file, checkable with `sha256sum -c`
_CHUNK = 1 << 20


class WeightsError(ValueError):
    """A weights file does not match the model or cannot be read: the message names the file."""


class CheckpointError(WeightsError):
    """A checkpoint file or folder is unreadable, corrupt or unsafe: the message names the file."""


# ---------------------------------------------------------------------- checksums
def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_sha256(path: Path, expected: str, source: str | None = None) -> None:
    """CheckpointError naming ``path`` when it is missing or its SHA-256 is not ``expected``."""
    if not path.is_file():
        raise CheckpointError(f"{path}: missing (listed in {source or 'the checkpoint'}); the checkpoint is "
                              "incomplete: use another checkpoint")
    try:
        actual = sha256_file(path)
    except OSError as err:
        raise CheckpointError(f"{path}: cannot be read ({err.strerror or err})") from err
    if actual != expected:
        raise CheckpointError(f"{path}: checksum mismatch (SHA-256 {actual[:12]}..., expected {expected[:12]}... "
                              f"from {source or 'the checkpoint'}): the file is corrupt or was changed; "
                              "use another checkpoint")


def write_manifest(folder: Path, exclude: Iterable[str] = ()) -> Path:
    """Write ``folder/SHA256SUMS`` listing every file under ``folder`` (sorted) except ``exclude``."""
    skip = {MANIFEST, *exclude}
    lines = [f"{sha256_file(path)}  {path.relative_to(folder).as_posix()}"
             for path in sorted(folder.rglob("*")) if path.is_file()
             and path.relative_to(folder).as_posix() not in skip]
    target = folder / MANIFEST
    atomic_write_text(target, "".join(f"{line}\n" for line in lines))
    return target


def read_manifest(folder: Path) -> dict[str, str]:
    """``{relative path: sha256}`` of ``folder/SHA256SUMS``; CheckpointError when it is malformed."""
    path = folder / MANIFEST
    try:
        text = path.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path}: unreadable checksum manifest ({err})") from err
    entries: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        digest, _, name = line.partition("  ")
        if len(digest) != 64 or not name or ".." in Path(name).parts or Path(name).is_absolute():
            raise CheckpointError(f"{path}: line {number} is not '<sha256>  <file>' (the manifest is corrupt)")
        entries[name] = digest
    if not entries:
        raise CheckpointError(f"{path}: empty checksum manifest (the manifest is corrupt)")
    return entries


def verify_manifest(folder: Path, required: Iterable[str] = (), strict: bool = True,
                    unread: Iterable[str] = ()) -> dict[str, str]:
    """Check every file listed in ``folder/SHA256SUMS``; ``required`` files must be listed; with ``strict``,
    a file under ``folder`` that the manifest does not list (a planted file) is an error too, except the
    ``unread`` ones (files nothing reads, e.g. a Hub repo's ``.gitattributes``). Returns it."""
    entries = read_manifest(folder)
    absent = [name for name in required if name not in entries]
    if absent:
        raise CheckpointError(f"{folder / MANIFEST}: does not list {', '.join(absent)} (the manifest is corrupt)")
    if strict:
        skip = {*entries, *unread}
        extra = [p.relative_to(folder).as_posix() for p in sorted(folder.rglob("*")) if p.is_file()
                 and p.name != MANIFEST and p.relative_to(folder).as_posix() not in skip]
        if extra:
            raise CheckpointError(f"{folder / extra[0]}: not listed in {folder / MANIFEST} ({len(extra)} unlisted "
                                  "file(s)): files were added after the checkpoint was written; remove them or "
                                  "use another checkpoint")
    for name, digest in entries.items():
        verify_sha256(folder / name, digest, str(folder / MANIFEST))
    return entries


def has_manifest(folder: Path) -> bool:
    return (folder / MANIFEST).is_file()


# ---------------------------------------------------------------------- safetensors
def write_safetensors(state: dict[str, Tensor], path: str | os.PathLike[str], kind: str,
                      metadata: dict[str, str] | None = None) -> str:
    """Write ``state`` atomically as safetensors (CPU copies, no shared storage); returns its SHA-256."""
    path = Path(path)
    tensors = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in state.items()}
    meta = {"format": "pt", "modlisa_version": modlisa.__version__, "kind": kind, **(metadata or {})}
    atomic_write_with(path, lambda tmp: save_file(tensors, str(tmp), metadata=meta))
    return sha256_file(path)


def read_safetensors(path: str | os.PathLike[str], sha256: str | None = None,
                     source: str | None = None) -> dict[str, Tensor]:
    """All tensors of a safetensors file on CPU, its checksum verified first when ``sha256`` is given.

    FileNotFoundError when absent; CheckpointError naming the file when corrupt or unreadable.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} does not exist")
    if sha256 is not None:
        verify_sha256(path, sha256, source)
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        reason = " ".join(str(err).split())
        raise CheckpointError(f"{path}: not a readable safetensors file ({reason})") from None


def check_finite(state: dict[str, Tensor], source: str) -> None:
    """CheckpointError naming ``source`` and the tensors holding NaN or infinite values."""
    bad = [name for name, t in state.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:
        raise CheckpointError(f"{source}: {len(bad)} tensor(s) hold NaN or infinite values ({', '.join(bad[:3])}): "
                              "these weights are unusable; use an earlier checkpoint")


# ---------------------------------------------------------------------- legacy torch files
TORCH_LOAD_ERRORS = (pickle.UnpicklingError, EOFError, OSError, RuntimeError, ValueError, KeyError,
                     AttributeError, TypeError, IndexError, zipfile.BadZipFile, UnicodeDecodeError, struct.error)


def read_torch_safely(path: str | os.PathLike[str], what: str = "checkpoint file", mmap: bool = False) -> Any:
    """``torch.load(path, weights_only=True)`` on CPU: tensors and plain values only, nothing can run.

    A file that needs anything else (a pickled object, possibly code) or is damaged raises CheckpointError
    naming it. Used for files older modlisa versions wrote (``best_model_epoch_N.pt``) and for published
    weights being imported (``modlisa.convert``). ``mmap``: tensors stay backed by the file (zip-format files)
    instead of being read into memory.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap and zipfile.is_zipfile(path))
    except pickle.UnpicklingError as err:
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        detail = next((line for line in lines if "GLOBAL" in line or line.startswith("Unsupported")),
                      lines[-1] if lines else type(err).__name__)
        if "GLOBAL" not in detail:
            raise CheckpointError(f"{path}: not a readable {what} ({detail[:160]})") from None
        raise CheckpointError(
            f"{path}: refused: it holds objects other than tensors and plain values, which could run code when "
            f"loaded ({detail[:120]}); a genuine modlisa {what} never does. If you trust its source, convert it as "
            "docs/TROUBLESHOOTING.md ('Old .pt checkpoints') shows") from None
    except TORCH_LOAD_ERRORS as err:
        reason = " ".join(str(err).split())[:200] or type(err).__name__
        raise CheckpointError(f"{path}: not a readable {what} ({reason})") from None


# ---------------------------------------------------------------------- checkpoint folders
TRAINER_STATE = "trainer_state.json"  # the resumable state of checkpoints/last (engine/checkpoint.py)
MODEL_FILE = "model.safetensors"  # the trainable weights inside a checkpoint folder


def read_json_file(path: Path, what: str) -> Any:
    """A JSON file's value; CheckpointError naming it when it is unreadable or malformed."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        reason = " ".join(str(err).split())[:160] or type(err).__name__
        raise CheckpointError(f"{path}: unreadable {what} ({reason})") from None


def verify_folder(folder: Path) -> bool:
    """Verify a checkpoint folder against its SHA256SUMS (every listed file, nothing unlisted).

    Returns False for a folder of an older modlisa (no SHA256SUMS, trainer state without ``format_version``):
    it cannot be verified and a warning says so. CheckpointError for a corrupt or incomplete folder.
    """
    if has_manifest(folder):
        verify_manifest(folder, required=[TRAINER_STATE, MODEL_FILE])
        return True
    state = read_json_file(folder / TRAINER_STATE, "trainer state") if (folder / TRAINER_STATE).is_file() else None
    if isinstance(state, dict) and "format_version" not in state and (folder / MODEL_FILE).is_file():
        logger.warning("%s was written by an older modlisa (no %s): its files cannot be verified", folder, MANIFEST)
        return False
    raise CheckpointError(f"{folder}: incomplete checkpoint (no {MANIFEST}, written last): it was interrupted while "
                          "being written; use another checkpoint")
