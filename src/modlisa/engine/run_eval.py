"""`modlisa eval`: load a checkpoint, evaluate a split, write eval_{split}[_generate].json + predictions.

Modes: ``teacher`` (LISA's protocol, docs/LISA.md §5: the answer "[SEG]." is given; ``engine.evaluate``)
and ``generate`` (the model answers freely; ``engine.generate_eval``). Beside the metrics, every run
records the empty-mask baseline of the split (the scores of predicting nothing for every query) and
warns, in the log and in the JSON ``warnings`` list, when gIoU is below it or when a generating model
never emits [SEG]: signs of a checkpoint that did not load what it should. ``save_masks`` K writes the
masks and overlays of the K best and K worst queries by IoU.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from modlisa.atomic import atomic_write_text
from modlisa.config import ConfigError, TrainingConfig
from modlisa.engine.evaluate import EvalResult, autocast_context, evaluate, subset_of
from modlisa.engine.grounding import query_blind_warning
from modlisa.engine.run_folder import RunFolder
from modlisa.metrics import IoUAccumulator, intersection_union
from modlisa.overlay import overlay_masks, write_png
from modlisa.predictor import Predictor
from modlisa.weights import load_checkpoint
from modlisa.weights.hub import is_repo_id

logger = logging.getLogger(__name__)


MODES = ("teacher", "generate")
MASK_PICTURE_PATTERNS = ("best_*.png", "worst_*.png", "index.json")


def write_eval_outputs(out_dir: Path, split: str, metrics: dict[str, Any], records: list[dict[str, Any]],
                       extra: dict[str, Any], name: str | None = None) -> tuple[Path, Path]:
    """Write ``eval_{name}.json`` and ``predictions_{name}.jsonl`` (``name`` defaults to ``split``)."""
    name = name or split
    out_dir.mkdir(parents=True, exist_ok=True)
    eval_path, pred_path = out_dir / f"eval_{name}.json", out_dir / f"predictions_{name}.jsonl"
    payload = {"split": split, **extra, **metrics}
    atomic_write_text(eval_path, json.dumps(payload, indent=2, default=str))
    atomic_write_text(pred_path, "".join(json.dumps(r) + "\n" for r in records))
    return eval_path, pred_path


# ---------------------------------------------------------------------- sanity checks
def gt_areas(annotations: Sequence[Any]) -> list[tuple[int, bool]]:
    """(target pixel count, is_sentence) of each annotation's ground truth, ignore pixels excluded."""
    from modlisa.data.reasonseg import annotation_mask, read_image_size

    areas = []
    for ann in annotations:
        mask = annotation_mask(ann, read_image_size(ann.image_path))
        areas.append((int((mask == 1).sum()), ann.is_sentence))
    return areas


def empty_mask_baseline(areas: Sequence[tuple[int, bool]]) -> dict[str, Any]:
    """Scores of predicting an empty mask for every query: IoU_q = 1 only where the ground truth is empty.

    ``areas``: (target pixel count, is_sentence) per query. Returns giou, ciou (always 0), num_queries,
    num_empty_gt and the short/long subsets.
    """
    acc = IoUAccumulator(subsets=("short", "long"))
    for area, is_sentence in areas:
        acc.add(0, area, subset=subset_of(is_sentence))
    result = acc.compute()
    keep = ("giou", "ciou", "num_queries")
    return {**{k: result[k] for k in keep}, "num_empty_gt": sum(1 for a, _ in areas if a == 0),
            "subsets": {n: {k: s[k] for k in keep} for n, s in result["subsets"].items()}}


