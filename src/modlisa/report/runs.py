"""Read a run folder (the run-folder contract of DESIGN.md) into plain Python data; no torch involved.

A run folder holds ``outputs/`` with any of: ``config.yaml``, ``metrics_epoch_N.json``,
``train_log.jsonl``, ``train_summary.json``, ``eval_{split}[_generate].json``,
``predictions_{split}[_generate].jsonl``, ``eval_{split}[_generate]_masks/index.json`` (the best / worst pictures of
`modlisa eval`), ``bench.json``. Missing or partial files never stop the reader: each problem becomes a note in
``RunData.notes`` (a run still training, no eval yet, a half-written last log line...). A path that is
not a run folder at all raises ``NotARunError`` naming it.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from modlisa.engine.run_folder import RunFolder

logger = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
SYNTHETIC_README_START = "Synthetic ReasonSeg-format dataset"
OFFICIAL_REASONSEG_FILES = {"val": 200, "test": 779}  # annotation files per split (docs/EVALUATION.md)


class NotARunError(FileNotFoundError):
    """The given path is not a modlisa run folder (no ``outputs/`` with run files)."""


@dataclass
class DataInfo:
    """Where a run's data came from: ``kind`` is "synthetic", "reasonseg-format" or "unknown"."""

    root: str | None
    kind: str
    detail: str
    official_counts: bool = False  # val/test hold as many annotation files as the official ReasonSeg


@dataclass
class RunData:
    """Everything read from one run folder.

    epochs: the ``metrics_epoch_N.json`` records sorted by epoch; log: train_log step records
    (with "global_step" and "loss"); log_val: train_log validation records ({"global_step", "val"});
    evals / predictions: per split; pictures: per split, the entries of ``eval_<split>_masks/index.json`` whose
    overlay picture exists (each with ``overlay_path``, an absolute path); notes: problems met while reading,
    in plain words.
    """

    name: str
    root: Path
    config: dict[str, Any] | None = None
    epochs: list[dict[str, Any]] = field(default_factory=list)
    log: list[dict[str, Any]] = field(default_factory=list)
    log_val: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] | None = None
    evals: dict[str, dict[str, Any]] = field(default_factory=dict)
    refer_evals: dict[str, dict[str, Any]] = field(default_factory=dict)  # "refcoco val" -> eval JSON
    predictions: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    pictures: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    bench: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def folder(self) -> RunFolder:
        return RunFolder(self.root)

    @property
    def outputs(self) -> Path:
        return self.folder.outputs

    @property
    def planned_epochs(self) -> int | None:
        value = (self.config or {}).get("num_epochs")
        return value if isinstance(value, int) else None


# ---------------------------------------------------------------------- locating
def _has_run_files(outputs: Path) -> bool:
    if not outputs.is_dir():
        return False
    names = {p.name for p in outputs.iterdir()}
    if names & set(RunFolder.RUN_FILES):
        return True
    return any(RunFolder.EPOCH_FILE.match(n) or RunFolder.SPLIT_FILE.match(n) for n in names)


def resolve_run_root(path: str | Path) -> Path:
    """The run folder of ``path`` (a run folder or its ``outputs/``); NotARunError when it is neither."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"run folder {path} does not exist")
    if not path.is_dir():
        raise NotADirectoryError(f"{path} is a file, not a run folder")
    if _has_run_files(RunFolder(path).outputs):
        return path
    if path.name == "outputs" and _has_run_files(path):
        return path.parent
    raise NotARunError(
        f"{path} is not a modlisa run folder: expected {path / 'outputs'} with config.yaml, "
        "metrics_epoch_N.json, train_log.jsonl, eval_<split>.json or bench.json (written by "
        "`modlisa train`, `modlisa eval` or `modlisa bench`)"
    )


# ---------------------------------------------------------------------- file readers
def _read_json(path: Path, notes: list[str]) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        notes.append(f"{path.name}: unreadable, ignored ({exc})")
        logger.warning("%s: unreadable, ignored (%s)", path, exc)
        return None


def _read_jsonl(path: Path, notes: list[str]) -> list[dict[str, Any]]:
    """Records of a JSON-lines file; a broken last line (file being written) is skipped with a note."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        notes.append(f"{path.name}: unreadable, ignored ({exc})")
        return []
    records, bad = [], []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            bad.append(number)
            continue
        if isinstance(record, dict):
            records.append(record)
        else:
            bad.append(number)
    if bad:
        where = "the last line (still being written?)" if bad == [len(lines)] else f"lines {bad[:5]}"
        notes.append(f"{path.name}: {len(bad)} unreadable line(s) skipped: {where}")
    return records


