"""TrainingConfig: the one configuration of a run (the original script's field names), YAML + CLI loading, validation."""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

PRESETS = ("tiny", "smol", "composite", "llava", "lisa-7b", "vlm", "qwen2.5-vl-3b-sam2", "qwen3-vl-4b-sam2",
           "smolvlm-256m-sam2")
VLM_PRESET_NAMES = PRESETS[5:]  # the image-text-to-text reasoner (model/vlm.py)
PROJECTORS = ("mlp2x_gelu", "linear")
TRAIN_EMBEDDINGS = ("seg_row", "full", "none")
SAM_KINDS = ("sam", "sam_hq", "sam2")
VLM_RESOLUTIONS = ("fixed", "native")
MIXED_PRECISION = ("fp16", "bf16")


class ConfigError(ValueError):
    """A user error in the configuration: the message names the field and how to fix it."""


def _f(default: Any, help_text: str) -> Any:
    """A TrainingConfig field with its ``--help`` text; a callable default is a default factory (lists)."""
    if callable(default):
        return field(default_factory=default, metadata={"help": help_text})
    return field(default=default, metadata={"help": help_text})


@dataclass
class TrainingConfig:
    """Every setting of a ModifiedLISA run. Field names of the original ``scripts/train_new.py`` are kept; each
    field's help text is what ``modlisa train --help`` shows."""

    # --- data ---
    data_root: str = _f("data/demo", "ReasonSeg-format folder with train/ val/ test/ (+ explanatory/train.json)")
    dataset: str = _f("reason_seg", "LISA's --dataset: the kinds of the training mixture, '||'-separated, from "
                                    "sem_seg, refer_seg, vqa, reason_seg (docs/DATA.md, 'The training mixture')")
    sample_rates: str = _f("", "LISA's --sample_rates: one sampling weight per kind of `dataset`, comma-separated "
                               "(LISA: 9,3,3,1); empty: equal weights; not used when `dataset` names one kind")
    dataset_dir: str | None = _f(None, "LISA's dataset folder (ade20k/, cocostuff/, vlpart/, coco/, refer_seg/, "
                                       "llava_dataset/): needed when `dataset` names more than reason_seg")
    sem_seg_data: str = _f("ade20k||cocostuff||pascal_part||paco_lvis", "LISA's --sem_seg_data: the sem_seg datasets")
    refer_seg_data: str = _f("refclef||refcoco||refcoco+||refcocog", "LISA's --refer_seg_data: the refer_seg datasets")
    vqa_data: str = _f("llava_instruct", "LISA's --vqa_data: the vqa datasets")
    reason_seg_data: str = _f("reason_seg", "the reason_seg datasets, '||'-separated: reason_seg (= data_root) and/or "
                                            "more ReasonSeg-format folders (your data, `modlisa convert`), each drawn "
                                            "as often as the others")
    queries_per_image: int = _f(3, "queries sampled per training image, each its own sequence (LISA: up to 3)")
    pack_queries: bool = _f(True, "put all queries of an image in ONE LM sequence (image tokens once, block "
                                  "attention mask, positions restart per query): LISA's losses, fewer LM tokens; "
                                  "rows it cannot pack exactly (flash attention, sliding window) run unpacked")
    explanatory_prob: float = _f(0.1, "probability of answering with the explanation where explanatory/train.json "
                                      "has one (LISA: 0.1)")
    augment: bool = _f(False, "photometric jitter + query-aware horizontal flip (left/right words swapped)")
    max_length: int = _f(512, "token limit of one sequence before image-token expansion; longer queries are "
                              "reported and truncated")
    data_strict: bool = _f(False, "stop before training when any data problem is found (false: skip bad items and report them)")
    max_train_samples: int | None = _f(None, "use only the first N train images (debugging, smoke runs)")
    max_val_samples: int | None = _f(None, "use only the first N val images")
    num_workers: int = _f(0, "DataLoader worker processes per rank")

    # --- model ---
    model: str = _f("tiny", "preset: tiny | smol | composite | llava | lisa-7b | vlm | qwen2.5-vl-3b-sam2 | "
                            "qwen3-vl-4b-sam2 | smolvlm-256m-sam2 (docs/TRAINING_GUIDE.md)")
    vision_model: str | None = _f(None, "HF id or folder of a CLIP / SigLIP vision tower (composite preset)")
    language_model: str | None = _f(None, "HF id or folder of any causal LM (composite preset)")
    sam_model: str | None = _f(None, "HF id or folder of a SamModel, SamHQModel or Sam2Model (e.g. "
                                     "syscv-community/sam-hq-vit-base, facebook/sam2.1-hiera-large), or an "
                                     "original segment-anything checkpoint "
                                     "file (sam_vit_b/l/h_*.pth, converted on load) (default: a random tiny SAM)")
    sam_kind: str = _f("sam", "mask decoder family of the random tiny decoder built when sam_model is not set: "
                              "sam | sam_hq | sam2 (a sam_model checkpoint's own model_type decides)")
    llava_model: str | None = _f(None, "HF id or folder of a LlavaForConditionalGeneration (llava preset)")
    vlm_model: str | None = _f(None, "HF id or folder of an image-text-to-text model: Qwen2.5-VL, Qwen3-VL, Idefics3 / "
                                     "SmolVLM (vlm preset; its processor's chat template and image tokens are used)")
    vlm_resolution: str = _f("fixed", "vlm preset's image input: fixed (every image img_size x img_size, resize "
                                      "shortest side + centre crop, N tokens each) | native (Qwen2-VL / 2.5-VL / 3-VL: "
                                      "the processor's dynamic resolution, aspect ratio kept, at most img_size^2 "
                                      "pixels, so N varies per image)")
    projector: str = _f("mlp2x_gelu", "vision-to-LM projector of the composite preset: mlp2x_gelu (LLaVA-1.5) | "
                                      "linear (LLaVA-v1, LISA-7B-v1)")
    init_from: str | None = _f(None, "a modlisa export folder (`modlisa export` / `modlisa import-lisa`) to start "
                                     "from: its models, projector, [SEG] head and model settings; LoRA, freezing "
                                     "and the optimisation come from this config (keep the folder: the run refers "
                                     "to it)")
    img_size: int = _f(224, "vision-tower input size (pixels)")
    sam_image_size: int = _f(1024, "SAM input size, longest side (SAM 2: the square side) (pixels; LISA: 1024)")
    use_lora: bool = _f(True, "train LoRA adapters on the LM (LISA: yes)")
    lora_r: int = _f(16, "LoRA rank (LISA: 8)")
    lora_alpha: int = _f(32, "LoRA scaling alpha (LISA: 16)")
    lora_dropout: float = _f(0.05, "dropout on the LoRA input (LISA: 0.05)")
    lora_target_modules: list[str] = _f(lambda: ["q_proj", "v_proj"], "LM module names that get LoRA, e.g. "
                                                                        "q_proj v_proj (or q_proj,v_proj)")
    train_embeddings: str = _f("seg_row", "which embedding / LM-head rows train: seg_row (the [SEG] row) | full "
                                          "(LISA) | none")
    freeze_image_encoder: bool = _f(True, "freeze the vision tower and the projector")
    freeze_text_encoder: bool = _f(True, "freeze the LM's base weights (LoRA / embeddings train on top)")
    freeze_sam: bool = _f(True, "freeze SAM's image + prompt encoders (the mask decoder always trains)")
    gradient_checkpointing: bool = _f(False, "recompute LM activations in backward (less memory, ~30 % slower)")
    use_quantization: bool = _f(False, "load the LM in 8-bit / 4-bit through bitsandbytes, CPU or CUDA (QLoRA: "
                                       "train LoRA on top; pip install 'modlisa[quant]')")
    quantization_bits: int = _f(8, "4 (nf4, QLoRA) or 8 (LLM.int8), with use_quantization")
    sam_cache: bool = _f(False, "reuse frozen-SAM image embeddings across epochs (needs freeze_sam)")
    sam_cache_dir: str | None = _f(None, "on-disk folder for the SAM cache (default: in memory)")
    # --- prompts (LISA: LLaVA v1 template) ---
    use_chat_template: bool = _f(False, "render prompts with the tokenizer's chat template (default: LLaVA v1, "
                                        "LISA's)")
    use_mm_start_end: bool = _f(False, "<im_start><image><im_end> around the image (LISA-7B-v1: true; "
                                       "llava-1.5: false)")

    # --- optimisation (LISA's recipe: docs/TRAINING_GUIDE.md) ---
    num_epochs: int = _f(10, "training epochs")
    batch_size: int = _f(2, "images per micro-batch per process (each with queries_per_image queries)")
    gradient_accumulation_steps: int = _f(1, "micro-batches per optimizer step (LISA: 10)")
    learning_rate: float = _f(1e-4, "AdamW peak learning rate (LISA: 3e-4)")
    weight_decay: float = _f(0.0, "AdamW weight decay (LISA: 0)")
    adam_beta1: float = _f(0.9, "AdamW beta1")
    adam_beta2: float = _f(0.95, "AdamW beta2 (LISA: 0.95)")
    warmup_steps: int = _f(100, "linear warm-up optimizer steps (LISA: 100)")
    lr_schedule: str = _f("linear", "linear (warm-up, then linear decay to 0) | constant (after warm-up)")
    max_grad_norm: float = _f(1.0, "gradient clipping norm (0 = no clipping)")
    steps_per_epoch: int | None = _f(None, "optimizer steps per epoch (LISA: 500); default: one pass over the data")
    stop_after_steps: int | None = _f(None, "end the run after this many optimizer steps (schedule unchanged)")
    use_mixed_precision: bool = _f(True, "autocast with mixed_precision (trainable weights stay fp32)")
    mixed_precision: str = _f("bf16", "fp16 | bf16 (ignored when use_mixed_precision is false; fp16 needs CUDA)")

    # --- losses (LISA: CE 1.0, BCE 2.0, DICE 0.5) ---
    ce_loss_weight: float = _f(1.0, "weight of the text cross-entropy")
    bce_loss_weight: float = _f(2.0, "weight of the per-pixel mask BCE")
    dice_loss_weight: float = _f(0.5, "weight of the mask DICE loss")
    focal_loss_weight: float = _f(0.0, "weight of a sigmoid focal loss on the mask (not in LISA)")
    focal_alpha: float = _f(0.25, "focal loss alpha")
    focal_gamma: float = _f(2.0, "focal loss gamma")
    seg_prompt_teacher_fraction: float = _f(
        0.0, "bag-of-words prompt distillation for a from-scratch LM (not in LISA): for this fraction of the "
             "optimizer steps the mask decoder reads a learned bag-of-words prompt of the query while "
             "text_hidden_fcs([SEG]) is regressed onto it; 0 = off (LISA); evaluation always uses LISA's prompt")
    seg_prompt_teacher_idf: bool = _f(False, "weight the teacher's words by IDF over the train queries "
                                             "(experimental; grounds sentences, docs/TRAINING_GUIDE.md)")
    seg_prompt_distill_weight: float = _f(1.0, "weight of the [SEG]-to-teacher distillation loss")

    # --- run folder, logging, checkpoints ---
    output_dir: str = _f("runs/demo", "run folder (outputs/, checkpoints/, logs/)")
    seed: int = _f(42, "random seed of data order, augmentation and initialisation")
    log_every_steps: int = _f(10, "optimizer steps between step lines in the console and train_log.jsonl")
    eval_every_steps: int = _f(0, "also validate every N optimizer steps within an epoch (0 = at the end of each epoch only)")
    save_every_steps: int = _f(0, "save checkpoints/last every N optimizer steps (0 = at the end of each epoch only)")
    resume_from_checkpoint: str | None = _f(None, "latest (the run's checkpoints/last) or a checkpoint folder")
    overwrite_output_dir: bool = _f(False, "a fresh run may replace an earlier run in output_dir")
    allow_config_change: bool = _f(False, "resume although the config differs from the checkpoint's (recorded)")
    report_to: str | None = _f(None, "experiment trackers: tensorboard, mlflow or tensorboard,mlflow (per-step loss terms, "
                                     "lr, grad-norm, throughput; val metrics and masks); empty for none")
    max_nonfinite_steps: int = _f(5, "consecutive skipped (non-finite) steps that stop the run (exit 3)")
    cpu: bool = _f(False, "force CPU even where CUDA exists")

    # ------------------------------------------------------------------ helpers
    @property
    def precision(self) -> str:
        """Accelerate's mixed_precision value: "no", "fp16" or "bf16"."""
        return self.mixed_precision if self.use_mixed_precision else "no"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def validate(self, *, check_paths: bool = True, cuda_available: bool | None = None) -> TrainingConfig:
        """Raise ConfigError naming the first bad field. Returns self."""
        validate_config(self, check_paths=check_paths, cuda_available=cuda_available)
        return self


