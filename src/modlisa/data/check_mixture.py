"""``modlisa check-data --config RUN.yaml``: validate every dataset of a run's training mixture.

ReasonSeg (``data_root``) is checked by ``check.check_dataset`` as always; every other source of the mixture
(``dataset`` / ``*_data`` / ``dataset_dir``) is opened (its index files read) and each item drawn once with all
its targets: the image must decode, each target mask must have the image's size, and an item without a usable
target is counted (LISA skips it). Problems are listed with the file and the reason, never as a traceback.
"""

from __future__ import annotations

import random
from typing import Any

from modlisa.console import progress as progress_bar
from modlisa.data.reasonseg import DataError, read_image_size
from modlisa.data.sources import REASON_SEG, VQA, Source, mixture_kinds

ALL_TARGETS = 10**6  # draw every target of an item


def check_source(source: Source, *, max_items: int | None = None, progress: bool = True) -> dict[str, Any]:
    """{name, kind, items, checked, usable, no_target, targets, errors, problems: [{file, kind, message}]}."""
    n = len(source) if max_items is None else min(len(source), max_items)
    report: dict[str, Any] = {"name": source.name, "kind": source.kind, "items": len(source), "checked": n,
                              "usable": 0, "no_target": 0, "targets": 0, "problems": []}
    for index in progress_bar(range(n), desc=f"check {source.name}", enabled=progress, leave=False):
        try:
            draw = source.draw(index, random.Random(index), ALL_TARGETS)
            if draw is None:
                report["no_target"] += 1
                continue
            hw = read_image_size(draw.image_path)
            if source.kind != VQA and tuple(draw.masks.shape[1:]) != tuple(hw):
                raise DataError(draw.file, f"target masks of size {tuple(draw.masks.shape[1:])} for the image "
                                           f"{draw.image_path} of size {tuple(hw)}")
        except DataError as err:
            report["problems"].append({"file": str(err.path), "kind": "error", "message": err.reason})
            continue
        report["usable"] += 1
        report["targets"] += len(draw.texts) if source.kind != VQA else len(draw.turns)
    report["errors"] = len(report["problems"])
    return report


def check_mixture(cfg: Any, *, max_items: int | None = None, progress: bool = True) -> dict[str, Any]:
    """The report of every non-ReasonSeg source of ``cfg``'s mixture; a source that cannot be opened is one
    error naming its file."""
    from modlisa.data.mixture import build_source

    sources = []
    for kind in mixture_kinds(cfg.dataset):
        if kind == REASON_SEG:
            continue
        for name in mixture_kinds(getattr(cfg, f"{kind}_data")):
            try:
                source = build_source(kind, name, cfg.dataset_dir or ".")
            except (DataError, ImportError) as err:
                path, reason = (err.path, err.reason) if isinstance(err, DataError) else (name, str(err))
                sources.append({"name": name, "kind": kind, "items": 0, "checked": 0, "usable": 0, "no_target": 0,
                                "targets": 0, "errors": 1,
                                "problems": [{"file": str(path), "kind": "error", "message": reason}]})
                continue
            sources.append(check_source(source, max_items=max_items, progress=progress))
    return {"dataset_dir": cfg.dataset_dir, "sources": sources, "errors": sum(s["errors"] for s in sources),
            "ok": all(s["errors"] == 0 for s in sources)}


def format_mixture_report(report: dict[str, Any]) -> str:
    """A table of ``check_mixture``'s report, then its problems."""
    columns = ("items", "checked", "usable", "no_target", "targets", "errors")
    lines = [f"Training mixture check of {report['dataset_dir']}", "",
             f"{'dataset':<16}{'kind':<11}" + "".join(f"{c:>11}" for c in columns)]
    for s in report["sources"]:
        lines.append(f"{s['name']:<16}{s['kind']:<11}" + "".join(f"{s[c]:>11}" for c in columns))
    problems = [p for s in report["sources"] for p in s["problems"]]
    if problems:
        lines += ["", "Problems:", *(f"  {p['file']}: {p['message']}" for p in problems)]
    lines += ["", f"{'OK' if report['ok'] else 'FAILED'}: {report['errors']} error(s)"]
    return "\n".join(lines)
