"""Build the analysis report of one or more run folders: report.md, report.html, report.json + PNG plots.

``build_report(run_dirs, out_dir)``: read the runs (``runs``), compute their numbers (``summary``),
draw the plots (``plots``), copy the best / worst pictures of `modlisa eval` as thumbnails (``gallery``),
lay out the sections (this module) and render them (``render``).
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from modlisa import __version__
from modlisa.report import tables
from modlisa.report.gallery import THUMB_SIZE, Gallery, make_galleries
from modlisa.report.lisa_reference import REFER_SOURCE, REFER_TABLE, SOURCE, reference_rows
from modlisa.report.plots import Plot, make_plots
from modlisa.report.render import Section, render_html, render_markdown
from modlisa.report.runs import load_runs
from modlisa.report.summary import run_summary

logger = logging.getLogger(__name__)

Summary = dict[str, Any]


@dataclass
class ReportFiles:
    """What ``build_report`` wrote."""

    out_dir: Path
    markdown: Path
    html: Path
    json: Path
    plots: list[Path]
    pictures: list[Path] = field(default_factory=list)  # the gallery thumbnails (report.md links them)


# ---------------------------------------------------------------------- sections
def _runs_section(summaries: list[Summary]) -> Section:
    paragraphs = [("text", f"{s['name']}: {s['path']} ({s['status']})") for s in summaries]
    return Section("runs", "Runs", paragraphs, [tables.runs_table(summaries)])


def _notes_section(summaries: list[Summary], skipped_plots: list[str]) -> Section:
    paragraphs = []
    for s in summaries:
        paragraphs += [("warning", f"{s['name']}: {note}") for note in s["notes"]]
    paragraphs += [("text", f"Plot not drawn: {note}") for note in skipped_plots]
    if not paragraphs:
        paragraphs.append(("text", "Every run folder is complete: no missing or partial files."))
    return Section("notes", "Notes and warnings", paragraphs)


def _eval_section(summaries: list[Summary], plots: list[Plot]) -> Section:
    found = [t for s in summaries for t in (tables.eval_table(s), tables.predictions_table(s)) if t is not None]
    text = ("LISA's protocol (docs/EVALUATION.md, section 1): first query of each image, fixed prompt, "
            "teacher-forced [SEG], prediction = logits > 0 at the original resolution, ignore pixels removed. "
            "gIoU = mean per-query IoU, cIoU = cumulative intersection / cumulative union; shown in % (x100), "
            "one decimal.")
    return Section("evaluation", "Evaluation results", [("text", text)], found,
                   [p for p in plots if p.section == "evaluation"])


def _gallery_section(galleries: list[Gallery], notes: list[str]) -> Section:
    paragraphs = [("text", "The best and worst queries of each evaluated split by IoU, as `modlisa eval` picked "
                   "and drew them (index.json of eval_SPLIT_masks/ in the run's outputs): the prediction tinted "
                   "magenta and outlined, the ground truth outlined in green. Pictures downscaled to at most "
                   f"{THUMB_SIZE} px; report.md links the full-size ones.")] if galleries else []
    paragraphs += [("warning" if "no best / worst pictures" not in n else "text", n) for n in notes]
    return Section("gallery", "Gallery: best and worst predictions", paragraphs, galleries=galleries)


def _comparison_section(summaries: list[Summary]) -> Section:
    paragraphs = [("text", f"Published figures: {SOURCE}. Our runs are appended in bold; how to compare fairly: "
                   "docs/EVALUATION.md, section 8.")]
    for s in summaries:
        kind = s["data"]["kind"]
        if kind == "synthetic":
            paragraphs.append(("warning", f"{s['name']} was trained and evaluated on SYNTHETIC data "
                               f"({s['data']['root']}), not on ReasonSeg: its numbers cannot be compared with "
                               "LISA's; they only show that the pipeline learns."))
        elif kind == "unknown":
            paragraphs.append(("warning", f"{s['name']}: cannot tell which data this run used: "
                               f"{s['data']['detail']}. Do not compare its numbers with LISA's."))
        else:
            paragraphs.append(("warning", f"{s['name']} used {s['data']['detail']}: comparable with LISA's rows "
                               "only if this is the official ReasonSeg release, evaluated with the same protocol."))
    shown = [tables.lisa_table(summaries)]
    if any(s.get("refer") for s in summaries):
        shown.append(tables.refer_table(summaries))
    return Section("lisa", "Comparison with LISA", paragraphs, shown)


def _progression_section(summaries: list[Summary], plots: list[Plot]) -> Section:
    paragraphs, found = [], []
    for s in summaries:
        if not s["epochs"]:
            paragraphs.append(("text", f"{s['name']}: no finished epoch (no metrics_epoch_N.json)."))
            continue
        found.append(tables.progression_table(s))
        if s.get("mixture"):
            found.append(tables.mixture_table(s))
        paragraphs += _step_log_notes(s)
        best = s["best_epoch"]
        paragraphs.append(("text", f"{s['name']}: best epoch {best['epoch']} with val gIoU "
                           f"{tables.pct(best['val_giou'])} % / cIoU {tables.pct(best['val_ciou'])} %."
                           if best else f"{s['name']}: no validation figures, so no best epoch."))
    return Section("progression", "Training progression", paragraphs, found,
                   [p for p in plots if p.section == "progression"])


def _step_log_notes(s: Summary) -> list[tuple[str, str]]:
    """What the per-step curves cannot show: keys an older train_log.jsonl lacks, non-finite values."""
    series, out = s["step_series"], []
    if not series["global_step"]:
        return out
    missing = [k for k in series["missing"] if k != "mask_focal"]
    if missing:
        out.append(("text", f"{s['name']}: train_log.jsonl has no {', '.join(missing)} (an older log?): not drawn."))
    for key, steps in series["nonfinite"].items():
        shown = ", ".join(map(str, steps[:8])) + (f" and {len(steps) - 8} more" if len(steps) > 8 else "")
        out.append(("warning", f"{s['name']}: {key} is NaN or infinite at {len(steps)} logged step(s) ({shown}): "
                    "drawn as gaps in the per-step curves."))
    return out


def _benchmark_section(summaries: list[Summary], plots: list[Plot]) -> Section:
    found = []
    for s in summaries:
        if s["epochs"]:
            found.append(tables.benchmark_table(s))
        bench = tables.bench_json_table(s)
        if bench is not None:
            found.append(bench)
    paragraphs = [] if found else [("text", "No finished epoch and no bench.json: nothing to report.")]
    return Section("benchmark", "Benchmark", paragraphs, found, [p for p in plots if p.section == "benchmark"])


# ---------------------------------------------------------------------- files
def _json_safe(value: Any) -> Any:
    """Non-finite floats become None (strict JSON); tuples become lists."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def _gallery_json(galleries: list[Gallery]) -> list[dict[str, Any]]:
    return [{"run": g.run, "name": g.name, "pictures": [
        {"tag": p.tag, "rank": p.rank, "file": p.file, "query": p.query, "is_sentence": p.is_sentence, "IoU": p.iou,
         "thumbnail": p.link, "overlay": str(p.original)} for p in g.pictures]} for g in galleries]