# ---------------------------------------------------------------------- validation
SEED_MAX = 2**32 - 1  # numpy / Python / torch seeds of every process must fit in 32 bits
# (low, high) of every numeric field, inclusive; None = no bound. Checked after the finiteness check.
NUMERIC_RANGES: dict[str, tuple[float | None, float | None]] = {
    "seed": (0, SEED_MAX), "num_epochs": (1, 1_000_000), "batch_size": (1, 65_536),
    "gradient_accumulation_steps": (1, 65_536), "learning_rate": (1e-12, 10.0), "weight_decay": (0.0, 10.0),
    "warmup_steps": (0, 10**9), "max_grad_norm": (0.0, 1e6), "steps_per_epoch": (1, 10**9),
    "stop_after_steps": (1, 10**12), "img_size": (32, 8192), "sam_image_size": (32, 8192),
    "queries_per_image": (1, 64), "max_length": (32, 1_048_576), "max_train_samples": (1, 10**9),
    "max_val_samples": (1, 10**9), "num_workers": (0, 1024), "lora_r": (1, 65_536), "lora_alpha": (1, 10**6),
    "ce_loss_weight": (0.0, 1e6), "bce_loss_weight": (0.0, 1e6), "dice_loss_weight": (0.0, 1e6),
    "focal_loss_weight": (0.0, 1e6), "focal_alpha": (0.0, 1.0), "focal_gamma": (0.0, 100.0),
    "seg_prompt_teacher_fraction": (0.0, 1.0), "seg_prompt_distill_weight": (0.0, 1e6),
    "log_every_steps": (1, 10**9), "eval_every_steps": (0, 10**12), "save_every_steps": (0, 10**12),
    "max_nonfinite_steps": (1, 10**9),
}


