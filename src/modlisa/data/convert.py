"""Turn a user's segmentation data into ReasonSeg-format files (``modlisa convert``; docs/DATA.md).

Two sources:

- ``convert_masks``: a folder of images, a folder of mask PNGs with the same stems (non-zero = target, an optional
  ``ignore_value`` = ignore) and a queries file (JSONL or CSV) giving each image's query texts and is_sentence.
- ``convert_coco``: a COCO instances JSON (polygon and RLE segmentations; ``iscrowd`` as ignore). One item per
  image and category (the category name as a short query); annotations with a ``"sentences"`` list add one item
  each (that instance alone, its sentences as queries).

Masks become polygons with OpenCV ``findContours`` (``RETR_CCOMP``). LISA's format has no holes, so each hole is
joined to its outer boundary by a zero-width cut ("keyhole"): one polygon per connected component, which LISA's
rasteriser (``modlisa.data.reasonseg.mask_from_shapes``) fills with the hole left empty. Every item is
rasterised back and compared with its source mask (round-trip IoU); an item under ``min_iou`` is a bad item.

Everything is converted in memory first: a bad item raises DataError (or is skipped and counted with
``skip_bad``) before anything is written.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image

from modlisa.atomic import atomic_write_text
from modlisa.data.reasonseg import (
    _PIL_ERRORS,
    DataError,
    mask_from_shapes,
    read_image_size,
    read_json,
    read_text,
    reserved_token_reason,
    verify_image,
)
from modlisa.types import Shape

DEFAULT_MIN_IOU = 0.98
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
TARGET_LABEL = "target"
IGNORE_LABEL = "ignore"


@dataclass
class Item:
    """One ReasonSeg item to write: ``<split>/<name><suffix>`` (a copy of ``image``) + ``<name>.json``."""

    name: str
    image: Path
    texts: list[str]
    is_sentence: bool
    shapes: list[dict]
    iou: float
    holes: int = 0


@dataclass
class ConvertReport:
    """What a conversion wrote and skipped: items, polygons, holes, per-item round-trip IoU, bad items."""

    split_dir: Path
    items: list[Item] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file, reason) of bad items (skip_bad)
    crowd_only: int = 0  # COCO image+category groups with only crowd annotations: nothing to train on
    linked: int = 0
    copied: int = 0

    @property
    def polygons(self) -> int:
        return sum(1 for item in self.items for s in item.shapes if s["label"] == TARGET_LABEL)

    @property
    def ignore_polygons(self) -> int:
        return sum(1 for item in self.items for s in item.shapes if s["label"] == IGNORE_LABEL)

    @property
    def holes(self) -> int:
        return sum(item.holes for item in self.items)

    def worst(self, n: int = 5) -> list[tuple[str, float]]:
        """The ``n`` lowest round-trip IoUs, lowest first, as (item name, IoU)."""
        return sorted(((item.name, item.iou) for item in self.items), key=lambda pair: pair[1])[:n]


class _BadItems:
    """Raise a bad item as DataError, or count it when skipping."""

    def __init__(self, report: ConvertReport, skip_bad: bool) -> None:
        self.report, self.skip_bad = report, skip_bad

    def __call__(self, path: str | Path, reason: str) -> None:
        if not self.skip_bad:
            raise DataError(path, reason + " (--skip_bad skips such items)")
        self.report.skipped.append((str(path), reason))


# --------------------------------------------------------------------------- masks <-> polygons


def _contour_points(contour: np.ndarray) -> list[list[int]]:
    return [[int(x), int(y)] for x, y in contour[:, 0, :]]


def _keyhole(outer: list[list[int]], hole: np.ndarray) -> list[list[int]]:
    """``outer`` with ``hole`` spliced in through a zero-width cut between their closest points."""
    ring = np.asarray(outer, dtype=np.int64)
    pts = hole[:, 0, :].astype(np.int64)
    dist = ((ring[:, None, :] - pts[None, :, :]) ** 2).sum(-1)
    a, b = np.unravel_index(int(dist.argmin()), dist.shape)
    inner = [[int(x), int(y)] for x, y in np.roll(pts, -int(b), axis=0)]
    return outer[: a + 1] + inner + [inner[0]] + outer[a:]


def binary_to_polygons(binary: np.ndarray) -> tuple[list[list[list[int]]], int]:
    """Polygons (lists of [x, y] pixel coordinates) of the non-zero pixels of ``binary``, and the holes bridged.

    One polygon per connected component (8-connected), its holes joined by zero-width cuts; a polygon of fewer
    than 3 points (a pixel, a 2-pixel line) repeats its last point so that it has 3 (drawn the same).
    """
    contours, hierarchy = cv2.findContours(binary.astype(np.uint8), cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    if hierarchy is None:
        return [], 0
    links = hierarchy[0]
    polygons, holes = [], 0
    for i, contour in enumerate(contours):
        if links[i][3] != -1:  # a hole: spliced into its parent below
            continue
        points = _contour_points(contour)
        child = links[i][2]
        while child != -1:
            points = _keyhole(points, contours[child])
            holes += 1
            child = links[child][0]
        while len(points) < 3:
            points.append(list(points[-1]))
        polygons.append(points)
    return polygons, holes


def _shape(label: str, points: list[list[int]], image_name: str) -> dict:
    return {"label": label, "labels": [label], "shape_type": "polygon", "image_name": image_name,
            "points": points, "group_id": None, "group_ids": [None], "flags": {}}


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = int(np.count_nonzero(a | b))
    return 1.0 if union == 0 else int(np.count_nonzero(a & b)) / union


def masks_to_shapes(target: np.ndarray, ignore: np.ndarray | None, image_name: str
                    ) -> tuple[list[dict], int, float]:
    """ReasonSeg shapes of a target (and ignore) boolean mask, the holes bridged, and the round-trip IoU.

    The IoU is measured by rasterising the shapes with LISA's rasteriser: the target IoU, or the lower of the
    target and ignore IoUs when there is an ignore region.
    """
    target = np.asarray(target, dtype=bool)
    ignore = np.zeros_like(target) if ignore is None else np.asarray(ignore, dtype=bool) & ~target
    target_polygons, holes = binary_to_polygons(target)
    ignore_polygons, ignore_holes = binary_to_polygons(ignore)
    shapes = ([_shape(TARGET_LABEL, p, image_name) for p in target_polygons]
              + [_shape(IGNORE_LABEL, p, image_name) for p in ignore_polygons])
    back = mask_from_shapes([Shape(label=s["label"], points=s["points"]) for s in shapes], target.shape)
    iou = _iou(back == 1, target)
    if ignore.any():
        iou = min(iou, _iou(back == 255, ignore))
    return shapes, holes + ignore_holes, iou


# --------------------------------------------------------------------------- queries file


def _clean_texts(texts: Any, where: str, path: Path) -> list[str]:
    if isinstance(texts, str):
        texts = [texts]
    if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
        raise DataError(path, f"{where}: 'text' must be a string or a list of strings")
    texts = [t.strip() for t in texts if t.strip()]
    for text in texts:
        reason = reserved_token_reason(f"{where}: a query", text)
        if reason is not None:
            raise DataError(path, reason)
    return texts


def _parse_bool(value: Any, where: str, path: Path) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "1", "yes", "false", "0", "no", ""):
        return value.strip().lower() in ("true", "1", "yes")
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise DataError(path, f"{where}: 'is_sentence' must be true or false, got {value!r}")


def image_key(name: str) -> str:
    """The stem an image is matched by: ``a/b.jpg`` -> ``b``, ``b`` -> ``b``."""
    path = Path(name)
    return path.stem if path.suffix.lower() in IMAGE_EXTENSIONS else path.name


def read_queries(path: str | Path) -> dict[str, tuple[list[str], bool]]:
    """{image stem: (texts, is_sentence)} from a JSONL (``.jsonl``/``.json``) or CSV (``.csv``) queries file.

    JSONL: one object a line, ``{"image": "cat1.jpg", "text": ["..."] | "...", "is_sentence": false}``. CSV: a
    header with ``image,text[,is_sentence]``, one query a row. Rows of the same image add up (their
    is_sentence must agree); is_sentence defaults to false. DataError naming the file and line when malformed.
    """
    path = Path(path)
    text = read_text(path, "queries file")
    rows: list[tuple[str, dict]] = []
    if path.suffix.lower() == ".csv":
        reader = csv.DictReader(io.StringIO(text))
        if not reader.fieldnames or not {"image", "text"} <= {f.strip() for f in reader.fieldnames}:
            raise DataError(path, "a CSV queries file needs a header with the columns image,text[,is_sentence]")
        for number, row in enumerate(reader, start=2):
            rows.append((f"line {number}", {k.strip(): v for k, v in row.items() if k is not None}))
    elif path.suffix.lower() in (".jsonl", ".json"):
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(path, f"line {number}: malformed JSON ({err.msg})") from err
            if not isinstance(row, dict):
                raise DataError(path, f"line {number}: expected an object with image, text, is_sentence")
            rows.append((f"line {number}", row))
    else:
        raise DataError(path, "queries file must be .jsonl or .csv")
    queries: dict[str, tuple[list[str], bool]] = {}
    for where, row in rows:
        image = row.get("image")
        if not isinstance(image, str) or not image.strip():
            raise DataError(path, f"{where}: no 'image' name")
        texts = _clean_texts(row.get("text"), where, path)
        is_sentence = _parse_bool(row.get("is_sentence", False), where, path)
        key = image_key(image.strip())
        if key in queries:
            known, known_sentence = queries[key]
            if known_sentence != is_sentence:
                raise DataError(path, f"{where}: is_sentence of {image!r} differs from its earlier rows; one "
                                      "item has one is_sentence (use another image name for the other kind)")
            known.extend(t for t in texts if t not in known)
        else:
            queries[key] = (texts, is_sentence)
    return queries


# --------------------------------------------------------------------------- masks folder


def read_mask(path: Path, ignore_value: int | None) -> tuple[np.ndarray, np.ndarray]:
    """(target, ignore) boolean masks of a mask image: non-zero = target, ``ignore_value`` = ignore.

    Grey, palette (its indices), 16-bit and RGB(A) masks are read; in RGB a pixel is non-zero when any channel
    is, and is ignore when every channel equals ``ignore_value``; alpha is dropped.
    """
    try:
        with Image.open(path) as image:
            image.load()
            values = np.asarray(image)
    except _PIL_ERRORS as err:
        raise DataError(path, f"cannot read mask ({err})") from err
    if values.ndim == 3:
        values = values[..., :3]
        ignore = (np.all(values == ignore_value, axis=-1) if ignore_value is not None
                  else np.zeros(values.shape[:2], dtype=bool))
        target = np.any(values != 0, axis=-1) & ~ignore
    else:
        ignore = values == ignore_value if ignore_value is not None else np.zeros(values.shape, dtype=bool)
        target = (values != 0) & ~ignore
    return target, ignore


def _images_by_stem(folder: Path, bad: _BadItems) -> dict[str, Path]:
    if not folder.is_dir():
        raise DataError(folder, "images folder does not exist or is not a folder")
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS:
            if path.stem in found:
                bad(path, f"two images share the stem {path.stem!r} ({found[path.stem].name}); rename one")
                continue
            found[path.stem] = path
    if not found:
        raise DataError(folder, "no .jpg/.jpeg/.png images in the images folder")
    return found


def _check_image(path: Path, hw: tuple[int, int] | None, what: str, bad: _BadItems) -> tuple[int, int] | None:
    """The image's (H, W) when it decodes (and matches ``hw`` when given), else None after reporting it."""
    try:
        size = read_image_size(path)
        verify_image(path)
    except DataError as err:
        bad(path, err.reason)
        return None
    if hw is not None and size != hw:
        bad(path, f"{what} is {hw[1]}x{hw[0]} but the image is {size[1]}x{size[0]} (W x H)")
        return None
    return size


