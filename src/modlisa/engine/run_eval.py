"""`modlisa eval`: load a checkpoint, run the LISA protocol on a split, write eval_{split}.json + predictions."""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
import yaml
from torch.utils.data import DataLoader

from modlisa.config import ConfigError, TrainingConfig, config_from_dict
from modlisa.engine import checkpoint as ckpt
from modlisa.engine.evaluate import evaluate

logger = logging.getLogger(__name__)


def _config_near(folder: Path) -> dict[str, Any] | None:
    for candidate in (folder / "config.yaml", folder.parent / "outputs" / "config.yaml",
                      folder.parent.parent / "outputs" / "config.yaml"):
        if candidate.is_file():
            return yaml.safe_load(candidate.read_text(encoding="utf-8"))
    return None


def load_checkpoint(path: str | Path, overrides: dict[str, Any] | None = None) -> tuple[Any, Any, Any, TrainingConfig]:
    """Build the model of a checkpoint and load its weights.

    ``path``: a ``best_model_epoch_N.pt`` file, a ``checkpoints/last`` folder, a run folder (its best
    checkpoint), or an exported folder (``modlisa_config.yaml`` inside). Returns (model, tokenizer,
    processors, cfg).
    """
    from modlisa.model.factory import build_model

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if path.is_dir() and (path / "modlisa_config.yaml").is_file():
        from modlisa.model.io import load_exported

        return load_exported(path)
    if path.is_dir() and (path / "checkpoints").is_dir():  # a run folder: its best model
        bests = sorted((path / "checkpoints").glob("best_model_epoch_*.pt"))
        if not bests:
            raise FileNotFoundError(f"run folder {path} has no checkpoints/best_model_epoch_*.pt")
        path = bests[-1]
    if path.is_file():
        payload = torch.load(path, map_location="cpu", weights_only=False)
        if not isinstance(payload, dict) or "model" not in payload or "config" not in payload:
            raise ConfigError(f"{path} is not a modlisa best-model checkpoint (keys model, config expected)")
        cfg_dict, state = payload["config"], payload["model"]
    else:
        if not ckpt.is_complete(path):
            raise FileNotFoundError(f"{path} is not a complete checkpoint folder")
        from safetensors.torch import load_file

        cfg_dict = _config_near(path)
        if cfg_dict is None:
            raise FileNotFoundError(f"no config.yaml found next to checkpoint folder {path}")
        state = load_file(str(path / "model.safetensors"))
    cfg = config_from_dict({**cfg_dict, **(overrides or {})}, source=str(path))
    cfg = replace(cfg, resume_from_checkpoint=None)
    model, tokenizer, processors = build_model(cfg)
    ckpt.load_trainable_into(model, state, str(path))
    model.eval()
    return model, tokenizer, processors, cfg


def write_eval_outputs(out_dir: Path, split: str, metrics: dict[str, Any], records: list[dict[str, Any]],
                       extra: dict[str, Any]) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    eval_path, pred_path = out_dir / f"eval_{split}.json", out_dir / f"predictions_{split}.jsonl"
    payload = {"split": split, **extra, **metrics}
    ckpt.atomic_write_text(eval_path, json.dumps(payload, indent=2, default=str))
    ckpt.atomic_write_text(pred_path, "".join(json.dumps(r) + "\n" for r in records))
    return eval_path, pred_path


def run_eval(checkpoint: str, data_root: str | None, split: str, out_dir: str | None,
             batch_size: int = 1, max_samples: int | None = None) -> dict[str, Any]:
    """Evaluate ``checkpoint`` on ``split`` (teacher mode) and write the outputs; returns the metrics."""
    from modlisa.data.collate import make_collate_fn
    from modlisa.data.dataset import ReasonSegDataset
    from modlisa.engine.sampling import EvalShardSampler

    model, tokenizer, processors, cfg = load_checkpoint(checkpoint)
    root = data_root or cfg.data_root
    dataset = ReasonSegDataset(root, split, processors.sam, processors.vision, train=False, strict=True,
                               max_samples=max_samples)
    loader = DataLoader(dataset, batch_size=batch_size, sampler=EvalShardSampler(len(dataset)),
                        collate_fn=make_collate_fn(tokenizer, cfg.max_length))
    device = torch.device("cuda" if torch.cuda.is_available() and not cfg.cpu else "cpu")
    model.to(device)
    result = evaluate(model, loader, device=device, desc=f"eval {split}")
    target = Path(out_dir) if out_dir else Path(cfg.output_dir) / "outputs"
    extra = {"checkpoint": str(checkpoint), "data_root": str(root), "mode": "teacher"}
    eval_path, pred_path = write_eval_outputs(target, split, result.metrics, result.records, extra)
    return {"metrics": result.metrics, "eval_json": str(eval_path), "predictions": str(pred_path)}
