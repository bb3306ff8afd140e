"""Read a ReasonSeg folder: annotation JSON, images, LISA-exact masks, explanations, split scans.

Everything here follows docs/LISA.md §1. Masks are rasterised exactly as LISA's
``utils/data_processing.py::get_mask_from_json`` does (OpenCV polylines + fillPoly on int32-truncated
points, painted in descending area order). Problems in the data are collected as ``Problem`` records by
``scan_split`` (never raised one by one); loading a single broken file raises ``DataError``.
"""

from __future__ import annotations

import codecs
import contextlib
import json
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image, ImageFile, ImageOps

from modlisa.types import IM_END_TOKEN, IM_START_TOKEN, IMAGE_TOKEN, SEG_TOKEN, Annotation, Shape

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".JPG", ".JPEG", ".PNG")
OUT_OF_BOUNDS_FRACTION = 0.1  # points further than 10% of the image size outside it are errors
LARGE_IMAGE_PIXELS = 40_000_000  # above: a "large_image" warning (masks and losses run at the original size)
EXIF_ORIENTATION_TAG = 0x0112
SIDE_SWAPPING_ORIENTATIONS = (5, 6, 7, 8)  # EXIF orientations that turn an image by 90 degrees
_PIL_ERRORS = (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError)
# Tokens the model reserves: in a query or an explanation they would add a mask ([SEG]) or an image slot
# (<image>) the data does not have. User text holding one is REJECTED (never escaped): see docs/DATA.md.
RESERVED_TOKENS = (SEG_TOKEN, IMAGE_TOKEN, IM_START_TOKEN, IM_END_TOKEN)


def reserved_token_in(text: str) -> str | None:
    """The first reserved token (``[SEG]``, ``<image>``, ...) that ``text`` contains, case-insensitively."""
    lowered = text.lower()
    return next((token for token in RESERVED_TOKENS if token.lower() in lowered), None)


def reserved_token_reason(field: str, text: str) -> str | None:
    """The rejection message of a user text holding a reserved token, or None."""
    token = reserved_token_in(text)
    if token is None:
        return None
    return (f"{field} contains the special token {token}, which the model reserves (it would add a mask or an "
            f"image slot); remove or reword it: {text[:80]!r}")


class DataError(Exception):
    """A user data problem: ``str(err) == "<path>: <reason>"``."""

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class SplitNotFoundError(DataError, FileNotFoundError):
    """The data root or one of its split folders does not exist (also a ``FileNotFoundError``)."""


@dataclass
class Problem:
    """One problem found in a dataset. ``kind`` is a short code (see ``scan_split``)."""

    file: str
    kind: str
    message: str
    severity: str = "error"  # "error" | "warning"

    @property
    def is_error(self) -> bool:
        return self.severity == "error"


# --------------------------------------------------------------------------- folders and files


def resolve_split_dir(root: str | Path, split: str) -> Path:
    """The folder of ``split``: ``ROOT/ReasonSeg/{split}`` or ``ROOT/{split}``; SplitNotFoundError otherwise."""
    root = Path(root)
    if not root.is_dir():
        raise SplitNotFoundError(root, "data root does not exist or is not a folder")
    for candidate in (root / "ReasonSeg" / split, root / split):
        if candidate.is_dir():
            return candidate
    raise SplitNotFoundError(root, f"no split folder '{split}': expected {root / 'ReasonSeg' / split} or "
                                   f"{root / split}")


def _decode_text(raw: bytes, path: Path) -> str:
    """UTF-8 (a BOM is dropped), UTF-16 when it starts with its BOM, else cp1252 (LISA's fallback)."""
    if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        try:
            return raw.decode("utf-16")
        except UnicodeDecodeError as err:
            raise DataError(path, f"file starts with a UTF-16 byte-order mark but is not UTF-16 text ({err})") from err
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        try:
            return raw.decode("cp1252")
        except UnicodeDecodeError as err:
            raise DataError(path, f"file is neither UTF-8 nor cp1252 text (byte {raw[err.start]:#04x} at "
                                  f"offset {err.start}); re-save it as UTF-8") from err


