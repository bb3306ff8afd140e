"""``modlisa check-data DATA_ROOT``: validate a ReasonSeg folder and report counts and problems.

Every image is decoded fully (truncated files are found) and every mask is rasterised as LISA does.
Bad data never produces a traceback: it is listed with the file, a short kind code and a message.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from modlisa.console import progress as progress_bar
from modlisa.data.reasonseg import (
    DataError,
    Problem,
    find_explanatory_file,
    load_image_rgb,
    mask_from_shapes,
    read_explanatory_entries,
    resolve_split_dir,
    scan_split,
)
from modlisa.types import Annotation

logger = logging.getLogger(__name__)

DEFAULT_SPLITS = ("train", "val", "test")
DEFAULT_MAX_LENGTH = 512  # TrainingConfig.max_length's default
MAX_LISTED_WARNINGS = 50  # errors are always listed in full; warnings beyond this are counted (--json: all)


def _decode_and_rasterise(ann: Annotation) -> tuple[np.ndarray | None, Problem | None]:
    """Fully decode the image and rasterise the mask: (mask (H, W) uint8 or None, problem or None)."""
    try:
        image = load_image_rgb(ann.image_path)
    except DataError as err:
        return None, Problem(err.path, "unreadable_image", err.reason)
    try:
        return mask_from_shapes(ann.shapes, image.shape[:2]), None
    except ValueError as err:
        return None, Problem(ann.json_path, "bad_points", str(err))


def _split_stats(annotations: list[Annotation], masks: list[np.ndarray]) -> dict[str, int]:
    return {
        "usable": len(annotations),
        "queries": sum(len(a.texts) for a in annotations),
        "short": sum(not a.is_sentence for a in annotations),
        "long": sum(a.is_sentence for a in annotations),
        "ignore_regions": sum("ignore" in s.label.lower() for a in annotations for s in a.shapes),
        "empty_masks": sum(not bool((m == 1).any()) for m in masks),
    }


def _long_queries(annotations: list[Annotation], max_length: int) -> list[Problem]:
    """Warnings for queries longer than ``max_length`` bytes (an upper bound of their tokens): such a query
    may not fit and is then shortened at its end by the collate's rule."""
    problems = []
    for ann in annotations:
        for i, text in enumerate(ann.texts):
            size = len(text.encode("utf-8"))
            if size > max_length:
                problems.append(Problem(ann.json_path, "long_query", f"text[{i}] is {size} bytes, more than "
                                        f"max_length={max_length}: if its conversation does not fit, the query is "
                                        "shortened at its end (see docs/DATA.md)", "warning"))
    return problems


def check_split(root: str | Path, split: str, *, progress: bool = True,
                max_length: int = DEFAULT_MAX_LENGTH) -> dict[str, Any]:
    """Scan one split, decode every image, rasterise every mask; counts and problems as a dict."""
    split_dir = resolve_split_dir(root, split)
    annotations, problems = scan_split(root, split)
    problems = [p for p in problems if p.kind != "bad_explanatory"]  # reported once, at the top level
    usable: list[Annotation] = []
    masks: list[np.ndarray] = []
    problems += _long_queries(annotations, max_length)
    for ann in progress_bar(annotations, enabled=progress, desc=f"check {split}", unit="img", file=sys.stderr):
        mask, problem = _decode_and_rasterise(ann)
        if problem is not None:
            problems.append(problem)
        else:
            usable.append(ann)
            masks.append(mask)
    return {
        "path": str(split_dir),
        "missing": False,
        "images": sum(1 for _ in split_dir.glob("*.json")),
        **_split_stats(usable, masks),
        "errors": sum(p.is_error for p in problems),
        "warnings": sum(not p.is_error for p in problems),
        "problems": [asdict(p) for p in problems],
    }


def check_explanatory(root: str | Path) -> dict[str, Any]:
    """Check the explanatory file: readable, well formed, and each entry's image/json exists (warnings)."""
    path = find_explanatory_file(root)
    if path is None:
        return {"file": None, "entries": 0, "problems": []}
    try:
        entries = read_explanatory_entries(path)
    except DataError as err:
        return {"file": str(path), "entries": 0, "problems": [asdict(Problem(err.path, "bad_explanatory", err.reason))]}
    try:
        train_dir: Path | None = resolve_split_dir(root, "train")
    except DataError:
        train_dir = None
    problems = []
    for i, entry in enumerate(entries):
        for key in ("image", "json"):
            name = entry.get(key)
            if not isinstance(name, str) or train_dir is None or not (train_dir / name).is_file():
                problems.append(Problem(str(path), "explanation_missing_file",
                                        f"entry {i}: {key} '{name}' not found in the train split", "warning"))
    return {"file": str(path), "entries": len(entries), "problems": [asdict(p) for p in problems]}


