"""Build a run: prepare the run folder, write the resolved config, build model, data, optimizer, scheduler and
the prompt teacher, and prepare them with Accelerate (``build_run`` -> ``RunParts``)."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch.utils.data import DataLoader

from modlisa.config import ConfigError, TrainingConfig, infer_sources, save_config
from modlisa.data.collate import check_max_length, make_collate_fn
from modlisa.data.dataset import ReasonSegDataset
from modlisa.data.mixture import MixtureDataset, MixturePart, build_source
from modlisa.data.sources import REASON_SEG, mixture_kinds, parse_rates
from modlisa.engine import checkpoint as ckpt
from modlisa.engine.backends import check_accumulation, launched_backend, make_accelerator
from modlisa.engine.prompt_teacher import BagOfWordsPrompt, idf_weights
from modlisa.engine.run_folder import RunFolder, prepare_run_folder
from modlisa.engine.sam_cache import SamEmbeddingCache, build_sam_cache
from modlisa.engine.sampling import EvalShardSampler, TrainSampler
from modlisa.engine.schedule import lr_lambda
from modlisa.losses import LossWeights

logger = logging.getLogger(__name__)


@dataclass
class RunParts:
    """Everything ``build_run`` builds for a run (the wiring; the loop state lives in ``Trainer``)."""

    accelerator: Accelerator
    model: torch.nn.Module  # prepared (possibly DDP-wrapped)
    unwrapped: torch.nn.Module
    tokenizer: Any
    optimizer: Any
    scheduler: Any
    train_set: ReasonSegDataset | MixtureDataset
    train_sampler: TrainSampler
    train_loader: DataLoader
    val_loader: DataLoader | None
    steps_per_epoch: int
    total_steps: int
    paths: RunFolder
    loss_weights: LossWeights
    data_report: dict[str, Any] = field(default_factory=dict)
    sam_cache: SamEmbeddingCache | None = None  # frozen-SAM embeddings (engine/sam_cache.py)
    config: dict[str, Any] = field(default_factory=dict)  # cfg.to_dict(), stored in checkpoints/last
    prompt_teacher: BagOfWordsPrompt | None = None  # seg_prompt_teacher_fraction > 0 (engine/prompt_teacher.py)


def _loader(dataset: Any, sampler: Any, cfg: TrainingConfig, collate: Any, seed: int) -> DataLoader:
    return DataLoader(
        dataset, batch_size=cfg.batch_size, sampler=sampler, collate_fn=collate,
        num_workers=cfg.num_workers, persistent_workers=False,
        generator=torch.Generator().manual_seed(seed),  # never consume the global RNG (exact resume)
    )


def build_datasets(cfg: TrainingConfig) -> tuple[ReasonSegDataset | MixtureDataset, ReasonSegDataset | None]:
    """The train and val splits, scanned (annotations read, images verified) but without image transforms yet:
    ``build_run`` does this BEFORE building the model, so a data problem stops a run in seconds, not after a
    7B model has loaded. ``attach_transforms`` completes them."""
    kinds = mixture_kinds(cfg.dataset)
    reason = None
    if REASON_SEG in kinds and REASON_SEG in mixture_kinds(cfg.reason_seg_data):
        reason = _train_split(cfg, cfg.data_root, max_samples=cfg.max_train_samples)
    only_data_root = kinds == [REASON_SEG] and mixture_kinds(cfg.reason_seg_data) == [REASON_SEG]
    train_set = reason if only_data_root else build_mixture(cfg, reason)
    try:
        val_set = ReasonSegDataset(cfg.data_root, "val", None, None, train=False, max_samples=cfg.max_val_samples,
                                   strict=cfg.data_strict, verify_images=True)
    except FileNotFoundError:
        logger.warning("no val split under %s: training without validation", cfg.data_root)
        val_set = None
    return train_set, val_set


def build_mixture(cfg: TrainingConfig, reason: ReasonSegDataset | None) -> MixtureDataset:
    """The training mixture of ``cfg.dataset`` with its ``sample_rates`` (data/mixture.py); its sources read their
    indexes now (a missing file stops the run here, naming it)."""
    kinds = mixture_kinds(cfg.dataset)
    rates = parse_rates(cfg.sample_rates, len(kinds)) if cfg.sample_rates.strip() and len(kinds) > 1 \
        else [1.0] * len(kinds)
    parts = []
    for kind, rate in zip(kinds, rates):
        if kind == REASON_SEG:
            datasets: tuple[Any, ...] = tuple(reason if name == REASON_SEG else _reason_folder(cfg, name)
                                              for name in mixture_kinds(cfg.reason_seg_data))
        else:
            datasets = tuple(build_source(kind, name, cfg.dataset_dir or ".")
                             for name in mixture_kinds(getattr(cfg, f"{kind}_data")))
        parts.append(MixturePart(kind, rate, datasets))
    mixture = MixtureDataset(parts, seed=cfg.seed, queries_per_image=cfg.queries_per_image)
    logger.info("training mixture: %s", ", ".join(f"{name} {100 * share:.1f} %" for name, share in
                                                  mixture.shares().items()))
    return mixture


def _train_split(cfg: TrainingConfig, folder: str, *, max_samples: int | None = None) -> ReasonSegDataset:
    """The train split of a ReasonSeg-format folder, scanned (images verified), without transforms yet."""
    return ReasonSegDataset(folder, "train", None, None, train=True, seed=cfg.seed,
                            queries_per_image=cfg.queries_per_image, explanatory_prob=cfg.explanatory_prob,
                            strict=cfg.data_strict, max_samples=max_samples, verify_images=True)


def _reason_folder(cfg: TrainingConfig, folder: str) -> ReasonSegDataset:
    """The train split of another ReasonSeg-format folder of the mixture, named by the folder."""
    dataset = _train_split(cfg, folder)
    dataset.name = Path(folder).resolve().name
    return dataset


def attach_transforms(cfg: TrainingConfig, processors: Any, *datasets: ReasonSegDataset | None) -> None:
    """Give scanned splits the model's image transforms (and the training augmenter when ``augment``)."""
    for dataset in datasets:
        if dataset is not None:
            dataset.set_transforms(processors.sam, processors.vision,
                                   processors.augmenter if cfg.augment else None)