def _check_finite(cfg: TrainingConfig) -> None:
    """No numeric field may be NaN or infinite; ConfigError naming the first one."""
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{f.name} must be a finite number, got {value!r}")


def _check_ranges(cfg: TrainingConfig) -> None:
    """Every numeric field inside ``NUMERIC_RANGES``; at least one mask loss on."""
    for name, (low, high) in NUMERIC_RANGES.items():
        value = getattr(cfg, name)
        if value is None or isinstance(value, bool):
            continue
        if (low is not None and value < low) or (high is not None and value > high):
            raise ConfigError(f"{name} must be in [{low}, {high}], got {value!r}")
    if cfg.bce_loss_weight + cfg.dice_loss_weight + cfg.focal_loss_weight <= 0:
        raise ConfigError("bce_loss_weight, dice_loss_weight and focal_loss_weight are all 0: the mask decoder "
                          "would learn nothing; set at least one of them > 0")


def _positive(cfg: TrainingConfig, *names: str) -> None:
    for name in names:
        value = getattr(cfg, name)
        if value is not None and value <= 0:
            raise ConfigError(f"{name} must be > 0, got {value!r}")


def _non_negative(cfg: TrainingConfig, *names: str) -> None:
    for name in names:
        value = getattr(cfg, name)
        if value < 0:
            raise ConfigError(f"{name} must be >= 0, got {value!r}")


