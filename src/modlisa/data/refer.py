"""Read refCOCO / refCOCO+ / refCOCOg / refCLEF in the ``refer`` layout (lichengunc/refer, as LISA uses it).

Layout (LISA's README, ``dataset/refer_seg``; ROOT may be that folder or its parent)::

    ROOT/refcoco/refs(unc).p + instances.json        splits train, val, testA, testB
    ROOT/refcoco+/refs(unc).p + instances.json       splits train, val, testA, testB
    ROOT/refcocog/refs(umd).p + instances.json       splits train, val, test (LISA's split_by "umd")
    ROOT/refclef/refs(unc).p + instances.json
    ROOT/images/mscoco/images/train2014/COCO_train2014_%012d.jpg   (refcoco, refcoco+, refcocog)
    ROOT/images/saiapr_tc-12/<file_name>                           (refclef)

``refs(<split_by>).p`` is a pickled list of refs ``{ref_id, ann_id, image_id, category_id, split, file_name,
sent_ids, sentences: [{sent, raw, tokens, sent_id}]}``; ``instances.json`` holds COCO ``images`` (id, file_name,
height, width), ``annotations`` (id, image_id, category_id, segmentation, ...) and ``categories``. A split is
selected as refer's ``getRefIds(split=...)`` does (``testA`` also takes refs of split ``testAB``; ``test``
takes every split containing "test").

What this module returns: ``load_refer`` gives one ``ReferRef`` per ref of a split (image path, size, sentences, the COCO
segmentation); ``ReferSegSource`` is the training mixture's ``refer_seg`` source (LISA's
``ReferSegDataset``); ``refer_annotations`` the evaluation items of ``modlisa eval --dataset refcoco``;
``refer_queries`` one ``ReferQuery`` per SENTENCE (LISA's evaluation protocol: every sentence
is one query on its image, asked as a short phrase, text ``sent.strip().lower()``). ``.mask()`` decodes the
target lazily: (H, W) uint8 in {0, 1}, exactly pycocotools' ``COCO.annToMask`` (polygons through
``frPyObjects`` + ``merge`` + ``decode``; RLE dicts, compressed or not). pycocotools is an optional extra
(``pip install 'modlisa[coco]'``), needed only to decode masks.

Bad input raises ``DataError`` naming the file: a missing dataset folder, refs pickle or instances.json, an
unknown split (the valid ones are listed), a ref whose ``ann_id`` / ``image_id`` instances.json lacks, a
missing image.
"""

from __future__ import annotations

import io
import json
import pickle
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from modlisa.data.reasonseg import DataError
from modlisa.data.sources import REFER_SEG, Draw
from modlisa.types import Annotation

# dataset -> LISA's split_by (``refer_seg_dataset.py``: "umd" for refcocog, "unc" for the others)
DEFAULT_SPLIT_BY = {"refcoco": "unc", "refcoco+": "unc", "refcocog": "umd", "refclef": "unc"}
DATASETS = tuple(DEFAULT_SPLIT_BY)
COCO_IMAGE_DIR = Path("images", "mscoco", "images", "train2014")
CLEF_IMAGE_DIR = Path("images", "saiapr_tc-12")
COCO_EXTRA_HINT = "decoding refer masks needs pycocotools: pip install 'modlisa[coco]' (or pycocotools>=2.0.7)"


def refs_file_name(split_by: str) -> str:
    """``refs(<split_by>).p``, e.g. ``refs(unc).p``, ``refs(umd).p``."""
    return f"refs({split_by}).p"


def image_dir(root: str | Path, dataset: str) -> Path:
    """Where the images of ``dataset`` lie under ``root`` (refer's ``IMAGE_DIR``)."""
    return Path(root) / (CLEF_IMAGE_DIR if dataset == "refclef" else COCO_IMAGE_DIR)


