"""The export's model card (``README.md``): Hugging Face YAML front matter + how to load, train and measure it.

Front matter (parsed by ``huggingface_hub.ModelCard``): ``library_name: modlisa``, ``license`` (only when every
base model's license is known and they agree), ``base_model`` (the Hub ids the run's backbones came from; local
folders are left out), ``datasets``, ``tags``, ``pipeline_tag: image-segmentation`` and a ``model-index`` of the
run's ``modlisa eval`` results (``outputs/eval_<split>[_generate].json``): gIoU and cIoU in percent (rounded to
2 decimals) per split, for the overall / short / long query subsets, teacher-forced (LISA's protocol) or
generated.

What the card says comes from ``modlisa_export.json`` (``base_models``, ``training``, ``dataset``,
``eval_results``), written at export time from the run's config and eval files (``export_facts``,
``read_eval_results``), so a re-saved export (``save_pretrained`` of a loaded one) keeps them.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from modlisa.config import VLM_PRESET_NAMES, TrainingConfig

logger = logging.getLogger(__name__)

TAGS = ["reasoning-segmentation", "lisa", "image-segmentation", "modlisa"]
PIPELINE_TAG = "image-segmentation"
# licenses of Hub models modlisa's presets name (as on their model cards); prefix -> license
KNOWN_LICENSES = {
    "facebook/sam-vit-": "apache-2.0",
    "google/siglip": "apache-2.0",
    "HuggingFaceTB/SmolLM2-": "apache-2.0",
    "llava-hf/llava-1.5-": "llama2",
}
SMOL_SOURCE = "HuggingFaceTB/SmolLM2-135M-Instruct"  # the smol preset's LM (its GGUF, de-quantised)
REASONSEG = {"id": "reasonseg", "name": "ReasonSeg"}
SYNTHETIC = {"id": "modlisa-synthetic-reasonseg", "name": "Synthetic ReasonSeg (modlisa make-data)"}
SUBSETS = ("overall", "short", "long")
# the facts of ``modlisa_export.json`` a re-export / re-save keeps (the weights' history; eval results apart)
CARD_FACTS = ("source_preset", "base_models", "training", "dataset", "imported_from", "lora_merged",
              "lm_dequantized_from_bits")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


# ---------------------------------------------------------------------- facts recorded at export time
def _hub_id(value: str | None) -> str | None:
    """``value`` when it reads as a Hub repo id and is not a local path, else None (no local paths on a card)."""
    if not value or not _HUB_ID.match(value) or Path(value).expanduser().exists():
        return None
    return value


def base_model_sources(cfg: TrainingConfig) -> dict[str, str]:
    """Role (language_model, vision_model, sam_model, llava_model, vlm_model) -> the Hub id it was built from."""
    sources = {"language_model": SMOL_SOURCE} if cfg.model == "smol" else {}
    if cfg.model in ("composite",):
        sources.update(language_model=cfg.language_model, vision_model=cfg.vision_model)
    if cfg.model in ("llava", "lisa-7b"):
        sources["llava_model"] = cfg.llava_model
    if cfg.vlm_model and cfg.model in VLM_PRESET_NAMES:
        sources["vlm_model"] = cfg.vlm_model
    if cfg.model != "tiny":
        sources["sam_model"] = cfg.sam_model
    return {role: hub for role, value in sources.items() if (hub := _hub_id(value))}


def training_summary(cfg: TrainingConfig) -> dict[str, Any]:
    """The training settings a card reader wants (the whole config is in ``modlisa_config.yaml``)."""
    keys = ("model", "num_epochs", "batch_size", "gradient_accumulation_steps", "learning_rate", "lr_schedule",
            "warmup_steps", "weight_decay", "use_lora", "train_embeddings", "freeze_image_encoder",
            "freeze_text_encoder", "freeze_sam", "img_size", "sam_image_size", "ce_loss_weight", "bce_loss_weight",
            "dice_loss_weight", "seed")
    summary = {key: getattr(cfg, key) for key in keys}
    if cfg.use_lora:
        summary.update(lora_r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_target_modules=list(cfg.lora_target_modules))
    summary["precision"] = "fp32" if cfg.precision == "no" else f"{cfg.precision} autocast"
    return summary


def dataset_of(cfg: TrainingConfig) -> dict[str, str]:
    """ReasonSeg, or modlisa's synthetic ReasonSeg-format data when the data folder's README.txt says so."""
    try:
        head = (Path(cfg.data_root).expanduser() / "README.txt").read_text(encoding="utf-8")[:200]
    except (OSError, UnicodeDecodeError, TypeError):
        return dict(REASONSEG)
    return dict(SYNTHETIC if head.startswith("Synthetic ReasonSeg-format dataset") else REASONSEG)


def export_facts(cfg: TrainingConfig) -> dict[str, Any]:
    """What ``modlisa_export.json`` keeps for the card: base models, training summary, dataset."""
    return {"base_models": base_model_sources(cfg), "training": training_summary(cfg), "dataset": dataset_of(cfg)}


# ---------------------------------------------------------------------- eval results
def _scores(values: Any) -> dict[str, float] | None:
    if not isinstance(values, dict):
        return None
    try:
        return {"giou": float(values["giou"]), "ciou": float(values["ciou"]),
                "num_queries": int(values.get("num_queries", 0))}
    except (KeyError, TypeError, ValueError):
        return None


def summarise_eval(record: dict[str, Any], source: str) -> dict[str, Any] | None:
    """The card's view of one ``eval_<name>.json``: split, mode, precision, overall / short / long scores."""
    overall = _scores(record)
    if overall is None or not isinstance(record.get("split"), str):
        logger.warning("%s: not a modlisa eval file (no split / giou / ciou): left off the model card", source)
        return None
    subsets = record.get("subsets") if isinstance(record.get("subsets"), dict) else {}
    scores = {"overall": overall, **{name: s for name in ("short", "long")
                                     if (s := _scores(subsets.get(name))) and s["num_queries"] > 0}}
    return {"split": record["split"], "mode": str(record.get("mode", "teacher")),
            "precision": record.get("precision"), "checkpoint": record.get("checkpoint"),
            "file": Path(source).name, "scores": scores}


