"""Where LISA's training sources lie under its ``dataset`` folder, and LISA's class lists (no heavy imports:
the readers in ``modlisa.data.sem_seg`` / ``modlisa.data.vqa`` and the synthetic writers share it).

The folders are those of LISA's README ("Training Data Preparation") joined as LISA's ``utils/sem_seg_dataset.py``
and ``utils/vqa_dataset.py`` join them. The class lists are LISA's ``utils/ade20k_classes.json`` and
``utils/cocostuff_classes.txt``, shipped unchanged in ``modlisa/data/classes``.
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from pathlib import Path

IGNORE = 255  # LISA's ignore_label
ADE_IMAGES, ADE_LABELS = Path("ade20k", "images", "training"), Path("ade20k", "annotations", "training")
COCO_IMAGES, COCOSTUFF_LABELS = Path("coco", "train2017"), Path("cocostuff", "train2017")
PASCAL_PART_JSON = Path("vlpart", "pascal_part", "train.json")
PASCAL_PART_IMAGES = Path("vlpart", "pascal_part", "VOCdevkit", "VOC2010", "JPEGImages")
PACO_JSON = Path("vlpart", "paco", "annotations", "paco_lvis_v1_train.json")
PACO_IMAGES = Path("coco")  # PACO's file_name is "train2017/<id>.jpg"
LLAVA_JSON = Path("llava_dataset", "llava_instruct_150k.json")
LLAVA_IMAGES = COCO_IMAGES

LAYOUTS = {
    "ade20k": "ROOT/ade20k/images/training/<id>.jpg + ROOT/ade20k/annotations/training/<id>.png",
    "cocostuff": "ROOT/cocostuff/train2017/<id>.png + ROOT/coco/train2017/<id>.jpg",
    "pascal_part": "ROOT/vlpart/pascal_part/train.json + ROOT/vlpart/pascal_part/VOCdevkit/VOC2010/JPEGImages/",
    "paco_lvis": "ROOT/vlpart/paco/annotations/paco_lvis_v1_train.json + ROOT/coco/train2017/ (file_name "
                 "train2017/<id>.jpg)",
    "llava_instruct": "ROOT/llava_dataset/llava_instruct_150k.json + ROOT/coco/train2017/",
}


@cache
def ade20k_classes() -> tuple[str, ...]:
    """LISA's ``utils/ade20k_classes.json``: the 150 ADE20K class names; class i is label value i + 1."""
    text = resources.files("modlisa.data").joinpath("classes", "ade20k_classes.json").read_text("utf-8")
    return tuple(json.loads(text))


@cache
def cocostuff_classes() -> tuple[str, ...]:
    """LISA's ``utils/cocostuff_classes.txt`` read as LISA reads it: every line but the first ("0: unlabeled"),
    the text after ": ". 182 names; class i is label value i."""
    text = resources.files("modlisa.data").joinpath("classes", "cocostuff_classes.txt").read_text("utf-8")
    return tuple(line.strip().split(": ")[-1] for line in text.splitlines(keepends=True)[1:])
