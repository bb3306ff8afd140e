"""The report's plots as PNG files (matplotlib, Agg canvas; no pyplot global state), runs overlaid.

Each plot function takes the run summaries (``summary.run_summary``) and returns a matplotlib
``Figure`` or None when no run has the figures it needs. ``make_plots`` writes the PNGs.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from modlisa.report.summary import STEP_TERMS

logger = logging.getLogger(__name__)

Summary = dict[str, Any]
COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf")
DPI = 110


@dataclass
class Plot:
    """A written plot: ``key`` names its file (``<key>.png``); ``section`` places it in the report."""

    key: str
    title: str
    caption: str
    section: str
    path: Path


def _colour(i: int) -> str:
    return COLOURS[i % len(COLOURS)]


def _figure(panels: int = 1, height: float = 3.6) -> tuple[Figure, list[Any]]:
    fig = Figure(figsize=(min(4.6 * panels, 12.0) if panels > 1 else 8.0, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, panels, squeeze=False)[0]
    for ax in axes:
        ax.grid(True, alpha=0.3)
        ax.spines[["top", "right"]].set_visible(False)
    return fig, list(axes)


def _series(rows: list[dict[str, Any]], x: str, y: str, scale: float = 1.0) -> tuple[list[Any], list[float]]:
    points = [(r[x], r[y] * scale) for r in rows if r.get(x) is not None and r.get(y) is not None]
    return [p[0] for p in points], [p[1] for p in points]


def _legend(axes: list[Any], n_runs: int) -> None:
    """One legend under the figure; with k lines per run it is a grid: one row per run, one column per line."""
    handles, labels = axes[0].get_legend_handles_labels()
    if not handles:
        return
    k = len(handles) // n_runs if n_runs and len(handles) % n_runs == 0 else 1
    ncols = min(4, len(labels))
    if k > 1:  # matplotlib fills legend columns first: order entries column by column
        order = [r * k + c for c in range(k) for r in range(n_runs)]
        handles, labels, ncols = [handles[i] for i in order], [labels[i] for i in order], k
    axes[0].figure.legend(handles, labels, loc="outside lower center", ncols=ncols, fontsize="small",
                          frameon=False)


def _epoch_plot(summaries: list[Summary], panels: list[tuple[str, list[tuple[str, str]]]], ylabel: list[str],
                scale: float = 1.0) -> Figure | None:
    """Panels of per-epoch lines: panels = [(title, [(row key, line label), ...])], one colour per run."""
    if not any(s["epochs"] for s in summaries):
        return None
    fig, axes = _figure(len(panels))
    drawn = False
    for ax, (title, lines), label in zip(axes, panels, ylabel):
        for i, s in enumerate(summaries):
            for k, (key, line_label) in enumerate(lines):
                xs, ys = _series(s["epochs"], "epoch", key, scale)
                if xs:
                    ax.plot(xs, ys, marker="o", ms=4, color=_colour(i), ls="-" if k == 0 else "--",
                            label=f"{s['name']} {line_label}".strip())
                    drawn = True
        ax.set_title(title, fontsize="medium")
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.xaxis.get_major_locator().set_params(integer=True)
    if not drawn:
        return None
    _legend(axes, len(summaries))
    return fig


# ---------------------------------------------------------------------- the plots
def loss_per_epoch(summaries: list[Summary]) -> Figure | None:
    return _epoch_plot(summaries, [("Loss per epoch", [("train_loss", "train"), ("val_loss", "val")])], ["loss"])


def loss_per_step(summaries: list[Summary]) -> Figure | None:
    """Interval loss (solid), running epoch mean as logged (dotted), validation loss at steps (squares)."""
    if not any(s["steps"] for s in summaries):
        return None
    fig, (ax,) = _figure(1)
    for i, s in enumerate(summaries):
        xs, ys = _series(s["steps"], "global_step", "interval_loss")
        ax.plot(xs, ys, color=_colour(i), lw=1.2, marker="." if len(xs) < 60 else None,
                label=f"{s['name']} train (per interval)")
        xs, ys = _series(s["steps"], "global_step", "running_mean")
        ax.plot(xs, ys, color=_colour(i), lw=1.0, ls=":", alpha=0.8, label=f"{s['name']} train (epoch mean)")
        xs, ys = _series(s["step_val"], "global_step", "loss")
        if xs:
            ax.plot(xs, ys, color=_colour(i), ls="none", marker="s", label=f"{s['name']} val")
    ax.set_title("Loss per logged optimizer step", fontsize="medium")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    _legend([ax], len(summaries))
    return fig


def iou_per_epoch(summaries: list[Summary]) -> Figure | None:
    lines = [("train_{}", "train"), ("val_{}", "val")]
    metrics = ["giou", "ciou"]
    if any(r["train_iou"] != r["train_giou"] or r["val_iou"] != r["val_giou"] for s in summaries for r in s["epochs"]):
        metrics.insert(0, "iou")
    titles = {"iou": "IoU (as logged)", "giou": "gIoU", "ciou": "cIoU"}
    panels = [(titles[m], [(key.format(m), label) for key, label in lines]) for m in metrics]
    return _epoch_plot(summaries, panels, ["%"] * len(panels), scale=100.0)


def throughput_per_epoch(summaries: list[Summary]) -> Figure | None:
    return _epoch_plot(summaries, [("Iterations per second", [("iter_per_sec", "")]),
                                   ("Samples per second", [("samples_per_sec", "")])], ["iter/s", "samples/s"])


def memory_per_epoch(summaries: list[Summary]) -> Figure | None:
    kinds = sorted({r["peak_memory_kind"] for s in summaries for r in s["epochs"] if r["peak_memory_kind"]})
    label = f"GB ({', '.join(kinds)})" if kinds else "GB"
    return _epoch_plot(summaries, [("Peak memory per epoch", [("peak_memory_gb", "")])], [label])


def _grid(panels: int, height: float = 2.9) -> tuple[Figure, list[Any]]:
    """A figure of ``panels`` axes in rows of 2 (2 or 4 panels) or 3; unused cells are hidden."""
    ncols = min(2 if panels in (2, 4) else 3, panels)
    nrows = math.ceil(panels / ncols)
    fig = Figure(figsize=(min(4.2 * ncols, 12.5), height * nrows + 0.7), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    axes = list(fig.subplots(nrows, ncols, squeeze=False).flat)
    for ax in axes[panels:]:
        ax.set_visible(False)
    for ax in axes[:panels]:
        ax.grid(True, alpha=0.3)
        ax.spines[["top", "right"]].set_visible(False)
    return fig, axes[:panels]


def _gaps(values: list[float | None]) -> list[float]:
    """None and non-finite values as NaN: matplotlib leaves a gap there."""
    return [v if v is not None and math.isfinite(v) else math.nan for v in values]


def _plot_with_gaps(ax: Any, xs: list[Any], values: list[float | None], **style: Any) -> None:
    """A line with gaps at missing / non-finite values; a point between two gaps gets a dot (a line alone
    would not show it)."""
    ys = _gaps(values)
    ax.plot(xs, ys, **style)
    lone = [i for i, y in enumerate(ys) if not math.isnan(y) and (i == 0 or math.isnan(ys[i - 1]))
            and (i == len(ys) - 1 or math.isnan(ys[i + 1]))]
    if lone and style.get("marker") is None and len(ys) > 1:
        ax.plot([xs[i] for i in lone], [ys[i] for i in lone], ls="none", marker=".", color=style.get("color"),
                alpha=style.get("alpha", 1.0))


TERM_TITLES = {"loss": "total loss", "ce": "ce (text)", "mask_bce": "mask BCE", "mask_dice": "mask Dice",
               "mask_focal": "mask focal", "lr": "learning rate", "grad_norm": "gradient norm"}


def _drawn_terms(summaries: list[Summary]) -> list[str]:
    """The loss terms some run logged; mask_focal only where it is non-zero somewhere."""
    terms = []
    for term in STEP_TERMS:
        values = [v for s in summaries for v in s["step_series"]["logged"].get(term, []) if v is not None]
        if values and (term != "mask_focal" or any(v != 0 for v in values)):
            terms.append(term)
    return terms


def _step_panels(summaries: list[Summary], keys: list[str], interval: bool) -> Figure | None:
    """One panel per key of train_log.jsonl against global_step, one colour per run; with ``interval`` the
    interval mean is solid and the running epoch mean as logged dotted, else the logged value is solid."""
    if not keys:
        return None
    fig, axes = _grid(len(keys))
    for ax, key in zip(axes, keys):
        for i, s in enumerate(summaries):
            series = s["step_series"]
            if key not in series["logged"]:
                continue
            xs = series["global_step"]
            few = len(xs) < 60
            if interval:
                _plot_with_gaps(ax, xs, series["interval"][key], color=_colour(i), lw=1.2,
                                marker="." if few else None, label=f"{s['name']} per interval")
                _plot_with_gaps(ax, xs, series["logged"][key], color=_colour(i), lw=1.0, ls=":", alpha=0.8,
                                label=f"{s['name']} epoch mean")
            else:
                _plot_with_gaps(ax, xs, series["logged"][key], color=_colour(i), lw=1.2,
                                marker="." if few else None, label=s["name"])
        ax.set_title(TERM_TITLES.get(key, key), fontsize="medium")
        ax.set_xlabel("optimizer step")
        ax.xaxis.get_major_locator().set_params(integer=True)
        if key == "lr":
            ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    # the legend of the first panel names every run only if every run has that key: use all panels' handles
    handles: dict[str, Any] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, handle)
    if handles:
        k = 2 if interval else 1
        labels = list(handles)
        ncols = k if interval else min(4, len(labels))
        if interval:  # one row per run: "per interval", "epoch mean"
            labels = [lb for j in range(k) for lb in labels[j::k]]
        fig.legend([handles[lb] for lb in labels], labels, loc="outside lower center", ncols=ncols,
                   fontsize="small", frameon=False)
    return fig


def loss_terms_per_step(summaries: list[Summary]) -> Figure | None:
    """Each loss term per optimizer step: interval mean (solid) and running epoch mean as logged (dotted).
    None when no run logged a term besides the total loss (``loss_per_step`` already shows that)."""
    terms = _drawn_terms(summaries)
    return _step_panels(summaries, terms, interval=True) if set(terms) - {"loss"} else None


def lr_grad_norm_per_step(summaries: list[Summary]) -> Figure | None:
    """Learning rate and gradient norm of each logged optimizer step."""
    keys = [k for k in ("lr", "grad_norm") if any(k in s["step_series"]["logged"] for s in summaries)]
    return _step_panels(summaries, keys, interval=False)


def query_dependence(summaries: list[Summary]) -> Figure | None:
    """Per run and split: gIoU with its own query, gIoU with another image's query, grounding accuracy (%)."""
    groups = [(f"{s['name']}\n{q['split']}", q) for s in summaries for q in s["query_dependence"]]
    if not groups:
        return None
    bars = (("giou", "gIoU, own query", "#1f77b4"), ("wrong_giou", "gIoU, another image's query", "#ff7f0e"),
            ("grounding", "grounding accuracy", "#2ca02c"))
    fig = Figure(figsize=(min(3.0 + 1.6 * len(groups), 12.0), 3.6), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    ax.grid(True, axis="y", alpha=0.3)
    ax.spines[["top", "right"]].set_visible(False)
    width = 0.26
    for b, (key, label, colour) in enumerate(bars):
        xs = [g + (b - 1) * width for g in range(len(groups))]
        values = [q[key] for _, q in groups]
        heights = [100 * v if v is not None else 0.0 for v in values]
        drawn = ax.bar(xs, heights, width, color=colour, label=label)
        ax.bar_label(drawn, labels=[f"{h:.1f}" if v is not None else "n/a" for h, v in zip(heights, values)],
                     fontsize="x-small", padding=1)
    ax.set_xticks(range(len(groups)), [label for label, _ in groups], fontsize="small")
    ax.set_ylabel("%")
    ax.set_ylim(0, 105)
    ax.set_title("Does the mask depend on the query?", fontsize="medium")
    fig.legend(loc="outside lower center", ncols=3, fontsize="small", frameon=False)
    return fig


PLOTS: tuple[tuple[str, str, str, str, Callable[[list[Summary]], Figure | None]], ...] = (
    ("loss_per_epoch", "Loss per epoch", "Train (solid) and validation (dashed) loss at the end of each epoch.",
     "progression", loss_per_epoch),
    ("loss_per_step", "Loss per logged step",
     "Solid: mean loss over each logging interval (derived exactly from the logged running means); dotted: "
     "running mean of the epoch as logged; squares: validations between epochs.", "progression", loss_per_step),
    ("iou_per_epoch", "IoU per epoch", "gIoU and cIoU in %, train (solid, on the sampled training queries) and "
     "validation (dashed, LISA protocol); the IoU of LISA's script equals gIoU.", "progression", iou_per_epoch),
    ("loss_terms_per_step", "Loss terms per optimizer step",
     "Each loss term of train_log.jsonl against the optimizer step: solid, its mean over each logging interval "
     "(derived exactly from the logged running means); dotted, the running mean of the epoch as logged. A step "
     "logged twice (a resumed run) keeps its last record; missing or non-finite values are gaps (see the notes). "
     "mask focal is drawn only when it is non-zero.", "progression", loss_terms_per_step),
    ("lr_grad_norm_per_step", "Learning rate and gradient norm per optimizer step",
     "The learning rate and the gradient norm (before clipping) of each logged optimizer step; non-finite "
     "gradient norms (skipped steps) are gaps.", "progression", lr_grad_norm_per_step),
    ("query_dependence", "Query dependence",
     "Per run and evaluated split (teacher mode): gIoU with each image's own query, gIoU when each image is asked "
     "another image's query (a model that reads its query drops far; a query-blind one does not) and grounding "
     "accuracy (the share of queries whose mask overlaps the target more than any other shape), in %. n/a: not "
     "measured (a split of one image, or data that lists no other shapes).", "evaluation", query_dependence),
    ("throughput_per_epoch", "Throughput per epoch", "Optimizer steps and images per second of each epoch.",
     "benchmark", throughput_per_epoch),
    ("memory_per_epoch", "Peak memory per epoch", "Peak memory of each epoch (the kind is in the axis label).",
     "benchmark", memory_per_epoch),
)


def make_plots(summaries: list[Summary], out_dir: Path) -> tuple[list[Plot], list[str]]:
    """Write every plot that has data as ``out_dir/<key>.png``. Returns (plots, notes on skipped plots)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    plots, skipped = [], []
    for key, title, caption, section, build in PLOTS:
        fig = build(summaries)
        if fig is None:
            skipped.append(f"{title}: no data in any run")
            continue
        path = out_dir / f"{key}.png"
        fig.savefig(path, format="png")
        plots.append(Plot(key, title, caption, section, path))
        logger.debug("wrote %s", path)
    return plots, skipped
