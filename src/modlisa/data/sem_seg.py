"""LISA's semantic-segmentation training sources: ADE20K, COCO-Stuff, PASCAL-Part, PACO-LVIS (issue 14).

Each is a ``modlisa.data.sources.Source`` of kind ``sem_seg`` whose ``draw`` follows LISA's
``utils/sem_seg_dataset.py`` (``init_<name>`` for the files, ``SemSegDataset.__getitem__`` for the targets).
Layout (LISA's README, "Training Data Preparation"; ROOT is LISA's ``dataset`` folder)::

    ROOT/ade20k/images/training/<id>.jpg          ADE20K (ADEChallengeData2016): one label PNG per image,
    ROOT/ade20k/annotations/training/<id>.png       values 0 = "other", 1..150 = the 150 classes
    ROOT/cocostuff/train2017/<id>.png             COCO-Stuff stuffthingmaps: values 0..181 = LISA's 182
    ROOT/coco/train2017/<id>.jpg                    classes, 255 = unlabeled; images are COCO's
    ROOT/vlpart/pascal_part/train.json            PASCAL-Part (VLPart): COCO JSON, categories "obj:part"
    ROOT/vlpart/pascal_part/VOCdevkit/VOC2010/JPEGImages/<file_name>
    ROOT/vlpart/paco/annotations/paco_lvis_v1_train.json
    ROOT/coco/<file_name>                         PACO-LVIS: file_name is "train2017/<id>.jpg"

Label PNGs (ADE20K, COCO-Stuff), read in ``draw`` as LISA reads them per item (``np.array(Image.open(...))``):

- ADE20K: 0 -> 255 (ignore), then every value minus 1, and 254 -> 255: 0 and 255 are ignored, v becomes class
  v - 1 of LISA's ``ade20k_classes.json`` (150 names, shipped in ``modlisa/data/classes``).
- COCO-Stuff: value v is class v of LISA's ``cocostuff_classes.txt`` without its first line ("0: unlabeled"):
  182 names; every class whose name contains "-" ("wall-other", "floor-wood", ...) is set to 255 (ignore).
- The classes present are the unique values minus 255; LISA samples ``num_classes_per_sample`` (here
  ``max_targets``) of them without replacement when there are at least that many, else takes all in
  ascending order. Target k's mask is ``label == class_k``; pixels LISA ignores (255 in its label map) are
  255 in the mask (training counts them as background, as LISA does; evaluation would skip them).
- No class left (only ignored values) -> ``draw`` returns None (LISA draws another item).

COCO JSON (PASCAL-Part, PACO-LVIS), indexed with pycocotools' ``COCO`` as LISA does:

- PASCAL-Part category "obj:part" -> (obj, part); PACO-LVIS "obj:part" -> (obj, part) and "obj" -> obj, each
  cut at "_(" ("car_(automobile):wheel" -> ("car", "wheel")); underscores stay, as in LISA.
- LISA samples ``max_targets`` annotations of the image without replacement when it has at least that many,
  else takes all in file order (several may share a category); each (obj, part) is phrased "obj part" or
  "the part of the obj" with probability 1/2 each; target masks are ``COCO.annToMask`` (values {0, 1}).
- An image without annotations -> None; so is one whose chosen annotation pycocotools cannot decode (with a
  warning: LISA catches that error and draws another item).

Every random choice comes from the ``rng`` given to ``draw`` (``random.Random``; LISA uses numpy's and
Python's global generators: same rules, different streams). Bad input raises ``DataError`` naming the file:
a missing folder or JSON at construction (with the expected layout), and in ``draw`` a missing or unreadable
label PNG or image, a label PNG that is not one channel, whose size differs from its image's, or that holds a
value no class has; in the JSON an annotation of an unknown category, a category name LISA cannot split, a
segmentation whose size is not its image's.

Images with an EXIF orientation: masks are returned at the size of the image as decoded (EXIF applied, as
cv2.imread in LISA and ``load_image_rgb`` here). A label / annotation of that size is used as it is (LISA); one
of the stored size of an image whose orientation swaps its sides is turned upright with it (``fit_to_image``;
LISA would pair an upright image with a sideways mask).
"""

