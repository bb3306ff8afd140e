"""A ReasonSeg-format corpus with one file of every kind of bad data the reliability issue names.

``build_broken_corpus(root)`` writes good synthetic items (so training can run) plus the broken cases into
``train`` and ``val``, and returns the ``Case`` list: what each case is and what the tools must do with it
(``handled``: usable as is or after conversion; otherwise the problem kind that must name the file).
Expectations differ between a training split and an evaluation split only for files without a usable
target (an error when training, an empty ground-truth mask that LISA evaluates otherwise).
"""

from __future__ import annotations

import codecs
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from modlisa.synthetic import make_dataset

BROKEN_SPLITS = ("train", "val")
HUGE_HW = (6000, 8000)  # (H, W) of the 8000x6000 image


@dataclass(frozen=True)
class Case:
    """One broken (or merely unusual) item: ``stem`` of its files and what must happen to it.

    ``train`` / ``eval``: None when the item must be used (handled), else the error kind that must be
    reported for the file. ``warning``: a warning kind that must be reported for one of the item's files
    (or None). ``file``: which of the item's files the error names ("json" or "image").
    """

    stem: str
    description: str
    train: str | None
    eval: str | None
    warning: str | None = None
    file: str = "json"


CASES: tuple[Case, ...] = (
    Case("malformed_json", "JSON cut in the middle", "malformed_json", "malformed_json"),
    Case("empty_json", "zero-byte JSON file", "malformed_json", "malformed_json"),
    Case("missing_image", "annotation without its image", "missing_image", "missing_image"),
    Case("truncated_jpeg", "JPEG cut in half (its header reads fine)", "unreadable_image", "unreadable_image",
         file="image"),
    Case("not_an_image", "a .jpg that holds text", "unreadable_image", "unreadable_image", file="image"),
    Case("grayscale", "8-bit grey JPEG", None, None),
    Case("rgba", "RGBA PNG (alpha dropped)", None, None),
    Case("grey16", "16-bit grey PNG (scaled to 8 bits)", None, None),
    Case("palette", "palette (P mode) PNG", None, None),
    Case("cmyk", "CMYK JPEG", None, None),
    Case("two_points", "the only target is a 2-point polygon", "no_target", None, warning="few_points"),
    Case("zero_points", "a polygon without points", "few_points", "few_points"),
    Case("nan_points", "NaN coordinates", "nonfinite_points", "nonfinite_points"),
    Case("inf_points", "Infinity coordinates", "nonfinite_points", "nonfinite_points"),
    Case("far_out_of_bounds", "points 1e9 px outside the image", "out_of_bounds", "out_of_bounds"),
    Case("not_pairs", "points that are not [x, y] pairs", "bad_points", "bad_points"),
    Case("string_points", "coordinates written as strings", "bad_points", "bad_points"),
    Case("empty_text", "text: []", "no_text", "no_text"),
    Case("blank_text", "text: [\"  \"]", "no_text", "no_text"),
    Case("no_text_field", "no text field at all", "no_text", "no_text"),
    Case("bad_is_sentence", "is_sentence is a string", "bad_field", "bad_field"),
    Case("unknown_label", "label 'person' (treated as target, as LISA does)", None, None, warning="unknown_label"),
    Case("cp1252", "cp1252-encoded JSON (LISA's fallback)", None, None),
    Case("utf8_bom", "UTF-8 JSON with a byte-order mark", None, None),
    Case("utf16", "UTF-16 JSON with a byte-order mark", None, None),
    Case("undecodable", "bytes that are neither UTF-8 nor cp1252", "malformed_json", "malformed_json"),
    Case("ignore_only", "only 'ignore' shapes: no target", "no_target", None, warning=None),
    Case("one_pixel", "a 1x1 image", None, None),
    Case("huge", "an 8000x6000 image (a large_image warning: masks are computed at that size)", None, None,
         warning="large_image"),
    # issue 13: user text that reaches the model, odd structure, odd geometry
    Case("seg_in_query", "a query holding [SEG]", "special_token", "special_token"),
    Case("image_in_query", "a query holding <image>", "special_token", "special_token"),
    Case("seg_lowercase", "a later rephrasing holding [seg]", "special_token", "special_token"),
    Case("im_start_in_query", "a query holding <im_start>", "special_token", "special_token"),
    Case("deep_nesting", "JSON nested 100000 levels deep", "malformed_json", "malformed_json"),
    Case("top_level_list", "a JSON list instead of an object", "bad_field", "bad_field"),
    Case("text_not_strings", "text: [1, 2]", "no_text", "no_text"),
    Case("shapes_not_list", "shapes: {}", "bad_field", "bad_field"),
    Case("shape_without_label", "a shape without label", "bad_field", "bad_field"),
    Case("points_not_list", "points: 'abc'", "bad_field", "bad_field"),
    Case("null_is_sentence", "is_sentence: null", "bad_field", "bad_field"),
    Case("thin_image", "a 1x300 image (its SAM short side keeps 1 pixel)", None, None),
    Case("tall_image", "a 300x1 image", None, None),
    Case("long_query", "a 3000-character query (shortened by rule; check-data: a long_query warning)", None, None),
    Case("bool_points", "points given as booleans", "bad_points", "bad_points"),
    Case("flag_only", "only 'flag' shapes: no target", "no_target", None),
)