def sanity_warnings(metrics: dict[str, Any], baseline: dict[str, Any], mode: str) -> list[str]:
    """Warnings about results that point at a wrong or badly loaded model (also logged)."""
    warnings = []
    n = metrics["num_queries"]
    if mode == "generate" and n and metrics.get("num_with_seg", 0) == 0:
        warnings.append(f"the model never emitted [SEG] in {n} generated answers, so every prediction is empty: "
                        "the checkpoint does not answer with [SEG] (untrained or wrongly loaded weights, or a "
                        "different tokenizer); compare with --mode teacher")
    if n and metrics["giou"] < baseline["giou"] - 1e-12:
        warnings.append(f"gIoU {100 * metrics['giou']:.2f} is below the empty-mask baseline "
                        f"{100 * baseline['giou']:.2f} of this split (an empty mask for every query): the model "
                        "scores worse than predicting nothing; check that the right checkpoint and weights loaded")
    for warning in warnings:
        logger.warning("%s", warning)
    return warnings


# ---------------------------------------------------------------------- mask pictures
def select_extremes(records: list[dict[str, Any]], k: int) -> list[tuple[str, int, dict[str, Any]]]:
    """(tag, rank, record) of the ``k`` best then the ``k`` worst queries by IoU, disjoint, ties by index."""
    def key(r: dict[str, Any]) -> tuple:
        return (r["index"], r["query_index"], r["file"])

    best = sorted(records, key=lambda r: (-r["IoU"], *key(r)))[:k]
    taken = {key(r) for r in best}
    worst = [r for r in sorted(records, key=lambda r: (r["IoU"], *key(r))) if key(r) not in taken][:k]
    return [("best", i + 1, r) for i, r in enumerate(best)] + [("worst", i + 1, r) for i, r in enumerate(worst)]


def _teacher_query(predictor: Predictor, dataset: Any,
                   record: dict[str, Any]) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """(logits (H, W), gt (H, W) uint8, image (H, W, 3)) of one record, recomputed in teacher mode (the record's
    query and kind: the question the evaluation asked)."""
    from modlisa.engine.generate_eval import image_and_gt

    image, gt = image_and_gt(dataset.annotations[record["index"]])
    predictor.set_image(image)
    prediction = predictor.predict(record["query"], is_sentence=record["is_sentence"], mode="teacher")
    return prediction.logits[0], gt, image


def _generate_query(predictor: Predictor, dataset: Any, record: dict[str, Any],
                    max_new_tokens: int) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """(logits (H, W) of the first [SEG] or all -inf, gt, image) of one record, regenerated."""
    from modlisa.engine.generate_eval import generate_query

    query = generate_query(predictor, dataset.annotations[record["index"]], max_new_tokens=max_new_tokens)
    logits = query.logits if query.logits is not None else torch.full(query.gt.shape, float("-inf"))
    return logits, query.gt, query.image


def save_mask_pictures(folder: Path, picks: list[tuple[str, int, dict[str, Any]]],
                       recompute: Any) -> list[dict[str, Any]]:
    """Write ``{tag}_{rank:02d}_{stem}_mask.png`` (prediction, 0/255) and ``..._overlay.png`` (prediction in
    colour, ground truth outlined in green) per pick, and ``index.json``; returns the index entries.

    ``recompute(record)`` -> (logits (H, W), gt (H, W), image (H, W, 3)) re-predicts one query.
    """
    folder.mkdir(parents=True, exist_ok=True)
    for pattern in MASK_PICTURE_PATTERNS:  # only files this function writes
        for stale in folder.glob(pattern):
            stale.unlink()
    entries = []
    for tag, rank, record in picks:
        logits, gt, image = recompute(record)
        pred = (logits > 0).numpy()
        inter, union = intersection_union(pred, gt)
        if (inter, union) != (record["I"], record["U"]):
            logger.warning("%s: re-predicted I/U %d/%d differ from the evaluation's %d/%d (non-deterministic "
                           "kernels?)", record["file"], inter, union, record["I"], record["U"])
        stem = f"{tag}_{rank:02d}_{Path(record['file']).stem}"
        write_png(pred, folder / f"{stem}_mask.png")
        write_png(overlay_masks(image, [pred], gt=gt), folder / f"{stem}_overlay.png")
        entries.append({"tag": tag, "rank": rank, "file": record["file"], "query": record["query"],
                        "is_sentence": record["is_sentence"], "IoU": record["IoU"], "I": record["I"],
                        "U": record["U"], "mask": f"{stem}_mask.png", "overlay": f"{stem}_overlay.png"})
    atomic_write_text(folder / "index.json", json.dumps(entries, indent=2))
    return entries