def read_text(path: str | Path, what: str = "file") -> str:
    """The text of ``path``: UTF-8, else cp1252 (``_decode_text``); DataError naming the file when unreadable."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise DataError(path, f"cannot read {what} ({err.strerror or err})") from err
    return _decode_text(raw, path)


def read_json(path: str | Path) -> Any:
    """Parse a JSON file as UTF-8, falling back to cp1252 when UTF-8 decoding fails (as LISA does).

    A UTF-8 byte-order mark is accepted, and so is UTF-16 text that starts with its byte-order mark.
    Raises DataError naming the file when it is missing, undecodable or not valid JSON.
    """
    path = Path(path)
    text = read_text(path)
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise DataError(path, f"malformed JSON: {err.msg} at line {err.lineno} column {err.colno}") from err
    except RecursionError:
        raise DataError(path, "malformed JSON: nested too deeply (thousands of levels); an annotation is a flat "
                              "object of text, is_sentence and shapes") from None


def find_image(json_path: str | Path) -> Path | None:
    """The image beside ``json_path`` with the same stem (.jpg first, then .jpeg, .png), or None."""
    json_path = Path(json_path)
    for suffix in IMAGE_SUFFIXES:
        candidate = json_path.with_suffix(suffix)
        if candidate.is_file():
            return candidate
    return None


# --------------------------------------------------------------------------- annotations


def _parse_texts(data: dict, path: Path) -> list[str]:
    texts = data.get("text")
    if texts is None:
        raise DataError(path, "field 'text' is missing: no query")
    if isinstance(texts, str):
        texts = [texts]
    if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
        raise DataError(path, "field 'text' must be a list of query strings")
    texts = [t for t in texts if t.strip()]
    if not texts:
        raise DataError(path, "field 'text' is missing or empty: no query")
    for i, text in enumerate(texts):
        reason = reserved_token_reason(f"text[{i}]", text)
        if reason is not None:
            raise DataError(path, reason)
    return texts


def _parse_shape(item: Any, index: int, path: Path) -> Shape:
    if not isinstance(item, dict):
        raise DataError(path, f"shapes[{index}] is not an object")
    label = item.get("label")
    if not isinstance(label, str):
        raise DataError(path, f"shapes[{index}] has no string 'label'")
    points = item.get("points")
    if not isinstance(points, list):
        raise DataError(path, f"shapes[{index}] ('{label}') has no 'points' list")
    shape_type = item.get("shape_type") or "polygon"
    return Shape(label=label, points=points, shape_type=str(shape_type))


def _parse_distractors(data: dict, path: Path) -> list[Shape]:
    """The optional modlisa key "distractors": [{"points", "kind", "colour", "size"}, ...] (synthetic data)."""
    items = data.get("distractors", [])
    if not isinstance(items, list):
        raise DataError(path, "field 'distractors' must be a list of shapes")
    shapes = []
    for index, item in enumerate(items):
        if not isinstance(item, dict) or not isinstance(item.get("points"), list):
            raise DataError(path, f"distractors[{index}] has no 'points' list")
        label = " ".join(str(item[k]) for k in ("size", "colour", "kind") if item.get(k)) or "distractor"
        shapes.append(Shape(label=label, points=item["points"]))
    return shapes


def annotation_from_dict(data: Any, json_path: str | Path, image_path: str | Path | None = None) -> Annotation:
    """Build an Annotation from parsed JSON; DataError naming the file and field when malformed."""
    path = Path(json_path)
    if not isinstance(data, dict):
        raise DataError(path, "top level of the annotation must be a JSON object")
    texts = _parse_texts(data, path)
    is_sentence = data.get("is_sentence")
    if not isinstance(is_sentence, bool):
        raise DataError(path, "field 'is_sentence' must be true or false")
    shapes = data.get("shapes")
    if not isinstance(shapes, list):
        raise DataError(path, "field 'shapes' must be a list of polygons")
    if image_path is None:
        image_path = find_image(path) or path.with_suffix(".jpg")
    return Annotation(
        json_path=str(path),
        image_path=str(image_path),
        texts=texts,
        is_sentence=is_sentence,
        shapes=[_parse_shape(item, i, path) for i, item in enumerate(shapes)],
        distractors=_parse_distractors(data, path),
    )


def load_annotation(json_path: str | Path, image_path: str | Path | None = None) -> Annotation:
    """Read one annotation JSON (texts, is_sentence, shapes as written). DataError when malformed."""
    return annotation_from_dict(read_json(json_path), json_path, image_path)


# --------------------------------------------------------------------------- masks (LISA-exact)


def label_value(label: str) -> int | None:
    """Mask value of a shape label: None for "flag" (skipped), 255 when it contains "ignore", else 1."""
    lowered = label.lower()
    if lowered == "flag":
        return None
    return 255 if "ignore" in lowered else 1


def polygon_int32(points: Sequence[Sequence[float]]) -> np.ndarray:
    """Points as LISA hands them to OpenCV: (1, N, 2) int32, floats truncated toward zero.

    Raises ValueError for points OpenCV cannot draw (empty, not [x, y] pairs, NaN, beyond int32).
    """
    try:
        polygon = np.array([points], dtype=np.int32)
    except (TypeError, ValueError, OverflowError) as err:
        raise ValueError(f"polygon points cannot be cast to int32 pixel coordinates ({err})") from err
    if polygon.ndim != 3 or polygon.shape[1] == 0 or polygon.shape[2] != 2:
        raise ValueError(f"polygon points must be a non-empty list of [x, y] pairs, got shape {polygon.shape[1:]}")
    return polygon


def _draw(mask: np.ndarray, polygon: np.ndarray, value: int) -> None:
    """Paint a closed 1-px outline, then the filled interior, in place (LISA's paint)."""
    cv2.polylines(mask, polygon, isClosed=True, color=value, thickness=1)
    cv2.fillPoly(mask, polygon, value)


def polygon_area(polygon: np.ndarray, hw: tuple[int, int]) -> int:
    """Pixel count of ``polygon`` (1, N, 2) int32 drawn alone on an empty (H, W) mask."""
    canvas = np.zeros(hw, dtype=np.uint8)
    _draw(canvas, polygon, 1)
    return int(np.count_nonzero(canvas))


def mask_from_shapes(shapes: Sequence[Shape], hw: tuple[int, int]) -> np.ndarray:
    """Rasterise shapes exactly as LISA: (H, W) uint8 in {0, 1, 255}.

    Skips "flag" shapes; paints the rest in DEScending area order (small ones on top). Ties in area
    follow LISA's ``np.argsort(areas)[::-1]`` under its pinned numpy 1.24 (a stable sort for the
    handful of polygons of a file), i.e. tied polygons are painted in REVERSE file order, so the
    first of them in the file ends on top.
    """
    height, width = int(hw[0]), int(hw[1])
    polygons: list[np.ndarray] = []
    values: list[int] = []
    for i, shape in enumerate(shapes):
        value = label_value(shape.label)
        if value is None:
            continue
        try:
            polygons.append(polygon_int32(shape.points))
        except ValueError as err:
            raise ValueError(f"shapes[{i}] ('{shape.label}'): {err}") from err
        values.append(value)
    areas = np.array([polygon_area(poly, (height, width)) for poly in polygons], dtype=np.int64)
    order = np.argsort(areas, kind="stable")[::-1]
    mask = np.zeros((height, width), dtype=np.uint8)
    for idx in order:
        _draw(mask, polygons[idx], values[idx])
    return mask


def annotation_mask(ann: Annotation, hw: tuple[int, int]) -> np.ndarray:
    """The ground truth (H, W) uint8 in {0, 1, 255} of ``ann`` for an image of size ``hw``: its ``target_mask``
    when it has one (refer datasets), else its polygons rasterised as LISA does. DataError naming the annotation
    file when the polygons are malformed or the decoded target does not have the image's size."""
    if ann.target_mask is None:
        try:
            return mask_from_shapes(ann.shapes, hw)
        except ValueError as err:
            raise DataError(ann.json_path, str(err)) from err
    mask = np.asarray(ann.target_mask())
    if mask.shape != tuple(hw):
        raise DataError(ann.json_path, f"target mask of size {mask.shape} for an image of size {tuple(hw)}")
    return mask.astype(np.uint8, copy=False)


def load_shapes(json_path: str | Path) -> list[Shape]:
    """The shapes of an annotation file (texts are not required). DataError when malformed."""
    path = Path(json_path)
    data = read_json(path)
    shapes = data.get("shapes") if isinstance(data, dict) else None
    if not isinstance(shapes, list):
        raise DataError(path, "field 'shapes' must be a list of polygons")
    return [_parse_shape(item, i, path) for i, item in enumerate(shapes)]


def get_mask_from_json(json_path: str | Path, image_hw: tuple[int, int]) -> np.ndarray:
    """LISA's ground-truth mask (H, W) uint8 of an annotation file for an image of size ``image_hw``."""
    try:
        return mask_from_shapes(load_shapes(json_path), image_hw)
    except ValueError as err:
        raise DataError(json_path, str(err)) from err


# --------------------------------------------------------------------------- images


@contextlib.contextmanager
def _strict_decoding() -> Iterator[None]:
    """Make PIL raise on truncated files for the duration of the block."""
    previous = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        yield
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = previous


def _to_rgb_array(image: Image.Image) -> np.ndarray:
    """(H, W, 3) uint8 RGB; 16/32-bit grey is scaled to 8 bits by >> 8, as cv2.imread does."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        grey = np.asarray(image).astype(np.int64)
        grey = np.clip(grey, 0, 65535) >> 8
        return np.repeat(grey.astype(np.uint8)[:, :, None], 3, axis=2)
    return np.asarray(image.convert("RGB"), dtype=np.uint8)


def load_image_rgb(path: str | Path) -> np.ndarray:
    """Decode an image fully as LISA's ``cv2.cvtColor(cv2.imread(path), BGR2RGB)``: (H, W, 3) uint8 RGB.

    Grey, RGBA/LA/P, CMYK and 16-bit images are converted (alpha dropped, 16-bit scaled to 8-bit);
    the EXIF orientation is applied, because cv2.imread applies it too. Raises DataError naming the
    file when it is missing, unreadable or truncated.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "image file not found")
    try:
        with _strict_decoding(), Image.open(path) as image:
            image.load()
            upright = ImageOps.exif_transpose(image)
            return np.ascontiguousarray(_to_rgb_array(upright))
    except _PIL_ERRORS as err:
        raise DataError(path, f"cannot decode image ({err})") from err


