"""The synthetic scenes written in the ``refer`` layout (refCOCO & co., see ``modlisa.data.refer``).

``make_refer_dataset(OUT, dataset="refcoco")`` writes ``OUT/<dataset>/refs(<split_by>).p`` (a pickled list of
refs with refer's keys), ``OUT/<dataset>/instances.json`` (COCO images / annotations / categories) and the
JPEGs under ``OUT/images/mscoco/images/train2014/COCO_train2014_%012d.jpg`` (refclef:
``OUT/images/saiapr_tc-12/<NN>/images/<id>.jpg``, a modlisa naming: the reader only joins ``file_name``).

Every shape of a scene is one COCO annotation (category = its kind); every shape a short phrase designates
uniquely is one ref, with up to 3 of its phrasings as sentences. Segmentations are the scene polygons
(``[x1, y1, x2, y2, ...]``), except that every 3rd annotation (ids with id % 3 == 1) is a compressed RLE and
every 3rd (id % 3 == 2) an uncompressed one (``iscrowd`` 1, as COCO stores crowds): both RLEs encode
``render.rasterise`` of the polygon, so their target masks are known without pycocotools. Nothing here needs
pycocotools. Output depends only on the arguments.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from modlisa.synthetic.dataset import MAX_SCENE_ATTEMPTS, _image_dims, _validate
from modlisa.synthetic.options import SceneOptions
from modlisa.synthetic.phrasing import phrasings
from modlisa.synthetic.queries import QuerySpec, choose_query
from modlisa.synthetic.render import rasterise, render
from modlisa.synthetic.scene import KINDS, Scene, SceneObject, make_scene

# the refer datasets: split_by (LISA's choice) and the split names of that split_by
REFER_SPLITS = {
    "refcoco": ("unc", ("train", "val", "testA", "testB")),
    "refcoco+": ("unc", ("train", "val", "testA", "testB")),
    "refcocog": ("umd", ("train", "val", "test")),
    "refclef": ("unc", ("train", "val", "testA", "testB")),
}
SENTENCES_PER_REF = 3
PICKLE_PROTOCOL = 2  # the protocol of the published refs files (written by Python 2)


def rle_counts(mask: np.ndarray) -> list[int]:
    """COCO run lengths of a binary (H, W) mask: column-major, starting with a run of zeros."""
    flat = np.asarray(mask, dtype=bool).flatten(order="F")
    changes = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate([[0], changes, [flat.size]])
    counts = np.diff(bounds).tolist()
    return ([0] + counts) if flat.size and flat[0] else counts


def rle_string(counts: list[int]) -> str:
    """COCO's compressed RLE string of ``counts`` (maskApi.c ``rleToString``: 5-bit groups, delta from
    counts[i - 2] for i > 2, each char offset by 48)."""
    chars = []
    for i, count in enumerate(counts):
        x = count - counts[i - 2] if i > 2 else count
        more = True
        while more:
            c = x & 0x1F
            x >>= 5
            more = x != -1 if c & 0x10 else x != 0
            if more:
                c |= 0x20
            chars.append(chr(c + 48))
    return "".join(chars)


def _image_file_name(dataset: str, image_id: int) -> str:
    if dataset == "refclef":
        return f"{image_id // 1000:02d}/images/{image_id}.jpg"
    return f"COCO_train2014_{image_id:012d}.jpg"


def coco_segmentation(ann_id: int, points: Any, scene: Scene) -> tuple[Any, int]:
    """(segmentation, iscrowd) of one shape: a polygon, or (by ``ann_id % 3``) a compressed / uncompressed RLE."""
    kind = ann_id % 3
    if kind == 0:
        return [[round(float(v), 2) for point in points for v in point]], 0
    counts = rle_counts(rasterise(points, scene.height, scene.width))
    size = [scene.height, scene.width]
    if kind == 1:
        return {"size": size, "counts": rle_string(counts)}, 0
    return {"size": size, "counts": counts}, 1


def save_scene_jpeg(rng: np.random.Generator, scene: Scene, path: Path) -> None:
    """``render(rng, scene)`` as a JPEG at ``path`` (quality 95, no chroma subsampling), folders created."""
    path.parent.mkdir(parents=True, exist_ok=True)
    render(rng, scene).save(path, format="JPEG", quality=95, subsampling=0)


def coco_annotation(ann_id: int, image_id: int, category_id: int, obj: SceneObject, scene: Scene
                    ) -> dict[str, Any]:
    """The COCO annotation of one shape: ``coco_segmentation``, area, iscrowd and [x, y, w, h] bbox."""
    segmentation, iscrowd = coco_segmentation(ann_id, obj.points, scene)
    pts = np.asarray(obj.points)
    x0, y0 = pts.min(axis=0)
    x1, y1 = pts.max(axis=0)
    return {"id": ann_id, "image_id": image_id, "category_id": category_id, "segmentation": segmentation,
            "area": round(obj.area, 2), "iscrowd": iscrowd,
            "bbox": [round(float(v), 2) for v in (x0, y0, x1 - x0, y1 - y0)]}


def _sentences(texts: list[str], first_id: int) -> list[dict[str, Any]]:
    return [{"tokens": text.lower().split(), "raw": text, "sent_id": first_id + k, "sent": text.lower()}
            for k, text in enumerate(texts)]


def _scene_with_refs(rng: np.random.Generator, width: int, height: int, options: SceneOptions
                     ) -> tuple[Scene, list[tuple[QuerySpec, int] | None]]:
    """A scene with at least one shape that a short phrase designates uniquely, and each shape's phrase."""
    for _ in range(MAX_SCENE_ATTEMPTS):
        scene = make_scene(rng, width, height, options)
        chosen = [choose_query(rng, scene, False, targets=[j]) for j in range(len(scene.objects))]
        if any(c is not None for c in chosen):
            return scene, chosen
    raise RuntimeError(f"no scene with a uniquely described shape after {MAX_SCENE_ATTEMPTS} attempts")


