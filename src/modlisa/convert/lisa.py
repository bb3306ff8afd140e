"""A LISA checkpoint folder (``LISAForCausalLM``, e.g. ``xinlai/LISA-7B-v1``) -> a modlisa export folder.

What LISA's folder holds (``model/LISA.py``, ``model/llava/model/llava_arch.py``,
``merge_lora_weights_and_save_hf_model.py`` of dvlab-research/LISA):

- ``config.json``: LLaVA's ``LlavaConfig`` (a ``LlamaConfig``, ``model_type: llava``) plus ``mm_vision_tower``
  (the CLIP id), ``mm_hidden_size``, ``mm_vision_select_layer`` (-2), ``mm_vision_select_feature`` (``patch``:
  CLS dropped), ``mm_use_im_start_end``, ``out_dim`` (256), ``train_mask_decoder``.
- the tokenizer, with ``[SEG]`` (``add_tokens``: LISA's ``seg_token_idx`` is
  ``tokenizer("[SEG]", add_special_tokens=False).input_ids[0]``) and ``<im_start>`` / ``<im_end>``.
- weight shards (``pytorch_model-*.bin`` or safetensors, with an index), keyed as ``LISAForCausalLM`` saves:

  - ``model.embed_tokens``, ``model.layers.*``, ``model.norm``, ``lm_head``: the Llama LM, already in
    ``LlamaForCausalLM`` naming;
  - ``model.mm_projector.{weight,bias}``: LLaVA-v1's projector, ONE Linear (``.0`` / ``.2``: mlp2x_gelu);
  - ``model.visual_model.*``: SAM ViT-H in segment_anything naming (``sam_original`` converts it);
  - ``model.text_hidden_fcs.0.{0,2}.*``: the [SEG] projection, Linear, ReLU, Linear (+ a parameterless Dropout);
  - ``model.vision_tower.vision_tower.vision_model.*``: CLIP, NOT in LISA's released folders (below).

The vision tower: LISA's merge script saves every key except those containing ``vision_tower``, and LISA
builds the tower at run time with ``CLIPVisionModel.from_pretrained(config.mm_vision_tower)``
(``openai/clip-vit-large-patch14``), frozen throughout training. So the tower is taken from the checkpoint when
it is there, else from ``vision_model`` (a folder or id) or the config's ``mm_vision_tower`` id (which must be
in the Hugging Face cache offline): the same weights LISA runs with.

The result is exactly what ``modlisa.weights.load_exported`` reads (it is written by ``export_merged``): the
composite preset on the subfolders, ``projector: linear``, ``use_mm_start_end``, ``img_size`` (224) and
``sam_image_size`` (1024) of the checkpoint, the [SEG] id checked to be LISA's. One row is added to the
vocabulary: ``<image>`` (LISA splices the image at id -200, outside the vocabulary); its embedding is zero
(never read: the image features replace it) and its LM-head row is a copy of ``<unk>``'s, so its logit is
``<unk>``'s, a token the LM never predicts. Every source key is mapped or known to be a
derived buffer (rotary ``inv_freq``, CLIP ``position_ids``, SAM ``pixel_mean`` / ``pixel_std``); anything else
stops the import with the keys and their file.
"""

from __future__ import annotations

import json
import logging
import os
import re
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from transformers import AutoTokenizer, CLIPVisionConfig, CLIPVisionModel, LlamaConfig, LlamaForCausalLM

from modlisa.config import ConfigError, TrainingConfig
from modlisa.convert.assign import assign_state
from modlisa.convert.sam_original import sam_from_original_state
from modlisa.types import SEG_TOKEN
from modlisa.weights.files import WeightsError, read_json_file, read_safetensors, read_torch_safely

logger = logging.getLogger(__name__)

CONFIG = "config.json"
INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
SINGLE_FILES = ("model.safetensors", "pytorch_model.bin")
SHARD_PATTERNS = (re.compile(r"model-(\d+)-of-(\d+)\.safetensors"), re.compile(r"pytorch_model-(\d+)-of-(\d+)\.bin"))

