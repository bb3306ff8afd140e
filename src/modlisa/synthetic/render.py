"""Pixels: the image of a scene (``render``), polygon masks (``rasterise``), the extra ignore/flag shapes."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
from PIL import Image, ImageDraw

from modlisa.synthetic.scene import Scene, SceneObject

EXTRA_SHAPE_PROB = 0.10  # probability of an "ignore" shape, and independently of a "flag" shape

Points = tuple[tuple[float, float], ...]


def rasterise(points: Sequence[Sequence[float]], height: int, width: int) -> np.ndarray:
    """(H, W) bool mask of one polygon, drawn like LISA: int32-truncated points, outline + fill."""
    mask = np.zeros((height, width), dtype=np.uint8)
    poly = np.asarray(points, dtype=np.float64).astype(np.int32)
    cv2.polylines(mask, [poly], isClosed=True, color=1, thickness=1)
    cv2.fillPoly(mask, [poly], color=1)
    return mask.astype(bool)


def _box_around(scene: Scene, obj: SceneObject, pad: float) -> Points:
    """The bounding box of ``obj`` grown by ``pad`` pixels and clipped to the image, as 4 points."""
    pts = np.asarray(obj.points)
    x0, y0 = np.maximum(pts.min(axis=0) - pad, 0.0)
    x1, y1 = np.minimum(pts.max(axis=0) + pad, [scene.width - 1.0, scene.height - 1.0])
    corners = [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]
    return tuple((round(float(x), 2), round(float(y), 2)) for x, y in corners)


def _extra_polygon(rng: np.random.Generator, scene: Scene, target: int) -> Points:
    """A region around (or, as a fallback, exactly over) a non-target object that leaves the target's
    pixels untouched."""
    others = [j for j in range(len(scene.objects)) if j != target]
    obj = scene.objects[others[int(rng.integers(len(others)))]]
    target_mask = rasterise(scene.objects[target].points, scene.height, scene.width)
    for pad in (rng.uniform(0.03, 0.08) * scene.side, 1.0):
        box = _box_around(scene, obj, pad)
        if not (rasterise(box, scene.height, scene.width) & target_mask).any():
            return box
    return obj.points


def extra_shapes(rng: np.random.Generator, scene: Scene, target: int) -> tuple[tuple[str, Points], ...]:
    """About 10% of images get an "ignore" region and, independently, about 10% a "flag" shape."""
    extras = []
    for label in ("ignore", "flag"):
        if rng.random() < EXTRA_SHAPE_PROB:
            extras.append((label, _extra_polygon(rng, scene, target)))
    return tuple(extras)


def render(rng: np.random.Generator, scene: Scene, supersample: int = 2) -> Image.Image:
    """The scene as an RGB image: anti-aliased flat shapes, a faint gradient and noise on top."""
    w, h = scene.width, scene.height
    big = Image.new("RGB", (w * supersample, h * supersample), scene.background)
    draw = ImageDraw.Draw(big)
    for obj in scene.objects:
        draw.polygon([(x * supersample, y * supersample) for x, y in obj.points], fill=obj.rgb)
    pixels = np.asarray(big.resize((w, h), Image.Resampling.BOX), dtype=np.float64)
    gradient = np.linspace(-1, 1, w)[None, :, None] * rng.uniform(-6, 6)
    gradient = gradient + np.linspace(-1, 1, h)[:, None, None] * rng.uniform(-6, 6)
    noise = rng.normal(0.0, 2.5, size=(h, w, 1))
    return Image.fromarray(np.clip(np.rint(pixels + gradient + noise), 0, 255).astype(np.uint8), "RGB")