def resolve_refer_root(root: str | Path, dataset: str) -> Path:
    """``root`` itself when it holds ``dataset/``, else ``root/refer_seg`` (LISA's dataset folder) when that
    does; DataError naming the expected folder otherwise (ValueError for an unknown dataset name)."""
    if dataset not in DEFAULT_SPLIT_BY:
        raise ValueError(f"unknown refer dataset {dataset!r}; choose from {', '.join(DATASETS)}")
    root = Path(root)
    for candidate in (root, root / "refer_seg"):
        if (candidate / dataset).is_dir():
            return candidate
    raise DataError(root / dataset, f"no {dataset} folder: expected {root / dataset} (or "
                                    f"{root / 'refer_seg' / dataset}) holding refs(...).p and instances.json")


# --------------------------------------------------------------------------- files


# the split names refer's getRefIds knows
REFER_SPLIT_NAMES = ("train", "val", "test", "testA", "testB", "testC", "testAB", "testBC", "testAC")
_PLAIN_BUILTINS = frozenset({"set", "frozenset", "list", "dict", "tuple", "str", "bytes", "bytearray", "int",
                             "float", "complex", "bool"})


class _PlainUnpickler(pickle.Unpickler):
    """Unpickles only plain data (lists, dicts, strings, numbers, and builtin sets / tuples): a refs file
    never needs a class, so one naming any other global is refused instead of run."""

    def find_class(self, module: str, name: str) -> Any:
        if module in ("builtins", "__builtin__") and name in _PLAIN_BUILTINS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refers to {module}.{name}; a refs file holds only lists, dicts, "
                                     "strings and numbers, so it is refused")


def read_refs_pickle(path: str | Path) -> list[dict[str, Any]]:
    """The refs of a ``refs(<split_by>).p`` file (Python 2 pickles too). DataError when missing or malformed."""
    path = Path(path)
    if not path.is_file():
        others = sorted(p.name for p in path.parent.glob("refs(*).p")) if path.parent.is_dir() else []
        found = f"; the folder holds {', '.join(others)}" if others else ""
        raise DataError(path, f"refs file not found (refcoco / refcoco+ / refclef use refs(unc).p, refcocog "
                              f"refs(umd).p){found}")
    raw = path.read_bytes()
    refs: Any = None
    for encoding in ("ASCII", "latin1"):  # latin1: Python 2 byte strings that are not ASCII
        try:
            refs = _PlainUnpickler(io.BytesIO(raw), encoding=encoding).load()
            break
        except UnicodeDecodeError:
            continue
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as err:
            raise DataError(path, f"malformed refs pickle ({err})") from err
    if not isinstance(refs, list) or not all(isinstance(ref, dict) for ref in refs):
        raise DataError(path, "a refs file must hold a list of ref dicts")
    for i, ref in enumerate(refs):
        missing = [k for k in ("ref_id", "ann_id", "image_id", "split", "sentences") if k not in ref]
        if missing:
            raise DataError(path, f"ref #{i} has no {', '.join(missing)}")
    return refs


