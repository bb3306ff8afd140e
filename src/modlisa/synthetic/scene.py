"""Scenes: the shapes, colours and sizes of the synthetic images, and their random, non-overlapping layout.

``make_scene`` draws a ``Scene`` (a list of ``SceneObject`` polygons and a background colour) from a
generator; nothing here draws pixels (see ``render``) or asks questions (see ``queries``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from modlisa.synthetic.options import SceneOptions

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "green": (35, 160, 60),
    "blue": (35, 75, 215),
    "yellow": (235, 205, 25),
    "purple": (135, 55, 185),
    "orange": (240, 135, 25),
}
KINDS = ("circle", "oval", "square", "rectangle", "triangle", "star", "hexagon")
SIZES = ("small", "large")
# Equivalent diameter (diameter of the circle of equal area) as a fraction of the shorter image side.
SIZE_RANGES = {"small": (0.14, 0.18), "large": (0.24, 0.30)}
PLACEMENT_GAP = 0.03  # minimum free space between the bounding circles of two objects (x side)


@dataclass(frozen=True)
class SceneObject:
    """One flat shape. ``points``: (n, 2) polygon as [[x, y], ...] float pixels, rounded to 0.01."""

    kind: str
    colour: str
    size: str  # "small" | "large" (size class; areas of the two classes differ by >= 1.7x)
    cx: float
    cy: float
    radius: float  # bounding-circle radius around (cx, cy)
    points: tuple[tuple[float, float], ...]
    rgb: tuple[int, int, int]

    @property
    def area(self) -> float:
        """Polygon area in square pixels (shoelace formula)."""
        return _polygon_area(np.asarray(self.points, dtype=np.float64))

    def attribute(self, key: str) -> str:
        """The value of attribute ``key``: "size", "colour" or "kind"."""
        return {"size": self.size, "colour": self.colour, "kind": self.kind}[key]


@dataclass(frozen=True)
class Scene:
    """An image layout: ``width`` x ``height`` pixels, objects in drawing order, background RGB."""

    width: int
    height: int
    objects: tuple[SceneObject, ...]
    background: tuple[int, int, int]

    @property
    def side(self) -> float:
        """The shorter image side: all margins are fractions of it."""
        return float(min(self.width, self.height))


def _rotate(points: np.ndarray, degrees: float) -> np.ndarray:
    """``points`` rotated by ``degrees`` about the origin."""
    theta = np.deg2rad(degrees)
    rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    return points @ rot.T


def _ring(n: int, radii: Sequence[float], start_deg: float) -> np.ndarray:
    """(n, 2) vertices at angles start + 360k/n, radius radii[k % len(radii)] (y axis points down)."""
    angles = np.deg2rad(start_deg + 360.0 * np.arange(n) / n)
    r = np.asarray([radii[k % len(radii)] for k in range(n)], dtype=np.float64)
    return np.stack([r * np.cos(angles), r * np.sin(angles)], axis=1)


def unit_polygon(kind: str, rng: np.random.Generator) -> np.ndarray:
    """(n, 2) outline of ``kind`` centred on the origin with its farthest vertex at distance 1."""
    if kind == "circle":
        return _ring(int(rng.integers(24, 33)), [1.0], rng.uniform(0, 360))
    if kind == "oval":
        ring = _ring(int(rng.integers(24, 33)), [1.0], rng.uniform(0, 360)) * np.array([1.0, 0.6])
        return _rotate(ring, rng.choice([0.0, 90.0]) + rng.uniform(-10, 10))
    if kind == "square":
        return _ring(4, [1.0], 45.0 + rng.uniform(-12, 12))
    if kind == "rectangle":
        rect = np.array([[-0.874, -0.485], [0.874, -0.485], [0.874, 0.485], [-0.874, 0.485]])
        return _rotate(rect, rng.choice([0.0, 90.0]) + rng.uniform(-8, 8))
    if kind == "triangle":
        return _ring(3, [1.0], -90.0 + rng.uniform(-8, 8))
    if kind == "star":
        return _ring(10, [1.0, 0.45], -90.0 + rng.uniform(-8, 8))
    if kind == "hexagon":
        return _ring(6, [1.0], rng.choice([0.0, 30.0]) + rng.uniform(-5, 5))
    raise ValueError(f"unknown shape kind {kind!r}; expected one of {KINDS}")


def _polygon_area(points: np.ndarray) -> float:
    """Area of an (n, 2) polygon (shoelace formula)."""
    x, y = points[:, 0], points[:, 1]
    return float(abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))) / 2.0)


def _pick_attribute(rng: np.random.Generator, options: Sequence[str], used: list[str], lookalike: float) -> str:
    """A value from ``options``; with probability ``lookalike`` one already used (to create look-alikes)."""
    if used and rng.random() < lookalike:
        return str(used[int(rng.integers(len(used)))])
    return str(options[int(rng.integers(len(options)))])


def _place(
    rng: np.random.Generator, radius: float, width: int, height: int, placed: list[SceneObject], gap: float
) -> tuple[float, float] | None:
    """A centre where a bounding circle of ``radius`` fits in the image without touching ``placed``."""
    pad = 2.0
    if 2 * (radius + pad) >= min(width, height):
        return None
    for _ in range(100):
        cx = rng.uniform(radius + pad, width - radius - pad)
        cy = rng.uniform(radius + pad, height - radius - pad)
        if all(np.hypot(cx - o.cx, cy - o.cy) >= radius + o.radius + gap for o in placed):
            return float(cx), float(cy)
    return None


def _make_object(
    rng: np.random.Generator, width: int, height: int, placed: list[SceneObject], lookalike: float
) -> SceneObject | None:
    """Draw one object's attributes and place it; ``None`` when it does not fit."""
    side = float(min(width, height))
    colour = _pick_attribute(rng, list(COLOURS), [o.colour for o in placed], lookalike)
    kind = _pick_attribute(rng, KINDS, [o.kind for o in placed], lookalike)
    size = SIZES[int(rng.integers(2))]
    unit = unit_polygon(kind, rng)
    diameter = rng.uniform(*SIZE_RANGES[size]) * side
    scale = float(np.sqrt(np.pi * (diameter / 2) ** 2 / _polygon_area(unit)))
    centre = _place(rng, scale, width, height, placed, PLACEMENT_GAP * side)
    if centre is None:
        return None
    pts = np.round(unit * scale + np.asarray(centre), 2)
    rgb = tuple(int(c) for c in np.clip(np.asarray(COLOURS[colour]) + rng.integers(-10, 11, 3), 0, 255))
    return SceneObject(
        kind=kind,
        colour=colour,
        size=size,
        cx=centre[0],
        cy=centre[1],
        radius=scale,
        points=tuple((float(x), float(y)) for x, y in pts),
        rgb=rgb,  # type: ignore[arg-type]
    )


def make_scene(rng: np.random.Generator, width: int, height: int, options: SceneOptions | None = None) -> Scene:
    """A random scene with ``options.min_objects``-``max_objects`` non-overlapping objects (default 2-5;
    fewer are placed when they do not fit, never fewer than min(2, min_objects))."""
    options = options or SceneOptions()
    while True:
        placed: list[SceneObject] = []
        for _ in range(int(rng.integers(options.min_objects, options.max_objects + 1))):
            obj = _make_object(rng, width, height, placed, options.lookalike_prob)
            if obj is not None:
                placed.append(obj)
        if len(placed) >= min(2, options.min_objects):
            break
    grey = int(rng.integers(200, 236))
    background = tuple(int(c) for c in np.clip(grey + rng.integers(-6, 7, 3), 0, 255))
    return Scene(width, height, tuple(placed), background)  # type: ignore[arg-type]
