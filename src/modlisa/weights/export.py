"""The merged export folder of a ModifiedLISA model: write it (LoRA merged) and load it back offline.

Export layout (``export_merged``), loadable offline by ``load_exported`` or by hand::

    out_dir/
      language_model/            save_pretrained of the LM, LoRA merged, [SEG] rows folded, + tokenizer
      vision_tower/              save_pretrained of the vision tower + preprocessor_config.json (mean/std)
      sam/                       save_pretrained of the SamModel, SamHQModel or Sam2Model (trained decoder included)
      modlisa_heads.safetensors  every other weight: projector.*, text_hidden_fcs.*
      modlisa_config.yaml        TrainingConfig: model=composite, subfolder pointers, use_lora=false (the vlm
                                 preset's: model=vlm, vlm_model=language_model/: there the whole VLM, LoRA merged,
                                 with its image processor fixed to img_size)
      modlisa_export.json        what the config cannot hold: feature layer, CLS, token ids, image stats,
                                 projector kind (and, for an import, its source); the model card's facts
                                 (base models, training summary, dataset, eval results)
      config.json                the Hugging Face-style entry point: model_type / architectures / library_name
                                 modlisa, modlisa version, pointers to the parts (``export_layout.hub_config``)
      README.md                  the model card: YAML front matter (base_model, datasets, tags, model-index of
                                 the run's eval results) + how to load and predict (``weights.card``)
      SHA256SUMS                 the SHA-256 of every file above (``sha256sum -c SHA256SUMS``), verified on load

``ModifiedLISA.from_pretrained`` / ``save_pretrained`` (``modlisa.weights.hub``) read and write this same folder.

The names of the layout and its readers live in ``modlisa.weights.export_layout`` (also used by the factory for
``TrainingConfig.init_from``); ``modlisa.convert.lisa`` writes the same folder from a LISA checkpoint.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import os
import shutil
import types
from pathlib import Path
from typing import Any

import yaml
from safetensors import SafetensorError
from torch import nn

import modlisa
from modlisa.atomic import WriteError, remove_quietly, write_error
from modlisa.config import ConfigError, TrainingConfig
from modlisa.weights.card import card_text, export_facts
from modlisa.weights.export_layout import (
    CONFIG_FILE,
    EXPORT_INFO_FILE,
    EXPORT_PATHS,
    HEADS_FILE,
    HUB_CONFIG_FILE,
    VLM_EXPORT_PATH,
    apply_export_info,
    check_export_folder,
    exported_config,
    heads_state_dict,
    hub_config,
    load_heads,
    projector_kind,
    read_export_info,
)
from modlisa.weights.files import CheckpointError, WeightsError, write_manifest, write_safetensors

logger = logging.getLogger(__name__)



# ---------------------------------------------------------------------- export
def merged_language_model(model: nn.Module, in_place: bool = False) -> nn.Module:
    """A plain transformers LM: [SEG]-row deltas folded into embedding / LM head, LoRA merged.

    ``in_place=False`` works on a deep copy of ``model.language_model`` (the model keeps training as
    before; costs one LM of memory); ``in_place=True`` changes ``model`` itself (for big models whose
    trained form is not needed afterwards).
    """
    from modlisa.model.adapters import merge_adapters

    holder = model if in_place else types.SimpleNamespace(language_model=copy.deepcopy(model.language_model))
    merge_adapters(holder)
    return holder.language_model


def _vision_stats(model: nn.Module, cfg: TrainingConfig, processors: Any) -> tuple[list[float], list[float]]:
    """(mean, std) of the vision branch: from ``processors`` when given, else as the factory derives them."""
    if processors is not None:
        return list(processors.vision.mean), list(processors.vision.std)
    from modlisa.model.backbones import image_stats
    from modlisa.types import CLIP_MEAN, CLIP_STD

    source = cfg.llava_model if cfg.model in ("llava", "lisa-7b") else cfg.vision_model
    if not source:
        return list(CLIP_MEAN), list(CLIP_STD)
    mean, std = image_stats(source, model.vision_tower.config.model_type)
    return list(mean), list(std)


def _save_vision_tower(model: nn.Module, folder: Path, mean: list[float], std: list[float]) -> None:
    """save_pretrained of the tower + an image processor holding the normalisation the model was trained with."""
    try:  # the PIL processors need no torchvision (transformers >= 5)
        from transformers import CLIPImageProcessorPil as CLIPImageProcessor
        from transformers import SiglipImageProcessorPil as SiglipImageProcessor
    except ImportError:
        from transformers import CLIPImageProcessor, SiglipImageProcessor

    model.vision_tower.save_pretrained(folder)
    size = int(model.vision_image_size)
    if model.vision_tower.config.model_type.startswith("siglip"):
        processor = SiglipImageProcessor(size={"height": size, "width": size}, image_mean=mean, image_std=std)
    else:
        processor = CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size},
                                       image_mean=mean, image_std=std)
    processor.save_pretrained(folder)


_DEFAULTS = dataclasses.asdict(TrainingConfig())


def export_config(cfg: TrainingConfig, model: nn.Module) -> TrainingConfig:
    """The config that rebuilds the export: composite preset on the subfolders, no LoRA, no resume, nothing
    else to start from (``init_from``: the export holds it all)."""
    from modlisa.model.factory import apply_preset

    cfg = apply_preset(cfg)
    is_vlm = hasattr(model, "family")  # the vlm preset: language_model/ is the whole VLM (+ its image processor)
    return dataclasses.replace(
        cfg, model="vlm" if is_vlm else "composite", vlm_model=VLM_EXPORT_PATH if is_vlm else None,
        llava_model=None, use_lora=False, resume_from_checkpoint=None, init_from=None,
        projector=projector_kind(model.projector),
        use_quantization=False, quantization_bits=_DEFAULTS["quantization_bits"],  # the export's LM is de-quantised
        # LoRA is merged: its options go back to their defaults (set while use_lora is false = a config error)
        **{f: _DEFAULTS[f] for f in ("lora_r", "lora_alpha", "lora_dropout", "lora_target_modules")},
        img_size=int(model.vision_image_size), sam_image_size=int(model.sam_image_size),
        sam_kind=model.seg_decoder.kind, **EXPORT_PATHS,
    )


def _export_info(model: nn.Module, cfg: TrainingConfig, mean: list[float], std: list[float]) -> dict[str, Any]:
    layer = model.vision_feature_layer
    return {
        "modlisa_version": modlisa.__version__,
        "source_preset": cfg.model,
        "vision_feature_layer": list(layer) if isinstance(layer, (list, tuple)) else int(layer),
        "drop_cls": bool(model.drop_cls),
        "seg_token_id": int(model.seg_token_id),
        "image_token_id": int(model.image_token_id),
        "vision_mean": mean,
        "vision_std": std,
        "lora_merged": hasattr(model.language_model, "peft_config"),
        "projector": projector_kind(model.projector),
        "lm_dequantized_from_bits": _quantized_bits(model),
        **export_facts(cfg),  # base models, training summary, dataset: for the model card
    }


def _quantized_bits(model: nn.Module) -> int | None:
    """4 or 8 when the model's LM is quantised (the export de-quantises it), else None."""
    from modlisa.model.quantization import is_quantized

    if not is_quantized(model.language_model):
        return None
    return 4 if any(type(m).__name__ == "Linear4bit" for m in model.language_model.modules()) else 8