def read_instances(path: str | Path) -> dict[str, Any]:
    """``instances.json``: a dict with ``images``, ``annotations`` and ``categories`` lists."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "instances.json not found (refer keeps the COCO images / annotations / categories "
                              "of a dataset beside its refs(...).p)")
    try:
        data = json.loads(path.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(path, f"malformed JSON ({err})") from err
    if not isinstance(data, dict):
        raise DataError(path, "top level must be an object with images, annotations and categories")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise DataError(path, f"field '{key}' must be a list")
    return data


# --------------------------------------------------------------------------- splits


def selectable_splits(ref_splits: Sequence[str]) -> tuple[str, ...]:
    """The split names that select at least one ref, given the refs' own ``split`` values (refer's rules:
    ``testA`` takes ``testAB`` too, ``test`` every split containing "test")."""
    names = set(ref_splits)
    for split in ref_splits:
        if split.startswith("test"):
            names.add("test")
            names.update(f"test{c}" for c in split[4:])
    order = {"train": 0, "val": 1}
    return tuple(sorted(names, key=lambda s: (order.get(s, 2), s)))


def in_split(ref_split: str, split: str) -> bool:
    """Whether a ref of split ``ref_split`` belongs to ``split`` (refer's ``getRefIds``)."""
    if split in ("testA", "testB", "testC"):
        return split[-1] in ref_split
    if split == "test":
        return "test" in ref_split
    return ref_split == split


# --------------------------------------------------------------------------- masks


def _pycocotools_mask() -> Any:
    try:
        from pycocotools import mask as mask_utils
    except ImportError as err:  # the optional extra
        raise ImportError(COCO_EXTRA_HINT) from err
    return mask_utils


def segmentation_rle(segmentation: Any, height: int, width: int) -> Any:
    """The RLE of a COCO segmentation, as ``COCO.annToRLE``: polygons (a list of flat [x, y, ...] lists) are
    ``frPyObjects`` + ``merge``d; an uncompressed RLE (``counts`` a list) goes through ``frPyObjects``; a
    compressed one is used as is. A LIST of RLE dicts (some refclef files) is merged too."""
    mask_utils = _pycocotools_mask()
    if isinstance(segmentation, dict):
        if isinstance(segmentation.get("counts"), list):
            return mask_utils.frPyObjects(segmentation, height, width)
        return _compressed(segmentation)
    if segmentation and all(isinstance(part, dict) for part in segmentation):
        rles = [mask_utils.frPyObjects(p, height, width) if isinstance(p.get("counts"), list) else _compressed(p)
                for p in segmentation]
        return mask_utils.merge(rles)
    return mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))


def _compressed(rle: dict[str, Any]) -> dict[str, Any]:
    counts = rle["counts"]
    return {"size": list(rle["size"]), "counts": counts.encode("ascii") if isinstance(counts, str) else counts}


def decode_segmentation(segmentation: Any, height: int, width: int) -> np.ndarray:
    """(H, W) uint8 mask in {0, 1} of a COCO segmentation (``COCO.annToMask``); an empty segmentation gives an
    empty mask (LISA evaluates such a ref with an empty target). ValueError when it cannot be decoded."""
    if segmentation is None or (isinstance(segmentation, list) and not segmentation):
        return np.zeros((height, width), dtype=np.uint8)
    try:
        mask = _pycocotools_mask().decode(segmentation_rle(segmentation, height, width))
    except ImportError:
        raise
    except Exception as err:  # pycocotools raises TypeError / ValueError / its own errors on bad input
        raise ValueError(f"cannot decode segmentation ({type(err).__name__}: {err})") from err
    if mask.shape[:2] != (height, width):
        raise ValueError(f"segmentation is {mask.shape[1]}x{mask.shape[0]}, the image {width}x{height}")
    return np.ascontiguousarray(mask.reshape(height, width)).astype(np.uint8)


# --------------------------------------------------------------------------- records


@dataclass(frozen=True)
class ReferQuery:
    """One evaluation item: an image, one sentence, its target (LISA: every sentence is a query)."""

    image_path: str
    query: str  # sent.strip().lower(), as LISA's ValDataset asks it (a short-phrase question)
    raw: str  # the sentence's "raw" text (or "sent" when absent)
    sent_id: int
    ref_id: int
    ann_id: int
    image_id: int
    hw: tuple[int, int]  # (height, width) from instances.json
    segmentation: Any
    is_sentence: bool = False  # refer expressions are asked as short phrases (LISA's ValDataset)

    def mask(self) -> np.ndarray:
        """(H, W) uint8 in {0, 1}: the target annotation decoded (``COCO.annToMask``)."""
        return decode_segmentation(self.segmentation, *self.hw)


