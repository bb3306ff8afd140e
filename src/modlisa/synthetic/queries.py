"""Queries: what a query means (``QuerySpec``, ``resolve``) and which queries designate a target.

``choose_query`` draws one of the specs that the proposers suggest for a target, and keeps it only when
``resolve`` returns exactly that target, with safety margins (the constants below) so that no object is a
borderline case. The wording of a query is ``phrasing``'s job.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeAlias

import numpy as np

from modlisa.synthetic.properties import PROPERTIES

if TYPE_CHECKING:
    from modlisa.synthetic.scene import Scene, SceneObject

REL_YES = 0.10  # an object is "left of" an anchor when its centre is this far left of it (x side)
REL_NO = 0.03  # ... and clearly not left of it when it is at most this far left (between: ambiguous)
EXTREME_MARGIN = 0.06  # the extreme object must beat the runner-up by this much (x side)
AREA_RATIO = 1.35  # "largest"/"smaller than": area ratio to the runner-up
NEAREST_RATIO = 1.3  # "closest to": distance ratio of the runner-up to the winner


@dataclass(frozen=True)
class Attrs:
    """An attribute filter: every given attribute must match (an empty filter matches everything)."""

    size: str | None = None
    colour: str | None = None
    kind: str | None = None

    def matches(self, obj: SceneObject) -> bool:
        """Whether ``obj`` has every given attribute."""
        return all(v is None or obj.attribute(k) == v for k, v in self.items())

    def items(self) -> list[tuple[str, str | None]]:
        """(key, value or None) for size, colour and kind, in that order."""
        return [("size", self.size), ("colour", self.colour), ("kind", self.kind)]

    def is_empty(self) -> bool:
        """True when no attribute is given."""
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
    """The one object matching ``attrs``; None when there is none, several, or no filter."""
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
    """The clearly largest (or smallest) candidate by area."""
    areas = {i: scene.objects[i].area for i in cands}
    if spec.order == "larger":
        return _clear_winner(cands, [lambda i: -areas[i]], lambda a, b: -a >= AREA_RATIO * -b)
    return _clear_winner(cands, [lambda i: areas[i]], lambda a, b: b >= AREA_RATIO * a)


def _resolve_extreme(scene: Scene, spec: QuerySpec, cands: list[int]) -> list[int] | None:
    """The candidate clearly closest to the ``spec.direction`` edge."""
    margin = EXTREME_MARGIN * scene.side
    return _clear_winner(cands, _extreme_keys(scene, str(spec.direction)), lambda a, b: b - a >= margin)


def _resolve_nearest(scene: Scene, spec: QuerySpec, cands: list[int]) -> list[int] | None:
    """The candidate clearly closest to the anchor (by centres)."""
    anchor = scene.objects[_unique(scene, spec.anchor)]  # type: ignore[index]

    def dist(i: int) -> float:
        return float(np.hypot(scene.objects[i].cx - anchor.cx, scene.objects[i].cy - anchor.cy))

    return _clear_winner(cands, [dist], lambda a, b: b >= NEAREST_RATIO * a)


def _resolve_comparison(scene: Scene, spec: QuerySpec, cands: list[int]) -> list[int] | None:
    """The clearly larger (or smaller) of exactly two candidates."""
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
    """Unique descriptions of the other objects: the possible reference objects of a relation."""
    others = (unique_description(scene, j) for j in range(len(scene.objects)) if j != target)
    return [a for a in others if a is not None]


def _propose_attributes(scene: Scene, target: int) -> list[QuerySpec]:
    """Short phrases naming one, two or all three of the target's attributes."""
    return [QuerySpec("attributes", attrs_of(scene.objects[target], keys)) for keys in ALL_KEY_SETS]


def _propose_property(scene: Scene, target: int) -> list[QuerySpec]:
    """The target's properties, each under a head noun that does not give it away."""
    obj = scene.objects[target]
    specs = []
    for name, prop in PROPERTIES.items():
        if prop.holds(obj):
            same_dimension = "colour" if prop.colours else "kind"
            specs += [QuerySpec("property", a, prop=name) for a in _head_filters(obj, exclude=same_dimension)]
    return specs


def _propose_negation(scene: Scene, target: int) -> list[QuerySpec]:
    """Sentences like "which shape is not red?": an attribute value of other objects that the target lacks."""
    obj = scene.objects[target]
    specs = []
    for key in KEYS:
        values = sorted({o.attribute(key) for o in scene.objects} - {obj.attribute(key)})
        for value in values:
            negated = Attrs(**{key: value})
            specs += [QuerySpec("negation", a, negated=negated) for a in _head_filters(obj, exclude=key)]
    return specs


def _propose_superlative(scene: Scene, target: int) -> list[QuerySpec]:
    """The largest or smallest of a group."""
    heads = _head_filters(scene.objects[target], exclude="size")
    return [QuerySpec("superlative", a, order=o) for a in heads for o in ORDERS]


def _propose_superlative_relation(scene: Scene, target: int) -> list[QuerySpec]:
    """The largest or smallest of a group on one side of an anchor."""
    heads = _head_filters(scene.objects[target], exclude="size")
    combos = itertools.product(heads, ORDERS, DIRECTIONS, _anchors(scene, target))
    return [QuerySpec("superlative", a, order=o, direction=d, anchor=an) for a, o, d, an in combos]


def _propose_extreme(scene: Scene, target: int) -> list[QuerySpec]:
    """The highest, lowest, leftmost or rightmost of a group."""
    heads = _head_filters(scene.objects[target])
    return [QuerySpec("extreme", a, direction=d) for a in heads for d in EDGES]


def _propose_relation(scene: Scene, target: int) -> list[QuerySpec]:
    """The only member of a group on one side of an anchor."""
    combos = itertools.product(_head_filters(scene.objects[target]), DIRECTIONS, _anchors(scene, target))
    return [QuerySpec("relation", a, direction=d, anchor=an) for a, d, an in combos]


def _propose_nearest(scene: Scene, target: int) -> list[QuerySpec]:
    """The member of a group closest to an anchor."""
    combos = itertools.product(_head_filters(scene.objects[target]), _anchors(scene, target))
    return [QuerySpec("nearest", a, anchor=an) for a, an in combos]


def _propose_comparison(scene: Scene, target: int) -> list[QuerySpec]:
    """The larger or smaller of the two shapes of one colour or kind."""
    obj = scene.objects[target]
    return [QuerySpec("comparison", attrs_of(obj, (k,)), order=o) for k in ("colour", "kind") for o in ORDERS]


Proposer: TypeAlias = "Callable[[Scene, int], list[QuerySpec]]"
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