from __future__ import annotations

import contextlib
import io
import logging
import random
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from modlisa.data.lisa_layout import (
    ADE_IMAGES,
    ADE_LABELS,
    COCO_IMAGES,
    COCOSTUFF_LABELS,
    IGNORE,
    LAYOUTS,
    PACO_IMAGES,
    PACO_JSON,
    PASCAL_PART_IMAGES,
    PASCAL_PART_JSON,
    ade20k_classes,
    cocostuff_classes,
)
from modlisa.data.reasonseg import (
    _PIL_ERRORS,
    SIDE_SWAPPING_ORIENTATIONS,
    DataError,
    read_image_geometry,
    read_json,
)
from modlisa.data.sources import SEM_SEG, Draw

logger = logging.getLogger(__name__)

DATASETS = ("ade20k", "cocostuff", "pascal_part", "paco_lvis")

PartName = str | tuple[str, str]  # a class name, or (object, part)


# --------------------------------------------------------------------------- label maps


def ade20k_label(raw: np.ndarray) -> np.ndarray:
    """LISA's ADE20K remap of a label PNG's values: 0 and 255 -> 255, v -> v - 1 otherwise. (H, W) int64."""
    label = raw.astype(np.int64) - 1
    label[(raw == 0) | (raw == IGNORE)] = IGNORE
    return label


def cocostuff_label(raw: np.ndarray) -> np.ndarray:
    """LISA's COCO-Stuff rule: values of classes whose name contains "-" -> 255. (H, W) int64."""
    label = raw.astype(np.int64)
    dashed = [i for i, name in enumerate(cocostuff_classes()) if "-" in name]
    label[np.isin(label, dashed)] = IGNORE
    return label


def read_label_png(path: Path) -> np.ndarray:
    """(H, W) values of a single-channel label PNG (mode L, P or I;16). DataError naming it otherwise."""
    if not path.is_file():
        raise DataError(path, "label PNG not found")
    try:
        with Image.open(path) as image:
            raw = np.array(image)
    except _PIL_ERRORS as err:
        raise DataError(path, f"cannot read label PNG ({err})") from err
    if raw.ndim != 2:
        raise DataError(path, f"a label PNG must have one channel (class indices); this one has shape {raw.shape}")
    return raw


def class_masks(label: np.ndarray, class_ids: Sequence[int]) -> np.ndarray:
    """(n, H, W) uint8: 1 where ``label == class_id``, 255 where the label is ignored (255), else 0."""
    masks = np.stack([label == c for c in class_ids]).astype(np.uint8)
    masks[:, label == IGNORE] = IGNORE
    return masks


# EXIF orientation -> the transposition that shows an image upright (PIL's ``ImageOps.exif_transpose``), on the
# last two axes of an array
_UPRIGHT: dict[int, Callable[[np.ndarray], np.ndarray]] = {
    2: lambda a: a[..., :, ::-1],  # FLIP_LEFT_RIGHT
    3: lambda a: a[..., ::-1, ::-1],  # ROTATE_180
    4: lambda a: a[..., ::-1, :],  # FLIP_TOP_BOTTOM
    5: lambda a: np.swapaxes(a, -1, -2),  # TRANSPOSE
    6: lambda a: np.rot90(a, -1, axes=(-2, -1)),  # ROTATE_270
    7: lambda a: np.swapaxes(a, -1, -2)[..., ::-1, ::-1],  # TRANSVERSE
    8: lambda a: np.rot90(a, 1, axes=(-2, -1)),  # ROTATE_90
}