def _check_choices(cfg: TrainingConfig) -> None:
    if cfg.model not in PRESETS:
        raise ConfigError(f"model must be one of {', '.join(PRESETS)}; got {cfg.model!r}")
    if cfg.projector not in PROJECTORS:
        raise ConfigError(f"projector must be one of {', '.join(PROJECTORS)}; got {cfg.projector!r}")
    if cfg.projector != "mlp2x_gelu" and cfg.model != "composite" and not cfg.init_from:
        raise ConfigError(f"projector={cfg.projector} applies to the composite preset only (model={cfg.model} "
                          "brings its own projector)")
    if cfg.vlm_resolution not in VLM_RESOLUTIONS:
        raise ConfigError(f"vlm_resolution must be one of {', '.join(VLM_RESOLUTIONS)}; got {cfg.vlm_resolution!r}")
    if cfg.sam_kind not in SAM_KINDS:
        raise ConfigError(f"sam_kind must be one of {', '.join(SAM_KINDS)}; got {cfg.sam_kind!r}")
    if cfg.train_embeddings not in TRAIN_EMBEDDINGS:
        raise ConfigError(f"train_embeddings must be one of {', '.join(TRAIN_EMBEDDINGS)}; got {cfg.train_embeddings!r}")
    if cfg.mixed_precision not in MIXED_PRECISION:
        raise ConfigError(f"mixed_precision must be fp16 or bf16, got {cfg.mixed_precision!r}")
    if cfg.lr_schedule not in ("linear", "constant"):
        raise ConfigError(f"lr_schedule must be linear or constant, got {cfg.lr_schedule!r}")
    if cfg.quantization_bits not in (4, 8):
        raise ConfigError(f"quantization_bits must be 4 or 8, got {cfg.quantization_bits!r}")
    _check_report_to(cfg.report_to)