LM_PREFIXES = ("model.embed_tokens.", "model.layers.", "model.norm.", "lm_head.")
SAM_PREFIX = "model.visual_model."
PROJECTOR_PREFIX = "model.mm_projector."
HEAD_PREFIX = "model.text_hidden_fcs.0."  # nn.ModuleList([nn.Sequential(Linear, ReLU, Linear, Dropout)])
VISION_PREFIXES = ("model.vision_tower.vision_tower.", "model.vision_tower.")  # CLIPVisionTower / a bare CLIP
DERIVED = (re.compile(r"model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq"),  # older transformers saved them
           re.compile(r"model\.vision_tower\.(vision_tower\.)?(vision_model\.)?embeddings\.position_ids"))
CLIP_DEFAULT = "openai/clip-vit-large-patch14"  # LISA's --vision-tower default
LLAMA_FIELDS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                "head_dim", "hidden_act", "max_position_embeddings", "initializer_range", "rms_norm_eps",
                "pretraining_tp", "rope_theta", "rope_scaling", "rope_parameters", "attention_bias",
                "attention_dropout", "mlp_bias")
SELECT_FEATURES = {"patch": True, "cls_patch": False}  # mm_vision_select_feature -> drop_cls


@dataclass
class LisaWeights:
    """The tensors of a LISA checkpoint, split by destination (names as the destination expects them)."""

    language_model: dict[str, Tensor] = field(default_factory=dict)  # LlamaForCausalLM names
    vision_tower: dict[str, Tensor] = field(default_factory=dict)  # CLIPVisionModel names ({} = not saved)
    projector: dict[str, Tensor] = field(default_factory=dict)  # mm_projector's own names (weight, 0.weight, ...)
    sam: dict[str, Tensor] = field(default_factory=dict)  # segment_anything names
    seg_head: dict[str, Tensor] = field(default_factory=dict)  # 0.weight, 0.bias, 2.weight, 2.bias
    dropped: list[str] = field(default_factory=list)  # derived buffers, recomputed on load
    files: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------- reading the folder
def read_lisa_config(src: Path) -> dict[str, Any]:
    """``config.json`` of a LISA folder; ConfigError naming the file when it is absent or not LISA's."""
    path = src / CONFIG
    if not src.is_dir():
        raise ConfigError(f"{src} is not a folder (give a LISA checkpoint folder: config.json + weight shards)")
    if not path.is_file():
        raise ConfigError(f"{path} does not exist: {src} is not a LISA checkpoint folder")
    config = read_json_file(path, "LISA config")
    if not isinstance(config, dict):
        raise ConfigError(f"{path}: not a LISA config (not a JSON object)")
    if "LISAForCausalLM" not in (config.get("architectures") or []) and not {"out_dim", "mm_hidden_size"} <= set(config):
        raise ConfigError(f"{path}: not a LISA config (architectures {config.get('architectures')}, no out_dim / "
                          "mm_hidden_size): expected a folder written by LISA's merge_lora_weights_and_save_hf_model.py")
    return config


def _index_files(src: Path, index: Path) -> tuple[list[Path], dict[str, str]]:
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as err:
        raise WeightsError(f"{index}: not a weight index ({' '.join(str(err).split())[:120]})") from None
    if not isinstance(weight_map, dict) or not all(
            isinstance(k, str) and isinstance(v, str) and Path(v).name == v and v not in ("", ".", "..")
            for k, v in weight_map.items()):
        raise WeightsError(f"{index}: its weight_map must map tensor names to file names in the same folder")
    names = sorted(set(weight_map.values()))
    for name in names:
        if not (src / name).is_file():
            raise WeightsError(f"{src / name}: missing (listed in {index.name}); download every shard")
    return [src / name for name in names], weight_map