def _item_from_masks(name: str, image: Path, target: np.ndarray, ignore: np.ndarray | None, texts: list[str],
                     is_sentence: bool, min_iou: float, source: Path, bad: _BadItems) -> Item | None:
    if not target.any():
        bad(source, "empty mask: no target pixel")
        return None
    image_name = f"{name}{image.suffix.lower()}"
    shapes, holes, iou = masks_to_shapes(target, ignore, image_name)
    if iou < min_iou:
        bad(source, f"round-trip IoU {iou:.4f} of the polygons is under --min_iou {min_iou}")
        return None
    return Item(name, image, texts, is_sentence, shapes, iou, holes)


def convert_masks(images_dir: str | Path, masks_dir: str | Path, queries_path: str | Path, out: str | Path,
                  split: str = "train", *, ignore_value: int | None = None, min_iou: float = DEFAULT_MIN_IOU,
                  link: bool = False, skip_bad: bool = False, force: bool = False) -> ConvertReport:
    """Convert images + mask PNGs (same stems) + a queries file into ``out/<split>/``; see the module doc."""
    images_dir, masks_dir, out = Path(images_dir), Path(masks_dir), Path(out)
    report = ConvertReport(split_dir=out / split)
    _check_out(report.split_dir, force)
    bad = _BadItems(report, skip_bad)
    queries = read_queries(queries_path)
    if not masks_dir.is_dir():
        raise DataError(masks_dir, "masks folder does not exist or is not a folder")
    images = _images_by_stem(images_dir, bad)
    for stem in sorted(set(queries) - set(images)):
        bad(queries_path, f"queries for {stem!r}, which has no image in {images_dir}")
    for mask_path in sorted(masks_dir.glob("*.png")):
        if mask_path.stem not in images:
            bad(mask_path, "mask without an image of the same stem")
    for stem, image in images.items():
        mask_path = masks_dir / f"{stem}.png"
        if not mask_path.is_file():
            bad(image, f"no mask {mask_path}")
            continue
        if stem not in queries or not queries[stem][0]:
            bad(image, f"no query for this image in {queries_path}")
            continue
        try:
            target, ignore = read_mask(mask_path, ignore_value)
        except DataError as err:
            bad(mask_path, err.reason)
            continue
        if _check_image(image, target.shape, f"mask {mask_path.name}", bad) is None:
            continue
        texts, is_sentence = queries[stem]
        item = _item_from_masks(stem, image, target, ignore, texts, is_sentence, min_iou, mask_path, bad)
        if item is not None:
            report.items.append(item)
    _write(report, link)
    return report