def _check_report_to(report_to: str | None) -> None:
    """ConfigError for an unknown tracker or one whose package is missing (engine/tracking.py)."""
    from modlisa.engine.tracking import missing_package, tracker_names

    try:
        names = tracker_names(report_to)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    for name in names:
        hint = missing_package(name)
        if hint is not None:
            raise ConfigError(f"report_to={name} needs its package: {hint}")


def _check_quantization(cfg: TrainingConfig) -> None:
    """A quantised LM trains through LoRA only: its base weights cannot take gradient updates."""
    if cfg.use_quantization and not cfg.freeze_text_encoder:
        raise ConfigError("use_quantization with freeze_text_encoder=false: a quantised LM's base weights cannot "
                          "train; set freeze_text_encoder true and train LoRA on top (use_lora true)")


def _check_models(cfg: TrainingConfig) -> None:
    if cfg.model == "composite" and not (cfg.vision_model and cfg.language_model):
        raise ConfigError("model=composite needs vision_model and language_model (HF ids or local folders)")
    if cfg.model == "llava" and not cfg.llava_model:
        raise ConfigError("model=llava needs llava_model (e.g. llava-hf/llava-1.5-7b-hf or a local folder)")
    if cfg.model == "vlm" and not cfg.vlm_model:
        raise ConfigError("model=vlm needs vlm_model (e.g. Qwen/Qwen2.5-VL-3B-Instruct or a local folder)")


LORA_FIELDS = ("lora_r", "lora_alpha", "lora_dropout", "lora_target_modules")
MODEL_PATH_FIELDS = ("vision_model", "language_model", "sam_model", "llava_model", "vlm_model")


def _default(name: str) -> Any:
    f = TrainingConfig.__dataclass_fields__[name]
    return f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]


def _check_lora(cfg: TrainingConfig) -> None:
    """LoRA values must be usable when use_lora is on, and not set at all when it is off.

    ``lora_*`` options that differ from their defaults while ``use_lora`` is false are an error (they would be
    silently ignored). The lisa-7b preset is exempt: it always trains LoRA with LISA's own values.
    """
    if cfg.use_lora:
        _positive(cfg, "lora_r", "lora_alpha")
        if not cfg.lora_target_modules:
            raise ConfigError("lora_target_modules is empty while use_lora is true; name the LM modules to adapt, "
                              "e.g. [q_proj, v_proj]")
        if not 0.0 <= cfg.lora_dropout < 1.0:
            raise ConfigError(f"lora_dropout must be in [0, 1), got {cfg.lora_dropout!r}")
        return
    if cfg.model == "lisa-7b":
        return
    changed = [f"{name}={getattr(cfg, name)!r}" for name in LORA_FIELDS if getattr(cfg, name) != _default(name)]
    if changed:
        raise ConfigError(f"{', '.join(changed)} set but use_lora is false: set use_lora: true to train LoRA, "
                          "or remove the lora_* options")


def _looks_local(value: str) -> bool:
    """True for a value written as a filesystem path rather than a Hugging Face id (org/name)."""
    return value.startswith(("/", "./", "../", "~", ".\\", "..\\")) or Path(value).drive != ""


