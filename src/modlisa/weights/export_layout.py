"""The export folder's layout and its readers (no model building here: ``export`` and ``model.factory`` both
use these, the factory for ``TrainingConfig.init_from``).

Layout: see ``modlisa.weights.export``. ``modlisa_export.json`` holds what the config cannot: the vision feature
layer, CLS handling, the token ids the heads were trained with, the image statistics, the projector kind.
``config.json`` (exports since format 1) is the Hugging Face-style entry point: ``model_type`` / ``architectures``
/ ``library_name: modlisa``, the modlisa version and the pointers to the parts; older exports lack it and load.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from modlisa.config import ConfigError, TrainingConfig, config_from_dict, load_yaml
from modlisa.weights.files import MANIFEST, WeightsError, has_manifest, read_safetensors, verify_manifest

logger = logging.getLogger(__name__)

BACKBONE_ATTRS = ("language_model", "vision_tower", "sam")  # saved as Hugging Face subfolders
HEADS_FILE = "modlisa_heads.safetensors"
CONFIG_FILE = "modlisa_config.yaml"
EXPORT_INFO_FILE = "modlisa_export.json"
EXPORT_PATHS = {"language_model": "language_model", "vision_model": "vision_tower", "sam_model": "sam"}
VLM_EXPORT_PATH = "language_model"  # the vlm preset's export: vlm_model is the whole VLM in language_model/
HUB_CONFIG_FILE = "config.json"  # the one-call entry point (``ModifiedLISA.from_pretrained``)
HUB_MODEL_TYPE = "modlisa"
HUB_UNREAD = (".gitattributes",)  # a Hub repo's own file: in its snapshot, never read, not in SHA256SUMS
HUB_FORMAT_VERSION = 1  # of config.json; a newer one is refused with a message
# config.json's pointers: part -> the name this modlisa reads it under (fixed names: the layout is one format)
HUB_POINTERS = {"language_model": "language_model", "vision_tower": "vision_tower", "sam": "sam",
                "heads": HEADS_FILE, "training_config": CONFIG_FILE, "export_info": EXPORT_INFO_FILE}
# the model settings an export fixes for ``init_from`` (the rest of a run's config stays the run's)
INIT_FIELDS = ("model", "vision_model", "language_model", "sam_model", "sam_kind", "llava_model", "vlm_model",
               "img_size", "vlm_resolution",
               "sam_image_size",
               "use_mm_start_end", "use_chat_template", "projector")


def heads_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """Every weight of ``model`` outside the Hugging Face backbones (projector.*, text_hidden_fcs.*, ...)."""
    return {k: v for k, v in model.state_dict().items() if k.split(".", 1)[0] not in BACKBONE_ATTRS}


def projector_kind(projector: nn.Module) -> str:
    """``linear`` for a single Linear (LLaVA-v1 / LISA-7B-v1), else ``mlp2x_gelu`` (LLaVA-1.5)."""
    return "linear" if isinstance(projector, nn.Linear) else "mlp2x_gelu"


def check_export_folder(folder: Path) -> None:
    """Every part present; with SHA256SUMS (exports of this version) every file verified, none unlisted;
    ``config.json``, when present (exports since format 1), read and checked (``read_hub_config``)."""
    required = [CONFIG_FILE, HEADS_FILE, EXPORT_INFO_FILE, *EXPORT_PATHS.values()]
    absent = [name for name in required if not (folder / name).exists()]
    if absent:
        raise FileNotFoundError(f"{folder} is not a complete modlisa export: missing {', '.join(absent)}")
    if not has_manifest(folder):
        logger.warning("%s has no %s (an export of an older modlisa): its files are not verified", folder, MANIFEST)
    else:
        verify_manifest(folder, required=[CONFIG_FILE, HEADS_FILE, EXPORT_INFO_FILE], strict=True,
                        unread=HUB_UNREAD)
    read_hub_config(folder)


def hub_config(info: dict[str, Any], exported_cfg: TrainingConfig) -> dict[str, Any]:
    """The export's ``config.json``: what Hugging Face tooling and a reader look for first (``model_type``,
    ``architectures``, ``library_name``), the modlisa version, the pointers to the parts, a summary of the
    model. It duplicates nothing the loader reads elsewhere except the pointers, which are checked."""
    return {
        "model_type": HUB_MODEL_TYPE,
        "architectures": ["ModifiedLISA"],
        "library_name": "modlisa",
        "modlisa_version": info["modlisa_version"],
        "format_version": HUB_FORMAT_VERSION,
        "source_preset": info.get("source_preset"),
        "base_models": info.get("base_models") or {},
        "parts": dict(HUB_POINTERS),
        "lora_merged": bool(info.get("lora_merged")),
        "projector": info.get("projector"),
        "img_size": int(exported_cfg.img_size),
        "sam_image_size": int(exported_cfg.sam_image_size),
        "seg_token_id": int(info["seg_token_id"]),
        "image_token_id": int(info["image_token_id"]),
    }


def read_hub_config(folder: Path) -> dict[str, Any] | None:
    """``folder/config.json`` checked (a modlisa export's, a format this modlisa reads, the parts where this
    modlisa reads them); None when absent (an export of an older modlisa). WeightsError naming the file."""
    path = folder / HUB_CONFIG_FILE
    if not path.exists():
        return None
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        raise WeightsError(f"{path}: unreadable export config ({' '.join(str(err).split())[:160]}); rewrite the "
                           "export (`modlisa export` or save_pretrained) or delete the file to load it as an older "
                           "export") from None
    if not isinstance(config, dict) or config.get("model_type") != HUB_MODEL_TYPE:
        found = config.get("model_type") if isinstance(config, dict) else type(config).__name__
        raise WeightsError(f"{path}: not a modlisa export config (model_type {found!r}, expected "
                           f"{HUB_MODEL_TYPE!r})")
    version = config.get("format_version")
    if not isinstance(version, int) or version > HUB_FORMAT_VERSION:
        raise WeightsError(f"{path}: format_version {version!r} is not one this modlisa reads (<= "
                           f"{HUB_FORMAT_VERSION}); written by modlisa {config.get('modlisa_version')}: upgrade modlisa")
    parts = config.get("parts")
    if not isinstance(parts, dict):
        raise WeightsError(f"{path}: 'parts' must map each part to its file or folder")
    for part, name in HUB_POINTERS.items():
        if parts.get(part) != name:
            raise WeightsError(f"{path}: parts.{part} is {parts.get(part)!r}; this modlisa reads the export's "
                               f"{part} from {name!r}")
    return config


def read_export_info(folder: Path) -> dict[str, Any]:
    path = folder / EXPORT_INFO_FILE
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        raise WeightsError(f"{path}: unreadable export information ({' '.join(str(err).split())[:160]})") from None
    keys = ("seg_token_id", "image_token_id", "vision_feature_layer", "drop_cls")
    if not isinstance(info, dict) or any(k not in info for k in keys):
        raise WeightsError(f"{path}: not a modlisa export information file (keys {', '.join(keys)} expected)")
    return info


def exported_config(folder: Path) -> TrainingConfig:
    """The export's TrainingConfig with its subfolder pointers made absolute."""
    source = folder / CONFIG_FILE
    cfg = config_from_dict(load_yaml(source), source=str(source))
    if cfg.model not in ("composite", "vlm"):
        raise ConfigError(f"{source}: model must be composite (or vlm) in an export, got {cfg.model!r}")
    paths = {}
    if cfg.model == "vlm":
        paths["vlm_model"] = str(folder / VLM_EXPORT_PATH)
    for field_name in EXPORT_PATHS:
        value = getattr(cfg, field_name)
        if not value:
            raise ConfigError(f"{source}: {field_name} is empty; it should name a subfolder of the export")
        paths[field_name] = str(value if Path(value).is_absolute() else folder / value)
    return dataclasses.replace(cfg, **paths)