def check_dataset(root: str | Path, splits: Sequence[str] | None = None, *, progress: bool = True,
                  max_length: int = DEFAULT_MAX_LENGTH) -> dict[str, Any]:
    """Full report of a ReasonSeg folder: per split counts and problems, the explanatory file, ``ok``.

    Missing splits are listed in ``missing_splits`` (an error only when none of the splits exists).
    ``ok`` is True when at least one split exists and no error-level problem was found.
    """
    root = Path(root)
    report: dict[str, Any] = {"root": str(root), "splits": {}, "missing_splits": [], "problems": []}
    if not root.is_dir():
        report["problems"].append(asdict(Problem(str(root), "missing_root", "data root does not exist")))
        report["explanatory"] = {"file": None, "entries": 0, "problems": []}
        return _count(report)
    for split in splits or DEFAULT_SPLITS:
        try:
            report["splits"][split] = check_split(root, split, progress=progress, max_length=max_length)
        except DataError as err:
            report["missing_splits"].append(split)
            report["splits"][split] = {"path": None, "missing": True, "reason": err.reason}
    if len(report["missing_splits"]) == len(report["splits"]):
        report["problems"].append(asdict(Problem(str(root), "no_split", "none of the requested splits exists "
                                                 "(expected ROOT/ReasonSeg/<split> or ROOT/<split>)")))
    report["explanatory"] = check_explanatory(root)
    return _count(report)


def _count(report: dict[str, Any]) -> dict[str, Any]:
    """Set the report's ``errors`` / ``warnings`` totals (every problem of the root, the splits and the
    explanatory file) and ``ok`` (no error)."""
    all_problems = [*report["problems"], *report["explanatory"]["problems"]]
    all_problems += [p for s in report["splits"].values() for p in s.get("problems", [])]
    report["errors"] = sum(p["severity"] == "error" for p in all_problems)
    report["warnings"] = sum(p["severity"] != "error" for p in all_problems)
    report["ok"] = report["errors"] == 0
    return report


def _problem_lines(problems: list[dict[str, Any]], max_warnings: int = MAX_LISTED_WARNINGS) -> list[str]:
    """One line per problem, in order: every error, and the first ``max_warnings`` warnings."""
    lines, warnings = [], 0
    for p in problems:
        if p["severity"] != "error":
            warnings += 1
            if warnings > max_warnings:
                continue
        lines.append(f"  [{p['severity']}] {p['file']}: {p['kind']}: {p['message']}")
    if warnings > max_warnings:
        lines.append(f"  ... and {warnings - max_warnings} more warning(s) (use --json for all)")
    return lines


def format_report(report: dict[str, Any]) -> str:
    """A human-readable table of a ``check_dataset`` report."""
    columns = ("images", "usable", "queries", "short", "long", "ignore_regions", "empty_masks", "errors",
               "warnings")
    widths = [len(c) + 2 for c in columns]
    lines = [f"ReasonSeg check of {report['root']}", "",
             f"{'split':<8}" + "".join(f"{c:>{w}}" for c, w in zip(columns, widths))]
    for name, split in report["splits"].items():
        if split.get("missing"):
            lines.append(f"{name:<8}  missing ({split['reason']})")
        else:
            lines.append(f"{name:<8}" + "".join(f"{split[c]:>{w}}" for c, w in zip(columns, widths)))
    explanatory = report.get("explanatory", {})
    if explanatory.get("file"):
        lines.append(f"\nexplanatory: {explanatory['file']} ({explanatory['entries']} entries)")
    problems = [*report["problems"], *explanatory.get("problems", [])]
    problems += [p for s in report["splits"].values() for p in s.get("problems", [])]
    if problems:
        lines += ["", "Problems:", *_problem_lines(problems)]
    verdict = "OK" if report["ok"] else "FAILED"
    lines += ["", f"{verdict}: {report.get('errors', 0)} error(s), {report.get('warnings', 0)} warning(s)"]
    return "\n".join(lines)