def _check_mixture(cfg: TrainingConfig) -> None:
    """``dataset`` names known kinds (each once), ``sample_rates`` one positive weight per kind, every kind's
    datasets are known names."""
    from modlisa.data.sources import DATASET_NAMES, KINDS, REASON_SEG, mixture_kinds, parse_rates

    kinds = mixture_kinds(cfg.dataset)
    unknown = [k for k in kinds if k not in KINDS]
    if not kinds or unknown or len(set(kinds)) != len(kinds):
        raise ConfigError(f"dataset {cfg.dataset!r}: give each of {', '.join(KINDS)} at most once, '||'-separated "
                          "(LISA: sem_seg||refer_seg||vqa||reason_seg)")
    if cfg.sample_rates.strip() and len(kinds) > 1:  # one kind: its rate is moot (e.g. lisa7b.yaml --dataset reason_seg)
        try:
            parse_rates(cfg.sample_rates, len(kinds))
        except ValueError as err:
            raise ConfigError(f"{err} (dataset {cfg.dataset!r})") from None
    if not mixture_kinds(cfg.reason_seg_data):
        raise ConfigError("reason_seg_data is empty: give reason_seg (= data_root) and/or ReasonSeg-format folders")
    for kind in kinds:
        if kind == REASON_SEG:
            continue
        names = mixture_kinds(getattr(cfg, f"{kind}_data"))
        bad = [n for n in names if n not in DATASET_NAMES[kind]]
        if not names or bad:
            raise ConfigError(f"{kind}_data {getattr(cfg, f'{kind}_data')!r}: choose '||'-separated names from "
                              f"{', '.join(DATASET_NAMES[kind])}")


def _check_paths(cfg: TrainingConfig) -> None:
    from modlisa.data.sources import REASON_SEG, mixture_kinds

    for folder in mixture_kinds(cfg.reason_seg_data):
        if folder != REASON_SEG and REASON_SEG in mixture_kinds(cfg.dataset) and not Path(folder).is_dir():
            raise ConfigError(f"reason_seg_data: {folder!r} is not a folder (a ReasonSeg-format folder with train/, "
                              "e.g. written by `modlisa convert`)")
    if set(mixture_kinds(cfg.dataset)) - {REASON_SEG} and not (cfg.dataset_dir and Path(cfg.dataset_dir).is_dir()):
        raise ConfigError(f"dataset {cfg.dataset!r} needs dataset_dir, LISA's dataset folder (ade20k/, refer_seg/, "
                          f"llava_dataset/, ...; docs/DATA.md); got {cfg.dataset_dir!r}, which is not a folder")
    if not Path(cfg.data_root).is_dir():
        raise ConfigError(
            f"data_root {cfg.data_root!r} is not a folder; generate demo data with "
            f"`modlisa make-data {cfg.data_root}` or point data_root at a ReasonSeg folder"
        )
    for name in MODEL_PATH_FIELDS:
        value = getattr(cfg, name)
        if name == "sam_model" and value and Path(value).expanduser().is_file():
            continue  # an original segment-anything checkpoint
        if value and _looks_local(value) and not Path(value).expanduser().is_dir():
            raise ConfigError(f"{name} {value!r} is not a folder (a local path must exist; a Hugging Face id "
                              "looks like org/name)")
    if cfg.init_from and not (Path(cfg.init_from).expanduser() / "modlisa_config.yaml").is_file():
        raise ConfigError(f"init_from {cfg.init_from!r} is not a modlisa export folder (no modlisa_config.yaml); "
                          "write one with `modlisa export` or `modlisa import-lisa`")
    resume = cfg.resume_from_checkpoint
    if resume and resume != "latest" and not Path(resume).is_dir():
        raise ConfigError(f"resume_from_checkpoint {resume!r} is not a folder; use `latest` or a "
                          "checkpoints/last folder")
    if Path(cfg.output_dir).exists() and not Path(cfg.output_dir).is_dir():
        raise ConfigError(f"output_dir {cfg.output_dir!r} exists and is not a folder")


def _check_devices(cfg: TrainingConfig, cuda_available: bool) -> None:
    on_cpu = cfg.cpu or not cuda_available
    if on_cpu and cfg.use_mixed_precision and cfg.mixed_precision == "fp16":
        raise ConfigError(
            "mixed_precision=fp16 needs a CUDA GPU; on CPU use mixed_precision=bf16 or use_mixed_precision=false"
        )