def read_image_geometry(path: str | Path) -> tuple[tuple[int, int], int]:
    """(stored H, W) of an image and its EXIF orientation tag (1 when absent), from its header only. DataError
    when unreadable."""
    path = Path(path)
    try:
        with Image.open(path) as image:
            width, height = image.size
            orientation = image.getexif().get(EXIF_ORIENTATION_TAG, 1)
    except _PIL_ERRORS as err:
        raise DataError(path, f"cannot read image header ({err})") from err
    return (int(height), int(width)), orientation


def read_image_size(path: str | Path) -> tuple[int, int]:
    """(H, W) of an image after EXIF orientation, from its header only. DataError when unreadable."""
    (height, width), orientation = read_image_geometry(path)
    return (width, height) if orientation in SIDE_SWAPPING_ORIENTATIONS else (height, width)


JPEG_MAGIC, JPEG_END = b"\xff\xd8\xff", b"\xff\xd9"
PNG_MAGIC, PNG_END = b"\x89PNG\r\n\x1a\n", b"IEND\xaeB`\x82"
TAIL_BYTES = 4096  # trailing bytes after the end marker that are tolerated (some cameras append data)


def _ends_with_marker(path: Path) -> bool:
    """True when a JPEG/PNG file holds its end marker (EOI / IEND) within its last ``TAIL_BYTES`` bytes."""
    with open(path, "rb") as fh:
        head = fh.read(len(PNG_MAGIC))
        size = fh.seek(0, os.SEEK_END)
        fh.seek(max(0, size - TAIL_BYTES))
        tail = fh.read()
    if head.startswith(JPEG_MAGIC):
        return JPEG_END in tail
    if head.startswith(PNG_MAGIC):
        return PNG_END in tail
    return False