@dataclass(frozen=True)
class ReferRef:
    """One ref of a split: its image, sentences and target annotation."""

    dataset: str
    split: str  # the ref's own split value (e.g. "testA", "testAB")
    ref_id: int
    ann_id: int
    image_id: int
    category_id: int | None
    category: str | None
    image_path: str
    hw: tuple[int, int]
    sentences: tuple[dict[str, Any], ...]  # as stored: {sent, raw, tokens, sent_id}
    segmentation: Any

    def mask(self) -> np.ndarray:
        """(H, W) uint8 in {0, 1}: the target annotation decoded (``COCO.annToMask``)."""
        return decode_segmentation(self.segmentation, *self.hw)

    def queries(self) -> list[ReferQuery]:
        """One ``ReferQuery`` per sentence, in file order (sentences with no text are skipped)."""
        out = []
        for sent in self.sentences:
            text = str(sent.get("sent", sent.get("raw", ""))).strip().lower()
            if not text:
                continue
            out.append(ReferQuery(self.image_path, text, str(sent.get("raw", sent.get("sent", ""))),
                                  int(sent.get("sent_id", -1)), self.ref_id, self.ann_id, self.image_id, self.hw,
                                  self.segmentation))
        return out


# --------------------------------------------------------------------------- loading


def dataset_files(root: str | Path, dataset: str, split_by: str | None = None) -> tuple[Path, Path, Path]:
    """(refs pickle, instances.json, image folder) of ``dataset`` under ``root`` (checks only the folder)."""
    base = resolve_refer_root(root, dataset)
    split_by = split_by or DEFAULT_SPLIT_BY[dataset]
    folder = base / dataset
    return folder / refs_file_name(split_by), folder / "instances.json", image_dir(base, dataset)


def load_refer(
    root: str | Path, dataset: str, split: str, *, split_by: str | None = None, check_images: bool = True
) -> list[ReferRef]:
    """The refs of ``split`` of ``dataset`` (refcoco, refcoco+, refcocog, refclef), in refs-file order.

    ``split_by`` defaults to LISA's choice ("umd" for refcocog, "unc" otherwise). ``check_images``: every
    image of the split must exist (a DataError names the first missing one). Masks are not decoded here.
    """
    refs_path, instances_path, images = dataset_files(root, dataset, split_by)
    refs = read_refs_pickle(refs_path)
    instances = read_instances(instances_path)
    valid = selectable_splits([str(ref["split"]) for ref in refs])
    if split not in valid:
        what = f"no ref of split {split!r} in this file" if split in REFER_SPLIT_NAMES else f"unknown split {split!r}"
        raise DataError(refs_path, f"{what} ({dataset}); valid splits: {', '.join(valid)}")
    anns = {ann.get("id"): ann for ann in instances["annotations"] if isinstance(ann, dict)}
    imgs = {img.get("id"): img for img in instances["images"] if isinstance(img, dict)}
    cats = {cat.get("id"): cat.get("name") for cat in instances["categories"] if isinstance(cat, dict)}
    out: list[ReferRef] = []
    for ref in refs:
        if not in_split(str(ref["split"]), split):
            continue
        ann, img = anns.get(ref["ann_id"]), imgs.get(ref["image_id"])
        if ann is None:
            raise DataError(instances_path, f"ref {ref['ref_id']} of {refs_path.name} names ann_id "
                                            f"{ref['ann_id']}, which the annotations do not hold")
        if img is None:
            raise DataError(instances_path, f"ref {ref['ref_id']} of {refs_path.name} names image_id "
                                            f"{ref['image_id']}, which the images do not hold")
        try:
            hw = (int(img["height"]), int(img["width"]))
            file_name = str(img["file_name"])
        except (KeyError, TypeError, ValueError) as err:
            raise DataError(instances_path, f"image {ref['image_id']} lacks a valid file_name / height / width "
                                            f"({err})") from err
        image_path = images / file_name
        if check_images and not image_path.is_file():
            raise DataError(image_path, f"image file not found (image_id {ref['image_id']}, ref {ref['ref_id']} "
                                        f"of {dataset} {split})")
        sentences = ref["sentences"]
        if not isinstance(sentences, list) or not all(isinstance(s, dict) for s in sentences):
            raise DataError(refs_path, f"ref {ref['ref_id']}: 'sentences' must be a list of dicts")
        category_id = ref.get("category_id", ann.get("category_id"))
        out.append(ReferRef(dataset, str(ref["split"]), int(ref["ref_id"]), int(ref["ann_id"]),
                            int(ref["image_id"]), category_id, cats.get(category_id), str(image_path), hw,
                            tuple(sentences), ann.get("segmentation")))
    return out


