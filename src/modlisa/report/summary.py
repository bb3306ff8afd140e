"""The numbers of the report, computed from ``RunData`` (pure functions; IoU values stay fractions).

Every function tolerates missing pieces and returns ``None`` (or empty lists) for what a run lacks.
"""

from __future__ import annotations

import math
import statistics
from typing import Any

from modlisa.report.runs import SPLITS, RunData, data_provenance, finite, run_status

TRAIN_BENCH_KEYS = ("iter_per_sec", "avg_iter_time", "median_iter_time", "epoch_time", "samples_per_sec",
                    "peak_memory_gb")


# ---------------------------------------------------------------------- training progression
def _section(record: dict[str, Any], name: str) -> dict[str, Any]:
    value = record.get(name)
    return value if isinstance(value, dict) else {}


def epoch_rows(run: RunData) -> list[dict[str, Any]]:
    """One flat row per epoch: epoch, global_step, lr, train_* and val_* figures (None when absent).

    IoU values are fractions; ``train_iou``/``val_iou`` are the "iou" of LISA's script (equal to gIoU here).
    """
    rows = []
    for record in run.epochs:
        train, val = _section(record, "train"), _section(record, "val")
        row: dict[str, Any] = {"epoch": record.get("epoch"), "global_step": record.get("global_step"),
                               "lr": finite(record.get("lr")), "has_val": bool(val)}
        for key in ("loss", "iou", "giou", "ciou", "ce", "mask_bce", "mask_dice", "mask_focal"):
            row[f"train_{key}"] = _number(train.get(key))
        for key in ("loss", "iou", "giou", "ciou", "num_queries"):
            row[f"val_{key}"] = _number(val.get(key))
        for key in TRAIN_BENCH_KEYS:
            row[key] = finite(train.get(key))
        row["peak_memory_kind"] = train.get("peak_memory_kind")
        rows.append(row)
    return rows


def configured_shares(config: dict[str, Any]) -> dict[str, float]:
    """The configured shares of a mixture run's datasets (``data.mixture.configured_shares``)."""
    from modlisa.data.mixture import configured_shares as shares

    return shares(config)


def mixture_rows(run: RunData) -> list[dict[str, Any]]:
    """A training mixture's per-dataset figures of each epoch (``metrics_epoch_N.json`` train.datasets): one row
    per (epoch, dataset) with images, share, queries, masks, ce, mask_bce, mask_dice; empty for ReasonSeg alone."""
    rows = []
    for record in run.epochs:
        datasets = _section(record, "train").get("datasets")
        if not isinstance(datasets, dict):
            continue
        for name, figures in sorted(datasets.items()):
            if isinstance(figures, dict):
                rows.append({"epoch": record.get("epoch"), "dataset": name,
                             **{k: _number(figures.get(k)) for k in ("images", "share", "queries", "masks", "ce",
                                                                     "mask_bce", "mask_dice")}})
    return rows