# --------------------------------------------------------------------------- COCO


def _require_pycocotools() -> Any:
    try:
        from pycocotools import mask as mask_utils
    except ImportError:
        raise DataError("pycocotools", "`modlisa convert coco` needs pycocotools: pip install 'modlisa[coco]'"
                        ) from None
    return mask_utils


def _decode_segmentation(mask_utils: Any, segmentation: Any, hw: tuple[int, int]) -> np.ndarray:
    """A COCO segmentation (polygon list, uncompressed or compressed RLE) as an (H, W) bool mask."""
    height, width = hw
    if isinstance(segmentation, list):
        polygons = [p for p in segmentation if isinstance(p, list) and len(p) >= 6]
        if not polygons:
            raise ValueError("polygon segmentation with no polygon of 3 or more points")
        rle = mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))
    elif isinstance(segmentation, dict) and "counts" in segmentation:
        if list(segmentation.get("size", [])) != [height, width]:
            raise ValueError(f"RLE size {segmentation.get('size')} differs from the image's [{height}, {width}]")
        rle = (mask_utils.frPyObjects(segmentation, height, width) if isinstance(segmentation["counts"], list)
               else segmentation)
    else:
        raise ValueError("segmentation is neither a polygon list nor an RLE object")
    with warnings.catch_warnings():  # pycocotools 2.0.x under numpy 2: a DeprecationWarning about copy=False
        warnings.simplefilter("ignore", DeprecationWarning)
        return mask_utils.decode(rle).astype(bool)