# ---------------------------------------------------------------------- the command
def _distractor_lookup(dataset: Any) -> Any:
    """``distractors_of(index, (H, W))`` for ``evaluate``: the distractor masks of annotation ``index``."""
    from modlisa.engine.grounding import distractor_masks

    def distractors_of(index: int, hw: tuple[int, int]) -> np.ndarray | None:
        return distractor_masks(dataset.annotations[index], hw)

    return distractors_of


def _teacher_loader(dataset: Any, tokenizer: Any, cfg: TrainingConfig, batch_size: int, accelerator: Any,
                    conversation: Any = None) -> Any:
    from modlisa.data.collate import make_collate_fn
    from modlisa.engine.sampling import EvalShardSampler

    sampler = EvalShardSampler(len(dataset), rank=accelerator.process_index, world_size=accelerator.num_processes)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler,
                      collate_fn=make_collate_fn(tokenizer, cfg.max_length, conversation))


def wrong_query_baseline(model: torch.nn.Module, tokenizer: Any, dataset: Any, cfg: TrainingConfig, split: str,
                         batch_size: int, accelerator: Any, precision: str | None = None) -> EvalResult | None:
    """Teacher-forced scores of every image asked another image's query (``grounding.WrongQueryDataset``);
    None for a split of fewer than two images. ``precision``: as the evaluation's (default: the run's)."""
    from modlisa.engine.grounding import WrongQueryDataset, wrong_query_partners

    partners = wrong_query_partners(dataset.annotations)
    if partners is None:
        return None
    loader = _teacher_loader(WrongQueryDataset(dataset, partners), tokenizer, cfg, batch_size, accelerator,
                             getattr(model, "conversation", None))
    return evaluate(model, loader, device=accelerator.device, accelerator=accelerator,
                    desc=f"eval {split} (wrong query)",
                    autocast=autocast_context(accelerator.device, precision or cfg.precision))


def _baseline_summary(result: EvalResult) -> dict[str, Any]:
    keep = ("giou", "ciou", "num_queries")
    m = result.metrics
    return {**{k: m[k] for k in keep}, "pairing": "each image asked the first query of another image of the same "
            "kind (short/long), half-way round the split, with a different text",
            "subsets": {n: {k: sub[k] for k in keep} for n, sub in m["subsets"].items()}}


def _evaluate(mode: str, model: torch.nn.Module, tokenizer: Any, processors: Any, dataset: Any,
              cfg: TrainingConfig, split: str, batch_size: int, max_new_tokens: int,
              accelerator: Any, precision: str) -> EvalResult:
    from modlisa.engine.generate_eval import evaluate_generate

    if mode == "generate":
        with autocast_context(accelerator.device, precision):
            return evaluate_generate(model, tokenizer, processors, dataset.annotations,
                                     max_new_tokens=max_new_tokens, desc=f"eval {split} (generate)")
    loader = _teacher_loader(dataset, tokenizer, cfg, batch_size, accelerator, model.conversation)
    return evaluate(model, loader, device=accelerator.device, accelerator=accelerator, desc=f"eval {split}",
                    distractors_of=_distractor_lookup(dataset),
                    autocast=autocast_context(accelerator.device, precision))


PRECISIONS = ("run", "fp32", "bf16", "fp16")