def verify_image(path: str | Path) -> None:
    """Raise DataError naming the file when the image cannot be decoded completely (truncated, corrupt).

    Cheap for the common case: a JPEG/PNG that ends with its end marker passes without decoding. Any
    other file (marker missing, other format) is decoded fully, so a valid image is never rejected.
    """
    path = Path(path)
    try:
        if _ends_with_marker(path):
            return
    except OSError as err:
        raise DataError(path, f"cannot read file ({err.strerror or err})") from err
    try:
        with _strict_decoding(), Image.open(path) as image:
            image.load()
    except _PIL_ERRORS as err:
        raise DataError(path, f"cannot decode image ({err})") from err


# --------------------------------------------------------------------------- explanations


def find_explanatory_file(root: str | Path) -> Path | None:
    """``ROOT/ReasonSeg/explanatory/train.json``, ``ROOT/explanatory/train.json`` or ``ROOT/train.json``."""
    root = Path(root)
    for candidate in (
        root / "ReasonSeg" / "explanatory" / "train.json",
        root / "explanatory" / "train.json",
        root / "train.json",
    ):
        if candidate.is_file():
            return candidate
    return None


def read_explanatory_entries(path: str | Path) -> list[dict[str, str]]:
    """The entries of an explanatory file: a list of {"query", "outputs", "image", "json"} objects."""
    entries = read_json(path)
    if not isinstance(entries, list):
        raise DataError(path, "explanatory file must hold a JSON list of {query, outputs, image, json}")
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise DataError(path, f"entry {i} is not an object")
        for key in ("image", "outputs"):
            if not isinstance(entry.get(key), str):
                raise DataError(path, f"entry {i} has no string '{key}'")
        for key in ("outputs", "query"):
            reason = reserved_token_reason(f"entry {i} '{key}'", entry[key]) if isinstance(entry.get(key), str) else None
            if reason is not None:
                raise DataError(path, reason)
    return entries


