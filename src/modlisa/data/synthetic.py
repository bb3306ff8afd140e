"""Deterministic synthetic ReasonSeg-format dataset: coloured shapes and queries with exactly one answer.

Each image shows 2-5 non-overlapping flat shapes (circle, oval, square, rectangle, triangle, star,
hexagon) in a few well-separated colours on a light, lightly textured background. Each annotation asks
for exactly one of them, either with a short phrase ("the small red circle", ``is_sentence`` false) or a
reasoning sentence (``is_sentence`` true) that needs colour, shape, size, position or relations ("Which
shape would roll if pushed?", "Find the largest shape to the left of the blue square."). Every query is a
``QuerySpec`` whose meaning ``resolve`` computes from the scene; a query is kept only when ``resolve``
returns exactly the target, with safety margins so that no object is a borderline case.

Files follow SPEC-LISA.md §1: ``{train,val,test}/<name>.jpg`` + ``<name>.json`` and
``explanatory/train.json``. Output depends only on (seed, split, index, image_size): every image has its
own generator seeded from these, JSON is written with a fixed key order, JPEGs carry no metadata.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import shutil
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

from modlisa import __version__

logger = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
SPLIT_IDS = {"train": 0, "val": 1, "test": 2}
MIN_IMAGE_SIZE = 64

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
REL_YES = 0.10  # an object is "left of" an anchor when its centre is this far left of it (x side)
REL_NO = 0.03  # ... and clearly not left of it when it is at most this far left (between: ambiguous)
EXTREME_MARGIN = 0.06  # the extreme object must beat the runner-up by this much (x side)
AREA_RATIO = 1.35  # "largest"/"smaller than": area ratio to the runner-up
NEAREST_RATIO = 1.3  # "closest to": distance ratio of the runner-up to the winner
EXTRA_SHAPE_PROB = 0.10  # probability of an "ignore" shape, and independently of a "flag" shape
EXPLANATORY_PROB = 0.5  # fraction of train images listed in explanatory/train.json
MAX_SCENE_ATTEMPTS = 200


@dataclass(frozen=True)
class SceneOptions:
    """How scenes and queries are drawn (the defaults reproduce the original generator byte for byte).

    min_objects / max_objects: shapes per image (fewer when they do not fit).
    lookalike_prob: chance that a new shape reuses a colour or kind already in the image, so that a
        query must name more than one attribute (and "segment every shape" scores poorly).
    query_types: the query kinds drawn: "attributes" (short phrases) and any of ``LONG_PROPOSERS``; only
        "attributes" makes every query a short phrase (no reasoning sentences).
    targets_per_scene: train split only: each scene is written K times (``<name>_k``), each file asking for
        a different shape, so the same image must be segmented differently for different queries.
    select_by: an attribute every query must pick its target by: a short phrase names it ("the red shape",
        "red circle"), a property sentence is about it ("the colour of fresh grass"); other sentence kinds are
        unaffected. None = any.
    """

    min_objects: int = 2
    max_objects: int = 5
    lookalike_prob: float = 0.35
    query_types: tuple[str, ...] = ()  # empty = every kind
    targets_per_scene: int = 1
    select_by: str | None = None  # "colour" / "kind" / "size": every query picks its target by that attribute

    def __post_init__(self) -> None:
        if not 1 <= self.min_objects <= self.max_objects:
            raise ValueError(f"objects per image must satisfy 1 <= min <= max, got {self.min_objects}-{self.max_objects}")
        if not 0.0 <= self.lookalike_prob <= 1.0:
            raise ValueError(f"lookalike_prob must be in [0, 1], got {self.lookalike_prob}")
        if self.targets_per_scene < 1:
            raise ValueError(f"targets_per_scene must be >= 1, got {self.targets_per_scene}")
        if self.select_by is not None and self.select_by not in KEYS:
            raise ValueError(f"select_by must be one of {', '.join(KEYS)}, got {self.select_by!r}")
        unknown = sorted(set(self.query_types) - set(QUERY_TYPES))
        if unknown:
            raise ValueError(f"unknown query type(s) {', '.join(unknown)}; choose from {', '.join(QUERY_TYPES)}")
        if self.query_types and "attributes" not in self.query_types:
            raise ValueError("query_types must include 'attributes' (the short phrases of half the images)")

    @property
    def has_sentences(self) -> bool:
        """False when ``query_types`` is only "attributes": every query is then a short phrase."""
        return set(self.query_types) != {"attributes"}

# ----------------------------------------------------------------------------------------------------
# Vocabulary
# ----------------------------------------------------------------------------------------------------

KIND_NOUNS = {
    "circle": ("circle", "disc"),
    "oval": ("oval", "ellipse"),
    "square": ("square",),
    "rectangle": ("rectangle",),
    "triangle": ("triangle",),
    "star": ("star",),
    "hexagon": ("hexagon",),
}
KIND_ADJECTIVES = {
    "circle": "circular",
    "oval": "oval-shaped",
    "square": "square",
    "rectangle": "rectangular",
    "triangle": "triangular",
    "star": "star-shaped",
    "hexagon": "hexagonal",
}
SIZE_WORDS = {"small": ("small", "little"), "large": ("large", "big")}
GENERIC_NOUNS = ("shape", "object")
RELATION_WORDS = {
    "left": ("to the left of", "left of"),
    "right": ("to the right of", "right of"),
    "above": ("above", "higher up than"),
    "below": ("below", "underneath"),
}
EXTREME_WORDS = {
    "top": ("highest", ("is closest to the top of the picture", "is nearest to the top edge of the image")),
    "bottom": (
        "lowest",
        ("is closest to the bottom of the picture", "is nearest to the bottom edge of the image"),
    ),
    "left": ("leftmost", ("is closest to the left side of the picture", "is furthest to the left")),
    "right": ("rightmost", ("is closest to the right side of the picture", "is furthest to the right")),
}
SUPERLATIVE_WORDS = {"larger": ("largest", "biggest"), "smaller": ("smallest", "tiniest")}
COMPARATIVE_WORDS = {"larger": ("larger", "bigger"), "smaller": ("smaller",)}
SPACE_WORDS = {"larger": "most", "smaller": "least"}


@dataclass(frozen=True)
class Property:
    """A property that a query can ask for: held by objects of some kinds or of some colours."""

    clauses: tuple[str, ...]  # third-person verb phrases: "would roll if pushed"
    reason: str  # explanation sentence; may use {colour}, {kind}, {a_kind}
    kinds: frozenset[str] = frozenset()
    colours: frozenset[str] = frozenset()

    def holds(self, obj: SceneObject) -> bool:
        return obj.kind in self.kinds or obj.colour in self.colours


def _kind_prop(kinds: set[str], clauses: tuple[str, ...], reason: str) -> Property:
    return Property(clauses=clauses, reason=reason, kinds=frozenset(kinds))


def _colour_prop(colours: set[str], clauses: tuple[str, ...], reason: str) -> Property:
    return Property(clauses=clauses, reason=reason, colours=frozenset(colours))


PROPERTIES: dict[str, Property] = {
    "rolls": _kind_prop(
        {"circle", "oval"},
        (
            "would roll if pushed",
            "could roll away if someone pushed it",
            "has a smooth outline with no corners",
        ),
        "Its outline is round and has no corners, so it would roll if pushed.",
    ),
    "three_corners": _kind_prop(
        {"triangle"},
        ("has exactly three corners", "is made of three straight sides"),
        "It is a triangle, which has three straight sides and three corners.",
    ),
    "five_points": _kind_prop(
        {"star"},
        ("has five pointed tips", "looks like a star in the night sky"),
        "It is a star with five pointed tips.",
    ),
    "six_sides": _kind_prop(
        {"hexagon"},
        ("has six straight sides", "is shaped like a honeycomb cell"),
        "It is a hexagon, with six sides like a honeycomb cell.",
    ),
    "four_corners": _kind_prop(
        {"square", "rectangle"},
        ("has four corners", "has four straight sides"),
        "It is {a_kind}, which has four straight sides and four corners.",
    ),
    "stretched": _kind_prop(
        {"oval", "rectangle"},
        ("is clearly longer in one direction than in the other", "looks stretched rather than even"),
        "It is {a_kind}, which is longer in one direction than in the other.",
    ),
    "tomato": _colour_prop(
        {"red"},
        ("has the colour of a ripe tomato", "is the colour of a fire engine"),
        "It is red, the colour of a ripe tomato.",
    ),
    "grass": _colour_prop(
        {"green"},
        ("has the colour of fresh grass", "is the colour of a leaf in summer"),
        "It is green, like fresh grass.",
    ),
    "sky": _colour_prop(
        {"blue"},
        ("has the colour of a clear sky", "is the colour of the deep sea"),
        "It is blue, like a clear sky.",
    ),
    "banana": _colour_prop(
        {"yellow"},
        ("has the colour of a ripe banana", "is the colour of a lemon"),
        "It is yellow, like a ripe banana.",
    ),
    "plum": _colour_prop(
        {"purple"},
        ("has the colour of a plum", "is the colour of a violet flower"),
        "It is purple, like a plum.",
    ),
    "carrot": _colour_prop(
        {"orange"},
        ("has the colour of a carrot", "is the colour of a pumpkin"),
        "It is orange, like a carrot.",
    ),
    "warm": _colour_prop(
        {"red", "orange", "yellow"},
        ("has a warm colour like fire", "is painted in a warm colour"),
        "Its colour, {colour}, is a warm colour like fire.",
    ),
    "cool": _colour_prop(
        {"blue", "green", "purple"},
        ("has a cool colour like the sea", "is painted in a cool colour"),
        "Its colour, {colour}, is a cool colour like the sea.",
    ),
}

# ----------------------------------------------------------------------------------------------------
# Scenes
# ----------------------------------------------------------------------------------------------------


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
        pts = np.asarray(self.points, dtype=np.float64)
        x, y = pts[:, 0], pts[:, 1]
        return float(abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))) / 2.0)

    def attribute(self, key: str) -> str:
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


# ----------------------------------------------------------------------------------------------------
# Query semantics
# ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Attrs:
    """An attribute filter: every given attribute must match (an empty filter matches everything)."""

    size: str | None = None
    colour: str | None = None
    kind: str | None = None

    def matches(self, obj: SceneObject) -> bool:
        return all(v is None or obj.attribute(k) == v for k, v in self.items())

    def items(self) -> list[tuple[str, str | None]]:
        return [("size", self.size), ("colour", self.colour), ("kind", self.kind)]

    def is_empty(self) -> bool:
        return self.size is None and self.colour is None and self.kind is None


@dataclass(frozen=True)
class QuerySpec:
    """The meaning of one query; ``resolve`` gives the objects it designates.

    type: "attributes" (short phrase) | "property" | "negation" | "superlative" | "extreme" | "relation"
          | "nearest" | "comparison".
    attrs: filter on the candidate objects (the query's head noun, e.g. "red shape").
    prop: key of PROPERTIES ("property").   negated: the attribute the target lacks ("negation").
    direction: "top"/"bottom"/"left"/"right" ("extreme"); "left"/"right"/"above"/"below" (relations).
    anchor: unique description of the reference object ("relation", "nearest", optional "superlative").
    order: "larger" | "smaller" ("superlative", "comparison").
    """

    type: str
    attrs: Attrs = field(default_factory=Attrs)
    prop: str | None = None
    negated: Attrs | None = None
    direction: str | None = None
    anchor: Attrs | None = None
    order: str | None = None


def matching(scene: Scene, attrs: Attrs) -> list[int]:
    """Indices of the objects matching ``attrs``."""
    return [i for i, obj in enumerate(scene.objects) if attrs.matches(obj)]


def _unique(scene: Scene, attrs: Attrs | None) -> int | None:
    found = matching(scene, attrs) if attrs is not None else []
    return found[0] if len(found) == 1 else None


def relation_value(obj: SceneObject, anchor: SceneObject, direction: str, side: float) -> bool | None:
    """Whether ``obj`` lies ``direction`` of ``anchor`` (by centres): True, False or None (borderline)."""
    dx, dy = obj.cx - anchor.cx, obj.cy - anchor.cy
    offset = {"left": -dx, "right": dx, "above": -dy, "below": dy}[direction]
    if offset >= REL_YES * side:
        return True
    if offset <= REL_NO * side:
        return False
    return None


def _candidates(scene: Scene, spec: QuerySpec) -> list[int] | None:
    """Objects matching the head noun, minus the anchor, restricted by the spatial relation if any."""
    cands = matching(scene, spec.attrs)
    if spec.anchor is None:
        return cands
    anchor = _unique(scene, spec.anchor)
    if anchor is None:
        return None
    cands = [i for i in cands if i != anchor]
    if spec.direction is None or spec.type == "nearest":
        return cands
    ref = scene.objects[anchor]
    values = [relation_value(scene.objects[i], ref, spec.direction, scene.side) for i in cands]
    if any(v is None for v in values):
        return None
    return [i for i, v in zip(cands, values) if v]


def _clear_winner(
    cands: list[int], keys: Sequence[Callable[[int], float]], margin: Callable[[float, float], bool]
) -> list[int] | None:
    """The candidate with the smallest value of every key, beating the runner-up by ``margin``."""
    if len(cands) < 2:
        return None
    winners = []
    for key in keys:
        ranked = sorted(cands, key=key)
        if not margin(key(ranked[0]), key(ranked[1])):
            return None
        winners.append(ranked[0])
    return [winners[0]] if len(set(winners)) == 1 else None


def _extreme_keys(scene: Scene, direction: str) -> list[Callable[[int], float]]:
    """Two measures (centre and outermost vertex), smaller = closer to the ``direction`` edge."""
    axis, sign = {"left": (0, 1.0), "right": (0, -1.0), "top": (1, 1.0), "bottom": (1, -1.0)}[direction]

    def centre(i: int) -> float:
        obj = scene.objects[i]
        return sign * (obj.cx if axis == 0 else obj.cy)

    def edge(i: int) -> float:
        return min(sign * p[axis] for p in scene.objects[i].points)

    return [centre, edge]


def _resolve_superlative(scene: Scene, spec: QuerySpec, cands: list[int]) -> list[int] | None:
    areas = {i: scene.objects[i].area for i in cands}
    if spec.order == "larger":
        return _clear_winner(cands, [lambda i: -areas[i]], lambda a, b: -a >= AREA_RATIO * -b)
    return _clear_winner(cands, [lambda i: areas[i]], lambda a, b: b >= AREA_RATIO * a)


def _resolve_extreme(scene: Scene, spec: QuerySpec, cands: list[int]) -> list[int] | None:
    margin = EXTREME_MARGIN * scene.side
    return _clear_winner(cands, _extreme_keys(scene, str(spec.direction)), lambda a, b: b - a >= margin)


def _resolve_nearest(scene: Scene, spec: QuerySpec, cands: list[int]) -> list[int] | None:
    anchor = scene.objects[_unique(scene, spec.anchor)]  # type: ignore[index]

    def dist(i: int) -> float:
        return float(np.hypot(scene.objects[i].cx - anchor.cx, scene.objects[i].cy - anchor.cy))

    return _clear_winner(cands, [dist], lambda a, b: b >= NEAREST_RATIO * a)


def _resolve_comparison(scene: Scene, spec: QuerySpec, cands: list[int]) -> list[int] | None:
    if len(cands) != 2:
        return None
    return _resolve_superlative(scene, spec, cands)


def resolve(scene: Scene, spec: QuerySpec) -> list[int] | None:
    """Indices of the objects that ``spec`` designates in ``scene``; ``None`` when the query is not
    crisp on this scene (a missing or non-unique anchor, a borderline position, sizes too close)."""
    if spec.type in ("nearest", "relation") and spec.anchor is None:
        return None
    cands = _candidates(scene, spec)
    if cands is None:
        return None
    if spec.type in ("attributes", "relation"):
        return cands
    if spec.type == "property":
        return [i for i in cands if PROPERTIES[str(spec.prop)].holds(scene.objects[i])]
    if spec.type == "negation":
        return [i for i in cands if not (spec.negated or Attrs()).matches(scene.objects[i])]
    resolvers = {
        "superlative": _resolve_superlative,
        "extreme": _resolve_extreme,
        "nearest": _resolve_nearest,
        "comparison": _resolve_comparison,
    }
    if spec.type not in resolvers:
        raise ValueError(f"unknown query type {spec.type!r}")
    return resolvers[spec.type](scene, spec, cands)


# ----------------------------------------------------------------------------------------------------
# Query proposals: every candidate spec for a target; the chosen one must resolve to exactly it
# ----------------------------------------------------------------------------------------------------

KEYS = ("size", "colour", "kind")
ALL_KEY_SETS = tuple(c for n in (1, 2, 3) for c in itertools.combinations(KEYS, n))
ANCHOR_KEY_SETS = (
    ("colour", "kind"),
    ("kind",),
    ("colour",),
    ("size", "kind"),
    ("size", "colour", "kind"),
    ("size", "colour"),
    ("size",),
)
DIRECTIONS = ("left", "right", "above", "below")
EDGES = ("top", "bottom", "left", "right")
ORDERS = ("larger", "smaller")


def attrs_of(obj: SceneObject, keys: Sequence[str]) -> Attrs:
    """The filter naming ``obj``'s values for ``keys``."""
    return Attrs(**{k: obj.attribute(k) for k in keys})


def unique_description(scene: Scene, index: int) -> Attrs | None:
    """The preferred short description that designates object ``index`` alone ("the blue square")."""
    for keys in ANCHOR_KEY_SETS:
        attrs = attrs_of(scene.objects[index], keys)
        if matching(scene, attrs) == [index]:
            return attrs
    return None


def _head_filters(obj: SceneObject, exclude: str | None = None) -> list[Attrs]:
    """Head nouns for a query about ``obj``: "shape", or one of its attributes ("red shape", "circle")."""
    return [Attrs()] + [attrs_of(obj, (k,)) for k in KEYS if k != exclude]


def _anchors(scene: Scene, target: int) -> list[Attrs]:
    others = (unique_description(scene, j) for j in range(len(scene.objects)) if j != target)
    return [a for a in others if a is not None]


def _propose_attributes(scene: Scene, target: int) -> list[QuerySpec]:
    return [QuerySpec("attributes", attrs_of(scene.objects[target], keys)) for keys in ALL_KEY_SETS]


def _propose_property(scene: Scene, target: int) -> list[QuerySpec]:
    obj = scene.objects[target]
    specs = []
    for name, prop in PROPERTIES.items():
        if prop.holds(obj):
            same_dimension = "colour" if prop.colours else "kind"
            specs += [QuerySpec("property", a, prop=name) for a in _head_filters(obj, exclude=same_dimension)]
    return specs


def _propose_negation(scene: Scene, target: int) -> list[QuerySpec]:
    obj = scene.objects[target]
    specs = []
    for key in KEYS:
        values = sorted({o.attribute(key) for o in scene.objects} - {obj.attribute(key)})
        for value in values:
            negated = Attrs(**{key: value})
            specs += [QuerySpec("negation", a, negated=negated) for a in _head_filters(obj, exclude=key)]
    return specs


def _propose_superlative(scene: Scene, target: int) -> list[QuerySpec]:
    heads = _head_filters(scene.objects[target], exclude="size")
    return [QuerySpec("superlative", a, order=o) for a in heads for o in ORDERS]


def _propose_superlative_relation(scene: Scene, target: int) -> list[QuerySpec]:
    heads = _head_filters(scene.objects[target], exclude="size")
    combos = itertools.product(heads, ORDERS, DIRECTIONS, _anchors(scene, target))
    return [QuerySpec("superlative", a, order=o, direction=d, anchor=an) for a, o, d, an in combos]


def _propose_extreme(scene: Scene, target: int) -> list[QuerySpec]:
    heads = _head_filters(scene.objects[target])
    return [QuerySpec("extreme", a, direction=d) for a in heads for d in EDGES]


def _propose_relation(scene: Scene, target: int) -> list[QuerySpec]:
    combos = itertools.product(_head_filters(scene.objects[target]), DIRECTIONS, _anchors(scene, target))
    return [QuerySpec("relation", a, direction=d, anchor=an) for a, d, an in combos]


def _propose_nearest(scene: Scene, target: int) -> list[QuerySpec]:
    combos = itertools.product(_head_filters(scene.objects[target]), _anchors(scene, target))
    return [QuerySpec("nearest", a, anchor=an) for a, an in combos]


def _propose_comparison(scene: Scene, target: int) -> list[QuerySpec]:
    obj = scene.objects[target]
    return [QuerySpec("comparison", attrs_of(obj, (k,)), order=o) for k in ("colour", "kind") for o in ORDERS]


Proposer = Callable[[Scene, int], list[QuerySpec]]
SHORT_PROPOSERS: dict[str, Proposer] = {"attributes": _propose_attributes}
LONG_PROPOSERS: dict[str, Proposer] = {
    "property": _propose_property,
    "negation": _propose_negation,
    "superlative": _propose_superlative,
    "superlative_relation": _propose_superlative_relation,
    "extreme": _propose_extreme,
    "relation": _propose_relation,
    "nearest": _propose_nearest,
    "comparison": _propose_comparison,
}


QUERY_TYPES = (*SHORT_PROPOSERS, *LONG_PROPOSERS)


def selects_by(spec: QuerySpec, key: str) -> bool:
    """True when ``spec`` picks its target by attribute ``key``: a phrase naming it, a property about it (other
    kinds of query: always True)."""
    if spec.type == "attributes":
        return getattr(spec.attrs, key) is not None
    if spec.type == "property":
        prop = PROPERTIES[str(spec.prop)]
        return (key == "colour" and bool(prop.colours)) or (key == "kind" and not prop.colours)
    return True


def choose_query(rng: np.random.Generator, scene: Scene, is_sentence: bool, *,
                 query_types: Sequence[str] = (), targets: Sequence[int] | None = None, select_by: str | None = None
                 ) -> tuple[QuerySpec, int] | None:
    """A random (spec, target) with ``resolve(scene, spec) == [target]``; ``None`` if the scene has none.

    A kind of query is drawn first (so that kinds are balanced), then a target, then one valid spec.
    ``query_types`` limits the kinds (empty = all); ``targets`` limits the objects that may be the target;
    ``select_by`` keeps only queries that pick the target by that attribute (``selects_by``).
    """
    proposers = LONG_PROPOSERS if is_sentence else SHORT_PROPOSERS
    names = [n for n in proposers if not query_types or n in query_types]
    for name_index in rng.permutation(len(names)):
        order = rng.permutation(len(scene.objects)) if targets is None else rng.permutation(list(targets))
        for target in order:
            target = int(target)
            valid = [s for s in proposers[names[name_index]](scene, target) if resolve(scene, s) == [target]
                     and (select_by is None or selects_by(s, select_by))]
            if valid:
                return valid[int(rng.integers(len(valid)))], target
    return None


# ----------------------------------------------------------------------------------------------------
# Query text
# ----------------------------------------------------------------------------------------------------


def _dedupe(items: Sequence[str]) -> list[str]:
    return list(dict.fromkeys(items))


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def noun_phrases(attrs: Attrs) -> list[str]:
    """Noun phrases for a filter, canonical first: Attrs(small, red, circle) -> "small red circle", ..."""
    sizes = SIZE_WORDS[attrs.size] if attrs.size else ("",)
    colours = (attrs.colour,) if attrs.colour else ("",)
    nouns = KIND_NOUNS[attrs.kind] if attrs.kind else GENERIC_NOUNS
    combos = itertools.product(nouns, sizes, colours)
    return _dedupe([" ".join(w for w in (s, c, n) if w) for n, s, c in combos])


def _heads(attrs: Attrs) -> list[str]:
    """Canonical and one alternative noun phrase ("red shape", "red object")."""
    phrases = noun_phrases(attrs)
    return _dedupe([phrases[0], phrases[-1]])


def _plural(phrase: str) -> str:
    return phrase + "s"


def _the(attrs: Attrs | None) -> str:
    return "the " + noun_phrases(attrs or Attrs())[0]


def _short_phrasings(spec: QuerySpec) -> list[str]:
    attrs = spec.attrs
    out = [form for np_ in noun_phrases(attrs) for form in (f"the {np_}", np_)]
    adjectives = [w for w in (SIZE_WORDS[attrs.size][0] if attrs.size else "", attrs.colour or "") if w]
    if attrs.kind:
        adj_np = " ".join([*adjectives, KIND_ADJECTIVES[attrs.kind]])
        out += [f"the {adj_np} object", f"the {adj_np} figure"]
        if adjectives:
            out.append(f"the {KIND_NOUNS[attrs.kind][0]} that is {' and '.join(adjectives)}")
    return _dedupe(out)


def _property_phrasings(spec: QuerySpec) -> list[str]:
    out = []
    for head, clause in itertools.product(_heads(spec.attrs), PROPERTIES[str(spec.prop)].clauses):
        out += [
            f"Which {head} in this picture {clause}?",
            f"Find the {head} that {clause}.",
            f"Show me the {head} that {clause}.",
            f"Point out the {head} in the image that {clause}.",
        ]
    return out


def _negated_words(negated: Attrs) -> tuple[str, str]:
    """("red", "red") / ("a circle", "circles") / ("small", "small"): singular and plural predicate."""
    key, value = next((k, v) for k, v in negated.items() if v is not None)
    if key == "kind":
        noun = KIND_NOUNS[value][0]
        return f"{_article(noun)} {noun}", _plural(noun)
    return value, value


def _negation_phrasings(spec: QuerySpec) -> list[str]:
    word, plural_word = _negated_words(spec.negated or Attrs())
    out = []
    for head in _heads(spec.attrs):
        out += [
            f"Which {head} is not {word}?",
            f"Find the only {head} that is not {word}.",
            f"Every other {head} is {word}. Which one is not?",
            f"All the {_plural(head)} but one are {plural_word}. Which is the odd one out?",
        ]
    return out


def _relation_suffixes(spec: QuerySpec) -> list[str]:
    """Relation suffixes such as " to the left of the blue square"; [""] without a spatial relation."""
    if spec.direction is None or spec.anchor is None:
        return [""]
    return [f" {rel} {_the(spec.anchor)}" for rel in RELATION_WORDS[spec.direction]]


def _superlative_phrasings(spec: QuerySpec) -> list[str]:
    order = str(spec.order)
    out = []
    combos = itertools.product(_heads(spec.attrs), SUPERLATIVE_WORDS[order], _relation_suffixes(spec))
    for head, sup, rel in combos:
        out += [
            f"Which {head}{rel} is the {sup}?",
            f"Find the {sup} {head}{rel}.",
            f"Among the {_plural(head)}{rel}, which one is the {sup}?",
            f"Which {head}{rel} takes up the {SPACE_WORDS[order]} space?",
        ]
    return out


def _extreme_phrasings(spec: QuerySpec) -> list[str]:
    adjective, clauses = EXTREME_WORDS[str(spec.direction)]
    out = []
    for head in _heads(spec.attrs):
        out += [f"Find the {adjective} {head}.", f"Which {head} is the {adjective} one?"]
        for clause in clauses:
            out += [
                f"Which {head} {clause}?",
                f"Of all the {_plural(head)}, which one {clause}?",
                f"Point out the {head} that {clause}.",
            ]
    return out


def _relation_phrasings(spec: QuerySpec) -> list[str]:
    anchor = _the(spec.anchor)
    out = []
    for head, rel in itertools.product(_heads(spec.attrs), RELATION_WORDS[str(spec.direction)]):
        out += [
            f"Which {head} is {rel} {anchor}?",
            f"Find the {head} that is {rel} {anchor}.",
            f"Point out the {head} located {rel} {anchor}.",
            f"Look at {anchor}. Which {head} is {rel} it?",
        ]
    return out


def _nearest_phrasings(spec: QuerySpec) -> list[str]:
    anchor = _the(spec.anchor)
    out = []
    for head in _heads(spec.attrs):
        out += [
            f"Which {head} is closest to {anchor}?",
            f"Find the {head} nearest to {anchor}.",
            f"Which {head} lies at the shortest distance from {anchor}?",
            f"Of the other {_plural(head)}, which one is closest to {anchor}?",
        ]
    return out


def _comparison_phrasings(spec: QuerySpec) -> list[str]:
    group = noun_phrases(spec.attrs)[0]
    other = f"{spec.attrs.colour} one" if spec.attrs.colour else group
    out = []
    for word in COMPARATIVE_WORDS[str(spec.order)]:
        out += [
            f"Which {group} is {word} than the other {other}?",
            f"Find the {group} that is {word} than the other {other}.",
            f"Of the two {_plural(group)}, which one is {word}?",
            f"There are two {_plural(group)} in the picture. Point out the {word} one.",
        ]
    return out


PHRASERS: dict[str, Callable[[QuerySpec], list[str]]] = {
    "attributes": _short_phrasings,
    "property": _property_phrasings,
    "negation": _negation_phrasings,
    "superlative": _superlative_phrasings,
    "extreme": _extreme_phrasings,
    "relation": _relation_phrasings,
    "nearest": _nearest_phrasings,
    "comparison": _comparison_phrasings,
}


def phrasings(spec: QuerySpec) -> list[str]:
    """Every wording of ``spec`` (deterministic order, no duplicates); short phrases for "attributes",
    capitalised sentences ending in "." or "?" for the reasoning types."""
    return _dedupe(PHRASERS[spec.type](spec))


# ----------------------------------------------------------------------------------------------------
# Explanations (explanatory/train.json "outputs")
# ----------------------------------------------------------------------------------------------------


def _location(scene: Scene, obj: SceneObject) -> str:
    col = ("left", "centre", "right")[min(2, int(3 * obj.cx / scene.width))]
    row = ("top", "middle", "bottom")[min(2, int(3 * obj.cy / scene.height))]
    if row == "middle" and col == "centre":
        return "in the centre of the image"
    if row == "middle":
        return f"on the {col} side of the image"
    if col == "centre":
        return f"at the {row} of the image"
    return f"in the {row} {col} part of the image"


def _reason(spec: QuerySpec, obj: SceneObject) -> str:
    head = noun_phrases(spec.attrs)[0]
    heads = _plural(head)
    if spec.type == "attributes":
        return f"It is the only {head} in the picture."
    if spec.type == "property":
        prop = PROPERTIES[str(spec.prop)]
        noun = KIND_NOUNS[obj.kind][0]
        why = prop.reason.format(colour=obj.colour, kind=noun, a_kind=f"{_article(noun)} {noun}")
        return f"{why} No other {head} in the picture {prop.clauses[0]}."
    if spec.type == "negation":
        word, _ = _negated_words(spec.negated or Attrs())
        own, _ = _negated_words(attrs_of(obj, [k for k, v in (spec.negated or Attrs()).items() if v]))
        return f"Every other {head} is {word}, but this one is {own}."
    if spec.type == "superlative":
        rel = _relation_suffixes(spec)[0]
        return f"Of the {heads}{rel}, it takes up the {SPACE_WORDS[str(spec.order)]} space."
    if spec.type == "extreme":
        return f"Of all the {heads}, it {EXTREME_WORDS[str(spec.direction)][1][0]}."
    if spec.type == "relation":
        rel = RELATION_WORDS[str(spec.direction)][0]
        return f"It is {rel} {_the(spec.anchor)}, and no other {head} is."
    if spec.type == "nearest":
        return f"Of all the {heads} besides {_the(spec.anchor)}, it is the closest to it."
    return f"There are two {heads}, and it is the {COMPARATIVE_WORDS[str(spec.order)][0]} one."


def explain(scene: Scene, spec: QuerySpec, target: int) -> str:
    """A two-sentence explanation: where the target is, and why it is the answer."""
    obj = scene.objects[target]
    description = f"{SIZE_WORDS[obj.size][0]} {obj.colour} {KIND_NOUNS[obj.kind][0]}"
    return f"The {description} is {_location(scene, obj)}. {_reason(spec, obj)}"


# ----------------------------------------------------------------------------------------------------
# One example: scene, query, extra shapes, image
# ----------------------------------------------------------------------------------------------------

Points = tuple[tuple[float, float], ...]


@dataclass(frozen=True, eq=False)
class Example:
    """Everything behind one image/JSON pair. ``extra_shapes``: ("ignore" | "flag", polygon) pairs."""

    name: str  # file stem, e.g. "train_0003"
    scene: Scene
    spec: QuerySpec
    target: int  # index into scene.objects
    texts: tuple[str, ...]
    is_sentence: bool
    extra_shapes: tuple[tuple[str, Points], ...]
    explanation: str | None  # set for the train images listed in explanatory/train.json
    image: Image.Image  # RGB, scene.width x scene.height


def _image_dims(rng: np.random.Generator, image_size: int) -> tuple[int, int]:
    """(width, height): square half of the time, else 4:3 landscape or 3:4 portrait."""
    short = int(round(0.75 * image_size))
    return [(image_size, image_size), (image_size, image_size), (image_size, short), (short, image_size)][
        int(rng.integers(4))
    ]


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


def _extra_shapes(rng: np.random.Generator, scene: Scene, target: int) -> tuple[tuple[str, Points], ...]:
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


def _pick_texts(rng: np.random.Generator, candidates: list[str], split: str) -> tuple[str, ...]:
    """Train: 2-6 distinct rephrasings (fewer if the query has fewer wordings); val/test: exactly 1."""
    count = 1 if split != "train" else min(int(rng.integers(2, 7)), len(candidates))
    order = rng.permutation(len(candidates))[:count]
    return tuple(candidates[int(i)] for i in order)


def _scene_and_query(
    rng: np.random.Generator, width: int, height: int, is_sentence: bool, name: str, options: SceneOptions
) -> tuple[Scene, QuerySpec, int]:
    for _ in range(MAX_SCENE_ATTEMPTS):
        scene = make_scene(rng, width, height, options)
        chosen = choose_query(rng, scene, is_sentence, query_types=options.query_types,
                              select_by=options.select_by)
        if chosen is not None:
            return scene, chosen[0], chosen[1]
    raise RuntimeError(f"{name}: no scene with a unique query after {MAX_SCENE_ATTEMPTS} attempts")


def _example(rng: np.random.Generator, name: str, split: str, scene: Scene, spec: QuerySpec, target: int,
             is_sentence: bool, image: Image.Image | None) -> Example:
    """Texts, explanation (train, about half) and extra shapes of one query on ``scene``."""
    texts = _pick_texts(rng, phrasings(spec), split)
    explanation = None
    if split == "train" and rng.random() < EXPLANATORY_PROB:
        explanation = explain(scene, spec, target)
    extras = _extra_shapes(rng, scene, target)
    return Example(name, scene, spec, target, texts, is_sentence, extras, explanation,
                   image if image is not None else render(rng, scene))


def generate_scene_examples(seed: int, split: str, index: int, image_size: int,
                            options: SceneOptions | None = None) -> list[Example]:
    """The examples of scene ``index`` of ``split``; depends only on the arguments (own generator per scene).

    Even indices get a short phrase, odd indices a reasoning sentence (a phrase too when
    ``options.has_sentences`` is False). With ``options.targets_per_scene`` K > 1
    (train split only) the scene is asked about up to K different shapes, alternating short and long, one
    example each, named ``<split>_<index>_<k>``; all share the same image.
    """
    if split not in SPLIT_IDS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    options = options or SceneOptions()
    rng = np.random.default_rng([seed, SPLIT_IDS[split], index])
    name = f"{split}_{index:04d}"
    width, height = _image_dims(rng, image_size)
    is_sentence = index % 2 == 1 and options.has_sentences
    scene, spec, target = _scene_and_query(rng, width, height, is_sentence, name, options)
    k_max = options.targets_per_scene if split == "train" else 1
    if k_max == 1:
        return [_example(rng, name, split, scene, spec, target, is_sentence, None)]
    first = _example(rng, f"{name}_0", split, scene, spec, target, is_sentence, None)
    examples, used = [first], {target}
    for k in range(1, k_max):
        free = [i for i in range(len(scene.objects)) if i not in used]
        long_k = (index + k) % 2 == 1 and options.has_sentences
        chosen = (choose_query(rng, scene, long_k, query_types=options.query_types, targets=free,
                               select_by=options.select_by) if free else None)
        if chosen is None:
            break
        used.add(chosen[1])
        examples.append(_example(rng, f"{name}_{k}", split, scene, chosen[0], chosen[1], long_k, first.image))
    return examples


def generate_example(seed: int, split: str, index: int, image_size: int) -> Example:
    """Example ``index`` of ``split`` with the default options (one target per scene)."""
    return generate_scene_examples(seed, split, index, image_size)[0]


# ----------------------------------------------------------------------------------------------------
# Files
# ----------------------------------------------------------------------------------------------------


def _shape_dict(label: str, points: Points, image_name: str) -> dict[str, Any]:
    return {
        "label": label,
        "labels": [label],
        "shape_type": "polygon",
        "image_name": image_name,
        "points": [[float(x), float(y)] for x, y in points],
        "group_id": None,
        "group_ids": [None],
        "flags": {},
    }


def _object_dict(obj: SceneObject) -> dict[str, Any]:
    return {"kind": obj.kind, "colour": obj.colour, "size": obj.size,
            "points": [[float(x), float(y)] for x, y in obj.points]}


def annotation_dict(example: Example) -> dict[str, Any]:
    """The ReasonSeg annotation JSON of ``example`` (target polygon first, then ignore/flag shapes).

    ``distractors`` (a modlisa extension that LISA's reader ignores: it reads only text, is_sentence and
    shapes) lists every other shape of the image with its attributes; ``target`` names the target's.
    """
    image_name = f"{example.name}.jpg"
    target = example.scene.objects[example.target]
    shapes = [_shape_dict("target", target.points, image_name)]
    shapes += [_shape_dict(label, pts, image_name) for label, pts in example.extra_shapes]
    others = [o for i, o in enumerate(example.scene.objects) if i != example.target]
    return {"text": list(example.texts), "is_sentence": example.is_sentence, "shapes": shapes,
            "target": {k: v for k, v in _object_dict(target).items() if k != "points"},
            "distractors": [_object_dict(o) for o in others]}


def _write_json(data: Any, path: Path) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def write_example(example: Example, split_dir: Path) -> None:
    """Write ``<name>.jpg`` (JPEG quality 95, no metadata) and ``<name>.json`` into ``split_dir``."""
    example.image.save(split_dir / f"{example.name}.jpg", format="JPEG", quality=95, subsampling=0)
    _write_json(annotation_dict(example), split_dir / f"{example.name}.json")


def option_arguments(options: SceneOptions) -> str:
    """The ``make-data`` flags that reproduce ``options`` (empty for the defaults)."""
    default, parts = SceneOptions(), []
    if (options.min_objects, options.max_objects) != (default.min_objects, default.max_objects):
        parts.append(f"--objects {options.min_objects}-{options.max_objects}")
    if options.lookalike_prob != default.lookalike_prob:
        parts.append(f"--lookalike-prob {options.lookalike_prob}")
    if options.query_types:
        parts.append(f"--query-types {','.join(options.query_types)}")
    if options.targets_per_scene != default.targets_per_scene:
        parts.append(f"--targets-per-scene {options.targets_per_scene}")
    if options.select_by is not None:
        parts.append(f"--select-by {options.select_by}")
    return "".join(f" {p}" for p in parts)


def _readme_text(seed: int, counts: dict[str, int], image_size: int, options: SceneOptions) -> str:
    args = " ".join(f"--num-{s} {counts[s]}" for s in SPLITS) + option_arguments(options)
    return (
        "Synthetic ReasonSeg-format dataset (images of flat coloured shapes).\n\n"
        f"Generated by modlisa {__version__} (module modlisa.data.synthetic) with:\n"
        f"  modlisa make-data OUT_DIR --seed {seed} {args} --image-size {image_size}\n"
        "The same command with the same modlisa version writes byte-identical files.\n\n"
        "Layout (the ReasonSeg layout of LISA, Lai et al., CVPR 2024):\n"
        "  train/, val/, test/     <split>_NNNN.jpg + <split>_NNNN.json (polygons: target / ignore / flag)\n"
        "  explanatory/train.json  explanations for about half of the train images\n\n"
        f"Each image shows {options.min_objects}-{options.max_objects} shapes; each query designates exactly one "
        "of them, either with a short\n"
        "phrase (is_sentence false) or a reasoning sentence about colour, shape, size, position and\n"
        "spatial relations (is_sentence true). Train files carry 2-6 rephrasings, val/test files 1.\n"
        "Beside LISA's keys, each JSON lists the other shapes of the image under \"distractors\" (polygon,\n"
        "kind, colour, size) and the target's attributes under \"target\"; LISA's reader ignores both.\n"
    )


def _validate(seed: int, counts: dict[str, int], image_size: int) -> None:
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    for split, n in counts.items():
        if not isinstance(n, int) or n < 0:
            raise ValueError(f"num_{split} must be a non-negative integer, got {n!r}")
    if sum(counts.values()) == 0:
        raise ValueError("num_train + num_val + num_test must be at least 1")
    if not isinstance(image_size, int) or image_size < MIN_IMAGE_SIZE:
        raise ValueError(f"image_size must be an integer >= {MIN_IMAGE_SIZE}, got {image_size!r}")


def _split_summary(path: Path) -> dict[str, Any]:
    counters = ("images", "short", "long", "texts", "ignore_shapes", "flag_shapes")
    return {"path": str(path), **dict.fromkeys(counters, 0)}


def _count(summary: dict[str, Any], example: Example) -> None:
    summary["images"] += 1
    summary["long" if example.is_sentence else "short"] += 1
    summary["texts"] += len(example.texts)
    for label, _ in example.extra_shapes:
        summary[f"{label}_shapes"] += 1


def make_dataset(
    out_dir: str | Path,
    *,
    seed: int = 0,
    num_train: int = 64,
    num_val: int = 32,
    num_test: int = 32,
    image_size: int = 256,
    progress: bool = True,
    options: SceneOptions | None = None,
) -> dict[str, Any]:
    """Write a synthetic ReasonSeg-format dataset into ``out_dir`` (created if needed; same-named files
    are overwritten). ``num_*`` count scenes; with ``options.targets_per_scene`` K > 1 a train scene gives
    up to K files. Returns a summary: per split its path and counts of images (files), short/long queries,
    texts, ignore/flag shapes; the explanatory file and README paths."""
    options = options or SceneOptions()
    counts = {"train": num_train, "val": num_val, "test": num_test}
    _validate(seed, counts, image_size)
    root = Path(out_dir)
    splits = {split: _split_summary(root / split) for split in SPLITS}
    for split in SPLITS:
        (root / split).mkdir(parents=True, exist_ok=True)
    jobs = [(split, i) for split in SPLITS for i in range(counts[split])]
    explanatory = []
    examples = (ex for split, index in tqdm(jobs, desc="make-data", unit="scene", disable=not progress,
                                            file=sys.stderr)
                for ex in generate_scene_examples(seed, split, index, image_size, options))
    for example in examples:
        split = example.name.split("_", 1)[0]
        write_example(example, root / split)
        _count(splits[split], example)
        if example.explanation is not None:
            explanatory.append(
                {
                    "query": example.texts[0],
                    "outputs": example.explanation,
                    "image": f"{example.name}.jpg",
                    "json": f"{example.name}.json",
                }
            )
    explanatory_path = root / "explanatory" / "train.json"
    explanatory_path.parent.mkdir(parents=True, exist_ok=True)
    _write_json(explanatory, explanatory_path)
    readme = root / "README.txt"
    readme.write_text(_readme_text(seed, counts, image_size, options), encoding="utf-8")
    logger.info("wrote %d images to %s", len(jobs), root)
    return {
        "out_dir": str(root),
        "seed": seed,
        "image_size": image_size,
        "splits": splits,
        "explanatory": {"path": str(explanatory_path), "entries": len(explanatory)},
        "readme": str(readme),
    }


# ----------------------------------------------------------------------------------------------------
# Command line: modlisa make-data
# ----------------------------------------------------------------------------------------------------

GENERATED_ENTRIES = (*SPLITS, "explanatory", "README.txt")


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _image_size(text: str) -> int:
    value = int(text)
    if value < MIN_IMAGE_SIZE:
        raise argparse.ArgumentTypeError(f"must be >= {MIN_IMAGE_SIZE}, got {value}")
    return value


def _object_range(text: str) -> tuple[int, int]:
    low, _, high = text.partition("-")
    try:
        return int(low), int(high or low)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected MIN-MAX such as 3-5, got {text!r}") from None


def _query_types(text: str) -> tuple[str, ...]:
    return tuple(t.strip() for t in text.split(",") if t.strip())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="modlisa make-data",
        description="Write a deterministic synthetic dataset in the ReasonSeg format (images + JSON + "
        "explanatory/train.json).",
    )
    parser.add_argument("out_dir", help="output folder (must be empty or absent unless --force)")
    parser.add_argument("--seed", type=_non_negative, default=0, help="random seed (default 0)")
    parser.add_argument("--num-train", type=_non_negative, default=64, help="train images (default 64)")
    parser.add_argument("--num-val", type=_non_negative, default=32, help="val images (default 32)")
    parser.add_argument("--num-test", type=_non_negative, default=32, help="test images (default 32)")
    parser.add_argument("--image-size", type=_image_size, default=256, help="longer image side (default 256)")
    parser.add_argument("--objects", type=_object_range, default=(2, 5), metavar="MIN-MAX",
                        help="shapes per image (default 2-5)")
    parser.add_argument("--lookalike-prob", type=float, default=0.35,
                        help="chance that a shape reuses a colour or kind already in the image (default 0.35)")
    parser.add_argument("--query-types", type=_query_types, default=(), metavar="T1,T2,...",
                        help=f"query kinds to draw (default all): {', '.join(QUERY_TYPES)}")
    parser.add_argument("--targets-per-scene", type=int, default=1, metavar="K",
                        help="train split: ask about up to K different shapes of each image, one file each "
                             "(default 1)")
    parser.add_argument("--select-by", choices=KEYS, default=None,
                        help="every query picks its target by this attribute: phrases name it, property "
                             "sentences are about it (default: any)")
    parser.add_argument(
        "--force", action="store_true", help="replace train/, val/, test/, explanatory/ and README.txt"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def _remove_generated(root: Path) -> None:
    """Delete what a previous run wrote (split folders, explanatory/, README.txt); nothing else."""
    for entry in GENERATED_ENTRIES:
        path = root / entry
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def main_make_data(argv: Sequence[str] | None = None) -> int:
    """``modlisa make-data OUT_DIR [--seed S] [--num-train N] ... [--force]``; returns the exit code."""
    args = build_parser().parse_args(argv)
    root = Path(args.out_dir)
    if root.exists() and not root.is_dir():
        print(f"modlisa make-data: {root} exists and is not a folder", file=sys.stderr)
        return 2
    if root.is_dir() and any(root.iterdir()):
        if not args.force:
            print(
                f"modlisa make-data: {root} is not empty; choose an empty folder or pass --force to "
                "replace its train/, val/, test/, explanatory/ and README.txt",
                file=sys.stderr,
            )
            return 2
        _remove_generated(root)
    try:
        options = SceneOptions(min_objects=args.objects[0], max_objects=args.objects[1],
                               lookalike_prob=args.lookalike_prob, query_types=args.query_types,
                               targets_per_scene=args.targets_per_scene, select_by=args.select_by)
        summary = make_dataset(
            root,
            options=options,
            seed=args.seed,
            num_train=args.num_train,
            num_val=args.num_val,
            num_test=args.num_test,
            image_size=args.image_size,
            progress=not args.no_progress,
        )
    except ValueError as err:
        print(f"modlisa make-data: {err}", file=sys.stderr)
        return 2
    for split, info in summary["splits"].items():
        counts = f"{info['images']} images ({info['short']} short, {info['long']} long)"
        print(f"{split}: {counts} in {info['path']}")
    print(f"explanatory: {summary['explanatory']['entries']} entries in {summary['explanatory']['path']}")
    return 0


if __name__ == "__main__":
    sys.exit(main_make_data())