def _sentences(annotation: dict, path: Path) -> list[str]:
    texts = []
    for entry in annotation.get("sentences") or []:
        text = entry.get("sent", entry.get("raw")) if isinstance(entry, dict) else entry
        if isinstance(text, str) and text.strip():
            texts.append(text)
    return _clean_texts(texts, f"annotation {annotation.get('id')}", path) if texts else []


def convert_coco(annotations_path: str | Path, images_dir: str | Path, out: str | Path, split: str = "train", *,
                 min_iou: float = DEFAULT_MIN_IOU, link: bool = False, skip_bad: bool = False,
                 force: bool = False) -> ConvertReport:
    """Convert a COCO instances JSON into ``out/<split>/``: one item per image and category (the union of its
    instances as target, its crowd annotations as ignore; the category name as the query, is_sentence false),
    plus one item per annotation that has ``"sentences"`` (its sentences as queries; the annotation's optional
    ``"is_sentence"``, default false). Items are named ``<image stem>_c<category id>`` / ``_a<annotation id>``.
    """
    annotations_path, images_dir, out = Path(annotations_path), Path(images_dir), Path(out)
    report = ConvertReport(split_dir=out / split)
    _check_out(report.split_dir, force)
    mask_utils = _require_pycocotools()
    bad = _BadItems(report, skip_bad)
    data = read_json(annotations_path)
    if not isinstance(data, dict) or not all(isinstance(data.get(k), list) for k in ("images", "annotations",
                                                                                     "categories")):
        raise DataError(annotations_path, "not a COCO instances file: needs the lists images, annotations, "
                                          "categories")
    categories = {c["id"]: str(c.get("name", c["id"])) for c in data["categories"]
                  if isinstance(c, dict) and "id" in c}
    by_image: dict[Any, list[dict]] = {}
    for ann in data["annotations"]:
        if isinstance(ann, dict):
            by_image.setdefault(ann.get("image_id"), []).append(ann)
    for info in data["images"]:
        if not isinstance(info, dict):
            continue
        anns = by_image.get(info.get("id"), [])
        if not anns:
            continue
        image = images_dir / str(info.get("file_name", ""))
        if not image.is_file():
            bad(image, f"image {info.get('id')} of {annotations_path.name} not found")
            continue
        try:
            hw = (int(info["height"]), int(info["width"]))
        except (KeyError, TypeError, ValueError):
            bad(annotations_path, f"image {info.get('id')}: no integer height and width")
            continue
        if _check_image(image, hw, f"{annotations_path.name} image {info.get('id')}", bad) is None:
            continue
        _coco_items(report, bad, mask_utils, annotations_path, image, hw, anns, categories, min_iou)
    _write(report, link)
    return report