def refer_queries(
    root: str | Path, dataset: str, split: str, *, split_by: str | None = None, check_images: bool = True
) -> list[ReferQuery]:
    """Every sentence of every ref of the split as one ``ReferQuery`` (LISA's evaluation protocol)."""
    return [q for ref in load_refer(root, dataset, split, split_by=split_by, check_images=check_images)
            for q in ref.queries()]


def _target_of(query: ReferQuery, where: str) -> Any:
    """A ``target_mask`` callable of ``query`` whose decoding errors are DataErrors naming ``where``."""
    def target() -> np.ndarray:
        try:
            return query.mask()
        except ValueError as err:
            raise DataError(where, f"ann_id {query.ann_id} (ref {query.ref_id}): {err}") from err
    return target


def refer_annotations(root: str | Path, dataset: str, split: str, *, split_by: str | None = None
                      ) -> list[Annotation]:
    """LISA's refer evaluation items (``ValDataset``): every sentence of every ref of ``split`` is one short-phrase
    query on its image, text ``sent.strip().lower()``, target the ref's annotation decoded by pycocotools.
    ``json_path`` names the refs file and the sentence (``refs(unc).p#ref=R,sent=S``) for messages and the
    predictions file."""
    refs_path, _, _ = dataset_files(root, dataset, split_by)
    out = []
    for query in refer_queries(root, dataset, split, split_by=split_by):
        where = f"{refs_path}#ref={query.ref_id},sent={query.sent_id}"
        out.append(Annotation(json_path=where, image_path=query.image_path, texts=[query.query], is_sentence=False,
                              target_mask=_target_of(query, where)))
    return out


class ReferSegSource:
    """The ``refer_seg`` source of the training mixture: LISA's ``ReferSegDataset`` on one refer dataset.

    Items are the images of the ``train`` refs; ``draw`` collects every sentence of the image's train refs and
    samples up to ``max_targets`` of them without replacement (LISA's ``np.random.choice(..., replace=False)``),
    the texts ``sent["sent"]`` (the question lower-cases them), each target its ref's annotation
    (``COCO.annToMask``; an empty segmentation is an empty mask, as LISA)."""

    kind = REFER_SEG

    def __init__(self, root: str | Path, dataset: str, *, split: str = "train", split_by: str | None = None) -> None:
        self.name = dataset
        self.refs_path = dataset_files(root, dataset, split_by)[0]
        by_image: dict[int, list[ReferRef]] = {}
        for ref in load_refer(root, dataset, split, split_by=split_by, check_images=False):
            by_image.setdefault(ref.image_id, []).append(ref)
        self.images = list(by_image.values())

    def __len__(self) -> int:
        return len(self.images)

    def draw(self, index: int, rng: random.Random, max_targets: int) -> Draw | None:
        refs = self.images[index]
        pairs = [(str(sent.get("sent", "")), ref) for ref in refs for sent in ref.sentences]
        pairs = [(text, ref) for text, ref in pairs if text.strip()]
        if not pairs:
            return None
        chosen = [pairs[j] for j in rng.sample(range(len(pairs)), min(max_targets, len(pairs)))]
        masks = []
        for _, ref in chosen:
            try:
                masks.append(ref.mask())
            except ValueError as err:
                raise DataError(self.refs_path, f"ref {ref.ref_id} (ann_id {ref.ann_id}): {err}") from err
        return Draw(image_path=refs[0].image_path, texts=[text.strip() for text, _ in chosen],
                    masks=np.stack(masks), file=str(self.refs_path))