def fit_to_image(array: np.ndarray, image_path: Path, file: Path) -> np.ndarray:
    """``array`` ((H, W) or (n, H, W)) at the size of the image as decoded (EXIF orientation applied, as cv2 and
    ``load_image_rgb`` decode it). An array of that size is used as it is (LISA's behaviour); one of the STORED
    size of an image whose EXIF orientation swaps its sides was annotated on the stored pixels and is turned
    upright with the image (LISA would misalign it); any other size is a DataError naming ``file``."""
    stored, orientation = read_image_geometry(image_path)
    decoded = stored[::-1] if orientation in SIDE_SWAPPING_ORIENTATIONS else stored
    if array.shape[-2:] == decoded:
        return array
    if array.shape[-2:] == stored:
        return np.ascontiguousarray(_UPRIGHT[orientation](array))
    height, width = array.shape[-2:]
    raise DataError(file, f"annotation is {width}x{height}, its image {image_path.name} {decoded[1]}x{decoded[0]}")


def sample_targets(items: Sequence[Any], rng: random.Random, max_targets: int) -> list[Any]:
    """LISA's choice: ``max_targets`` items without replacement (random order) when there are at least that
    many, else all of them in their order."""
    if max_targets < 1:
        raise ValueError(f"max_targets must be >= 1, got {max_targets}")
    return rng.sample(list(items), max_targets) if len(items) >= max_targets else list(items)


class LabelPngSource:
    """ADE20K or COCO-Stuff: image i is ``images[i]`` with label PNG ``labels[i]``."""

    kind = SEM_SEG

    def __init__(self, name: str, images: Sequence[Path], labels: Sequence[Path], classes: Sequence[str],
                 remap: Callable[[np.ndarray], np.ndarray]) -> None:
        self.name, self.images, self.labels = name, list(images), list(labels)
        self.classes, self.remap = tuple(classes), remap

    def __len__(self) -> int:
        return len(self.images)

    def label(self, index: int) -> np.ndarray:
        """(H, W) int64 label map of item ``index`` after LISA's remap (255 = ignore), checked against its image."""
        label_path, image_path = self.labels[index], self.images[index]
        raw = read_label_png(label_path)
        if not image_path.is_file():
            raise DataError(image_path, f"image file not found (label {label_path.name})")
        raw = fit_to_image(raw, image_path, label_path)
        label = self.remap(raw)
        bad = label[(label != IGNORE) & ((label < 0) | (label >= len(self.classes)))]
        if bad.size:
            raise DataError(label_path, f"value {int(raw[label == bad[0]][0])} is no {self.name} class "
                                        f"({len(self.classes)} classes)")
        return label

    def draw(self, index: int, rng: random.Random, max_targets: int) -> Draw | None:
        """Up to ``max_targets`` classes present in the label, masks ``label == class`` (255 = ignore)."""
        label = self.label(index)
        present = [c for c in np.unique(label).tolist() if c != IGNORE]
        if not present:
            return None
        chosen = sample_targets(present, rng, max_targets)
        return Draw(str(self.images[index]), [self.classes[c] for c in chosen], class_masks(label, chosen),
                    str(self.labels[index]))


# --------------------------------------------------------------------------- COCO JSON (parts)


def pascal_part_name(name: str) -> tuple[str, str]:
    """LISA's PASCAL-Part class: ``"obj:part"`` -> (obj, part). ValueError unless exactly one ":"."""
    pieces = name.strip().split(":")
    if len(pieces) != 2:
        raise ValueError(f"category name {name!r} is not 'object:part'")
    return pieces[0], pieces[1]


def paco_name(name: str) -> PartName:
    """LISA's PACO-LVIS class: ``"obj"`` -> obj, ``"obj:part"`` -> (obj, part), each cut at "_("."""
    pieces = name.strip().split(":")
    if len(pieces) > 2:
        raise ValueError(f"category name {name!r} has more than one ':'")
    cleaned = [piece.split("_(")[0] for piece in pieces]
    return cleaned[0] if len(cleaned) == 1 else (cleaned[0], cleaned[1])