def _texture(hw: tuple[int, int], seed: int) -> np.ndarray:
    """(H, W, 3) uint8: a smooth gradient plus a little noise (compresses well, not flat)."""
    rng = np.random.default_rng(seed)
    h, w = hw
    ys, xs = np.mgrid[0:h, 0:w]
    base = (xs * 200 // max(1, w - 1) + ys * 50 // max(1, h - 1)).astype(np.int64)
    noise = rng.integers(0, 20, size=(h, w), dtype=np.int64)
    grey = np.clip(base + noise, 0, 255).astype(np.uint8)
    return np.stack([grey, 255 - grey, np.full_like(grey, 128)], axis=2)


def _huge_jpeg(path: Path) -> None:
    """The 8000x6000 JPEG: uniform grey with a darker rectangle (a few hundred KB)."""
    pixels = np.full((*HUGE_HW, 3), 180, dtype=np.uint8)
    pixels[1500:4500, 2000:6000] = 60
    Image.fromarray(pixels).save(path, quality=80)


def _shape(label: str, points: object) -> dict:
    return {"label": label, "labels": [label], "shape_type": "polygon", "image_name": "", "points": points,
            "group_id": None, "group_ids": [None], "flags": {}}


def _box(x0: float, y0: float, x1: float, y1: float) -> list[list[float]]:
    return [[x0, y0], [x1, y0], [x1, y1], [x0, y1]]


TARGET = [_shape("target", _box(4, 4, 20, 16))]


def _annotation(texts: object = ("the thing on the left",), shapes: list | None = None, **extra: object) -> dict:
    data = {"text": list(texts) if isinstance(texts, tuple) else texts, "is_sentence": False,
            "shapes": TARGET if shapes is None else shapes}
    data.update(extra)
    return data


def _write_json(path: Path, data: dict, encoding: str = "utf-8", bom: bytes = b"") -> None:
    path.write_bytes(bom + json.dumps(data, ensure_ascii=False).encode(encoding))


def _rgb_jpeg(path: Path, seed: int, hw: tuple[int, int] = (24, 32)) -> None:
    Image.fromarray(_texture(hw, seed)).save(path, quality=90)


def _image_writers() -> dict[str, Callable[[Path], None]]:
    """Case stem -> writer of its image at the given path (suffix chosen by ``_image_suffix``)."""
    grey = _texture((24, 32), 1)[:, :, 0]

    def truncated(path: Path) -> None:
        rng = np.random.default_rng(2)  # noise: the scan data is far longer than the header
        Image.fromarray(rng.integers(0, 256, size=(96, 96, 3), dtype=np.uint8)).save(path, quality=90)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])

    return {
        "truncated_jpeg": truncated,
        "not_an_image": lambda p: p.write_text("this is not an image", encoding="utf-8"),
        "grayscale": lambda p: Image.fromarray(grey, mode="L").save(p, quality=90),
        "rgba": lambda p: Image.fromarray(np.dstack([_texture((24, 32), 3), grey])).save(p),
        "grey16": lambda p: Image.fromarray(grey.astype(np.uint16) * 257).save(p),
        "palette": lambda p: Image.fromarray(_texture((24, 32), 4)).convert("P").save(p),
        "cmyk": lambda p: Image.fromarray(_texture((24, 32), 5)).convert("CMYK").save(p, quality=90),
        "one_pixel": lambda p: Image.fromarray(np.full((1, 1, 3), 200, dtype=np.uint8)).save(p, quality=90),
        "thin_image": lambda p: Image.fromarray(_texture((1, 300), 6)).save(p, quality=90),
        "tall_image": lambda p: Image.fromarray(_texture((300, 1), 7)).save(p, quality=90),
        "huge": _huge_jpeg,
    }


