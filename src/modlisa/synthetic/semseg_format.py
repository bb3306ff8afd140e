"""The synthetic scenes written in the real on-disk formats of LISA's semantic-segmentation sources.

``make_semseg_dataset(OUT, dataset)`` writes, under OUT as LISA's ``dataset`` folder (``modlisa.data.sem_seg``):

- ``ade20k``: ``ade20k/images/training/ADE_train_%08d.jpg`` + ``ade20k/annotations/training/<same>.png``, label
  values as ADEChallengeData2016 stores them (class i of LISA's list = value i + 1): the background is "wall",
  a ``FRAME``-pixel border is 0 ("other", ignored), each shape is the ADE class ``ADE20K_KINDS[kind]``;
- ``cocostuff``: ``cocostuff/train2017/%012d.png`` + ``coco/train2017/%012d.jpg``, values as the
  stuffthingmaps store them (class i of LISA's list = value i): the upper half of the background is "sky",
  the lower half "wall-other" (a "-" class, which LISA ignores), the border 255 (unlabeled), shapes
  ``COCOSTUFF_KINDS[kind]``;
- ``pascal_part``: ``vlpart/pascal_part/train.json`` + ``vlpart/pascal_part/VOCdevkit/VOC2010/JPEGImages/
  2008_%06d.jpg``, every shape one annotation of the "obj:part" category ``PASCAL_PART_KINDS[kind]``;
- ``paco_lvis``: ``vlpart/paco/annotations/paco_lvis_v1_train.json`` + ``coco/train2017/%012d.jpg`` (file_name
  "train2017/%012d.jpg"), categories in PACO's style ``PACO_KINDS[kind]`` ("car_(automobile):wheel", "bowl").

Shapes are painted with ``render.rasterise`` (LISA's own polygon raster), so each class's pixels are known from
the scene's polygons. COCO segmentations are polygons, compressed RLE and uncompressed RLE in turn (as the
refer writer does: ``refer_format.coco_annotation``). Image ids of different formats never collide, so all
formats may share one OUT. Output depends only on the arguments.
"""

from __future__ import annotations

import json
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
    PACO_JSON,
    PASCAL_PART_IMAGES,
    PASCAL_PART_JSON,
    ade20k_classes,
    cocostuff_classes,
)
from modlisa.synthetic.dataset import _image_dims, _validate
from modlisa.synthetic.options import SceneOptions
from modlisa.synthetic.refer_format import coco_annotation, save_scene_jpeg
from modlisa.synthetic.render import rasterise
from modlisa.synthetic.scene import KINDS, Scene, make_scene

SEMSEG_FORMATS = ("ade20k", "cocostuff", "pascal_part", "paco_lvis")
FRAME = 2  # pixels of ignored border in the label PNGs
# synthetic kind -> the class (a name of LISA's list) or the category name (the real datasets' style)
ADE20K_KINDS = {"circle": "ball", "oval": "plate", "square": "box", "rectangle": "signboard", "triangle": "tent",
                "star": "flag", "hexagon": "clock"}
ADE20K_BACKGROUND = "wall"
COCOSTUFF_KINDS = {"circle": "sports ball", "oval": "donut", "square": "tv", "rectangle": "book",
                   "triangle": "kite", "star": "frisbee", "hexagon": "clock"}
COCOSTUFF_BACKGROUND = ("sky", "wall-other")  # upper half, lower half
PASCAL_PART_KINDS = {"circle": "car:wheel", "oval": "bird:head", "square": "tvmonitor:screen",
                     "rectangle": "bus:license plate", "triangle": "aeroplane:tail", "star": "cat:ear",
                     "hexagon": "bottle:cap"}
PACO_KINDS = {"circle": "car_(automobile):wheel", "oval": "mug:handle", "square": "television_set:screen",
              "rectangle": "book", "triangle": "trash_can:lid", "star": "bottle:cap", "hexagon": "bowl"}
FIRST_IMAGE_ID = {"ade20k": 1, "cocostuff": 1, "pascal_part": 1, "paco_lvis": 100_000}


def ade20k_label_png(scene: Scene) -> np.ndarray:
    """(H, W) uint8 ADE20K label values of ``scene``: "wall" background, 0 border, shapes by ``ADE20K_KINDS``."""
    classes = ade20k_classes()
    label = np.full((scene.height, scene.width), classes.index(ADE20K_BACKGROUND) + 1, dtype=np.uint8)
    _frame(label, 0)
    for obj in scene.objects:
        label[rasterise(obj.points, scene.height, scene.width)] = classes.index(ADE20K_KINDS[obj.kind]) + 1
    return label