def phrase(name: PartName, rng: random.Random) -> str:
    """LISA's text of a class: (obj, part) -> "obj part" or "the part of the obj" (1/2 each); a name as is."""
    if isinstance(name, tuple):
        obj, part = name
        return f"{obj} {part}" if rng.random() < 0.5 else f"the {part} of the {obj}"
    return name


def _coco_index(path: Path) -> Any:
    """pycocotools' ``COCO`` over the JSON at ``path`` (read here, so that errors name the file), quietly."""
    from modlisa.data.refer import _pycocotools_mask  # the optional-extra hint

    _pycocotools_mask()
    from pycocotools.coco import COCO

    data = read_json(path)
    if not isinstance(data, dict):
        raise DataError(path, "top level must be an object with images, annotations and categories")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list) or not all(isinstance(x, dict) for x in data[key]):
            raise DataError(path, f"field '{key}' must be a list of objects")
    coco = COCO()
    coco.dataset = data
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            coco.createIndex()
    except (KeyError, TypeError) as err:
        raise DataError(path, f"an image, annotation or category lacks its id / image_id ({err})") from err
    return coco


class CocoPartSource:
    """PASCAL-Part or PACO-LVIS: item i is the i-th image of the JSON, its annotations the targets."""

    kind = SEM_SEG

    def __init__(self, name: str, json_path: Path, image_root: Path, name_of: Callable[[str], PartName]) -> None:
        self.name, self.json_path, self.image_root = name, json_path, image_root
        self.coco = _coco_index(json_path)
        self.class_map: dict[Any, PartName] = {}
        for cat_id, cat in self.coco.cats.items():
            try:
                self.class_map[cat_id] = name_of(str(cat.get("name", "")))
            except ValueError as err:
                raise DataError(json_path, f"category {cat_id}: {err}") from err
        for ann in self.coco.anns.values():
            if ann.get("category_id") not in self.class_map:
                raise DataError(json_path, f"annotation {ann.get('id')} has category_id {ann.get('category_id')!r}, "
                                           "which the categories do not hold")
        self.img_ids = self.coco.getImgIds()

    def __len__(self) -> int:
        return len(self.img_ids)

    def image_path(self, index: int) -> Path:
        """The image file of item ``index`` (``image_root / file_name``)."""
        info = self.coco.imgs[self.img_ids[index]]
        if not isinstance(info.get("file_name"), str):
            raise DataError(self.json_path, f"image {self.img_ids[index]} has no file_name")
        return self.image_root / info["file_name"]

    def mask(self, ann: dict[str, Any], hw: tuple[Any, Any]) -> np.ndarray | None:
        """(H, W) uint8 ``COCO.annToMask(ann)``; None (with a warning) when pycocotools cannot decode it, since
        LISA then skips the item (``except Exception: return self.__getitem__(0)``); DataError naming the JSON
        when its size is not the (height, width) ``hw`` of its image in the JSON."""
        try:
            mask = self.coco.annToMask(ann)
        except Exception as err:  # pycocotools raises IndexError / TypeError / ValueError / KeyError on bad input
            logger.warning("%s: annotation %s: cannot decode segmentation (%s: %s); item skipped, as LISA skips it",
                           self.json_path, ann.get("id"), type(err).__name__, err)
            return None
        if mask.shape != hw:
            raise DataError(self.json_path, f"annotation {ann.get('id')}: mask is {mask.shape[1]}x{mask.shape[0]}, "
                                            f"its image's height / width in the JSON {hw[0]} / {hw[1]}")
        return mask.astype(np.uint8)

    def draw(self, index: int, rng: random.Random, max_targets: int) -> Draw | None:
        """Up to ``max_targets`` annotations of the image, phrased as LISA does, masks from ``annToMask``; None
        for an image without annotations or with a chosen one that cannot be decoded (LISA's fallbacks)."""
        image_id = self.img_ids[index]
        anns = self.coco.loadAnns(self.coco.getAnnIds(imgIds=[image_id]))
        if not anns:
            return None
        chosen = sample_targets(anns, rng, max_targets)
        texts = [phrase(self.class_map[ann["category_id"]], rng) for ann in chosen]
        image_path = self.image_path(index)
        if not image_path.is_file():
            raise DataError(image_path, f"image file not found (image {image_id} of {self.json_path.name})")
        info = self.coco.imgs[image_id]
        masks = [self.mask(ann, (info.get("height"), info.get("width"))) for ann in chosen]
        if any(mask is None for mask in masks):
            return None
        masks = np.stack(masks)
        return Draw(str(image_path), texts, fit_to_image(masks, image_path, self.json_path), str(self.json_path))