def check_out_dir(source: Path, target: Path, *, overwrite: bool, flag: str = "--out",
                  what: str = "the checkpoint") -> None:
    """ConfigError before any loading when ``target`` cannot receive an export of ``source``: it is ``source``
    itself, not a folder, or a non-empty folder without ``overwrite``. ``flag`` / ``what`` name them."""
    if target.exists() and source.exists() and target.resolve() == source.resolve():
        raise ConfigError(f"{flag} {target} is {what} itself; choose another folder")
    if target.exists() and not target.is_dir():
        raise ConfigError(f"{flag} {target} exists and is not a folder")
    if target.is_dir() and any(target.iterdir()) and not overwrite:
        raise ConfigError(f"{flag} {target} exists and is not empty; pass --overwrite or choose another folder")


def _prepare_out_dir(out_dir: Path, overwrite: bool) -> Path:
    """A fresh temporary sibling of ``out_dir``; refuses a non-empty ``out_dir`` unless ``overwrite``."""
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise FileExistsError(f"export folder {out_dir} exists and is not empty; pass overwrite=True "
                              "or choose another folder")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    return tmp


def _write_folder(tmp: Path, out_dir: Path, model: nn.Module, tokenizer: Any, cfg: TrainingConfig,
                  exported_cfg: TrainingConfig, info: dict[str, Any], language_model: nn.Module,
                  mean: list[float], std: list[float]) -> None:
    """Write every file of the export into ``tmp``, its SHA256SUMS last, then rename ``tmp`` to ``out_dir``."""
    language_model.save_pretrained(tmp / "language_model")
    tokenizer.save_pretrained(tmp / "language_model")
    if getattr(model, "image_processor", None) is not None:  # a VLM's own image processor, fixed to img_size
        model.image_processor.save_pretrained(tmp / "language_model")
    _save_vision_tower(model, tmp / "vision_tower", mean, std)
    model.sam.save_pretrained(tmp / "sam")
    write_safetensors(heads_state_dict(model), tmp / HEADS_FILE, kind="heads")
    (tmp / CONFIG_FILE).write_text(yaml.safe_dump(exported_cfg.to_dict(), sort_keys=False), encoding="utf-8")
    (tmp / EXPORT_INFO_FILE).write_text(json.dumps(info, indent=2), encoding="utf-8")
    (tmp / HUB_CONFIG_FILE).write_text(json.dumps(hub_config(info, exported_cfg), indent=2), encoding="utf-8")
    (tmp / "README.md").write_text(card_text(info, out_dir.name), encoding="utf-8")
    write_manifest(tmp)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    tmp.rename(out_dir)