def cocostuff_label_png(scene: Scene) -> np.ndarray:
    """(H, W) uint8 COCO-Stuff label values: "sky" above, "wall-other" below, 255 border, shapes by kind."""
    classes = cocostuff_classes()
    upper, lower = (classes.index(name) for name in COCOSTUFF_BACKGROUND)
    label = np.full((scene.height, scene.width), lower, dtype=np.uint8)
    label[: scene.height // 2] = upper
    _frame(label, IGNORE)
    for obj in scene.objects:
        label[rasterise(obj.points, scene.height, scene.width)] = classes.index(COCOSTUFF_KINDS[obj.kind])
    return label


def _frame(label: np.ndarray, value: int) -> None:
    """Set the ``FRAME``-pixel border of ``label`` to ``value``."""
    label[:FRAME], label[-FRAME:], label[:, :FRAME], label[:, -FRAME:] = value, value, value, value


def _paths(root: Path, dataset: str, image_id: int) -> tuple[Path, Path | None, str]:
    """(image path, label PNG path or None, COCO file_name) of one image."""
    if dataset == "ade20k":
        stem = f"ADE_train_{image_id:08d}"
        return root / ADE_IMAGES / f"{stem}.jpg", root / ADE_LABELS / f"{stem}.png", f"{stem}.jpg"
    if dataset == "cocostuff":
        return root / COCO_IMAGES / f"{image_id:012d}.jpg", root / COCOSTUFF_LABELS / f"{image_id:012d}.png", ""
    if dataset == "pascal_part":
        file_name = f"2008_{image_id:06d}.jpg"
        return root / PASCAL_PART_IMAGES / file_name, None, file_name
    file_name = f"train2017/{image_id:012d}.jpg"
    return root / "coco" / file_name, None, file_name


def _categories(dataset: str) -> list[dict[str, Any]]:
    """The COCO categories of a part dataset: one per synthetic kind, ids 1.. in ``KINDS`` order."""
    names = PASCAL_PART_KINDS if dataset == "pascal_part" else PACO_KINDS
    return [{"id": i + 1, "name": names[kind], "supercategory": names[kind].split(":")[0]}
            for i, kind in enumerate(KINDS)]


def make_semseg_dataset(
    out_dir: str | Path,
    *,
    dataset: str = "ade20k",
    seed: int = 0,
    num_images: int = 8,
    image_size: int = 128,
    options: SceneOptions | None = None,
) -> dict[str, Any]:
    """Write ``num_images`` scenes of ``dataset`` (ade20k, cocostuff, pascal_part, paco_lvis) under ``out_dir``.

    Returns {dataset, images (count), annotation (the JSON or label folder), image_dir, items: [{image, label
    (PNG path or None), image_id, hw, objects: [(class or category name, polygon [[x, y], ...]), ...]}]}: the
    known truth of every image."""
    if dataset not in SEMSEG_FORMATS:
        raise ValueError(f"unknown sem_seg format {dataset!r}; choose from {', '.join(SEMSEG_FORMATS)}")
    _validate(seed, {"train": num_images}, image_size)
    options = options or SceneOptions()
    root = Path(out_dir)
    stream = 20 + SEMSEG_FORMATS.index(dataset)  # apart from ReasonSeg's (0-2) and refer's (10+) generators
    names = {"ade20k": ADE20K_KINDS, "cocostuff": COCOSTUFF_KINDS, "pascal_part": PASCAL_PART_KINDS,
             "paco_lvis": PACO_KINDS}[dataset]
    items, images, annotations = [], [], []
    for index in range(num_images):
        rng = np.random.default_rng([seed, stream, index])
        width, height = _image_dims(rng, image_size)
        scene = make_scene(rng, width, height, options)
        image_id = FIRST_IMAGE_ID[dataset] + index
        image_path, label_path, file_name = _paths(root, dataset, image_id)
        save_scene_jpeg(rng, scene, image_path)
        if label_path is not None:
            label = ade20k_label_png(scene) if dataset == "ade20k" else cocostuff_label_png(scene)
            label_path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(label, "L").save(label_path, format="PNG")
        else:
            images.append({"id": image_id, "file_name": file_name, "height": height, "width": width})
            annotations += [coco_annotation(image_id * 100 + j, image_id, KINDS.index(obj.kind) + 1, obj, scene)
                            for j, obj in enumerate(scene.objects)]
        items.append({"image": str(image_path), "label": None if label_path is None else str(label_path),
                      "image_id": image_id, "hw": (height, width),
                      "objects": [(names[obj.kind], [[float(x), float(y)] for x, y in obj.points])
                                  for obj in scene.objects]})
    if dataset in ("ade20k", "cocostuff"):
        annotation = root / (ADE_LABELS if dataset == "ade20k" else COCOSTUFF_LABELS)
    else:
        annotation = root / (PASCAL_PART_JSON if dataset == "pascal_part" else PACO_JSON)
        annotation.parent.mkdir(parents=True, exist_ok=True)
        data = {"images": images, "annotations": annotations, "categories": _categories(dataset)}
        annotation.write_text(json.dumps(data) + "\n", encoding="utf-8")
    return {"dataset": dataset, "images": num_images, "annotation": str(annotation),
            "image_dir": str(Path(items[0]["image"]).parent), "items": items}