def _coco_items(report: ConvertReport, bad: _BadItems, mask_utils: Any, path: Path, image: Path,
                hw: tuple[int, int], anns: list[dict], categories: dict, min_iou: float) -> None:
    stem = image.stem
    masks: dict[Any, np.ndarray] = {}
    for ann in anns:
        where = f"annotation {ann.get('id')} (image {image.name})"
        if ann.get("category_id") not in categories:
            bad(path, f"{where}: unknown category_id {ann.get('category_id')!r}")
            continue
        try:
            masks[ann.get("id")] = _decode_segmentation(mask_utils, ann.get("segmentation"), hw)
        except (ValueError, TypeError, KeyError) as err:
            bad(path, f"{where}: {err}")
    groups: dict[Any, list[dict]] = {}
    for ann in anns:
        if ann.get("id") in masks:
            groups.setdefault(ann["category_id"], []).append(ann)
    empty = np.zeros(hw, dtype=bool)
    for category_id, members in sorted(groups.items(), key=lambda kv: str(kv[0])):
        target = np.logical_or.reduce([masks[a["id"]] for a in members if not a.get("iscrowd")] + [empty])
        ignore = np.logical_or.reduce([masks[a["id"]] for a in members if a.get("iscrowd")] + [empty])
        if not target.any() and ignore.any():
            report.crowd_only += 1
            continue
        source = Path(f"{path}#image={image.name},category={category_id}")
        item = _item_from_masks(f"{stem}_c{category_id}", image, target, ignore, [categories[category_id]],
                                False, min_iou, source, bad)
        if item is not None:
            report.items.append(item)
        for ann in members:
            texts = _sentences(ann, path)
            if texts and not ann.get("iscrowd"):
                source = Path(f"{path}#annotation={ann['id']}")
                item = _item_from_masks(f"{stem}_a{ann['id']}", image, masks[ann["id"]], None, texts,
                                        bool(ann.get("is_sentence", False)), min_iou, source, bad)
                if item is not None:
                    report.items.append(item)