def validate_config(cfg: TrainingConfig, *, check_paths: bool = True, cuda_available: bool | None = None) -> None:
    """Check every field; raise ConfigError with one clear line naming the field."""
    _check_finite(cfg)
    _positive(cfg, "num_epochs", "batch_size", "gradient_accumulation_steps", "learning_rate", "img_size",
              "sam_image_size", "queries_per_image", "max_length", "log_every_steps", "max_nonfinite_steps",
              "steps_per_epoch", "stop_after_steps", "max_train_samples", "max_val_samples")
    _non_negative(cfg, "weight_decay", "warmup_steps", "max_grad_norm", "eval_every_steps", "save_every_steps",
                  "num_workers", "ce_loss_weight", "bce_loss_weight", "dice_loss_weight", "focal_loss_weight",
                  "lora_dropout")
    _check_ranges(cfg)
    _check_lora(cfg)
    if not 0.0 <= cfg.explanatory_prob <= 1.0:
        raise ConfigError(f"explanatory_prob must be in [0, 1], got {cfg.explanatory_prob!r}")
    for name in ("adam_beta1", "adam_beta2"):
        if not 0.0 <= getattr(cfg, name) < 1.0:
            raise ConfigError(f"{name} must be in [0, 1), got {getattr(cfg, name)!r}")
    _check_choices(cfg)
    _check_mixture(cfg)
    _check_quantization(cfg)
    _check_models(cfg)
    if cuda_available is None:
        import torch

        cuda_available = torch.cuda.is_available()
    _check_devices(cfg, cuda_available)
    if cfg.sam_cache_dir and Path(cfg.sam_cache_dir).exists() and not Path(cfg.sam_cache_dir).is_dir():
        raise ConfigError(f"sam_cache_dir {cfg.sam_cache_dir!r} exists and is not a folder")
    if check_paths:
        _check_paths(cfg)


# ---------------------------------------------------------------------- loading
def field_types() -> dict[str, Any]:
    hints = typing.get_type_hints(TrainingConfig)
    return {f.name: hints[f.name] for f in fields(TrainingConfig)}


def unwrap_optional(tp: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0], True
    return tp, False


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def coerce_value(name: str, value: Any, tp: Any) -> Any:
    """Convert ``value`` (from YAML or a CLI string) to the field type ``tp``; ConfigError otherwise."""
    base, optional = unwrap_optional(tp)
    if value is None or (optional and isinstance(value, str) and value.lower() in ("none", "null", "")):
        if optional:
            return None
        raise ConfigError(f"{name} may not be empty")
    try:
        if base is bool:
            if isinstance(value, bool):
                return value
            text = str(value).lower()
            if text in _TRUE:
                return True
            if text in _FALSE:
                return False
            raise ValueError
        if base is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value) if not isinstance(value, str) else int(value.strip())
        if base is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if base is str:
            if isinstance(value, (dict, list)):
                raise ValueError
            return str(value)
        if typing.get_origin(base) is list:
            if isinstance(value, str):
                value = [v.strip() for v in value.split(",") if v.strip()]
            if not isinstance(value, (list, tuple)):
                raise ValueError
            return [str(v) for v in value]
    except (TypeError, ValueError, OverflowError):
        type_name = getattr(base, "__name__", str(base))
        raise ConfigError(f"{name} must be of type {type_name}, got {value!r}") from None
    return value


def config_from_dict(values: dict[str, Any], source: str = "config") -> TrainingConfig:
    """Build a TrainingConfig from a mapping; unknown fields raise ConfigError naming them."""
    types_ = field_types()
    unknown = sorted(set(values) - set(types_))
    if unknown:
        named = []
        for name in unknown:
            hint = difflib.get_close_matches(str(name), list(types_), n=1, cutoff=0.75)
            named.append(f"{name} (did you mean {hint[0]}?)" if hint else str(name))
        raise ConfigError(f"{source}: unknown field(s) {', '.join(named)}; see `modlisa train --help`")
    return TrainingConfig(**{k: coerce_value(k, v, types_[k]) for k, v in values.items()})


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML config file into a dict; ConfigError when missing or malformed."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {path} is not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset "
                          f"{exc.start}); save it as UTF-8") from None
    except (yaml.YAMLError, RecursionError) as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {' '.join(str(exc).split())}") from None
    except OSError as exc:
        raise ConfigError(f"config file {path} cannot be read ({exc.strerror or exc})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must contain a mapping of field: value")
    return data