def _report_json(title: str, generated: str, summaries: list[Summary], plots: list[Plot],
                 skipped: list[str], sections: list[Section]) -> dict[str, Any]:
    return _json_safe({
        "title": title, "generated_by": f"modlisa {__version__}", "generated_at": generated,
        "units": "IoU, gIoU, cIoU as fractions (x100 = %); lisa_reference in % as published; times in s; "
                 "memory in GB",
        "runs": summaries,
        "lisa_reference": {"source": SOURCE, "rows": [r.to_dict() for r in reference_rows()]},
        "refer_reference": {"source": REFER_SOURCE, "rows": [r.to_dict() for r in REFER_TABLE]},
        "plots": [{"key": p.key, "title": p.title, "file": p.path.name} for p in plots],
        "plots_skipped": skipped,
        "gallery": _gallery_json([g for s in sections for g in s.galleries]),
        "tables": [t.to_dict() for s in sections for t in s.tables],
    })


def build_report(run_dirs: list[str | Path], out_dir: str | Path | None = None,
                 title: str | None = None) -> ReportFiles:
    """Analyse ``run_dirs`` and write the report into ``out_dir`` (default: <first run>/outputs/report)."""
    runs = load_runs(list(run_dirs))
    summaries = [run_summary(run) for run in runs]
    out = Path(out_dir) if out_dir else runs[0].outputs / "report"
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"--out {out} is a file, not a folder")
    out.mkdir(parents=True, exist_ok=True)
    plots, skipped = make_plots(summaries, out)
    galleries, gallery_notes = make_galleries(summaries, out)
    title = title or f"modlisa analysis: {', '.join(s['name'] for s in summaries)}"
    generated = datetime.now().astimezone().isoformat(timespec="seconds")
    meta = [f"Generated {generated} by modlisa {__version__} from {len(runs)} run folder(s)."]
    sections = [_runs_section(summaries), _notes_section(summaries, skipped), _eval_section(summaries, plots),
                _gallery_section(galleries, gallery_notes), _comparison_section(summaries),
                _progression_section(summaries, plots),
                _benchmark_section(summaries, plots)]
    files = ReportFiles(out, out / "report.md", out / "report.html", out / "report.json", [p.path for p in plots],
                        [p.thumb for g in galleries for p in g.pictures])
    files.markdown.write_text(render_markdown(title, meta, sections), encoding="utf-8")
    files.html.write_text(render_html(title, meta, sections), encoding="utf-8")
    payload = _report_json(title, generated, summaries, plots, skipped, sections)
    files.json.write_text(json.dumps(payload, indent=2, allow_nan=False), encoding="utf-8")
    logger.info("wrote report to %s", out)
    return files