def read_eval_results(outputs: Path, same_checkpoint: Callable[[str], bool] | None = None
                      ) -> list[dict[str, Any]]:
    """The ``eval_*.json`` of a run's ``outputs/`` (baselines ``*_wrong_query`` left out), summarised.

    ``same_checkpoint(recorded)`` says whether the checkpoint an eval file records is the exported one; one that
    is not (e.g. an older best model) is left off with a warning: the card's numbers are the export's.
    """
    results = []
    for path in sorted(outputs.glob("eval_*.json")):
        if path.stem.endswith("_wrong_query"):
            continue
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
            logger.warning("%s: unreadable (%s): left off the model card", path, " ".join(str(err).split())[:120])
            continue
        if not isinstance(record, dict):
            continue
        recorded = record.get("checkpoint")
        if same_checkpoint is not None and isinstance(recorded, str) and not same_checkpoint(recorded):
            logger.warning("%s measured checkpoint %s, not the exported one: left off the model card", path, recorded)
            continue
        summary = summarise_eval(record, str(path))
        if summary is not None:
            results.append(summary)
    return results


# ---------------------------------------------------------------------- the card
def _license(base_models: dict[str, str]) -> tuple[str | None, dict[str, str | None]]:
    per_model = {hub: next((lic for prefix, lic in KNOWN_LICENSES.items() if hub.startswith(prefix)), None)
                 for hub in base_models.values()}
    known = set(per_model.values())
    return (known.pop() if len(known) == 1 and None not in known else None), per_model


def _percent(value: float) -> float:
    return round(100.0 * float(value), 2)


def card_data(info: dict[str, Any], model_name: str) -> Any:
    """``huggingface_hub.ModelCardData`` of the export (front matter and model-index)."""
    from huggingface_hub import EvalResult, ModelCardData

    dataset = info.get("dataset") or REASONSEG
    license_id, _ = _license(info.get("base_models") or {})
    results = []
    for entry in info.get("eval_results") or []:
        mode = entry["mode"]
        label = "teacher-forced" if mode == "teacher" else mode
        for subset in SUBSETS:
            scores = entry["scores"].get(subset)
            if scores is None:
                continue
            for metric, name in (("giou", "gIoU"), ("ciou", "cIoU")):
                results.append(EvalResult(
                    task_type=PIPELINE_TAG, task_name="Reasoning segmentation", dataset_type=dataset["id"],
                    dataset_name=dataset["name"], dataset_split=entry["split"], dataset_config=subset,
                    metric_type=metric, metric_name=f"{name} ({label}, %)", metric_config=mode,
                    metric_value=_percent(scores[metric])))
    base = sorted(set((info.get("base_models") or {}).values()))
    return ModelCardData(library_name="modlisa", license=license_id, base_model=base or None,
                         datasets=[dataset["id"]], tags=list(TAGS), pipeline_tag=PIPELINE_TAG,
                         model_name=model_name, eval_results=results or None)


