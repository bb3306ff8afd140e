"""Data-pipeline throughput: the training DataLoader's samples/s with N workers, and the cost of each stage
of one large (4000 x 3000) ReasonSeg item (JPEG decode, LISA mask rasterisation, SAM and vision transforms,
the per-query mask copies, the whole ``__getitem__``)."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, RandomSampler

logger = logging.getLogger(__name__)

LARGE_HW = (3000, 4000)


def loader_throughput(dataset: Any, collate: Any, batch_size: int, workers: int, batches: int,
                      seed: int = 0) -> dict[str, Any]:
    """Iterate ``batches`` batches of a DataLoader over ``dataset`` (random order, with replacement).

    Returns images/s over the whole run (worker start-up included) and after the first batch.
    """
    sampler = RandomSampler(dataset, replacement=True, num_samples=batches * batch_size,
                            generator=torch.Generator().manual_seed(seed))
    loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler, collate_fn=collate, num_workers=workers)
    start = time.perf_counter()
    first_s, first_images, images, count = 0.0, 0, 0, 0
    for batch in loader:
        images += batch.num_images
        count += 1
        if count == 1:
            first_s, first_images = time.perf_counter() - start, images
    total = time.perf_counter() - start
    steady = total - first_s
    return {"workers": workers, "batches": count, "images": images, "seconds": total, "first_batch_s": first_s,
            "samples_per_s": images / total if total else 0.0,
            "samples_per_s_after_first_batch": (images - first_images) / steady if steady > 0 else 0.0}


# ---------------------------------------------------------------------- one large image
def _blob(cx: float, cy: float, radius: float, points: int, lobes: int) -> list[list[float]]:
    angle = np.linspace(0.0, 2 * np.pi, points, endpoint=False)
    r = radius * (1.0 + 0.2 * np.sin(lobes * angle))
    return np.stack([cx + r * np.cos(angle), cy + r * np.sin(angle)], axis=1).round(2).tolist()


def write_large_item(root: str | Path, hw: tuple[int, int] = LARGE_HW, polygons: int = 3, points: int = 200,
                     seed: int = 0) -> Path:
    """A one-image ReasonSeg folder ``root/train`` with an (H, W) photo-like JPEG (gradients + noise, q 90)
    and ``polygons`` target/ignore polygons of ``points`` vertices. Returns the split folder."""
    height, width = hw
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    image = np.stack([xx * 255 // width, yy * 255 // height, (xx + yy) * 255 // (height + width)], axis=-1)
    image = np.clip(image + rng.integers(-20, 21, image.shape), 0, 255).astype(np.uint8)
    split = Path(root) / "train"
    split.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(split / "large.jpg", quality=90)
    shapes = []
    for k in range(polygons):
        cx, cy = width * (0.25 + 0.5 * rng.random()), height * (0.25 + 0.5 * rng.random())
        label = "ignore" if k == polygons - 1 and polygons > 1 else "target"
        shapes.append({"label": label, "labels": [label], "shape_type": "polygon", "image_name": "large.jpg",
                       "points": _blob(cx, cy, min(hw) * (0.1 + 0.2 * rng.random()), points, 3 + k),
                       "group_id": None, "group_ids": [None], "flags": {}})
    annotation = {"text": ["the large blob", "the biggest shape", "the main region"], "is_sentence": False,
                  "shapes": shapes}
    (split / "large.json").write_text(json.dumps(annotation), encoding="utf-8")
    return split


def _time(fn: Any, repeats: int) -> tuple[float, Any]:
    fn()
    start = time.perf_counter()
    for _ in range(repeats):
        result = fn()
    return (time.perf_counter() - start) / repeats, result


def large_image_stages(root: str | Path, sam_size: int = 1024, vision_size: int = 224, queries: int = 3,
                       repeats: int = 3, hw: tuple[int, int] = LARGE_HW) -> dict[str, Any]:
    """Seconds per stage of one (H, W) training item and which stage dominates."""
    from modlisa.data.dataset import ReasonSegDataset
    from modlisa.data.reasonseg import load_annotation, load_image_rgb, mask_from_shapes
    from modlisa.data.transforms import SamTransform, VisionTransform

    split = write_large_item(root, hw)
    ann = load_annotation(split / "large.json")
    sam, vision = SamTransform(sam_size), VisionTransform(vision_size)
    stages: dict[str, float] = {}
    stages["jpeg_decode"], image = _time(lambda: load_image_rgb(ann.image_path), repeats)
    stages["mask_rasterise"], mask = _time(lambda: mask_from_shapes(ann.shapes, image.shape[:2]), repeats)
    stages["sam_transform"], _ = _time(lambda: sam(image), repeats)
    stages["vision_transform"], _ = _time(lambda: vision(image), repeats)
    stages["mask_copies"], _ = _time(
        lambda: torch.from_numpy(np.ascontiguousarray(np.repeat(mask[None], queries, axis=0))), repeats)
    dataset = ReasonSegDataset(root, "train", sam, vision, train=True, queries_per_image=queries,
                               explanatory_prob=0.0)
    whole, _ = _time(lambda: dataset[0], repeats)
    return {"image_hw": list(hw), "sam_image_size": sam_size, "img_size": vision_size, "queries": queries,
            "stages_s": stages, "getitem_s": whole, "bottleneck": max(stages, key=stages.get),
            "samples_per_s_one_worker": 1.0 / whole if whole else 0.0}


def large_image_loader(root: str | Path, workers: int, batches: int = 4, batch_size: int = 2, sam_size: int = 1024,
                       vision_size: int = 224, queries: int = 3) -> dict[str, Any]:
    """DataLoader throughput over the large item written by ``write_large_item`` (collate included)."""
    from modlisa.data.collate import make_collate_fn
    from modlisa.data.dataset import ReasonSegDataset
    from modlisa.data.transforms import SamTransform, VisionTransform
    from modlisa.model.tokenizer import build_byte_tokenizer

    if not (Path(root) / "train" / "large.json").is_file():
        write_large_item(root)
    dataset = ReasonSegDataset(root, "train", SamTransform(sam_size), VisionTransform(vision_size), train=True,
                               queries_per_image=queries, explanatory_prob=0.0)
    return loader_throughput(dataset, make_collate_fn(build_byte_tokenizer()), batch_size, workers, batches)
