"""The best model of a run: ``checkpoints/best_model_epoch_{N}.safetensors`` + ``best_model_epoch_{N}.json``.

The safetensors file holds the trainable weights (``model.<name>``) and the optimizer tensors
(``optimizer.state.<index>.<key>``); the JSON holds everything else (epoch, best val gIoU, the epoch's
metrics, the run's config, the optimizer's parameter groups) and the SHA-256 of the safetensors file, which
is verified on every load. The JSON is written second: a best model without it is incomplete. Nothing here
is a pickle. Best models of older modlisa versions (``best_model_epoch_N.pt``) are read with
``torch.load(weights_only=True)`` only, and ``convert_legacy_best`` rewrites one in the new format.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from modlisa.atomic import atomic_write_text, remove_quietly
from modlisa.weights.files import CheckpointError, read_safetensors, read_torch_safely, write_safetensors
from modlisa.weights.trainable import trainable_state

logger = logging.getLogger(__name__)

BEST_PREFIX = "best_model_epoch_"
BEST_FORMAT = "modlisa-best-model"
_EPOCH = re.compile(rf"^{BEST_PREFIX}(\d+)\.(safetensors|json|pt)$")


FROZEN_PREFIX = "frozen_random."  # frozen random-initialised weights (model/random_init.py), no pretrained source


def best_files(checkpoint_dir: str | Path, epoch: int) -> tuple[Path, Path]:
    """(weights, metadata) paths of the best model of 1-based ``epoch``."""
    stem = Path(checkpoint_dir) / f"{BEST_PREFIX}{epoch}"
    return stem.with_suffix(".safetensors"), stem.with_suffix(".json")


def epoch_of(path: str | Path) -> int | None:
    """The epoch number in a best-model file name, or None."""
    match = _EPOCH.match(Path(path).name)
    return int(match.group(1)) if match else None


def find_best(checkpoint_dir: str | Path) -> Path | None:
    """The best model of a checkpoints folder with the HIGHEST epoch number (``_10`` beats ``_9``): its JSON,
    or a legacy ``.pt``; None when there is none."""
    candidates = [p for p in Path(checkpoint_dir).glob(f"{BEST_PREFIX}*")
                  if p.suffix in (".json", ".pt") and epoch_of(p) is not None]
    if not candidates:
        return None
    return max(candidates, key=lambda p: (epoch_of(p), p.suffix == ".json"))


def _flatten_optimizer(state: dict[str, Any]) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Optimizer state dict -> (tensors, JSON-able rest)."""
    tensors: dict[str, Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, values in state.get("state", {}).items():
        for key, value in values.items():
            if isinstance(value, Tensor):
                tensors[f"optimizer.state.{index}.{key}"] = value
            else:
                scalars.setdefault(str(index), {})[key] = value
    return tensors, {"param_groups": state.get("param_groups", []), "scalars": scalars}


def unflatten_optimizer(tensors: dict[str, Tensor], rest: dict[str, Any]) -> dict[str, Any]:
    """The optimizer state dict saved by ``save_best`` (for ``optimizer.load_state_dict``)."""
    state: dict[int, dict[str, Any]] = {}
    for name, tensor in tensors.items():
        if name.startswith("optimizer.state."):
            index, key = name[len("optimizer.state."):].split(".", 1)
            state.setdefault(int(index), {})[key] = tensor
    for index, values in rest.get("scalars", {}).items():
        state.setdefault(int(index), {}).update(values)
    return {"state": state, "param_groups": rest.get("param_groups", [])}


def save_best(checkpoint_dir: str | Path, epoch: int, model: nn.Module, optimizer: Any, best_giou: float,
              metrics: dict, config: dict, previous: str | None) -> str:
    """Write the best model of ``epoch`` (weights, then metadata), then remove ``previous``; returns the
    weights path. A failed write (WriteError) leaves ``previous`` untouched."""
    weights, meta = best_files(checkpoint_dir, epoch)
    # optimizer None: DeepSpeed shards its states (checkpoints/last holds them)
    opt_tensors, opt_rest = _flatten_optimizer(optimizer.state_dict()) if optimizer is not None else ({}, {})
    from modlisa.model.random_init import frozen_random_state

    tensors = {f"model.{k}": v for k, v in trainable_state(model).items()} | opt_tensors
    tensors |= {f"{FROZEN_PREFIX}{k}": v for k, v in frozen_random_state(model).items()}
    digest = write_safetensors(tensors, weights, kind="best_model")
    record = {"format": BEST_FORMAT, "version": 1, "weights": weights.name, "sha256": digest, "epoch": epoch,
              "best_val_giou": best_giou, "metrics": metrics, "config": config, "optimizer": opt_rest}
    atomic_write_text(meta, json.dumps(record, indent=2, default=str))
    if previous and Path(previous) != weights:
        remove_best(previous)
    logger.info("saved best model (val gIoU %.4f) to %s", best_giou, weights)
    return str(weights)


def remove_best(path: str | Path) -> None:
    """Remove a best model's files (weights, metadata, or a legacy ``.pt``)."""
    path = Path(path)
    for suffix in (".safetensors", ".json", ".pt"):
        candidate = path.with_suffix(suffix)
        if candidate.exists():
            remove_quietly(candidate)


def _read_meta(meta: Path) -> dict[str, Any]:
    try:
        record = json.loads(meta.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        reason = " ".join(str(err).split())[:160]
        raise CheckpointError(f"{meta}: unreadable best-model metadata ({reason})") from None
    ok = (isinstance(record, dict) and record.get("format") == BEST_FORMAT and isinstance(record.get("config"), dict)
          and isinstance(record.get("sha256"), str) and isinstance(record.get("weights"), str))
    if not ok or Path(record["weights"]).name != record["weights"]:
        raise CheckpointError(f"{meta}: not a modlisa best-model metadata file (format, weights, sha256, config "
                              "expected)")
    return record


def read_best(path: str | Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """(trainable state, metadata with ``config``) of a best model: its ``.json``, ``.safetensors`` or legacy
    ``.pt``. The weights' SHA-256 is verified; a legacy file is read with ``weights_only=True`` only."""
    path = Path(path)
    if path.suffix == ".pt":
        return read_legacy_best(path)
    meta = path.with_suffix(".json")
    if not meta.is_file():
        if not path.exists():
            raise FileNotFoundError(f"checkpoint {path} does not exist")
        raise CheckpointError(f"{path}: its metadata {meta.name} is missing (an interrupted write?); use another "
                              "checkpoint")
    record = _read_meta(meta)
    tensors = read_safetensors(meta.parent / record["weights"], sha256=record["sha256"], source=str(meta))
    state = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    record["frozen_random"] = {k[len(FROZEN_PREFIX):]: v for k, v in tensors.items() if k.startswith(FROZEN_PREFIX)}
    return state, record


def read_legacy_best(path: Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """A ``best_model_epoch_N.pt`` of an older modlisa, read with ``weights_only=True``."""
    payload = read_torch_safely(path, what="best-model checkpoint")
    if not isinstance(payload, dict) or not isinstance(payload.get("model"), dict) \
            or not isinstance(payload.get("config"), dict):
        raise CheckpointError(f"{path}: not a modlisa best-model checkpoint (keys model, config expected)")
    logger.info("%s: legacy .pt best model read with weights_only=True (convert it with "
                "modlisa.weights.convert_legacy_best)", path)
    return payload["model"], {k: v for k, v in payload.items() if k not in ("model", "optimizer")}


def convert_legacy_best(path: str | Path) -> Path:
    """Rewrite a legacy ``best_model_epoch_N.pt`` beside itself as ``.safetensors`` + ``.json`` (weights_only
    load; the optimizer state is carried over). Returns the new weights path; the ``.pt`` is kept."""
    path = Path(path)
    payload = read_torch_safely(path, what="best-model checkpoint")
    if not isinstance(payload, dict) or "model" not in payload or "config" not in payload:
        raise CheckpointError(f"{path}: not a modlisa best-model checkpoint (keys model, config expected)")
    epoch = int(payload.get("epoch") or epoch_of(path) or 0)
    weights, meta = best_files(path.parent, epoch)
    opt_tensors, opt_rest = _flatten_optimizer(payload.get("optimizer") or {})
    tensors = {f"model.{k}": v for k, v in payload["model"].items()} | opt_tensors
    digest = write_safetensors(tensors, weights, kind="best_model")
    record = {"format": BEST_FORMAT, "version": 1, "weights": weights.name, "sha256": digest, "epoch": epoch,
              "best_val_giou": payload.get("best_val_giou"), "metrics": payload.get("metrics"),
              "config": payload["config"], "optimizer": opt_rest}
    atomic_write_text(meta, json.dumps(record, indent=2, default=str))
    return weights