# --------------------------------------------------------------------------- factory


def _require(path: Path, what: str, layout: str) -> Path:
    """``path`` when it exists, else DataError naming it with the expected layout."""
    if not path.exists():
        raise DataError(path, f"{what} not found; expected layout (LISA's README): {layout}")
    return path


def _ade20k(root: Path) -> LabelPngSource:
    """LISA's ``init_ade20k``: the sorted ``*.jpg`` of images/training, each with annotations/training/<id>.png."""
    images_dir = _require(root / ADE_IMAGES, "ADE20K image folder", LAYOUTS["ade20k"])
    labels_dir = _require(root / ADE_LABELS, "ADE20K annotation folder", LAYOUTS["ade20k"])
    images = sorted(p for p in images_dir.iterdir() if p.name.endswith(".jpg"))
    if not images:
        raise DataError(images_dir, "no *.jpg images")
    labels = [labels_dir / f"{p.name[:-4]}.png" for p in images]
    return LabelPngSource("ade20k", images, labels, ade20k_classes(), ade20k_label)


def _cocostuff(root: Path) -> LabelPngSource:
    """LISA's ``init_cocostuff``: every ``*.png`` of cocostuff/train2017 (sorted here), its image the
    same-named ``.jpg`` in coco/train2017."""
    labels_dir = _require(root / COCOSTUFF_LABELS, "COCO-Stuff label folder", LAYOUTS["cocostuff"])
    images_dir = _require(root / COCO_IMAGES, "COCO train2017 image folder", LAYOUTS["cocostuff"])
    labels = sorted(labels_dir.glob("*.png"))
    if not labels:
        raise DataError(labels_dir, "no *.png label files")
    images = [images_dir / f"{p.stem}.jpg" for p in labels]
    return LabelPngSource("cocostuff", images, labels, cocostuff_classes(), cocostuff_label)


def sem_seg_source(root: str | Path, name: str) -> LabelPngSource | CocoPartSource:
    """The ``sem_seg`` source ``name`` (ade20k, cocostuff, pascal_part, paco_lvis: LISA's names) under ROOT,
    LISA's ``dataset`` folder. DataError naming a missing folder / JSON; ValueError for an unknown name."""
    root = Path(root)
    if name == "ade20k":
        return _ade20k(root)
    if name == "cocostuff":
        return _cocostuff(root)
    if name == "pascal_part":
        json_path = _require(root / PASCAL_PART_JSON, "PASCAL-Part train.json", LAYOUTS[name])
        images = _require(root / PASCAL_PART_IMAGES, "PASCAL-Part image folder", LAYOUTS[name])
        return CocoPartSource(name, json_path, images, pascal_part_name)
    if name == "paco_lvis":
        json_path = _require(root / PACO_JSON, "PACO-LVIS annotation file", LAYOUTS[name])
        images = _require(root / PACO_IMAGES, "COCO image folder", LAYOUTS[name])
        return CocoPartSource(name, json_path, images, paco_name)
    raise ValueError(f"unknown sem_seg dataset {name!r}; choose from {', '.join(DATASETS)}")