def load_explanations(root: str | Path) -> dict[str, str]:
    """Image file name -> explanation text; empty when the dataset has no explanatory file."""
    path = find_explanatory_file(root)
    if path is None:
        return {}
    return {entry["image"]: entry["outputs"] for entry in read_explanatory_entries(path)}


# --------------------------------------------------------------------------- split scan


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _points_problem(shape: Shape, hw: tuple[int, int]) -> tuple[str, str, str] | None:
    """(kind, severity, message) of the worst geometric problem of one shape, or None."""
    try:
        coords = np.asarray(shape.points, dtype=np.float64)
    except (TypeError, ValueError):
        return "bad_points", "error", "points are not numeric [x, y] pairs"
    if coords.size == 0:
        return "few_points", "error", "polygon has no points"
    if coords.ndim != 2 or coords.shape[1] != 2:
        return "bad_points", "error", "points are not [x, y] pairs"
    if not all(_is_number(v) for point in shape.points for v in point):
        return "bad_points", "error", "points hold strings or booleans, not numbers"
    if not np.isfinite(coords).all():
        return "nonfinite_points", "error", "points contain NaN or infinite coordinates"
    height, width = hw
    margin_x, margin_y = OUT_OF_BOUNDS_FRACTION * width, OUT_OF_BOUNDS_FRACTION * height
    xs, ys = coords[:, 0], coords[:, 1]
    if (xs < -margin_x).any() or (xs > width + margin_x).any() or (ys < -margin_y).any() or (
        ys > height + margin_y
    ).any():
        return "out_of_bounds", "error", (
            f"points lie more than 10% outside the {width}x{height} image "
            f"(x in [{xs.min():.1f}, {xs.max():.1f}], y in [{ys.min():.1f}, {ys.max():.1f}])"
        )
    if len(coords) < 3:
        return "few_points", "warning", (
            f"polygon has {len(coords)} point(s); LISA draws it as a line/dot, it does not count as a target"
        )
    return None


def check_shapes(ann: Annotation, hw: tuple[int, int], for_training: bool) -> list[Problem]:
    """Problems of the shapes of one annotation (geometry, labels, presence of a target)."""
    problems: list[Problem] = []
    has_target = False
    for i, shape in enumerate(ann.shapes):
        value = label_value(shape.label)
        if value is None:
            continue
        where = f"shapes[{i}] ('{shape.label}')"
        if value == 1 and shape.label.lower() != "target":
            problems.append(Problem(ann.json_path, "unknown_label", f"{where}: unknown label, treated as target "
                                    "as LISA does", "warning"))
        if shape.shape_type != "polygon":
            problems.append(Problem(ann.json_path, "non_polygon", f"{where}: shape_type '{shape.shape_type}'; "
                                    "LISA rasterises its points as a polygon", "warning"))
        issue = _points_problem(shape, hw)
        if issue is not None:
            kind, severity, message = issue
            problems.append(Problem(ann.json_path, kind, f"{where}: {message}", severity))
        has_target = has_target or (value == 1 and issue is None)
    if not has_target and not any(p.is_error for p in problems):
        severity = "error" if for_training else "warning"
        note = "nothing to train on" if for_training else "the ground-truth mask is empty (LISA still evaluates it)"
        problems.append(Problem(ann.json_path, "no_target", f"no usable target polygon: {note}", severity))
    return problems