# ---------------------------------------------------------------------- presets' recipes and provenance
# The optimisation recipe a preset brings (LISA-7B: docs/LISA.md §6, per GPU). It replaces the defaults; a value
# set in the YAML or on the command line wins over it. (The preset's MODEL settings, model/factory.py, are fixed.)
PRESET_RECIPES: dict[str, dict[str, Any]] = {
    "lisa-7b": {
        "learning_rate": 3e-4, "adam_beta1": 0.9, "adam_beta2": 0.95, "weight_decay": 0.0, "warmup_steps": 100,
        "lr_schedule": "linear", "max_grad_norm": 1.0, "batch_size": 2, "gradient_accumulation_steps": 10,
        "steps_per_epoch": 500, "num_epochs": 10, "use_mixed_precision": True, "mixed_precision": "bf16",
        "queries_per_image": 3, "explanatory_prob": 0.1, "ce_loss_weight": 1.0, "bce_loss_weight": 2.0,
        "dice_loss_weight": 0.5,
    },
}
# The VLM + SAM 2 presets (docs/TRAINING_GUIDE.md): LISA's optimisation (lr 3e-4, 10 x 500 steps, 3 queries per
# image, bf16) with the effective batch of the published Qwen2.5-VL + SAM 2 systems' fine-tuning (16 images a step)
_VLM_RECIPE = {**PRESET_RECIPES["lisa-7b"], "batch_size": 2,
               "gradient_accumulation_steps": 8, "learning_rate": 1e-4, "gradient_checkpointing": True}
PRESET_RECIPES.update({
    "qwen2.5-vl-3b-sam2": {**_VLM_RECIPE, "vlm_resolution": "native"},
    "qwen3-vl-4b-sam2": {**_VLM_RECIPE, "vlm_resolution": "native"},
    "smolvlm-256m-sam2": {**_VLM_RECIPE, "batch_size": 8, "gradient_accumulation_steps": 2,
                          "gradient_checkpointing": False},
})
SOURCES = ("default", "preset", "yaml", "cli", "api")  # where a resolved value came from, weakest first
SOURCES_FILE = "config_sources.yaml"  # beside outputs/config.yaml


def resolve_config(yaml_values: dict[str, Any], cli_values: dict[str, Any],
                   source: str = "command line") -> tuple[TrainingConfig, dict[str, str]]:
    """Defaults < the preset's recipe < YAML < command line; returns the config and ``{field: source}``.

    The preset is the ``model`` the YAML or the command line names (the command line wins).
    """
    names = list(field_types())
    sources = dict.fromkeys(names, "default")
    model = cli_values.get("model", yaml_values.get("model", _default("model")))
    layers = [(PRESET_RECIPES.get(str(model), {}), "preset"), (yaml_values, "yaml"), (cli_values, "cli")]
    values: dict[str, Any] = {}
    for layer, name in layers:
        values.update(layer)
        sources.update(dict.fromkeys((k for k in layer if k in sources), name))
    return config_from_dict(values, source=source), sources


def infer_sources(cfg: TrainingConfig) -> dict[str, str]:
    """``{field: source}`` of a config built in code: ``default`` where it equals the default, ``preset``
    where it equals its preset's recipe, else ``api``."""
    recipe = PRESET_RECIPES.get(cfg.model, {})
    out = {}
    for name in field_types():
        value = getattr(cfg, name)
        if name in recipe and value == recipe[name]:
            out[name] = "preset"
        else:
            out[name] = "default" if value == _default(name) else "api"
    return out


def save_config(cfg: TrainingConfig, path: str | Path, sources: dict[str, str] | None = None) -> None:
    """Write the resolved config as YAML (atomically; WriteError naming the file when it fails); with ``sources``, ``config_sources.yaml`` beside it says where each
    value came from (default / preset / yaml / cli / api)."""
    from modlisa.atomic import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    if sources is not None:
        header = ("# Where each value of config.yaml came from: default (TrainingConfig), preset (the model "
                  f"preset's recipe or fixed model settings: {cfg.model}), yaml (--config), cli (--field), api "
                  "(set in code)\n")
        ordered = {name: sources.get(name, "default") for name in cfg.to_dict()}
        atomic_write_text(Path(path).parent / SOURCES_FILE, header + yaml.safe_dump(ordered, sort_keys=False))
