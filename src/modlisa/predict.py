"""`modlisa predict`: image + query -> answer text, binary mask PNG(s), overlay picture, JSON record.

The prediction is a ``predictor.Predictor``'s: two modes, ``generate`` (default, LISA's chat behaviour: a free
answer, one mask per generated ``[SEG]``) and ``teacher`` (the evaluation protocol: the answer "[SEG]." given,
always one mask, the numbers of ``modlisa eval``). The question is the fixed evaluation prompt of the query's kind
when ``is_sentence`` is given (false: "What is {query} in this image? Please output segmentation mask.", true:
"{query} Please output segmentation mask."), else the query text itself.

Files written per query into the output folder (``<stem>`` = image file name without suffix, prefixed
by the request number in batch mode): ``<stem>_mask.png`` (0/255, the image's size; ``_mask_0.png``,
``_mask_1.png``, ... when several ``[SEG]``), ``<stem>_overlay.png`` and ``<stem>.json``. Batch mode
(``--jsonl``) also writes ``predictions.jsonl``, one record per request in input order.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from modlisa.atomic import WriteError, atomic_write_text, write_error
from modlisa.data.collate import minimum_max_length, shorten_query
from modlisa.data.reasonseg import DataError, load_image_rgb, reserved_token_reason
from modlisa.overlay import overlay_masks, write_png
from modlisa.predictor import Prediction, Predictor, check_query

logger = logging.getLogger(__name__)

PREDICTIONS_FILE = "predictions.jsonl"


# ---------------------------------------------------------------------- results
@dataclass
class PredictionResult(Prediction):
    """One query's prediction (a ``Prediction``: ``answer``, ``logits``, ``masks``...) with its image.

    image:  (H, W, 3) uint8 RGB, the image as the model saw it (EXIF orientation applied).
    """

    image_path: str
    image: np.ndarray = field(repr=False)

    @property
    def image_hw(self) -> tuple[int, int]:
        return int(self.image.shape[0]), int(self.image.shape[1])


def predict(model: torch.nn.Module, tokenizer: Any, processors: Any, image_path: str | Path, query: str, *,
            is_sentence: bool | None = None, mode: str = "generate", max_new_tokens: int = 32,
            max_length: int = 512, image: np.ndarray | None = None) -> PredictionResult:
    """Segment what ``query`` asks for in the image at ``image_path`` (one ``Predictor`` query).

    ``image`` (H, W, 3) uint8 RGB may be passed when already loaded (``image_path`` then only names it).
    ``mode`` "generate": free greedy answer, one mask per [SEG]; "teacher": answer "[SEG]." given.
    A query longer than ``max_length`` allows is cut at its end. Raises ConfigError for a bad mode or query,
    DataError naming the file when the image is missing or unreadable.
    """
    check_query(query, mode, str(image_path))
    if mode == "generate":  # teacher mode: the collate's rule shortens a query that does not fit
        query = shorten_query(query, tokenizer, max_length - minimum_max_length(tokenizer))
    if image is None:
        image = load_image_rgb(image_path)
    predictor = Predictor(model, tokenizer, processors, max_length)
    predictor.set_image(image)
    prediction = predictor.predict(query, is_sentence=is_sentence, mode=mode, max_new_tokens=max_new_tokens)
    return PredictionResult(query=prediction.query, question=prediction.question, is_sentence=is_sentence,
                            mode=mode, text=prediction.text, logits=prediction.logits, image_path=str(image_path),
                            image=image)


def mask_file_names(stem: str, count: int) -> list[str]:
    """``<stem>_mask.png`` for one mask, ``<stem>_mask_<k>.png`` for several."""
    return [f"{stem}_mask.png"] if count == 1 else [f"{stem}_mask_{k}.png" for k in range(count)]


def save_prediction(result: PredictionResult, out_dir: str | Path, stem: str) -> dict[str, Any]:
    """Write the mask PNG(s), the overlay (when there is a mask) and ``<stem>.json``; return the record.

    File names in the record are relative to ``out_dir``. A failed write raises WriteError naming the folder.
    """
    try:
        return _save_prediction(result, Path(out_dir), stem)
    except WriteError:
        raise
    except OSError as err:
        raise write_error(out_dir, err, "write the prediction into") from err


def _save_prediction(result: PredictionResult, out_dir: Path, stem: str) -> dict[str, Any]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    masks = result.masks
    names = mask_file_names(stem, len(masks))
    for mask, name in zip(masks, names):
        write_png(mask, out_dir / name)
    overlay = None
    if len(masks):
        overlay = f"{stem}_overlay.png"
        write_png(overlay_masks(result.image, list(masks)), out_dir / overlay)
    height, width = result.image_hw
    union_area = int(result.mask_union().sum())
    record = {
        "image": result.image_path, "query": result.query, "is_sentence": result.is_sentence,
        "question": result.question, "mode": result.mode, "answer": result.answer,
        "has_seg": result.has_seg, "seg_count": result.seg_count, "image_size": [height, width],
        "mask_area": union_area, "mask_fraction": union_area / float(height * width),
        "masks": [{"file": name, "area": int(m.sum())} for m, name in zip(masks, names)],
        "overlay": overlay, "json": f"{stem}.json",
    }
    atomic_write_text(out_dir / f"{stem}.json", json.dumps(record, indent=2))
    return record


# ---------------------------------------------------------------------- requests
@dataclass
class PredictRequest:
    """One query to answer: ``source`` names where it came from (``file:line`` for JSONL requests)."""

    image: Path
    query: str
    is_sentence: bool | None
    source: str


def _resolve_image(value: str, base: Path, where: str) -> Path:
    """An absolute image path, relative ones tried against ``base`` (the JSONL folder) then the cwd."""
    path = Path(value).expanduser()
    candidates = [path] if path.is_absolute() else [base / path, Path.cwd() / path]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    tried = " or ".join(str(c) for c in candidates)
    raise DataError(where, f"image not found: {value!r} (looked for {tried})")


def _request_from_line(line: str, path: Path, lineno: int) -> PredictRequest:
    where = f"{path}:{lineno}"
    try:
        item = json.loads(line)
    except json.JSONDecodeError as err:
        raise DataError(where, f"not valid JSON ({err.msg} at column {err.colno})") from err
    if not isinstance(item, dict):
        raise DataError(where, 'expected an object {"image": path, "query": text[, "is_sentence": bool]}')
    unknown = sorted(set(item) - {"image", "query", "is_sentence"})
    if unknown:
        raise DataError(where, f"unknown key(s) {unknown}; allowed: image, query, is_sentence")
    for key in ("image", "query"):
        if not isinstance(item.get(key), str) or not item[key].strip():
            raise DataError(where, f"'{key}' must be a non-empty string")
    reason = reserved_token_reason("'query'", item["query"])
    if reason is not None:
        raise DataError(where, reason)
    is_sentence = item.get("is_sentence")
    if is_sentence is not None and not isinstance(is_sentence, bool):
        raise DataError(where, f"'is_sentence' must be true, false or absent, got {is_sentence!r}")
    image = _resolve_image(item["image"], path.parent, where)
    return PredictRequest(image=image, query=item["query"], is_sentence=is_sentence, source=where)


def read_requests(path: str | Path) -> list[PredictRequest]:
    """Parse a JSONL file of {"image", "query"[, "is_sentence"]} lines; blank lines are skipped.

    Relative image paths are looked up beside the JSONL file, then in the current folder. Raises
    DataError naming ``file:line`` for the first bad line, FileNotFoundError when the file is missing.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"JSONL file {path} does not exist")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as err:
        raise DataError(path, f"not UTF-8 text ({err.reason})") from err
    requests = [_request_from_line(line, path, n) for n, line in enumerate(lines, start=1) if line.strip()]
    if not requests:
        raise DataError(path, "no request in this file (expected one JSON object per line)")
    return requests