def _number(value: Any) -> float | None:
    """A number (NaN / inf kept: a diverged loss is information), None for anything else."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def best_epoch(run: RunData) -> dict[str, Any] | None:
    """The epoch with the highest validation gIoU (the first one on ties, as training keeps it).

    Returns {"epoch", "val_giou", "val_ciou", "summary_epoch"} (summary_epoch: what train_summary.json
    says, None when absent) or None when no epoch has validation figures.
    """
    best: dict[str, Any] | None = None
    for row in epoch_rows(run):
        giou = finite(row["val_giou"])
        if giou is not None and (best is None or giou > best["val_giou"]):
            best = {"epoch": row["epoch"], "val_giou": giou, "val_ciou": finite(row["val_ciou"])}
    if best is not None:
        best["summary_epoch"] = (run.summary or {}).get("best_epoch")
    return best


def _interval_means(records: list[dict[str, Any]], key: str) -> list[float | None]:
    """Mean of ``key`` over each logging interval, from the running epoch means of train_log.jsonl.

    ``records``: one per logged step, sorted by global_step. The logged value is the mean over the epoch so
    far; the interval mean is recovered exactly as (m_k * s_k - m_j * s_j) / (s_k - s_j) with s = step in
    epoch. A missing or non-finite mean gives None there, and the next interval starts from the last finite one.
    """
    out: list[float | None] = []
    prev_epoch, prev_sum, prev_step = None, 0.0, 0
    for record in records:
        mean, epoch, in_epoch = finite(record.get(key)), record.get("epoch"), record.get("step")
        if epoch != prev_epoch:
            prev_sum, prev_step = 0.0, 0
        interval = None
        if mean is not None and isinstance(in_epoch, int) and in_epoch > prev_step:
            interval = (mean * in_epoch - prev_sum) / (in_epoch - prev_step)
            prev_sum, prev_step = mean * in_epoch, in_epoch
        out.append(interval)
        prev_epoch = epoch
    return out


def _last_per_step(run: RunData) -> list[dict[str, Any]]:
    """The step records sorted by global_step; a step logged twice (a resumed run) keeps its last record."""
    by_step = {r["global_step"]: r for r in run.log}
    return [by_step[step] for step in sorted(by_step)]


def step_losses(run: RunData) -> list[dict[str, Any]]:
    """Per logged step: global_step, epoch, the running epoch mean as logged, and the interval loss.

    train_log.jsonl's "loss" is the mean over the epoch so far; the mean over each logging interval is
    recovered exactly as (m_k * s_k - m_j * s_j) / (s_k - s_j) with s = step in epoch. Duplicated global
    steps (a resumed run re-logging a step) keep the last record.
    """
    records = _last_per_step(run)
    return [{"global_step": r["global_step"], "epoch": r.get("epoch"), "running_mean": _number(r.get("loss")),
             "interval_loss": interval} for r, interval in zip(records, _interval_means(records, "loss"))]


#: The loss terms of train_log.jsonl (running epoch means), then the per-step figures.
STEP_TERMS = ("loss", "ce", "mask_bce", "mask_dice", "mask_focal")
STEP_KEYS = (*STEP_TERMS, "lr", "grad_norm")


def step_series(run: RunData) -> dict[str, Any]:
    """The per-step curves of train_log.jsonl, column-wise, x = global_step (sorted; a step logged twice,
    as a resumed run does, keeps its last record).

    Returns {"global_step": [...], "epoch": [...], "logged": {key: [value or None]}, "interval": {term:
    [value or None]}, "missing": [keys no record has], "nonfinite": {key: [global steps]}}. ``logged`` holds
    the values as written (NaN / inf kept; None where a record lacks the key) for the keys of ``STEP_KEYS``
    that some record has; the loss terms are running means over the epoch, ``interval`` their mean over each
    logging interval (``_interval_means``); lr and grad_norm are the step's own.
    """
    records = _last_per_step(run)
    logged = {key: [_number(r.get(key)) for r in records] for key in STEP_KEYS}
    present = {key: values for key, values in logged.items() if any(v is not None for v in values)}
    nonfinite = {key: [r["global_step"] for r, v in zip(records, values) if v is not None and not math.isfinite(v)]
                 for key, values in present.items()}
    return {"global_step": [r["global_step"] for r in records], "epoch": [r.get("epoch") for r in records],
            "logged": present,
            "interval": {key: _interval_means(records, key) for key in STEP_TERMS if key in present},
            "missing": [key for key in STEP_KEYS if key not in present] if records else [],
            "nonfinite": {key: steps for key, steps in nonfinite.items() if steps}}


def step_validations(run: RunData) -> list[dict[str, Any]]:
    """Validations logged between epochs (eval_every_steps): global_step, loss, giou, ciou."""
    return [{"global_step": r["global_step"], "loss": _number(r["val"].get("loss")),
             "giou": finite(r["val"].get("giou")), "ciou": finite(r["val"].get("ciou"))} for r in run.log_val]


# ---------------------------------------------------------------------- benchmark
def _mean(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.fmean(present) if present else None


def benchmark(run: RunData) -> dict[str, Any] | None:
    """Training speed and memory over the epochs, None when no epoch finished.

    Means are over epochs; "steady" figures leave out epoch 1 (warm-up, caches) when there are more.
    ``median_iter_time`` is the median over all logged steps when train_log.jsonl has iteration times.
    """
    rows = epoch_rows(run)
    if not rows:
        return None
    steady = rows[1:] if len(rows) > 1 else rows
    step_times = [t for r in run.log if (t := finite(r.get("iter_time"))) is not None]
    kinds = sorted({r["peak_memory_kind"] for r in rows if r["peak_memory_kind"]})
    memory = [r["peak_memory_gb"] for r in rows if r["peak_memory_gb"] is not None]
    return {
        "epochs": len(rows),
        "iter_per_sec": _mean([r["iter_per_sec"] for r in rows]),
        "iter_per_sec_steady": _mean([r["iter_per_sec"] for r in steady]),
        "avg_iter_time": _mean([r["avg_iter_time"] for r in rows]),
        "median_iter_time": statistics.median(step_times) if step_times
        else _mean([r["median_iter_time"] for r in rows]),
        "epoch_time": _mean([r["epoch_time"] for r in rows]),
        "total_train_time": sum(r["epoch_time"] for r in rows if r["epoch_time"] is not None),
        "samples_per_sec": _mean([r["samples_per_sec"] for r in rows]),
        "samples_per_sec_steady": _mean([r["samples_per_sec"] for r in steady]),
        "peak_memory_gb": max(memory) if memory else None,
        "peak_memory_kind": ", ".join(kinds) if kinds else None,
    }


def bench_numbers(bench: dict[str, Any] | None, limit: int = 40) -> list[tuple[str, Any]]:
    """Scalars of a bench.json: top-level numbers/short strings, and those one level down as "a.b"."""
    if not bench:
        return []
    items: list[tuple[str, Any]] = []
    for key, value in bench.items():
        if isinstance(value, dict):
            items += [(f"{key}.{k}", v) for k, v in value.items() if _scalar(v)]
        elif _scalar(value):
            items.append((str(key), value))
    return items[:limit]


def _scalar(value: Any) -> bool:
    return isinstance(value, (bool, int, float)) or (isinstance(value, str) and len(value) <= 80)


# ---------------------------------------------------------------------- evaluation
def _cell(metrics: Any, baseline: Any = None, wrong: Any = None) -> dict[str, Any] | None:
    """{"giou", "ciou", "num_queries", "empty_giou", "wrong_giou", "grounding", "seg_rate"} of a metrics dict;
    None when absent or with no queries. empty_giou / wrong_giou: the empty-mask and wrong-query baselines
    written by `modlisa eval`; grounding: its grounding accuracy (overall only); seg_rate: generate mode."""
    if not isinstance(metrics, dict):
        return None
    n = metrics.get("num_queries")
    giou, ciou = finite(metrics.get("giou")), finite(metrics.get("ciou"))
    if giou is None or ciou is None or (isinstance(n, int) and n == 0):
        return None
    return {"giou": giou, "ciou": ciou, "num_queries": n if isinstance(n, int) else None,
            "empty_giou": finite(baseline.get("giou")) if isinstance(baseline, dict) else None,
            "wrong_giou": finite(wrong.get("giou")) if isinstance(wrong, dict) else None,
            "grounding": finite(metrics["grounding"].get("accuracy")) if isinstance(metrics.get("grounding"), dict)
            else None,
            "seg_rate": finite(metrics.get("seg_rate"))}


def _split_cells(payload: dict[str, Any]) -> dict[str, dict[str, Any] | None]:
    """overall / short / long cells of one eval_<name>.json."""
    subsets = payload.get("subsets") if isinstance(payload.get("subsets"), dict) else {}
    baseline = payload.get("empty_baseline") if isinstance(payload.get("empty_baseline"), dict) else {}
    base_subsets = baseline.get("subsets") if isinstance(baseline.get("subsets"), dict) else {}
    wrong = payload.get("wrong_query_baseline") if isinstance(payload.get("wrong_query_baseline"), dict) else {}
    wrong_subsets = wrong.get("subsets") if isinstance(wrong.get("subsets"), dict) else {}
    return {"overall": _cell(payload, baseline or None, wrong or None),
            "short": _cell(subsets.get("short"), base_subsets.get("short"), wrong_subsets.get("short")),
            "long": _cell(subsets.get("long"), base_subsets.get("long"), wrong_subsets.get("long"))}


def eval_results(run: RunData) -> dict[str, Any]:
    """Val and test results as LISA reports them (fractions, teacher mode), with where each came from.

    val: eval_val.json, else the best epoch's validation during training. test: eval_test.json
    overall / short / long. Keys: val, val_source, test_short, test_long, test_overall, test_source, and
    generate: {split: {overall, short, long}} from eval_<split>_generate.json (the free-answer mode).
    """
    out: dict[str, Any] = {"val": None, "val_source": None, "test_short": None, "test_long": None,
                           "test_overall": None, "test_source": None, "generate": {}}
    if "val" in run.evals:
        out["val"], out["val_source"] = _split_cells(run.evals["val"])["overall"], "eval_val.json"
    else:
        best = best_epoch(run)
        if best is not None:
            record = next(r for r in run.epochs if r.get("epoch") == best["epoch"])
            out["val"] = _cell(record.get("val"))
            out["val_source"] = f"validation during training, best epoch {best['epoch']}"
    if "test" in run.evals:
        cells = _split_cells(run.evals["test"])
        out["test_overall"], out["test_short"], out["test_long"] = cells["overall"], cells["short"], cells["long"]
        out["test_source"] = "eval_test.json"
    for split in ("val", "test"):
        if f"{split}_generate" in run.evals:
            out["generate"][split] = _split_cells(run.evals[f"{split}_generate"])
    return out


def prediction_stats(run: RunData) -> dict[str, dict[str, Any]]:
    """Per predictions file (split, or split_generate): query counts, median IoU, share with IoU >= 0.5, gIoU/cIoU recomputed
    from the per-query I and U, and whether they match eval_{split}.json (to 1e-6)."""
    out = {}
    for split, records in run.predictions.items():
        good = [r for r in records if isinstance(r.get("I"), int) and isinstance(r.get("U"), int)]
        if not good:
            continue
        ious = [1.0 if r["U"] == 0 else r["I"] / (r["U"] + 1e-5) for r in good]
        giou = statistics.fmean(ious)
        ciou = sum(r["I"] for r in good) / (sum(r["U"] for r in good) + 1e-10)
        stats: dict[str, Any] = {
            "queries": len(good), "short": sum(1 for r in good if not r.get("is_sentence")),
            "long": sum(1 for r in good if r.get("is_sentence")), "median_iou": statistics.median(ious),
            "iou_at_least_0_5": sum(1 for v in ious if v >= 0.5) / len(ious),
            "recomputed_giou": giou, "recomputed_ciou": ciou, "matches_eval": None,
        }
        reported = run.evals.get(split)
        if reported is not None and finite(reported.get("giou")) is not None:
            stats["matches_eval"] = (abs(giou - reported["giou"]) < 1e-6
                                     and abs(ciou - float(reported.get("ciou", -1))) < 1e-6)
        out[split] = stats
    return out


def query_dependence(run: RunData) -> list[dict[str, Any]]:
    """Per split evaluated in teacher mode (eval_<split>.json) with a wrong-query baseline or a grounding
    accuracy: {"split", "giou", "wrong_giou", "grounding"} (fractions, None where absent)."""
    out = []
    for split in SPLITS:
        cell = _split_cells(run.evals[split])["overall"] if split in run.evals else None
        if cell is not None and (cell["wrong_giou"] is not None or cell["grounding"] is not None):
            out.append({"split": split, "giou": cell["giou"], "wrong_giou": cell["wrong_giou"],
                        "grounding": cell["grounding"]})
    return out


def pictures(run: RunData) -> dict[str, Any]:
    """The best / worst pictures of `modlisa eval` per evaluated name (split or split_generate).

    Returns {"by_split": {name: [{"tag", "rank", "file", "query", "is_sentence", "iou", "overlay_path"}]},
    "without": [evaluated names with no pictures ("test" when nothing was evaluated)], "stale": [names whose
    pictures disagree with predictions_<name>.jsonl (an earlier evaluation's pictures)]}. Entries are in the
    order best 1..k, then worst 1..k.
    """
    by_split, stale = {}, []
    for name, entries in run.pictures.items():
        if not entries:
            continue
        order = sorted(entries, key=lambda e: (e["tag"] != "best", e["rank"]))
        by_split[name] = [{"tag": e["tag"], "rank": e["rank"], "file": str(e.get("file", "")),
                           "query": str(e.get("query", "")), "is_sentence": bool(e.get("is_sentence")),
                           "iou": float(e["IoU"]), "overlay_path": e["overlay_path"]} for e in order]
        records = {(str(r.get("file")), str(r.get("query"))): finite(r.get("IoU")) for r in run.predictions.get(name, [])}
        ious = [records.get((e["file"], e["query"])) for e in by_split[name]]
        if records and not all(iou is not None and abs(iou - e["iou"]) <= 1e-9
                               for iou, e in zip(ious, by_split[name])):
            stale.append(name)
    evaluated = list(run.evals) or ["test"]
    return {"by_split": by_split, "without": [n for n in evaluated if n not in by_split], "stale": stale}


# ---------------------------------------------------------------------- one run
CONFIG_KEYS = ("model", "img_size", "sam_image_size", "num_epochs", "batch_size", "gradient_accumulation_steps",
               "learning_rate", "use_lora", "lora_r", "lora_alpha", "train_embeddings", "precision", "seed")


def config_brief(run: RunData) -> dict[str, Any]:
    """The config fields a reader compares across runs ("precision" resolved like TrainingConfig does)."""
    cfg = dict(run.config or {})
    if cfg:
        cfg["precision"] = cfg.get("mixed_precision", "bf16") if cfg.get("use_mixed_precision", True) else "fp32"
    return {k: cfg.get(k) for k in CONFIG_KEYS if k in cfg}


def run_summary(run: RunData) -> dict[str, Any]:
    """Everything the report says about one run, as JSON-ready numbers (IoU as fractions)."""
    data = data_provenance(run)
    return {
        "name": run.name,
        "path": str(run.root),
        "status": run_status(run),
        "epochs_done": len(run.epochs),
        "epochs_planned": run.planned_epochs,
        "global_step": (run.summary or {}).get("global_step", run.epochs[-1].get("global_step") if run.epochs
                                                else None),
        "data": {"root": data.root, "kind": data.kind, "detail": data.detail,
                 "official_counts": data.official_counts},
        "config": config_brief(run),
        "epochs": epoch_rows(run),
        "mixture": mixture_rows(run),
        "mixture_shares": configured_shares(run.config or {}),
        "best_epoch": best_epoch(run),
        "benchmark": benchmark(run),
        "eval": eval_results(run),
        "refer": {key: {"giou": e.get("giou"), "ciou": e.get("ciou"), "num_queries": e.get("num_queries")}
                  for key, e in run.refer_evals.items()},
        "predictions": prediction_stats(run),
        "steps": step_losses(run),
        "step_series": step_series(run),
        "query_dependence": query_dependence(run),
        "pictures": pictures(run),
        "step_val": step_validations(run),
        "bench_json": dict(bench_numbers(run.bench)),
        "notes": list(run.notes),
    }