def _image_suffix(stem: str) -> str:
    return ".png" if stem in ("rgba", "grey16", "palette") else ".jpg"


def _json_writers() -> dict[str, Callable[[Path], None]]:
    """Case stem -> writer of its annotation file (cases not listed get a good annotation)."""
    cut = json.dumps(_annotation())[:40]
    cp1252_texts = ["the caf\u00e9 sign \u2013 on the left"]
    return {
        "malformed_json": lambda p: p.write_text(cut, encoding="utf-8"),
        "empty_json": lambda p: p.write_bytes(b""),
        "two_points": lambda p: _write_json(p, _annotation(shapes=[_shape("target", [[2, 2], [12, 12]])])),
        "zero_points": lambda p: _write_json(p, _annotation(shapes=[*TARGET, _shape("target", [])])),
        "nan_points": lambda p: p.write_text(json.dumps(_annotation(shapes=[
            _shape("target", [[1, 1], [float("nan"), 5], [8, 8]])])), encoding="utf-8"),
        "inf_points": lambda p: p.write_text(json.dumps(_annotation(shapes=[
            _shape("target", [[1, 1], [float("inf"), 5], [8, -float("inf")]])])), encoding="utf-8"),
        "far_out_of_bounds": lambda p: _write_json(p, _annotation(shapes=[
            _shape("target", [[1, 1], [1e9, 5], [8, 1e9]])])),
        "not_pairs": lambda p: _write_json(p, _annotation(shapes=[_shape("target", [[1, 2, 3], [4, 5, 6]])])),
        "string_points": lambda p: _write_json(p, _annotation(shapes=[
            _shape("target", [["4", "4"], ["20.5", "4"], ["20.5", "16"]])])),
        "empty_text": lambda p: _write_json(p, _annotation(texts=[])),
        "blank_text": lambda p: _write_json(p, _annotation(texts=["  "])),
        "no_text_field": lambda p: _write_json(p, {"is_sentence": False, "shapes": TARGET}),
        "bad_is_sentence": lambda p: _write_json(p, _annotation(is_sentence="yes")),
        "unknown_label": lambda p: _write_json(p, _annotation(shapes=[_shape("person", _box(4, 4, 20, 16))])),
        "cp1252": lambda p: _write_json(p, _annotation(texts=cp1252_texts), encoding="cp1252"),
        "utf8_bom": lambda p: _write_json(p, _annotation(), bom=codecs.BOM_UTF8),
        "utf16": lambda p: p.write_bytes(json.dumps(_annotation(texts=cp1252_texts)).encode("utf-16")),
        "undecodable": lambda p: p.write_bytes(b'{"text": ["a \x81\x8d\x8f thing"], "is_sentence": false, '
                                               b'"shapes": []}'),
        "ignore_only": lambda p: _write_json(p, _annotation(shapes=[_shape("ignore", _box(2, 2, 12, 12))])),
        "one_pixel": lambda p: _write_json(p, _annotation(shapes=[_shape("target", _box(0, 0, 1, 1))])),
        "huge": lambda p: _write_json(p, _annotation(shapes=[_shape("target", _box(2000, 1500, 6000, 4500))])),
        "seg_in_query": lambda p: _write_json(p, _annotation(texts=["the [SEG] on the left"])),
        "image_in_query": lambda p: _write_json(p, _annotation(texts=["<image> what is this"])),
        "seg_lowercase": lambda p: _write_json(p, _annotation(texts=["the dog", "the [seg] dog"])),
        "im_start_in_query": lambda p: _write_json(p, _annotation(texts=["<im_start> the dog"])),
        "deep_nesting": lambda p: p.write_text('{"text": ' + "[" * 100_000 + "]" * 100_000 + "}", encoding="utf-8"),
        "top_level_list": lambda p: p.write_text("[1, 2, 3]", encoding="utf-8"),
        "text_not_strings": lambda p: _write_json(p, _annotation(texts=[1, 2])),
        "shapes_not_list": lambda p: _write_json(p, {"text": ["a dog"], "is_sentence": False, "shapes": {}}),
        "shape_without_label": lambda p: _write_json(p, _annotation(shapes=[{"points": _box(4, 4, 20, 16)}])),
        "points_not_list": lambda p: _write_json(p, _annotation(shapes=[{"label": "target", "points": "abc"}])),
        "null_is_sentence": lambda p: _write_json(p, _annotation(is_sentence=None)),
        "thin_image": lambda p: _write_json(p, _annotation(shapes=[_shape("target", _box(10, 0, 200, 1))])),
        "tall_image": lambda p: _write_json(p, _annotation(shapes=[_shape("target", _box(0, 10, 1, 200))])),
        "long_query": lambda p: _write_json(p, _annotation(texts=["the thing " * 300])),
        "bool_points": lambda p: _write_json(p, _annotation(shapes=[_shape("target", [[True, False], [True, True],
                                                                                    [False, True]])])),
        "flag_only": lambda p: _write_json(p, _annotation(shapes=[_shape("flag", _box(2, 2, 12, 12))])),
    }