def eval_precision(choice: str, cfg: TrainingConfig) -> tuple[str, str]:
    """(Accelerate-style precision "no" | "bf16" | "fp16", where it came from: "run" | "flag").

    ``run`` (the default) evaluates in the run's mixed precision, the autocast its in-training validation used,
    so `modlisa eval` reproduces the validation numbers of the same weights.
    """
    if choice not in PRECISIONS:
        raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}; got {choice!r}")
    if choice == "run":
        return cfg.precision, "run"
    return ("no" if choice == "fp32" else choice), "flag"


def _make_accelerator(cfg: TrainingConfig) -> Any:
    """An Accelerator for evaluation: one process, or every rank of a torchrun / accelerate launch."""
    from accelerate import Accelerator

    return Accelerator(cpu=cfg.cpu or not torch.cuda.is_available())


def recorded_data_root(root: str, checkpoint: str | Path) -> str:
    """A run's recorded ``data_root``; ConfigError when it is a relative path not found from here (runs since
    modlisa 0.1 record absolute paths; older ones were relative to the folder training ran in)."""
    if Path(root).is_absolute() or Path(root).is_dir():
        return root
    raise ConfigError(f"{checkpoint}: its data_root {root!r} is relative and there is no such folder under the "
                      f"current folder ({Path.cwd()}); run from the folder the run was trained in, or pass "
                      "--data_root")


def _refer_annotations(dataset_name: str, split: str, root: str | None, max_samples: int | None) -> list[Any]:
    """The evaluation items of a refer benchmark: one per sentence (``refer.refer_annotations``)."""
    from modlisa.data.refer import DATASETS, refer_annotations

    if dataset_name not in DATASETS:
        raise ConfigError(f"--dataset must be reason_seg or one of {', '.join(DATASETS)}; got {dataset_name!r}")
    if not root:
        raise ConfigError(f"--dataset {dataset_name}: give --data_root, the folder holding {dataset_name}/ (LISA's "
                          "dataset/refer_seg, or its parent); the run records no dataset_dir")
    annotations = refer_annotations(root, dataset_name, split)
    return annotations[:max_samples] if max_samples else annotations