def scan_annotation(
    json_path: Path, for_training: bool, verify_images: bool = False
) -> tuple[Annotation | None, list[Problem]]:
    """Read and check one annotation and the header of its image (and, with ``verify_images``, that the
    image decodes completely: see ``verify_image``); the Annotation is None on errors."""
    image_path = find_image(json_path)
    if image_path is None:
        return None, [Problem(str(json_path), "missing_image", f"no image {json_path.stem}.jpg/.jpeg/.png "
                              "beside the annotation")]
    try:
        data = read_json(json_path)
    except DataError as err:
        return None, [Problem(str(json_path), "malformed_json", err.reason)]
    try:
        ann = annotation_from_dict(data, json_path, image_path)
    except DataError as err:
        kind = ("special_token" if "special token" in err.reason else "no_text" if "'text'" in err.reason
                else "bad_field")
        return None, [Problem(str(json_path), kind, err.reason)]
    try:
        hw = read_image_size(image_path)
        if verify_images:
            verify_image(image_path)
    except DataError as err:
        return None, [Problem(str(image_path), "unreadable_image", err.reason)]
    problems = check_shapes(ann, hw, for_training)
    if hw[0] * hw[1] > LARGE_IMAGE_PIXELS:
        problems.append(Problem(str(image_path), "large_image", _large_image_message(hw), "warning"))
    return (None if any(p.is_error for p in problems) else ann), problems


def _large_image_message(hw: tuple[int, int]) -> str:
    pixels = hw[0] * hw[1]
    return (f"{hw[1]}x{hw[0]} image ({pixels / 1e6:.0f} Mpx): its masks, mask logits and losses are computed at "
            f"this size as LISA does (about {pixels * 4 / 2**30:.2f} GiB per query for the fp32 logits alone, "
            "several times that with gradients); it works, but slowly on CPU and with that much more memory")


def _orphan_images(split_dir: Path) -> list[Problem]:
    return [
        Problem(str(path), "missing_json", "image without an annotation JSON beside it (ignored)", "warning")
        for path in sorted(split_dir.iterdir())
        if path.suffix in IMAGE_SUFFIXES and not path.with_suffix(".json").is_file()
    ]


def _explanations_for_scan(root: Path) -> tuple[dict[str, str], list[Problem]]:
    try:
        return load_explanations(root), []
    except DataError as err:
        return {}, [Problem(err.path, "bad_explanatory", err.reason)]


def scan_split(
    root: str | Path, split: str, *, for_training: bool | None = None, verify_images: bool = False
) -> tuple[list[Annotation], list[Problem]]:
    """Every ``*.json`` of a split (sorted by name) with its image, explanations attached (training).

    Returns the usable annotations and ALL problems found. Error kinds: missing_image, unreadable_image,
    malformed_json, no_text, bad_field, bad_points, few_points (0 points), nonfinite_points,
    out_of_bounds, no_target (training only; a warning for evaluation splits, which LISA evaluates with
    an empty mask), bad_explanatory, empty_split. Warning kinds: unknown_label, non_polygon,
    few_points (1-2 points), missing_json, large_image (over ``LARGE_IMAGE_PIXELS``).
    ``for_training`` defaults to ``split == "train"``.
    Only image headers are read here unless ``verify_images`` (then truncated or corrupt images are
    ``unreadable_image`` errors too, at the cost of reading each file's tail, see ``verify_image``);
    ``modlisa check-data`` decodes every image fully.
    """
    root = Path(root)
    split_dir = resolve_split_dir(root, split)
    for_training = split == "train" if for_training is None else for_training
    explanations, problems = _explanations_for_scan(root) if for_training else ({}, [])
    json_paths = sorted(split_dir.glob("*.json"), key=lambda p: p.name)
    if not json_paths:
        problems.append(Problem(str(split_dir), "empty_split", "no annotation *.json files in the split folder"))
    annotations: list[Annotation] = []
    for json_path in json_paths:
        ann, found = scan_annotation(json_path, for_training, verify_images)
        problems.extend(found)
        if ann is not None:
            ann.explanation = explanations.get(Path(ann.image_path).name)
            annotations.append(ann)
    problems.extend(_orphan_images(split_dir))
    logger.debug("scanned %s: %d usable of %d annotations, %d problems", split_dir, len(annotations),
                 len(json_paths), len(problems))
    return annotations, problems


def count_annotation_files(root: str | Path, split: str) -> int:
    """Number of ``*.json`` annotation files in a split folder."""
    return sum(1 for _ in resolve_split_dir(root, split).glob("*.json"))