# --------------------------------------------------------------------------- writing


def _check_out(split_dir: Path, force: bool) -> None:
    if split_dir.is_dir() and any(split_dir.iterdir()) and not force:
        raise DataError(split_dir, "output split folder is not empty; pass --force to write into it (files of "
                                   "the same name are replaced)")


def _place_image(source: Path, target: Path, link: bool) -> bool:
    """Copy (or hard-link) ``source`` to ``target``; True when linked."""
    if target.exists() or target.is_symlink():
        target.unlink()
    if link:
        try:
            os.link(source, target)
            return True
        except OSError:  # another file system, or links not supported: copy
            pass
    shutil.copyfile(source, target)
    return False


def _write(report: ConvertReport, link: bool) -> None:
    seen: dict[str, Path] = {}
    for item in report.items:
        if item.name in seen and seen[item.name] != item.image:
            raise DataError(item.image, f"its item would be named {item.name!r} like the item of {seen[item.name]}; "
                                        "rename one of the images")
        seen[item.name] = item.image
    report.split_dir.mkdir(parents=True, exist_ok=True)
    for item in report.items:
        linked = _place_image(item.image, report.split_dir / f"{item.name}{item.image.suffix.lower()}", link)
        report.linked += linked
        report.copied += not linked
        data = {"text": item.texts, "is_sentence": item.is_sentence, "shapes": item.shapes}
        atomic_write_text(report.split_dir / f"{item.name}.json", json.dumps(data, ensure_ascii=False))


def summary_lines(report: ConvertReport, worst: int = 5) -> list[str]:
    """The lines ``modlisa convert`` prints: counts, holes, the worst round-trip IoUs, skipped items."""
    lines = [f"wrote {len(report.items)} items to {report.split_dir} ({report.copied} images copied, "
             f"{report.linked} hard-linked): {report.polygons} target polygons, {report.ignore_polygons} ignore "
             f"polygons, {report.holes} holes kept by keyhole cuts"]
    if report.crowd_only:
        lines.append(f"{report.crowd_only} image+category groups with only crowd annotations: no item")
    if report.items:
        pairs = ", ".join(f"{name} {iou:.4f}" for name, iou in report.worst(worst))
        lines.append(f"worst round-trip IoU: {pairs}")
    if report.skipped:
        lines.append(f"skipped {len(report.skipped)} bad items:")
        lines += [f"  {file}: {reason}" for file, reason in report.skipped]
    return lines


__all__: Sequence[str] = ("DEFAULT_MIN_IOU", "ConvertReport", "Item", "binary_to_polygons", "convert_coco",
                          "convert_masks", "image_key", "masks_to_shapes", "read_mask", "read_queries",
                          "summary_lines")