def write_case(split_dir: Path, case: Case, seed: int = 0) -> None:
    """Write the image and annotation files of ``case`` into ``split_dir``."""
    images, annotations = _image_writers(), _json_writers()
    if case.stem != "missing_image":
        write_image = images.get(case.stem, lambda p: _rgb_jpeg(p, seed))
        write_image(split_dir / f"{case.stem}{_image_suffix(case.stem)}")
    write_json = annotations.get(case.stem, lambda p: _write_json(p, _annotation()))
    write_json(split_dir / f"{case.stem}.json")


def case_file(split_dir: Path, case: Case) -> Path:
    """The file a report about ``case`` must name."""
    if case.file == "image":
        return split_dir / f"{case.stem}{_image_suffix(case.stem)}"
    return split_dir / f"{case.stem}.json"


def build_broken_corpus(root: Path, *, cases: tuple[Case, ...] = CASES, num_good: int = 4,
                        splits: tuple[str, ...] = BROKEN_SPLITS) -> list[Case]:
    """Good synthetic data (64 px, ``num_good`` train / val / test images) plus ``cases`` in ``splits``."""
    make_dataset(root, seed=0, num_train=num_good, num_val=num_good, num_test=2, image_size=64, progress=False)
    for split in splits:
        for i, case in enumerate(cases):
            write_case(root / split, case, seed=i)
    return list(cases)


def usable_count(cases: list[Case], split: str, num_good: int = 4) -> int:
    """How many items of ``split`` must be usable: the good ones plus the handled cases."""
    key = "train" if split == "train" else "eval"
    return num_good + sum(getattr(c, key) is None for c in cases)
