"""Hugging Face-style entry points on the export folder: ``from_pretrained`` (a local folder or a Hub repo id) and
``save_pretrained`` (LoRA merged), used by ``ModifiedLISA.from_pretrained`` / ``.save_pretrained`` and
``Predictor.from_pretrained``.

One format: these read and write exactly the folder of ``modlisa export`` (``weights.export``: ``export_merged``
/ ``load_exported``), not huggingface_hub's ``PyTorchModelHubMixin`` layout (one ``model.safetensors`` + a
``config.json`` of constructor arguments). ModifiedLISA is built from three Hugging Face models (each saved with
its own ``save_pretrained``, loadable alone) and a factory preset, not from JSON-able constructor arguments; a
mixin layout would be a second format with a second loader. The export's top-level ``config.json``
(``export_layout.hub_config``) gives Hub tooling its ``model_type`` / ``architectures`` / ``library_name``.

A Hub repo id is fetched with ``huggingface_hub.snapshot_download`` (only the files its ``SHA256SUMS`` lists
when it has one; ``.gitattributes`` never) and then loaded like a local folder, checksums verified. Offline
(``HF_HUB_OFFLINE=1``) a repo already in the Hugging Face cache loads; any other gives one clear error.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
from pathlib import Path
from typing import Any

from torch import nn

import modlisa
from modlisa.config import TrainingConfig
from modlisa.weights.card import CARD_FACTS
from modlisa.weights.export import export_merged, load_exported
from modlisa.weights.export_layout import CONFIG_FILE, HUB_CONFIG_FILE, read_export_info
from modlisa.weights.files import MANIFEST, read_manifest

logger = logging.getLogger(__name__)

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclasses.dataclass
class Pretrained:
    """What ``from_pretrained`` attaches to the model as ``model.pretrained``: what a ``Predictor`` and
    ``save_pretrained`` need besides the model.

    tokenizer: the LM's tokenizer ([SEG], <image> included); processors: ``ImageProcessors`` (``.sam``,
    ``.vision``); config: the export's ``TrainingConfig`` (composite preset, absolute sub-folder paths);
    folder: the local export folder read (a Hub repo's snapshot in the cache); source: the name given;
    info: ``modlisa_export.json``.
    """

    tokenizer: Any
    processors: Any
    config: TrainingConfig
    folder: Path
    source: str
    info: dict[str, Any]


def is_repo_id(name: str) -> bool:
    """``owner/name`` that is not a local path."""
    return bool(_REPO_ID.match(name)) and not Path(name).expanduser().exists()


def _download(repo_id: str, revision: str | None, cache_dir: str | os.PathLike[str] | None,
              token: str | bool | None) -> Path:
    """The local snapshot of Hub repo ``repo_id``; FileNotFoundError saying why when it cannot be had."""
    from huggingface_hub import constants, hf_hub_download, snapshot_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        HfHubHTTPError,
        HFValidationError,
        LocalEntryNotFoundError,
    )

    common = {"revision": revision, "cache_dir": cache_dir, "token": token, "library_name": "modlisa",
              "library_version": modlisa.__version__}
    try:
        try:  # the manifest first: fetch exactly the files it lists (nothing planted, no .gitattributes)
            manifest = Path(hf_hub_download(repo_id, MANIFEST, **common))
            patterns = [*read_manifest(manifest.parent), MANIFEST]
        except EntryNotFoundError:  # an export of an older modlisa
            patterns = None
        folder = snapshot_download(repo_id, allow_patterns=patterns, ignore_patterns=[".gitattributes"], **common)
    except (LocalEntryNotFoundError, HfHubHTTPError, HFValidationError, OSError, ValueError) as err:
        reason = " ".join(str(err).split())[:200] or type(err).__name__
        offline = constants.HF_HUB_OFFLINE or isinstance(err, LocalEntryNotFoundError)
        hint = (" Offline (HF_HUB_OFFLINE=1 or no network) and not in the Hugging Face cache: download it once "
                f"online (`hf download {repo_id}`) or pass a local export folder." if offline else
                " Check the repo id, the revision and your access token (`hf auth login` for a private repo).")
        raise FileNotFoundError(f"{repo_id!r} is not a local folder and could not be fetched from the Hugging Face "
                                f"Hub ({type(err).__name__}: {reason}).{hint}") from None
    return Path(folder)


def resolve_pretrained(folder_or_repo_id: str | os.PathLike[str], *, revision: str | None = None,
                       cache_dir: str | os.PathLike[str] | None = None, token: str | bool | None = None) -> Path:
    """The local export folder ``folder_or_repo_id`` names: a folder as is; a Hub repo id (``owner/name``
    that is no local path) downloaded. FileNotFoundError / NotADirectoryError with the name otherwise."""
    name = os.fspath(folder_or_repo_id)
    path = Path(name).expanduser()
    if path.exists():
        if not path.is_dir():
            raise NotADirectoryError(f"{name} is a file; from_pretrained takes an export folder (`modlisa export`) "
                                     "or a Hub repo id")
        folder = path
    elif isinstance(folder_or_repo_id, str) and is_repo_id(name):
        folder = _download(name, revision, cache_dir, token)
    else:
        raise FileNotFoundError(f"{name}: no such export folder (and not a Hub repo id owner/name)")
    if not (folder / HUB_CONFIG_FILE).is_file() and not (folder / CONFIG_FILE).is_file():
        raise FileNotFoundError(f"{folder} is not a modlisa export: no {HUB_CONFIG_FILE} (nor the "
                                f"{CONFIG_FILE} of an older export); write one with `modlisa export` or "
                                "save_pretrained")
    return folder


def load_pretrained(folder_or_repo_id: str | os.PathLike[str], *, revision: str | None = None,
                    cache_dir: str | os.PathLike[str] | None = None, token: str | bool | None = None,
                    device: Any = None) -> tuple[nn.Module, Any, Any, TrainingConfig]:
    """(model in eval mode, tokenizer, processors, cfg) of an export folder or Hub repo; the model also carries
    them as ``model.pretrained`` (``Pretrained``). ``device``: where to move the model (default: the CPU)."""
    folder = resolve_pretrained(folder_or_repo_id, revision=revision, cache_dir=cache_dir, token=token)
    if not (folder / HUB_CONFIG_FILE).is_file():
        logger.info("%s has no %s (an export of an older modlisa): loading it from %s", folder, HUB_CONFIG_FILE,
                    CONFIG_FILE)
    model, tokenizer, processors, cfg = load_exported(folder)
    if device is not None:
        model.to(device)
    model.pretrained = Pretrained(tokenizer=tokenizer, processors=processors, config=cfg, folder=folder,
                                  source=os.fspath(folder_or_repo_id), info=read_export_info(folder))
    return model, tokenizer, processors, cfg


def from_pretrained(folder_or_repo_id: str | os.PathLike[str], **kwargs: Any) -> nn.Module:
    """``ModifiedLISA.from_pretrained``: the model of ``load_pretrained`` (tokenizer etc. in ``model.pretrained``)."""
    return load_pretrained(folder_or_repo_id, **kwargs)[0]


def save_pretrained(model: nn.Module, folder: str | os.PathLike[str], *, tokenizer: Any = None,
                    processors: Any = None, config: TrainingConfig | None = None, overwrite: bool = False,
                    eval_results: list[dict[str, Any]] | None = None) -> Path:
    """``ModifiedLISA.save_pretrained``: write ``model``'s export folder (the folder of ``modlisa export``, LoRA
    merged on a copy: ``model`` is unchanged); returns it.

    ``tokenizer``, ``processors`` and ``config`` (the run's ``TrainingConfig``) default to what
    ``from_pretrained`` attached (``model.pretrained``); a model from ``build_model`` / ``load_checkpoint``
    needs them passed. The card's facts of a loaded export are kept (``card.CARD_FACTS``); its eval results
    only when passed (``eval_results``, as ``weights.card.read_eval_results`` gives them): the weights may have
    changed since they were measured.
    """
    attached: Pretrained | None = getattr(model, "pretrained", None)
    tokenizer = tokenizer if tokenizer is not None else getattr(attached, "tokenizer", None)
    processors = processors if processors is not None else getattr(attached, "processors", None)
    cfg = config if config is not None else getattr(attached, "config", None)
    if tokenizer is None or cfg is None:
        raise ValueError("save_pretrained needs the model's tokenizer and TrainingConfig: pass tokenizer=... and "
                         "config=... (as build_model / load_checkpoint return them); a model from "
                         "ModifiedLISA.from_pretrained carries them")
    carried = {}
    if attached is not None and cfg is attached.config:
        carried = {k: attached.info[k] for k in CARD_FACTS if k in attached.info}
    return export_merged(model, tokenizer, cfg, folder, processors=processors, overwrite=overwrite,
                         extra_info=carried, eval_results=eval_results)
