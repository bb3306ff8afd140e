"""``load_checkpoint(path)``: any checkpoint a user can name -> (model, tokenizer, processors, cfg).

``path`` may be a run folder (its best model by epoch NUMBER, else its ``checkpoints/last``), a best model
(``best_model_epoch_N.json`` / ``.safetensors``, or a legacy ``.pt`` read with ``weights_only=True``), a
``checkpoints/last`` folder (verified against its SHA256SUMS), or an exported folder. Every weights file is
checksum-verified before it is read; nothing is unpickled. ``export_checkpoint`` loads one and exports it.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml

from modlisa.config import ConfigError, TrainingConfig, config_from_dict
from modlisa.engine.run_folder import RunFolder
from modlisa.model.random_init import FROZEN_RANDOM_KEY, load_frozen_random, load_frozen_random_file
from modlisa.weights.best import find_best, read_best
from modlisa.weights.card import CARD_FACTS, read_eval_results
from modlisa.weights.export import CONFIG_FILE, check_out_dir, export_merged, load_exported
from modlisa.weights.export_layout import read_export_info
from modlisa.weights.files import (
    MODEL_FILE,
    TRAINER_STATE,
    CheckpointError,
    read_json_file,
    read_safetensors,
    verify_folder,
)
from modlisa.weights.hub import is_repo_id, resolve_pretrained
from modlisa.weights.trainable import load_state_into

logger = logging.getLogger(__name__)


def _config_near(folder: Path) -> dict[str, Any] | None:
    """The run's ``outputs/config.yaml`` near a legacy ``last`` folder (its trainer state holds no config)."""
    # the folder itself, then as checkpoints/last of a run (ROOT/checkpoints/last) or a loose last/ in ROOT
    for candidate in (folder / "config.yaml", RunFolder(folder.parent).config, RunFolder(folder.parent.parent).config):
        if candidate.is_file():
            try:
                values = yaml.safe_load(candidate.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
                raise ConfigError(f"{candidate}: unreadable config ({' '.join(str(err).split())[:160]})") from None
            if not isinstance(values, dict):
                raise ConfigError(f"{candidate}: not a mapping of field: value")
            return values
    return None


def resolve_checkpoint(path: str | Path) -> tuple[str, Path]:
    """(kind, path) of what ``path`` names: ``export``, ``best`` (a file) or ``last`` (a folder); a Hugging Face
    Hub repo id (``owner/name`` that is no local path) is an export, fetched into (or read from, offline) the
    Hugging Face cache (``weights.hub``: HF_HUB_CACHE / HF_TOKEN apply)."""
    if isinstance(path, str) and is_repo_id(path):
        return "export", resolve_pretrained(path)
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist (nor is it a Hub repo id owner/name)")
    if path.is_dir() and (path / CONFIG_FILE).is_file():
        return "export", path
    if path.is_dir() and (path / TRAINER_STATE).is_file():
        return "last", path
    if path.is_dir():
        run = RunFolder(path)
        checkpoints = run.checkpoints if run.checkpoints.is_dir() else path
        best = find_best(checkpoints)
        if best is not None:
            return "best", best
        last = checkpoints / run.last.name
        if (last / TRAINER_STATE).is_file():
            logger.info("%s has no best model (no validation split?): using %s", path, last)
            return "last", last
        raise FileNotFoundError(f"{path}: no checkpoint found (no checkpoints/best_model_epoch_*.json or .pt, no "
                                "checkpoints/last); name a checkpoint file or folder")
    return "best", path


def _last_state(folder: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(config dict, trainable state) of a verified ``last`` folder."""
    verify_folder(folder)
    state = read_json_file(folder / TRAINER_STATE, "trainer state")
    cfg_dict = state.get("config") if isinstance(state, dict) else None
    if not isinstance(cfg_dict, dict):
        cfg_dict = _config_near(folder)
    if cfg_dict is None:
        raise FileNotFoundError(f"no config.yaml found next to checkpoint folder {folder}")
    return cfg_dict, read_safetensors(folder / MODEL_FILE)


def load_checkpoint(path: str | Path, overrides: dict[str, Any] | None = None
                    ) -> tuple[Any, Any, Any, TrainingConfig]:
    """Build the model of a checkpoint and load its weights (strict). Returns (model, tokenizer, processors, cfg)."""
    from modlisa.model.factory import build_model

    kind, source = resolve_checkpoint(path)
    if kind == "export":
        return load_exported(source)
    frozen_random: dict[str, Any] = {}
    if kind == "last":
        cfg_dict, state = _last_state(source)
    else:
        state, meta = read_best(source)
        cfg_dict = meta["config"]
        frozen_random = meta.get("frozen_random") or meta.get(FROZEN_RANDOM_KEY) or {}
    if not isinstance(cfg_dict, dict):
        raise CheckpointError(f"{source}: the checkpoint's config is not a mapping")
    cfg = config_from_dict({**cfg_dict, **(overrides or {})}, source=str(source))
    cfg = replace(cfg, resume_from_checkpoint=None)
    model, tokenizer, processors = build_model(cfg)
    load_state_into(model, state, str(source))
    if frozen_random:  # frozen random-initialised weights saved with the best model (model/random_init.py)
        load_frozen_random(model, frozen_random, str(source))
    elif kind == "last":
        load_frozen_random_file(model, source)
    model.eval()
    return model, tokenizer, processors, cfg


def _checkpoint_key(path: str | Path) -> Path:
    """What ``path`` resolves to, comparable across its names (a run folder, its best model's .json or
    .safetensors)."""
    kind, resolved = resolve_checkpoint(path)
    resolved = resolved.resolve()
    return resolved.with_suffix("") if kind == "best" else resolved


def _card_sources(source: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(facts to carry, eval results) for the model card of ``source``'s export: an export's own card facts and
    results (re-exporting it changes no weight), or the eval files of the run the checkpoint belongs to."""
    kind, resolved = resolve_checkpoint(source)
    if kind == "export":
        info = read_export_info(resolved)
        return {k: info[k] for k in CARD_FACTS if k in info}, list(info.get("eval_results") or [])
    run = RunFolder(resolved.parent.parent) if resolved.parent.name == "checkpoints" else None
    if run is None or not run.outputs.is_dir():
        return {}, []
    exported = _checkpoint_key(source)

    def same_checkpoint(recorded: str) -> bool:
        try:
            return not Path(recorded).exists() or _checkpoint_key(recorded) == exported
        except (OSError, ValueError):
            return True  # cannot tell: an eval file in the run's own outputs/ is the run's

    return {}, read_eval_results(run.outputs, same_checkpoint)


def export_checkpoint(checkpoint: str | Path, out: str | Path, *, overwrite: bool = False) -> Path:
    """Load ``checkpoint`` and write its merged export to ``out``; returns ``out``.

    The model card gets the ``modlisa eval`` results found in the run's ``outputs/`` (``eval_*.json`` of this
    checkpoint); re-exporting an export keeps its card's facts and results.
    """
    if isinstance(checkpoint, str) and is_repo_id(checkpoint):  # an export on the Hub: its cached snapshot
        checkpoint = resolve_pretrained(checkpoint)
    source, target = Path(checkpoint), Path(out)
    check_out_dir(source, target, overwrite=overwrite)
    carried, eval_results = _card_sources(source)
    model, tokenizer, processors, cfg = load_checkpoint(source)
    return export_merged(model, tokenizer, cfg, target, processors=processors, in_place=True, overwrite=overwrite,
                         extra_info=carried, eval_results=eval_results)