def weight_files(src: Path) -> tuple[list[Path], dict[str, str] | None]:
    """The weight files of ``src`` and the index's ``weight_map`` when there is one.

    Order: a safetensors / bin index, a single ``model.safetensors`` / ``pytorch_model.bin``, index-less shards
    (``*-0000k-of-0000n.*``, all n present). ConfigError when none is there; WeightsError for a missing shard.
    """
    for name in INDEXES:
        if (src / name).is_file():
            return _index_files(src, src / name)
    for name in SINGLE_FILES:
        if (src / name).is_file():
            return [src / name], None
    for pattern in SHARD_PATTERNS:
        shards = sorted(p for p in src.iterdir() if pattern.fullmatch(p.name))
        if shards:
            first = pattern.fullmatch(shards[0].name)
            total = int(first[2])
            have = {int(pattern.fullmatch(p.name)[1]) for p in shards}
            absent = [i for i in range(1, total + 1) if i not in have]
            if absent:
                name = shards[0].name.replace(f"{first[1]}-of", f"{absent[0]:0{len(first[1])}d}-of", 1)
                raise WeightsError(f"{src / name}: missing ({len(absent)} of {total} shards absent); download every shard")
            return shards, None
    raise ConfigError(f"{src}: unknown weights layout: no {', '.join(INDEXES + SINGLE_FILES)} and no "
                      "model-*-of-*.safetensors / pytorch_model-*-of-*.bin shards")


def _read_file(path: Path) -> dict[str, Tensor]:
    if path.suffix == ".safetensors":
        return read_safetensors(path)
    data = read_torch_safely(path, what="weight shard", mmap=True)
    if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, Tensor) for k, v in data.items()):
        raise WeightsError(f"{path}: not a state dict of tensors (a LISA weight shard maps names to tensors)")
    return data


def read_weights(src: Path) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Every tensor of the folder and the file each came from; WeightsError for a key in two files or one the
    index places elsewhere."""
    files, weight_map = weight_files(src)
    state: dict[str, Tensor] = {}
    origin: dict[str, str] = {}
    for path in files:
        for key, tensor in _read_file(path).items():
            if key in state:
                raise WeightsError(f"{path}: {key} is also in {origin[key]}")
            if weight_map is not None and weight_map.get(key) != path.name:
                raise WeightsError(f"{path}: holds {key}, which the index places in {weight_map.get(key)}")
            state[key], origin[key] = tensor, path.name
    if weight_map is not None and set(weight_map) - set(state):
        absent = sorted(set(weight_map) - set(state))
        raise WeightsError(f"{src / weight_map[absent[0]]}: lacks {len(absent)} tensor(s) its index lists ({absent[0]}, ...)")
    return state, origin


def split_weights(state: dict[str, Tensor], origin: dict[str, str], src: Path) -> LisaWeights:
    """Route every key to its destination; WeightsError listing the keys (and their file) that have none."""
    out = LisaWeights(files=sorted(set(origin.values())))
    unmapped: list[str] = []
    for key, tensor in state.items():
        vision_prefix = next((p for p in VISION_PREFIXES if key.startswith(p)), None)
        if any(p.fullmatch(key) for p in DERIVED):
            out.dropped.append(key)
        elif key.startswith(LM_PREFIXES):
            out.language_model[key] = tensor
        elif key.startswith(SAM_PREFIX):
            out.sam[key[len(SAM_PREFIX):]] = tensor
        elif key.startswith(PROJECTOR_PREFIX):
            out.projector[key[len(PROJECTOR_PREFIX):]] = tensor
        elif key.startswith(HEAD_PREFIX):
            out.seg_head[key[len(HEAD_PREFIX):]] = tensor
        elif vision_prefix is not None:
            out.vision_tower[key[len(vision_prefix):]] = tensor
        else:
            unmapped.append(key)
    if unmapped:
        hint = " (LoRA not merged: run LISA's merge_lora_weights_and_save_hf_model.py first)" if any(
            "lora_" in k for k in unmapped) else ""
        raise WeightsError(f"{src / origin[unmapped[0]]}: {len(unmapped)} key(s) with no place in a ModifiedLISA "
                           f"model{hint}: {', '.join(unmapped[:8])}{' ...' if len(unmapped) > 8 else ''}")
    for part, prefix in (("language_model", "model.embed_tokens."), ("sam", SAM_PREFIX), ("projector", PROJECTOR_PREFIX),
                         ("seg_head", HEAD_PREFIX)):
        if not getattr(out, part):
            raise WeightsError(f"{src}: no {prefix}* tensors in {', '.join(out.files)}: not a LISA checkpoint")
    return out


# ---------------------------------------------------------------------- the parts
@dataclass
class LisaTokens:
    """The tokenizer (modlisa's tokens added) and the ids that matter."""

    tokenizer: Any
    seg_token_id: int  # LISA's seg_token_idx, unchanged
    image_token_id: int  # <image>, added by modlisa (LISA: -200, outside the vocabulary)


def lisa_tokenizer(src: Path, config: dict[str, Any], use_start_end: bool) -> LisaTokens:
    """The folder's tokenizer with ``<image>`` (and ``<im_start>`` / ``<im_end>``) added as modlisa needs them;
    ConfigError unless its ``[SEG]`` is one token with LISA's id."""
    from modlisa.model.tokenizer import add_image_span_tokens, add_special_tokens

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(src))
    except (OSError, ValueError, ImportError) as err:
        raise ConfigError(f"{src}: its tokenizer cannot be loaded ({' '.join(str(err).split())[:160]}); LISA's "
                          "tokenizer.model needs `pip install sentencepiece protobuf`") from None
    seg = tokenizer(SEG_TOKEN, add_special_tokens=False)["input_ids"]
    if len(seg) != 1:
        raise ConfigError(f"{src}: its tokenizer encodes {SEG_TOKEN} as {seg}, not one token: not a LISA tokenizer")
    if "seg_token_idx" in config and int(config["seg_token_idx"]) != seg[0]:
        raise ConfigError(f"{src / CONFIG}: seg_token_idx {config['seg_token_idx']} but the tokenizer's "
                          f"{SEG_TOKEN} is {seg[0]}")
    if tokenizer.pad_token is None and tokenizer.unk_token is not None:
        tokenizer.pad_token = tokenizer.unk_token  # LISA: tokenizer.pad_token = tokenizer.unk_token
    try:
        image_id, seg_id = add_special_tokens(tokenizer)
        if use_start_end:  # LISA's tokenizer has them; modlisa's loader would add them otherwise
            add_image_span_tokens(tokenizer)
    except ValueError as err:
        raise ConfigError(f"{src}: {err}") from None
    if seg_id != seg[0]:
        raise ConfigError(f"{src}: {SEG_TOKEN} became id {seg_id} in modlisa's tokenizer, LISA's is {seg[0]}")
    return LisaTokens(tokenizer, seg_id, image_id)