def export_merged(
    model: nn.Module,
    tokenizer: Any,
    cfg: TrainingConfig,
    out_dir: str | os.PathLike[str],
    *,
    processors: Any = None,
    in_place: bool = False,
    overwrite: bool = False,
    extra_info: dict[str, Any] | None = None,
    eval_results: list[dict[str, Any]] | None = None,
) -> Path:
    """Write a Hugging Face-style folder of ``model`` (see the module docstring); returns ``out_dir``.

    ``processors`` (``ImageProcessors``) supplies the vision mean/std; without it they are derived from
    ``cfg`` as the factory does. ``in_place`` merges LoRA into ``model`` itself instead of a copy.
    The folder is written next to ``out_dir`` and renamed into place when complete. ``extra_info`` is merged
    into ``modlisa_export.json`` (an importer records its source there; ``save_pretrained`` of a loaded export
    carries the card's facts). ``eval_results`` (``card.read_eval_results``) go into the model card's
    model-index and ``modlisa_export.json``.
    """
    out_dir = Path(out_dir)
    tmp = _prepare_out_dir(out_dir, overwrite)
    mean, std = _vision_stats(model, cfg, processors)
    info = {**_export_info(model, cfg, mean, std), **(extra_info or {}), "eval_results": list(eval_results or [])}
    exported_cfg = export_config(cfg, model)
    language_model = merged_language_model(model, in_place=in_place)
    try:
        _write_folder(tmp, out_dir, model, tokenizer, cfg, exported_cfg, info, language_model, mean, std)
    except (OSError, RuntimeError) as err:
        remove_quietly(tmp)
        raise err if isinstance(err, WriteError) else write_error(out_dir, err, "write the export") from err
    except BaseException:
        remove_quietly(tmp)
        raise
    logger.info("exported %s (LoRA merged: %s) to %s", cfg.model, info["lora_merged"], out_dir)
    if info.get("lm_dequantized_from_bits"):
        logger.warning("the run's language model was %d-bit: the export holds it de-quantised to float32 with LoRA "
                       "merged into it (bigger on disk than the quantised run)", info["lm_dequantized_from_bits"])
    return out_dir


# ---------------------------------------------------------------------- reload
def load_exported(folder: str | os.PathLike[str]) -> tuple[nn.Module, Any, Any, TrainingConfig]:
    """Rebuild an ``export_merged`` folder offline: (model in eval mode, tokenizer, processors, cfg).

    The factory's composite preset loads the three subfolders (no LoRA), then the heads file is loaded
    and the vision wiring of ``modlisa_export.json`` restored. ``cfg`` holds absolute subfolder paths.
    """
    from modlisa.model.factory import build_model

    folder = Path(folder)
    check_export_folder(folder)
    cfg = exported_config(folder)
    info = read_export_info(folder)
    try:
        model, tokenizer, processors = build_model(cfg)
    except (OSError, ValueError, RuntimeError, KeyError, TypeError, SafetensorError) as err:
        if isinstance(err, (ConfigError, WeightsError)):
            raise
        reason = " ".join(str(err).split())[:200] or type(err).__name__
        raise CheckpointError(f"{folder}: cannot load the export's models ({reason})") from None
    apply_export_info(model, info, folder / EXPORT_INFO_FILE)
    load_heads(model, folder / HEADS_FILE)
    model.eval()
    logger.info("loaded export %s (source preset %s)", folder, info.get("source_preset"))
    return model, tokenizer, processors, cfg