def make_refer_dataset(
    out_dir: str | Path,
    *,
    dataset: str = "refcoco",
    seed: int = 0,
    num_train: int = 4,
    num_val: int = 2,
    num_test: int = 2,
    image_size: int = 128,
    options: SceneOptions | None = None,
) -> dict[str, Any]:
    """Write ``dataset`` in the refer layout under ``out_dir``; ``num_test`` images go to EACH test split
    (refcoco: testA and testB). Returns {dataset, refs, instances, image_dir, splits: {split: refs},
    images, annotations (counts), polygons: {ann_id: the shape's [[x, y], ...]} (the known truth)}."""
    if dataset not in REFER_SPLITS:
        raise ValueError(f"unknown refer dataset {dataset!r}; choose from {', '.join(REFER_SPLITS)}")
    _validate(seed, {"train": num_train, "val": num_val, "test": num_test}, image_size)
    options = options or SceneOptions()
    split_by, splits = REFER_SPLITS[dataset]
    root = Path(out_dir)
    folder = root / dataset
    images_root = root / ("images/saiapr_tc-12" if dataset == "refclef" else "images/mscoco/images/train2014")
    counts = {s: num_train if s == "train" else num_val if s == "val" else num_test for s in splits}
    images, annotations, refs = [], [], []
    polygons: dict[int, list[list[float]]] = {}
    split_refs = dict.fromkeys(splits, 0)
    for split_index, split in enumerate(splits):
        for index in range(counts[split]):
            rng = np.random.default_rng([seed, 10 + split_index, index])  # 10+: apart from ReasonSeg's
            image_id = 1000 * (split_index + 1) + index
            width, height = _image_dims(rng, image_size)
            scene, chosen_per_object = _scene_with_refs(rng, width, height, options)
            file_name = _image_file_name(dataset, image_id)
            save_scene_jpeg(rng, scene, images_root / file_name)
            images.append({"id": image_id, "file_name": file_name, "height": height, "width": width})
            for j, obj in enumerate(scene.objects):
                ann_id = image_id * 100 + j
                category_id = KINDS.index(obj.kind) + 1
                polygons[ann_id] = [[float(x), float(y)] for x, y in obj.points]
                annotations.append(coco_annotation(ann_id, image_id, category_id, obj, scene))
                chosen = chosen_per_object[j]
                if chosen is None:
                    continue
                texts = phrasings(chosen[0])[:SENTENCES_PER_REF]
                ref_id = len(refs)
                sentences = _sentences(texts, ref_id * 10)
                refs.append({"sent_ids": [s["sent_id"] for s in sentences], "file_name":
                             f"{Path(file_name).stem}_{ann_id}.jpg", "ann_id": ann_id, "ref_id": ref_id,
                             "image_id": image_id, "split": split, "sentences": sentences,
                             "category_id": category_id})
                split_refs[split] += 1
    folder.mkdir(parents=True, exist_ok=True)
    refs_path = folder / f"refs({split_by}).p"
    with open(refs_path, "wb") as fh:
        pickle.dump(refs, fh, protocol=PICKLE_PROTOCOL)
    categories = [{"id": i + 1, "name": kind, "supercategory": "shape"} for i, kind in enumerate(KINDS)]
    instances_path = folder / "instances.json"
    instances_path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories})
                              + "\n", encoding="utf-8")
    return {"dataset": dataset, "refs": str(refs_path), "instances": str(instances_path),
            "image_dir": str(images_root), "splits": split_refs, "images": len(images),
            "annotations": len(annotations), "polygons": polygons}