def _llama_config(config: dict[str, Any], vocab: int, tokens: LisaTokens, dtype: torch.dtype) -> LlamaConfig:
    """LISA's config.json read as the LlamaConfig it extends (``model_type: llava`` would name another class):
    the architecture fields (LlamaConfig maps the legacy ``rope_theta`` / ``rope_scaling`` itself); vocabulary
    size and special ids from the grown embedding and the tokenizer; ``use_cache`` left at its default (LISA
    saves false, for training)."""
    fields = {k: config[k] for k in LLAMA_FIELDS if config.get(k) is not None}
    tok = tokens.tokenizer
    fields.update(vocab_size=vocab, tie_word_embeddings=False, bos_token_id=tok.bos_token_id,
                  eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    llama = LlamaConfig(**fields)
    llama.dtype = dtype
    return llama


def grow_vocabulary(lm: dict[str, Tensor], tokens: LisaTokens) -> list[int]:
    """Rows for the ids modlisa added past LISA's embedding (``<image>``): zero embedding, LM-head row = <unk>'s.
    Returns the added ids."""
    embed, head = lm["model.embed_tokens.weight"], lm["lm_head.weight"]
    rows, size = embed.shape[0], len(tokens.tokenizer)
    if size <= rows:
        return []
    added = size - rows
    unk = tokens.tokenizer.unk_token_id
    head_rows = head[unk].expand(added, -1) if unk is not None and unk < rows else head.new_zeros(added, head.shape[1])
    lm["model.embed_tokens.weight"] = torch.cat([embed, embed.new_zeros(added, embed.shape[1])])
    lm["lm_head.weight"] = torch.cat([head, head_rows])
    return list(range(rows, size))


def build_language_model(config: dict[str, Any], lm: dict[str, Tensor], tokens: LisaTokens,
                         src: Path) -> tuple[nn.Module, list[int]]:
    """(the Llama LM holding the checkpoint's tensors, the ids of the rows added): no copy of the tensors; the
    model is built to be saved, never run (its rotary buffers stay unset)."""
    if "lm_head.weight" not in lm or "model.embed_tokens.weight" not in lm:
        raise WeightsError(f"{src}: the language model lacks model.embed_tokens.weight or lm_head.weight")
    added = grow_vocabulary(lm, tokens)
    if added:
        logger.info("vocabulary %d -> %d rows (ids %s: modlisa's <image>)", added[0], added[-1] + 1, added)
    vocab = lm["model.embed_tokens.weight"].shape[0]
    llama = _llama_config(config, vocab, tokens, lm["model.embed_tokens.weight"].dtype)
    model = assign_state(lambda: LlamaForCausalLM(llama), lm, f"{src} (language model)", allow_meta_buffers=True)
    return model, added


def _clip_name(key: str, names: set[str]) -> str:
    """``key`` as the installed CLIPVisionModel names it: transformers 4 keeps its layers under
    ``vision_model.``, transformers 5 at the top (LISA's files, written by 4.31, have the prefix)."""
    for candidate in (key, key.removeprefix("vision_model."), f"vision_model.{key}"):
        if candidate in names:
            return candidate
    return key  # reported by the strict check


def _vision_source(config: dict[str, Any], vision_model: str | None) -> str:
    return vision_model or config.get("mm_vision_tower") or config.get("vision_tower") or CLIP_DEFAULT


def build_vision_tower(config: dict[str, Any], weights: dict[str, Tensor], vision_model: str | None,
                       src: Path) -> tuple[nn.Module, str]:
    """(CLIPVisionModel, where its weights came from): the checkpoint's own tensors when saved (its config from
    ``vision_model`` / the config's id), else the whole tower from ``vision_model`` / ``mm_vision_tower``."""
    from modlisa.model.backbones import load_pretrained

    source = _vision_source(config, vision_model)
    if weights:
        clip = load_pretrained("vision_model", source, CLIPVisionConfig.from_pretrained)
        with torch.device("meta"):
            names = set(CLIPVisionModel(clip).state_dict())
        weights = {_clip_name(k, names): v for k, v in weights.items()}
        tower = assign_state(lambda: CLIPVisionModel(clip), weights, f"{src} (vision tower)", allow_meta_buffers=True)
        return tower, "checkpoint"
    logger.info("%s holds no vision tower (LISA's merge script leaves it out): loading %s as LISA does", src, source)
    tower = load_pretrained("vision_model", source, CLIPVisionModel.from_pretrained)
    return tower, source


def build_projector(weights: dict[str, Tensor], vision_dim: int, text_dim: int, src: Path) -> tuple[nn.Module, str]:
    """(projector module holding the checkpoint's tensors, kind): LLaVA-v1's Linear or LLaVA-1.5's mlp2x_gelu."""
    from modlisa.model.backbones import VisionProjector

    if set(weights) == {"weight", "bias"}:
        module, kind, state = nn.Linear(vision_dim, text_dim), "linear", dict(weights)
    elif set(weights) == {"0.weight", "0.bias", "2.weight", "2.bias"}:
        module, kind = VisionProjector(vision_dim, text_dim), "mlp2x_gelu"
        state = {f"linear_{1 if k[0] == '0' else 2}.{k[2:]}": v for k, v in weights.items()}
    else:
        raise WeightsError(f"{src}: model.mm_projector holds {sorted(weights)}: neither a Linear nor mlp2x_gelu")
    _load_strict(module, state, f"{src} (model.mm_projector)")
    return module, kind


def _load_strict(module: nn.Module, state: dict[str, Tensor], what: str) -> None:
    expected = module.state_dict()
    bad = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
           if k in state and state[k].shape != v.shape]
    if set(state) != set(expected) or bad:
        raise WeightsError(f"{what}: expected {sorted(expected)} with the model's shapes, got {sorted(state)}"
                           + (f" ({'; '.join(bad)})" if bad else ""))
    with torch.no_grad():
        for key, target in expected.items():
            target.copy_(state[key])


