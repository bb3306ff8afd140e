"""Write small, real ReasonSeg-format folders for tests: JPEG images + annotation JSON (docs/LISA.md §1).

``make_reasonseg`` builds train/val/test (+ explanatory) with good files; ``write_bad_files`` adds one
file of every problem kind to a split folder and returns {kind: file stem}.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

GOOD_TRAIN_TEXTS = [
    "the object used to cut paper",
    "something sharp for cutting",
    "the tool with two blades",
    "what you would use to trim hair",
    "the metal cutter",
]


def write_image(path: Path, hw: tuple[int, int], seed: int = 0, quality: int = 90) -> Path:
    """A random-texture RGB JPEG (or PNG by suffix) of size hw = (H, W)."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(hw[0], hw[1], 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() in (".jpg", ".jpeg"):
        Image.fromarray(pixels).save(path, quality=quality)
    else:
        Image.fromarray(pixels).save(path)
    return path


def shape(label: str, points: list, shape_type: str = "polygon", image_name: str = "x.jpg") -> dict:
    """One LabelMe-like shape as ReasonSeg writes it."""
    return {"label": label, "labels": [label], "shape_type": shape_type, "image_name": image_name,
            "points": points, "group_id": None, "group_ids": [None], "flags": {}}


def write_annotation(path: Path, texts, is_sentence, shapes: list[dict], *, encoding: str = "utf-8",
                     extra: dict | None = None, drop: tuple[str, ...] = ()) -> Path:
    """An annotation JSON; ``drop`` removes fields, ``extra`` overrides them."""
    data = {"text": texts, "is_sentence": is_sentence, "shapes": shapes}
    data.update(extra or {})
    for key in drop:
        data.pop(key, None)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(json.dumps(data, ensure_ascii=False).encode(encoding))
    return path


def box(x0: float, y0: float, x1: float, y1: float) -> list[list[float]]:
    return [[x0, y0], [x1, y0], [x1, y1], [x0, y1]]


def write_good_item(split_dir: Path, stem: str, *, hw=(24, 32), seed=0, texts=None, is_sentence=False,
                    with_ignore=False) -> tuple[Path, Path]:
    """A valid image + annotation pair: one target polygon (and optionally an ignore region)."""
    image = write_image(split_dir / f"{stem}.jpg", hw, seed)
    shapes = [shape("target", [[3.2, 2.7], [20.9, 4.1], [18.5, 17.6], [5.0, 15.2]], image_name=image.name)]
    if with_ignore:
        shapes.append(shape("ignore", box(10.5, 8.0, 14.9, 12.3), image_name=image.name))
    texts = texts if texts is not None else list(GOOD_TRAIN_TEXTS)
    return image, write_annotation(split_dir / f"{stem}.json", texts, is_sentence, shapes)


def split_root(root: Path, layout: str) -> Path:
    """The folder holding the splits: ROOT/ReasonSeg ("nested") or ROOT ("flat")."""
    return root / "ReasonSeg" if layout == "nested" else root


def make_reasonseg(root: Path, *, layout: str = "nested", n_train: int = 3, n_val: int = 2, n_test: int = 2,
                   explanatory: str | None = "standard", splits=("train", "val", "test")) -> Path:
    """A clean dataset. explanatory: "standard" (explanatory/train.json), "seed" (ROOT/train.json), None."""
    base = split_root(root, layout)
    sizes = {"train": n_train, "val": n_val, "test": n_test}
    for split in splits:
        for i in range(sizes[split]):
            texts = list(GOOD_TRAIN_TEXTS) if split == "train" else [f"{split} query {i}"]
            write_good_item(base / split, f"{split}_{i:02d}", hw=(24 + 2 * i, 32 + i), seed=i,
                            texts=texts, is_sentence=(i % 2 == 1), with_ignore=(i == 0))
    if explanatory is not None:
        entries = [{"query": GOOD_TRAIN_TEXTS[0], "outputs": "Scissors cut paper.", "image": "train_00.jpg",
                    "json": "train_00.json"}]
        target = base / "explanatory" / "train.json" if explanatory == "standard" else root / "train.json"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(entries), encoding="utf-8")
    return root


def write_truncated_jpeg(path: Path, hw=(64, 64), seed: int = 3) -> Path:
    """A JPEG cut in half: the header reads fine, full decoding fails."""
    write_image(path, hw, seed)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def write_bad_files(split_dir: Path) -> dict[str, str]:
    """One broken item per problem kind in ``split_dir``; returns {kind: stem}."""
    good = [shape("target", box(2, 2, 12, 12))]
    cases: dict[str, str] = {}

    def item(kind: str, shapes=None, *, texts=("a cat",), image: str = "jpg", **kwargs) -> Path:
        stem = f"bad_{kind}"
        cases[kind] = stem
        if image == "jpg":
            write_image(split_dir / f"{stem}.jpg", (20, 20), seed=len(cases))
        return write_annotation(split_dir / f"{stem}.json", list(texts), False,
                                good if shapes is None else shapes, **kwargs)

    item("missing_image", image="none")
    item("unreadable_image", image="none")
    (split_dir / "bad_unreadable_image.jpg").write_bytes(b"this is not an image at all")
    item("truncated_image", image="none")
    write_truncated_jpeg(split_dir / "bad_truncated_image.jpg")
    item("malformed_json")
    (split_dir / "bad_malformed_json.json").write_text('{"text": ["a cat"], "is_sentence": false, "shapes": [',
                                                       encoding="utf-8")
    item("no_text", texts=())
    item("missing_text", drop=("text",))
    item("no_target", [shape("flag", box(1, 1, 9, 9))])
    item("ignore_only", [shape("ignore", box(1, 1, 9, 9))])
    item("few_points_zero", [*good, shape("target", [])])
    item("few_points_two", [*good, shape("target", [[1, 1], [8, 8]])])
    item("nonfinite_points", [shape("target", [[1, 1], [float("nan"), 5], [8, 8]])])
    item("out_of_bounds", [shape("target", [[1, 1], [60, 5], [8, 8]])])
    item("slightly_outside", [shape("target", [[-1.5, -1.0], [21.0, 2], [10, 20.9]])])
    item("unknown_label", [shape("person", box(2, 2, 12, 12))])
    item("non_polygon", [*good, shape("target", [[3, 3], [9, 9]], shape_type="rectangle")])
    item("bad_field", extra={"is_sentence": "yes"})
    item("cp1252", texts=("the caf\u00e9 sign \u2013 left",), encoding="cp1252")
    cases["missing_json"] = "bad_missing_json"
    write_image(split_dir / "bad_missing_json.jpg", (10, 10), seed=99)
    return cases