def init_fields(folder: str | Path) -> dict[str, Any]:
    """The model settings export ``folder`` fixes for a run that starts from it (``TrainingConfig.init_from``),
    ``init_from`` itself made absolute (a run folder's config must not depend on the working directory)."""
    folder = Path(folder).expanduser().resolve()
    if not (folder / CONFIG_FILE).is_file():
        raise ConfigError(f"init_from {str(folder)!r} is not a modlisa export folder (no {CONFIG_FILE}); write one "
                          "with `modlisa export` or `modlisa import-lisa`")
    cfg = exported_config(folder)
    return {**{name: getattr(cfg, name) for name in INIT_FIELDS}, "init_from": str(folder)}


def apply_export_info(model: nn.Module, info: dict[str, Any], source: Path) -> None:
    """Restore vision wiring the composite preset cannot infer; check token ids and projector agree."""
    for key in ("seg_token_id", "image_token_id"):
        if int(getattr(model, key)) != int(info[key]):
            raise WeightsError(f"{source}: {key} is {info[key]} in the export but {getattr(model, key)} in the "
                               "rebuilt tokenizer of language_model/")
    kind = info.get("projector", "mlp2x_gelu")  # exports before the field held LLaVA-1.5's
    if projector_kind(model.projector) != kind:
        raise WeightsError(f"{source}: the export's projector is {kind} but the rebuilt model's is "
                           f"{projector_kind(model.projector)}; set projector: {kind} in {CONFIG_FILE}")
    layer = info["vision_feature_layer"]
    model.vision_feature_layer = list(layer) if isinstance(layer, list) else int(layer)
    model.drop_cls = bool(info["drop_cls"])
    model._num_image_tokens = None


def load_heads(model: nn.Module, path: Path) -> None:
    """Load ``modlisa_heads.safetensors`` strictly into the non-backbone weights of ``model``."""
    state = read_safetensors(path)
    targets = dict(heads_state_dict(model))
    missing = sorted(set(targets) - set(state))
    unexpected = sorted(set(state) - set(targets))
    if missing or unexpected:
        raise WeightsError(f"{path} does not match the rebuilt model: missing {missing[:10]}, "
                           f"unexpected {unexpected[:10]}")
    bad = [f"{n}: file {tuple(state[n].shape)} vs model {tuple(t.shape)}" for n, t in targets.items()
           if state[n].shape != t.shape]
    if bad:
        raise WeightsError(f"{path}: {len(bad)} shape mismatch(es): " + "; ".join(bad[:5]))
    with torch.no_grad():
        for name, target in targets.items():
            target.copy_(state[name])


def load_init_weights(model: nn.Module, folder: str | Path) -> None:
    """What ``init_from`` adds to the model its backbones were built from: the export's heads and wiring."""
    folder = Path(folder).expanduser().resolve()
    check_export_folder(folder)
    apply_export_info(model, read_export_info(folder), folder / EXPORT_INFO_FILE)
    load_heads(model, folder / HEADS_FILE)
    logger.info("init_from %s: projector, [SEG] head and vision wiring loaded", folder)