# ---------------------------------------------------------------------- the import
@dataclass
class ImportResult:
    """What ``import_lisa`` wrote and from what."""

    out_dir: Path
    seg_token_id: int
    image_token_id: int
    vision_tower: str  # "checkpoint" or the folder / id it was loaded from
    sam_variant: str
    projector: str
    img_size: int
    sam_image_size: int
    num_tensors: int
    dropped: list[str]
    added_rows: list[int]


def import_lisa(src: str | os.PathLike[str], out_dir: str | os.PathLike[str], *, vision_model: str | None = None,
                overwrite: bool = False) -> ImportResult:
    """Convert LISA checkpoint folder ``src`` into the modlisa export folder ``out_dir`` (see the module
    docstring); ``vision_model`` names the CLIP tower when the checkpoint has none (default: its
    ``mm_vision_tower``)."""
    from modlisa.model.backbones import Backbones, image_stats
    from modlisa.model.lisa import ModifiedLISA
    from modlisa.weights.export import check_out_dir, export_merged

    src, out_dir = Path(src).expanduser(), Path(out_dir).expanduser()
    check_out_dir(src, out_dir, overwrite=overwrite, flag="OUT", what="the LISA folder")
    config = read_lisa_config(src)
    state, origin = read_weights(src)
    parts = split_weights(state, origin, src)
    select = config.get("mm_vision_select_feature", "patch")
    if select not in SELECT_FEATURES:
        raise ConfigError(f"{src / CONFIG}: mm_vision_select_feature {select!r} is not one of {', '.join(SELECT_FEATURES)}")
    use_start_end = bool(config.get("mm_use_im_start_end", False))
    tokens = lisa_tokenizer(src, config, use_start_end)
    language_model, added = build_language_model(config, parts.language_model, tokens, src)
    vision, vision_from = build_vision_tower(config, parts.vision_tower, vision_model, src)
    text_dim, vision_dim = language_model.config.hidden_size, vision.config.hidden_size
    if int(config.get("mm_hidden_size", vision_dim)) != vision_dim:
        raise ConfigError(f"{src / CONFIG}: mm_hidden_size {config['mm_hidden_size']} but the vision tower "
                          f"({vision_from}) is {vision_dim} wide")
    projector, kind = build_projector(parts.projector, vision_dim, text_dim, src)
    sam, variant = sam_from_original_state(parts.sam, f"{src} ({SAM_PREFIX}*)")
    mean, std = image_stats(_vision_source(config, vision_model), "clip")
    img_size, sam_size = int(vision.config.image_size), int(sam.config.vision_config.image_size)
    backbones = Backbones(vision, projector, language_model, sam, tokens.tokenizer, mean, std,
                          vision_feature_layer=int(config.get("mm_vision_select_layer", -2)),
                          drop_cls=SELECT_FEATURES[select])
    model = ModifiedLISA.from_backbones(backbones, vision_image_size=img_size)
    _load_strict(model.text_hidden_fcs, parts.seg_head, f"{src} ({HEAD_PREFIX}*)")
    cfg = TrainingConfig(model="composite", vision_model=_vision_source(config, vision_model), language_model=str(src),
                         sam_model=str(src), img_size=img_size, sam_image_size=sam_size, use_lora=False,
                         use_mm_start_end=use_start_end, projector=kind)
    processors = types.SimpleNamespace(vision=types.SimpleNamespace(mean=mean, std=std))
    extra = {"source_preset": "lisa-import", "imported_from": {
        "path": str(src.resolve()), "architectures": config.get("architectures"), "weight_files": parts.files,
        "seg_token_idx": tokens.seg_token_id, "vision_tower": vision_from, "sam": variant,
        "projector": kind, "dropped_buffers": len(parts.dropped), "added_vocabulary_rows": added}}
    export_merged(model, tokens.tokenizer, cfg, out_dir, processors=processors, in_place=True, overwrite=overwrite,
                  extra_info=extra)
    return ImportResult(out_dir, tokens.seg_token_id, tokens.image_token_id, vision_from, variant, kind, img_size,
                        sam_size, len(state), parts.dropped, added)