def _read_config(folder: RunFolder, notes: list[str]) -> dict[str, Any] | None:
    path = folder.config
    if not path.is_file():
        notes.append("config.yaml missing: model and data of the run unknown")
        return None
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        notes.append(f"config.yaml: unreadable, ignored ({exc})")
        return None
    if not isinstance(data, dict):
        notes.append("config.yaml: not a mapping, ignored")
        return None
    return data


def _read_epochs(folder: RunFolder, notes: list[str]) -> list[dict[str, Any]]:
    found = sorted((int(m.group(1)), p) for p in folder.outputs.iterdir()
                   if (m := RunFolder.EPOCH_FILE.match(p.name)))
    records = []
    for number, path in found:
        record = _read_json(path, notes)
        if not isinstance(record, dict) or not isinstance(record.get("train"), dict):
            if record is not None:
                notes.append(f"{path.name}: no 'train' metrics, ignored")
            continue
        record.setdefault("epoch", number)
        records.append(record)
    numbers = [r["epoch"] for r in records]
    if numbers and numbers != list(range(1, numbers[-1] + 1)):
        missing = sorted(set(range(1, numbers[-1] + 1)) - set(numbers))
        notes.append(f"metrics of epoch(s) {missing} missing")
    return records


def _read_log(folder: RunFolder, notes: list[str]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    path = folder.train_log
    if not path.is_file():
        return [], []
    records = _read_jsonl(path, notes)
    steps = [r for r in records if "val" not in r and isinstance(r.get("global_step"), int) and "loss" in r]
    vals = [r for r in records if isinstance(r.get("val"), dict) and isinstance(r.get("global_step"), int)]
    return steps, vals


def _read_refer_evals(folder: RunFolder, run: RunData) -> None:
    """``eval_<refer dataset>_<split>.json`` (``modlisa eval --dataset refcoco ...``) into ``run.refer_evals``."""
    from modlisa.report.lisa_reference import REFER_COLUMNS

    datasets = sorted({d for d, _ in REFER_COLUMNS} | {"refclef"})
    for path in sorted(folder.outputs.glob("eval_ref*.json")):
        payload = _read_json(path, run.notes)
        if not isinstance(payload, dict) or payload.get("dataset") not in datasets or "ciou" not in payload \
                or payload.get("mode", "teacher") != "teacher" or path.stem.endswith("_wrong_query"):
            continue
        run.refer_evals[f"{payload['dataset']} {payload.get('split')}"] = payload


def _read_split_files(folder: RunFolder, run: RunData) -> None:
    """eval_<name>.json and predictions_<name>.jsonl, name = split (teacher mode) or split_generate."""
    for split in SPLITS:
        for name in (RunFolder.eval_name(split), RunFolder.eval_name(split, "generate")):
            eval_path, pred_path = folder.eval_json(name), folder.predictions(name)
            if eval_path.is_file():
                payload = _read_json(eval_path, run.notes)
                if isinstance(payload, dict) and "giou" in payload:
                    run.evals[name] = payload
                    warnings = payload.get("warnings")
                    run.notes += [f"{eval_path.name} warns: {w}" for w in warnings or [] if isinstance(w, str)]
                elif payload is not None:
                    run.notes.append(f"{eval_path.name}: no giou/ciou inside, ignored")
            if pred_path.is_file():
                run.predictions[name] = _read_jsonl(pred_path, run.notes)
            index = folder.eval_masks(name) / "index.json"
            if index.is_file():
                run.pictures[name] = _read_pictures(index, run.notes)


PICTURE_TAGS = ("best", "worst")


def _read_pictures(index: Path, notes: list[str]) -> list[dict[str, Any]]:
    """The usable entries of an ``eval_<name>_masks/index.json`` (written by ``run_eval.save_mask_pictures``).

    An entry needs tag best/worst, an integer rank, a numeric IoU and an ``overlay`` that names a file of the
    same folder (a bare file name: nothing outside the folder is ever read); others are skipped with a note.
    """
    where = f"{index.parent.name}/{index.name}"
    entries = _read_json(index, notes)
    if entries is None:
        return []
    if not isinstance(entries, list):
        notes.append(f"{where}: not a list of pictures, ignored")
        return []
    good, bad = [], 0
    for entry in entries:
        overlay = entry.get("overlay") if isinstance(entry, dict) else None
        ok = (isinstance(overlay, str) and overlay == Path(overlay).name and overlay not in ("", ".", "..")
              and entry.get("tag") in PICTURE_TAGS and isinstance(entry.get("rank"), int)
              and finite(entry.get("IoU")) is not None and (index.parent / overlay).is_file())
        if not ok:
            bad += 1
            continue
        good.append({**entry, "overlay_path": str((index.parent / overlay).resolve())})
    if bad:
        notes.append(f"{where}: {bad} entr{'y' if bad == 1 else 'ies'} without a readable picture skipped")
    return good


# ---------------------------------------------------------------------- status and provenance
def _status_notes(run: RunData) -> None:
    planned = run.planned_epochs
    done = len(run.epochs)
    if run.summary is None and (done or run.log):
        of = f" of {planned}" if planned else ""
        run.notes.append(f"no train_summary.json: training still running or interrupted ({done}{of} epochs done)")
    if run.summary:
        _summary_notes(run, run.summary)
    if run.epochs and all(r.get("val") is None for r in run.epochs):
        run.notes.append("no validation during training (the data had no val split)")
    for split in ("val", "test"):
        if split not in run.evals:
            run.notes.append(f"no eval_{split}.json: run `modlisa eval --checkpoint {run.root} --split {split}`")
        elif split not in run.predictions:
            run.notes.append(f"eval_{split}.json present but predictions_{split}.jsonl missing")


def _summary_notes(run: RunData, summary: dict[str, Any]) -> None:
    """Early stops, skipped optimizer steps and skipped data files recorded in train_summary.json."""
    if summary.get("stopped_early"):
        reason = summary.get("stop_reason")
        run.notes.append(f"training stopped early at global step {summary.get('global_step')}"
                         + (f": {reason}" if reason else ""))
    for key, what in (("skipped_nonfinite_steps", "optimizer steps skipped (non-finite loss or gradient)"),
                      ("fp16_overflow_steps", "fp16 loss-scale overflow steps")):
        if isinstance(summary.get(key), int) and summary[key] > 0:
            run.notes.append(f"{summary[key]} {what}")
    data = summary.get("data") if isinstance(summary.get("data"), dict) else {}
    for split, counts in data.items():
        if isinstance(counts, dict):
            skipped = sum(v for k, v in counts.items() if k.startswith("skipped") and isinstance(v, int))
            if skipped:
                run.notes.append(f"{split} data: {skipped} file(s) skipped ({counts.get('usable')} usable)")


def run_status(run: RunData) -> str:
    """One phrase: "finished", "stopped early", "in progress or interrupted", "no training"."""
    if run.summary is not None:
        return "stopped early" if run.summary.get("stopped_early") else "finished"
    if run.epochs or run.log:
        return "in progress or interrupted"
    return "no training"


def describe_root(root: str) -> DataInfo:
    """What the data folder ``root`` holds, judged from its files on this machine.

    ``modlisa make-data`` writes a README.txt starting with "Synthetic ReasonSeg-format dataset": such a
    folder is "synthetic"; a folder with val/test annotation files is "reasonseg-format" (with
    ``official_counts`` when the counts are the official ReasonSeg's); a folder not found is "unknown".
    """
    folder = Path(root)
    readme = folder / "README.txt"
    try:
        head = readme.read_text(encoding="utf-8", errors="replace")[:200] if readme.is_file() else ""
    except OSError:
        head = ""
    if head.startswith(SYNTHETIC_README_START):
        return DataInfo(root, "synthetic", f"synthetic shapes (modlisa make-data) at {root}")
    if not folder.is_dir():
        return DataInfo(root, "unknown", f"{root}, not found on this machine")
    counts = {split: _count_json(folder / split) for split in ("val", "test")}
    if counts == OFFICIAL_REASONSEG_FILES:
        return DataInfo(root, "reasonseg-format", f"ReasonSeg-format folder {root} with the file counts of the "
                        "official ReasonSeg (val 200, test 779 annotations)", official_counts=True)
    return DataInfo(root, "reasonseg-format", f"ReasonSeg-format folder {root} (val {counts['val']}, test "
                    f"{counts['test']} annotation files; the official ReasonSeg has 200 and 779)")


def data_provenance(run: RunData) -> DataInfo:
    """The data the run's results come from: the data_root of eval_test.json / eval_val.json when
    present, else the config's data_root (training and validation); the detail names both when they differ."""
    train_root = (run.config or {}).get("data_root")
    eval_roots = [str(run.evals[s]["data_root"]) for s in ("test", "val") if run.evals.get(s, {}).get("data_root")]
    root = eval_roots[0] if eval_roots else train_root
    if root is None:
        return DataInfo(None, "unknown", "data_root unknown (no config.yaml)")
    info = describe_root(str(root))
    others = sorted({r for r in [*eval_roots, train_root] if r and str(r) != str(root)})
    if others:
        info.detail += f" (also used: {', '.join(map(str, others))})"
    return info


def _count_json(folder: Path) -> int:
    return sum(1 for _ in folder.glob("*.json")) if folder.is_dir() else 0


# ---------------------------------------------------------------------- entry points
def load_run(path: str | Path, name: str | None = None) -> RunData:
    """Read the run folder ``path`` (or its outputs/). Raises only when ``path`` is not a run folder."""
    root = resolve_run_root(path)
    run = RunData(name=name or root.resolve().name, root=root)
    folder = run.folder
    run.config = _read_config(folder, run.notes)
    run.epochs = _read_epochs(folder, run.notes)
    run.log, run.log_val = _read_log(folder, run.notes)
    if folder.train_summary.is_file():
        summary = _read_json(folder.train_summary, run.notes)
        run.summary = summary if isinstance(summary, dict) else None
    _read_split_files(folder, run)
    _read_refer_evals(folder, run)
    if folder.bench.is_file():
        bench = _read_json(folder.bench, run.notes)
        run.bench = bench if isinstance(bench, dict) else None
    _status_notes(run)
    return run


def _unique_names(roots: list[Path]) -> list[str]:
    names = [r.resolve().name for r in roots]
    out = []
    for root, name in zip(roots, names):
        if names.count(name) > 1:
            name = f"{root.resolve().parent.name}/{name}"
        out.append(name)
    final = []
    for i, name in enumerate(out):  # still equal (the same folder twice): number them
        final.append(f"{name} #{out[:i].count(name) + 1}" if out.count(name) > 1 else name)
    return final


def load_runs(paths: list[str | Path]) -> list[RunData]:
    """Read several run folders; each gets a distinct display name (folder name, parent added on clashes)."""
    if not paths:
        raise FileNotFoundError("no run folder given")
    roots = [resolve_run_root(p) for p in paths]
    return [load_run(root, name) for root, name in zip(roots, _unique_names(roots))]


def finite(value: Any) -> float | None:
    """``value`` as a float when it is a finite number, else None (bools are not numbers here)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None