def build_run(cfg: TrainingConfig, accelerator: Accelerator | None = None,
              sources: dict[str, str] | None = None) -> RunParts:
    """Prepare the run folder, write the resolved config, build model, data, optimizer and scheduler."""
    from modlisa.model.factory import build_model, resolve_preset

    accelerator = accelerator or make_accelerator(cfg)
    set_seed(cfg.seed)
    # the data first: its errors come before the run folder is prepared or any model is built
    train_set, val_set = build_datasets(cfg)
    paths = RunFolder(Path(cfg.output_dir))
    prepare_run_folder(paths.root, resuming=bool(cfg.resume_from_checkpoint), overwrite=cfg.overwrite_output_dir,
                       main_process=accelerator.is_main_process)
    if accelerator.is_main_process:  # the resolved config, and where each value came from
        resolved, resolved_sources = resolve_preset(cfg, sources or infer_sources(cfg))
        save_config(resolved, paths.config, resolved_sources)
    accelerator.wait_for_everyone()
    model, tokenizer, processors = build_model(cfg)
    check_max_length(tokenizer, cfg.max_length)
    if launched_backend() == "fsdp":  # FSDP flattens each unit into ONE dtype: all fp32, sharded (untested on CPU)
        model.float()
    attach_transforms(cfg, processors, train_set, val_set)
    sam_cache = build_sam_cache(cfg, model, processors)
    rank, world = accelerator.process_index, accelerator.num_processes
    accum = cfg.gradient_accumulation_steps
    steps_per_epoch = cfg.steps_per_epoch or max(1, len(train_set) // (cfg.batch_size * accum * world))
    train_sampler = TrainSampler(len(train_set), steps_per_epoch * accum * cfg.batch_size, seed=cfg.seed,
                                 rank=rank, world_size=world)
    collate = make_collate_fn(tokenizer, cfg.max_length, model.conversation)
    train_loader = _loader(train_set, train_sampler, cfg, collate, cfg.seed)
    val_loader = None
    if val_set is not None:
        val_loader = _loader(val_set, EvalShardSampler(len(val_set), rank=rank, world_size=world), cfg, collate,
                             cfg.seed)
    params = [p for p in model.parameters() if p.requires_grad]
    teacher = _build_prompt_teacher(cfg, model, tokenizer, accelerator, train_set)
    groups = [{"params": params}] + ([{"params": list(teacher.parameters())}] if teacher is not None else [])
    optimizer = torch.optim.AdamW(groups, lr=cfg.learning_rate, betas=(cfg.adam_beta1, cfg.adam_beta2),
                                  weight_decay=cfg.weight_decay)
    total_steps = steps_per_epoch * cfg.num_epochs
    # The scheduler is NOT prepared: Accelerate would step it once per process.
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg.warmup_steps, total_steps, cfg.lr_schedule))
    prepared_model, optimizer = accelerator.prepare(model, optimizer)
    check_accumulation(accelerator, cfg)
    # The scheduler's state goes into trainer_state.json (JSON), not a pickle: see checkpoint.save_last.
    ckpt.register_trainable_only_hooks(accelerator, model, teacher)
    data_report = {split: {"usable": len(ds), "skipped": ds.num_skipped,
                           "problems": [asdict(p) if hasattr(p, "__dataclass_fields__") else str(p)
                                        for p in ds.problems]}
                   for split, ds in (("train", train_set), ("val", val_set)) if ds is not None}
    weights = LossWeights(ce=cfg.ce_loss_weight, bce=cfg.bce_loss_weight, dice=cfg.dice_loss_weight,
                          focal=cfg.focal_loss_weight, focal_alpha=cfg.focal_alpha, focal_gamma=cfg.focal_gamma)
    return RunParts(accelerator, prepared_model, model, tokenizer, optimizer, scheduler, train_set,
                      train_sampler, train_loader, val_loader, steps_per_epoch, total_steps, paths, weights,
                      data_report, sam_cache=sam_cache, config=cfg.to_dict(), prompt_teacher=teacher)


def _build_prompt_teacher(cfg: TrainingConfig, model: torch.nn.Module, tokenizer: Any,
                          accelerator: Accelerator, train_set: ReasonSegDataset) -> BagOfWordsPrompt | None:
    """The bag-of-words prompt teacher when ``seg_prompt_teacher_fraction`` > 0, on the run's device (saved in
    ``checkpoints/last`` by the checkpoint hooks, for exact resume); None otherwise."""
    if cfg.seg_prompt_teacher_fraction <= 0:
        return None
    if launched_backend() == "deepspeed":
        raise ConfigError("seg_prompt_teacher_fraction > 0 cannot run under DeepSpeed (the teacher is not part of "
                          "the engine's model); use a DDP launch or a single process")
    weights = None
    if cfg.seg_prompt_teacher_idf:
        texts = [text for annotation in train_set.annotations for text in annotation.texts]
        weights = idf_weights(tokenizer, texts, len(tokenizer))
    dim = model.text_hidden_fcs[-1].out_features
    return BagOfWordsPrompt(len(tokenizer), dim, weights).to(accelerator.device)