def _table(rows: Sequence[Sequence[Any]], head: Sequence[str]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def card_text(info: dict[str, Any], folder_name: str) -> str:
    """The whole ``README.md``: YAML front matter, then the body."""
    data = card_data(info, model_name=folder_name)
    base_models = info.get("base_models") or {}
    _, licenses = _license(base_models)
    bits = info.get("lm_dequantized_from_bits")
    parts = [f"---\n{data.to_yaml()}\n---\n", BODY.format(
        name=folder_name, version=info["modlisa_version"], preset=info.get("source_preset"),
        merged=("LoRA is merged into the language model" if info.get("lora_merged") else
                "The language model is a plain transformers model (no LoRA to merge)")
        + (f" (trained {bits}-bit: here de-quantised to float32, LoRA merged exactly)" if bits else ""),
        folder=folder_name)]
    if base_models:
        parts.append("## Base models\n\n" + _table(
            [(role, f"`{hub}`", licenses.get(hub) or "see its model card") for role, hub in base_models.items()],
            ("part", "Hub model", "license")) + "\n\nThe export's license follows its base models'"
            + ("." if data.license else ": they differ or are not known here, so none is stated above.") + "\n")
    else:
        parts.append("## Base models\n\nNone from the Hub (random-initialised or local backbones).\n")
    training = info.get("training")
    imported = info.get("imported_from")
    if isinstance(imported, dict):  # modlisa import-lisa: LISA's weights, not trained by modlisa
        parts.append("## Source\n\nImported with `modlisa import-lisa` from a LISA checkpoint folder (architectures "
                     f"`{imported.get('architectures')}`, vision tower `{imported.get('vision_tower')}`, SAM "
                     f"`{imported.get('sam')}`), not trained by modlisa; `modlisa_export.json` records the source.\n")
    elif training:
        parts.append("## Training configuration\n\n" + _table([(k, f"`{v}`") for k, v in training.items()],
                                                             ("setting", "value"))
                     + "\n\nThe full configuration is `modlisa_config.yaml` (as rebuilt for this export: LoRA "
                       "merged, parts pointed at the sub-folders).\n")
    parts.append(_evaluation_section(info))
    return "\n".join(parts)


def _evaluation_section(info: dict[str, Any]) -> str:
    entries = info.get("eval_results") or []
    dataset = (info.get("dataset") or REASONSEG)["name"]
    if not entries:
        return ("## Evaluation\n\nNo `modlisa eval` results were found in the run's `outputs/` when this export was "
                "written. Measure with:\n\n```bash\nmodlisa eval --checkpoint <this folder> --data_root <ReasonSeg "
                "folder> --split val\n```\n" + MEASURED)
    rows = []
    for entry in entries:
        for subset in SUBSETS:
            scores = entry["scores"].get(subset)
            if scores is not None:
                rows.append((entry["split"], entry["mode"], subset, f"{_percent(scores['giou']):.2f}",
                             f"{_percent(scores['ciou']):.2f}", scores["num_queries"], entry.get("precision") or "",
                             f"`{entry['file']}`"))
    return (f"## Evaluation ({dataset})\n\n"
            + _table(rows, ("split", "mode", "queries", "gIoU %", "cIoU %", "n", "precision", "from")) + "\n\n"
            + MEASURED)


BODY = """# {name}

A modlisa ModifiedLISA reasoning-segmentation model (modlisa {version}, source preset
`{preset}`): a multimodal language model answers with a `[SEG]` token whose hidden state prompts a SAM mask
decoder. {merged}; the [SEG] embedding rows are folded in.

## Load and predict

Python, in one call (a local folder or a Hub repo id):

```python
import numpy as np
from PIL import Image
from modlisa.model.lisa import ModifiedLISA
from modlisa.predictor import Predictor

model = ModifiedLISA.from_pretrained("{folder}")   # this folder or its Hub repo id; eval mode, CPU
predictor = Predictor.from_pretrained("{folder}")  # model + tokenizer + image processors
predictor.set_image(np.asarray(Image.open("image.jpg").convert("RGB")))
prediction = predictor.predict("the object you would use to cut bread", mode="generate")
print(prediction.answer, prediction.masks.shape)    # (n, H, W) bool, one mask per [SEG]
```

Command line:

```bash
modlisa predict --checkpoint {folder} --image image.jpg --query "the object you would use to cut bread"
modlisa eval --checkpoint {folder} --data_root <ReasonSeg folder> --split val
```

## Files

| path | content |
|---|---|
| `config.json` | `model_type: modlisa`, the modlisa version, pointers to the parts below |
| `language_model/` | causal LM + tokenizer (`[SEG]`, `<image>` included): `AutoModelForCausalLM.from_pretrained` |
| `vision_tower/` | vision tower + `preprocessor_config.json` (mean/std used in training) |
| `sam/` | `SamModel` (or `SamHQModel`, `Sam2Model`) with the trained mask decoder |
| `modlisa_heads.safetensors` | projector and `text_hidden_fcs` (the [SEG] projection) |
| `modlisa_config.yaml` | the run's `TrainingConfig`, `model: composite`, paths relative to this folder |
| `modlisa_export.json` | vision feature layer, CLS handling, token ids, image statistics, the facts of this card |
| `SHA256SUMS` | SHA-256 of every file (`sha256sum -c SHA256SUMS`), verified on load |
"""

MEASURED = """
How the numbers are measured (`modlisa eval`, LISA's protocol): gIoU is the mean over queries of each query's
mask IoU; cIoU is the summed intersection over the summed union of the split. `teacher` mode gives the answer
"[SEG]." in the input (one mask per query); `generate` mode lets the model answer greedily (one mask per generated
`[SEG]`, none without). `short` / `long` are the queries given as a phrase / as a reasoning sentence
(`is_sentence`); `overall` is all of them. Masks are the logits > 0 at the image's original size.
"""