def run_eval(checkpoint: str, data_root: str | None, split: str, out_dir: str | None,
             batch_size: int = 1, max_samples: int | None = None, *, mode: str = "teacher",
             save_masks: int = 0, max_new_tokens: int = 32, precision: str = "run",
             dataset_name: str = "reason_seg") -> dict[str, Any]:
    """Evaluate ``checkpoint`` on ``split`` of ``dataset_name`` in ``mode`` and write the outputs.

    ``dataset_name``: ``reason_seg`` (a ReasonSeg-format folder), or refcoco / refcoco+ / refcocog / refclef in the
    refer layout (``data/refer.py``; ``data_root`` defaults to the run's ``dataset_dir``), every sentence one query
    (LISA's protocol), written as ``eval_<dataset>_<split>.json``.

    Returns {"metrics", "eval_json", "predictions", "warnings", "masks_dir" (None unless save_masks)}.
    ``batch_size`` applies to teacher mode; generate mode answers one query at a time. ``precision``: ``run``
    (the run's mixed precision, as its validation), ``fp32``, ``bf16`` or ``fp16`` (autocast); the eval JSON
    records it (``precision``, ``precision_source``).
    """
    from modlisa.data.dataset import ReasonSegDataset
    from modlisa.model.precision import apply_dtype_policy

    if mode not in MODES:
        raise ConfigError(f"mode must be one of {', '.join(MODES)}; got {mode!r}")
    if save_masks < 0:
        raise ConfigError(f"save_masks must be >= 0, got {save_masks}")
    if out_dir is None and is_repo_id(str(checkpoint)):  # its recorded output_dir is the trainer's machine's
        raise ConfigError(f"--checkpoint {checkpoint} is a Hub repo id: there is no run folder to write the eval "
                          "files into; pass --out DIR")
    refer = None  # a refer benchmark's items, read BEFORE the model when the folder is given (errors in seconds)
    if dataset_name != "reason_seg" and data_root:
        refer = _refer_annotations(dataset_name, split, data_root, max_samples)
    model, tokenizer, processors, cfg = load_checkpoint(checkpoint)
    amp, amp_source = eval_precision(precision, cfg)
    apply_dtype_policy(model, amp)  # frozen 16-bit weights in the autocast's 16-bit format
    if dataset_name == "reason_seg":
        root = data_root or recorded_data_root(cfg.data_root, checkpoint)
        dataset = ReasonSegDataset(root, split, processors.sam, processors.vision, train=False, strict=True,
                                   max_samples=max_samples, verify_images=True)
    else:
        root = str(data_root or cfg.dataset_dir)
        refer = refer if refer is not None else _refer_annotations(dataset_name, split, cfg.dataset_dir, max_samples)
        dataset = ReasonSegDataset.from_annotations(refer, root, f"{dataset_name} {split}", processors.sam,
                                                    processors.vision)
    accelerator = _make_accelerator(cfg)
    if mode == "generate" and accelerator.num_processes > 1:
        raise ConfigError("eval --mode generate runs in one process; launch it without torchrun/accelerate")
    model.to(accelerator.device)
    result = _evaluate(mode, model, tokenizer, processors, dataset, cfg, split, batch_size, max_new_tokens,
                       accelerator, amp)
    metrics = result.metrics
    if mode == "generate":
        areas = [(r["gt_area"], r["is_sentence"]) for r in result.records]
    else:
        areas = gt_areas(dataset.annotations)
    metrics["empty_baseline"] = baseline = empty_mask_baseline(areas)
    metrics["warnings"] = sanity_warnings(metrics, baseline, mode)
    wrong = None
    if mode == "teacher":
        wrong = wrong_query_baseline(model, tokenizer, dataset, cfg, split, batch_size, accelerator, amp)
        metrics["wrong_query_baseline"] = _baseline_summary(wrong) if wrong is not None else None
        blind = query_blind_warning(metrics, metrics["wrong_query_baseline"])
        if blind:
            logger.warning("%s", blind)
            metrics["warnings"].append(blind)
    target = Path(out_dir) if out_dir else RunFolder(Path(cfg.output_dir)).outputs
    name = RunFolder.eval_name(split if dataset_name == "reason_seg" else f"{dataset_name}_{split}", mode)
    extra = {"checkpoint": str(checkpoint), "dataset": dataset_name, "data_root": str(root), "mode": mode,
             "precision": "fp32" if amp == "no" else amp, "precision_source": amp_source}
    if mode == "generate":
        extra["max_new_tokens"] = max_new_tokens
    extra["num_processes"] = accelerator.num_processes
    if not accelerator.is_main_process:  # every rank holds the gathered records; rank 0 writes
        return {"metrics": metrics, "eval_json": None, "predictions": None, "warnings": metrics["warnings"],
                "masks_dir": None}
    eval_path, pred_path = write_eval_outputs(target, split, metrics, result.records, extra, name=name)
    if wrong is not None:
        write_eval_outputs(target, split, wrong.metrics, wrong.records, extra, name=f"{name}_wrong_query")
    masks_dir = None
    if save_masks:
        masks_dir = target / f"eval_{name}_masks"
        predictor = Predictor(model, tokenizer, processors, cfg.max_length)
        if mode == "generate":
            def recompute(r: dict[str, Any]) -> tuple:
                return _generate_query(predictor, dataset, r, max_new_tokens)
        else:
            def recompute(r: dict[str, Any]) -> tuple:
                return _teacher_query(predictor, dataset, r)
        with autocast_context(accelerator.device, amp):
            save_mask_pictures(masks_dir, select_extremes(result.records, save_masks), recompute)
    return {"metrics": metrics, "eval_json": str(eval_path), "predictions": str(pred_path),
            "warnings": metrics["warnings"], "masks_dir": str(masks_dir) if masks_dir else None,
            "precision": extra["precision"], "precision_source": amp_source}
