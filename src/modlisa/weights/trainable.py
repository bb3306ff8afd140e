"""Strict trainable-state save/load: the weights a run changes (LoRA, [SEG] rows, heads, mask decoder).

One loader for every caller (resume, eval, predict, tests): missing / unexpected keys and shape mismatches
fail with the file and the keys named, unless explicitly allowed; nothing is copied before all checks pass.
"""

from __future__ import annotations

import fnmatch
import logging
import os
from collections.abc import Iterable
from pathlib import Path

import torch
from torch import Tensor, nn

from modlisa.atomic import atomic_write_text
from modlisa.weights.files import (
    WeightsError,
    check_finite,
    read_safetensors,
    write_safetensors,
)

logger = logging.getLogger(__name__)

SIDECAR_SUFFIX = ".sha256"  # "<sha256>  <file name>" beside a single weights file (``sha256sum -c``)


def trainable_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """``{name: tensor}`` of the parameters that require grad: detached views, not copies."""
    return {name: p.detach() for name, p in model.named_parameters() if p.requires_grad}


def trainable_state(model: nn.Module) -> dict[str, Tensor]:
    """The trainable parameters of ``model`` (unwrapped), detached CPU copies."""
    return {name: t.cpu().clone() for name, t in trainable_state_dict(model).items()}


def _matches(name: str, patterns: Iterable[str]) -> bool:
    """True when ``name`` equals or fnmatch-matches one of ``patterns`` (e.g. ``"sam.*"``)."""
    return any(name == p or fnmatch.fnmatchcase(name, p) for p in patterns)


def _key_problems(params: dict[str, Tensor], state: dict[str, Tensor], allowed_missing: Iterable[str],
                  allowed_unexpected: Iterable[str], source: str) -> tuple[list[str], list[str]]:
    """(missing, unexpected) names, logged; WeightsError when any is not allowed."""
    missing, unexpected = sorted(set(params) - set(state)), sorted(set(state) - set(params))
    if missing or unexpected:
        logger.warning("%s: %d missing key(s) %s, %d unexpected key(s) %s", source, len(missing), missing[:10],
                       len(unexpected), unexpected[:10])
    bad_missing = [n for n in missing if not _matches(n, allowed_missing)]
    bad_unexpected = [n for n in unexpected if not _matches(n, allowed_unexpected)]
    if bad_missing or bad_unexpected:
        raise WeightsError(
            f"{source}: checkpoint does not match the model's trainable parameters: missing {len(bad_missing)} "
            f"key(s) {bad_missing[:5]}; unexpected {len(bad_unexpected)} key(s) {bad_unexpected[:5]}. Was it "
            "saved with the same model preset and adapter flags (use_lora, lora_*, train_embeddings, freeze_*)? "
            "Use the run's config, or allow the differences (allowed_missing / allowed_unexpected)")
    return missing, unexpected


def load_state_into(model: nn.Module, state: dict[str, Tensor], source: str, *,
                    allowed_missing: Iterable[str] = (), allowed_unexpected: Iterable[str] = ()
                    ) -> dict[str, list[str]]:
    """Load a trainable-only state dict into ``model`` in place; nothing is copied unless everything matches.

    Missing keys (trainable parameters absent from ``state``) and unexpected keys (entries that are not
    trainable parameters) are logged; any not matched by ``allowed_missing`` / ``allowed_unexpected`` (exact
    names or fnmatch patterns such as ``"sam.*"``) raise WeightsError naming ``source`` and the keys. Shape
    mismatches and non-finite values always raise. Returns ``{"loaded", "missing", "unexpected"}``.
    """
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    missing, unexpected = _key_problems(params, state, allowed_missing, allowed_unexpected, source)
    loaded = [n for n in params if n in state]
    bad_shapes = [f"{n}: checkpoint {tuple(state[n].shape)} vs model {tuple(params[n].shape)}"
                  for n in loaded if tuple(state[n].shape) != tuple(params[n].shape)]
    if bad_shapes:
        raise WeightsError(f"{source}: {len(bad_shapes)} shape mismatch(es): {'; '.join(bad_shapes[:5])}")
    check_finite({n: state[n] for n in loaded}, source)
    with torch.no_grad():
        for name in loaded:
            params[name].copy_(state[name].to(params[name].device, params[name].dtype))
    logger.info("loaded %d trainable tensors from %s", len(loaded), source)
    return {"loaded": loaded, "missing": missing, "unexpected": unexpected}


def sidecar_path(path: Path) -> Path:
    return path.with_name(path.name + SIDECAR_SUFFIX)


def save_trainable(model: nn.Module, path: str | os.PathLike[str]) -> Path:
    """Save ``trainable_state_dict(model)`` to ``path`` (safetensors, atomic) and its ``.sha256`` beside it."""
    path = Path(path)
    state = trainable_state_dict(model)
    if not state:
        raise WeightsError(f"{path}: the model has no trainable parameters to save")
    digest = write_safetensors(state, path, kind="trainable")
    atomic_write_text(sidecar_path(path), f"{digest}  {path.name}\n")
    logger.info("saved %d trainable tensors (%d values) to %s", len(state), sum(t.numel() for t in state.values()),
                path)
    return path


def _sidecar_digest(path: Path) -> str | None:
    """The SHA-256 recorded beside ``path`` (None when there is no sidecar)."""
    side = sidecar_path(path)
    if not side.is_file():
        return None
    digest = side.read_text(encoding="ascii", errors="replace").split(" ", 1)[0].strip()
    if len(digest) != 64:
        raise WeightsError(f"{side}: not a '<sha256>  <file>' line (the checksum file is corrupt)")
    return digest


def load_trainable(model: nn.Module, path: str | os.PathLike[str], allowed_missing: Iterable[str] = (),
                   allowed_unexpected: Iterable[str] = ()) -> dict[str, list[str]]:
    """Load a ``save_trainable`` file into ``model`` (strict, see ``load_state_into``); its ``.sha256``
    sidecar, when present, is verified first."""
    path = Path(path)
    state = read_safetensors(path, sha256=_sidecar_digest(path) if path.is_file() else None,
                             source=str(sidecar_path(path)))
    return load_state_into(model, state, str(path), allowed_missing=allowed_missing,
                           allowed_unexpected=allowed_unexpected)

