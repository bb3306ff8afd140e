"""Query text: the wordings of a ``QuerySpec`` (``phrasings``) and the explanation of an answer (``explain``).

Wordings are template tables, not code: ``TEMPLATES`` gives, per query type, groups of ``str.format``
templates ("Find the {superlative} {head}{where}."), and ``SLOTS`` gives the words each field can take for a
spec (head: "red shape", "red object"). ``_expand`` fills every template of a group with every combination
of its fields' words, the first field in ``SLOTS`` order varying slowest and the templates fastest, and drops
repeats; a template that does not use a field repeats for each of its words, so only its first wording stays.
``REASONS`` are the templates of the explanations, filled with the first word of each field.
"""

from __future__ import annotations

import itertools
import string
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from modlisa.synthetic.properties import PROPERTIES
from modlisa.synthetic.queries import Attrs, QuerySpec, attrs_of

if TYPE_CHECKING:
    from modlisa.synthetic.scene import Scene, SceneObject

# ----------------------------------------------------------------------------------------------------
# Words
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

# ----------------------------------------------------------------------------------------------------
# Templates
# ----------------------------------------------------------------------------------------------------

TEMPLATES: dict[str, tuple[tuple[str, ...], ...]] = {
    "attributes": (
        ("the {phrase}", "{phrase}"),
        ("the {adjective_phrase} object", "the {adjective_phrase} figure"),
        ("the {noun} that is {adjectives}",),
    ),
    "property": ((
        "Which {head} in this picture {property}?",
        "Find the {head} that {property}.",
        "Show me the {head} that {property}.",
        "Point out the {head} in the image that {property}.",
    ),),
    "negation": ((
        "Which {head} is not {negated}?",
        "Find the only {head} that is not {negated}.",
        "Every other {head} is {negated}. Which one is not?",
        "All the {head}s but one are {negated_plural}. Which is the odd one out?",
    ),),
    "superlative": ((
        "Which {head}{where} is the {superlative}?",
        "Find the {superlative} {head}{where}.",
        "Among the {head}s{where}, which one is the {superlative}?",
        "Which {head}{where} takes up the {space} space?",
    ),),
    "extreme": ((
        "Find the {edge} {head}.",
        "Which {head} is the {edge} one?",
        "Which {head} {edge_clause}?",
        "Of all the {head}s, which one {edge_clause}?",
        "Point out the {head} that {edge_clause}.",
    ),),
    "relation": ((
        "Which {head} is {relation} {anchor}?",
        "Find the {head} that is {relation} {anchor}.",
        "Point out the {head} located {relation} {anchor}.",
        "Look at {anchor}. Which {head} is {relation} it?",
    ),),
    "nearest": ((
        "Which {head} is closest to {anchor}?",
        "Find the {head} nearest to {anchor}.",
        "Which {head} lies at the shortest distance from {anchor}?",
        "Of the other {head}s, which one is closest to {anchor}?",
    ),),
    "comparison": ((
        "Which {group} is {comparative} than the other {other}?",
        "Find the {group} that is {comparative} than the other {other}.",
        "Of the two {group}s, which one is {comparative}?",
        "There are two {group}s in the picture. Point out the {comparative} one.",
    ),),
}
REASONS: dict[str, str] = {
    "attributes": "It is the only {head} in the picture.",
    "property": "{why} No other {head} in the picture {property}.",
    "negation": "Every other {head} is {negated}, but this one is {own}.",
    "superlative": "Of the {head}s{where}, it takes up the {space} space.",
    "extreme": "Of all the {head}s, it {edge_clause}.",
    "relation": "It is {relation} {anchor}, and no other {head} is.",
    "nearest": "Of all the {head}s besides {anchor}, it is the closest to it.",
    "comparison": "There are two {head}s, and it is the {comparative} one.",
}

# ----------------------------------------------------------------------------------------------------
# Slots: the words of each template field for a spec
# ----------------------------------------------------------------------------------------------------


def _dedupe(items: Sequence[str]) -> list[str]:
    """``items`` without repeats, first occurrences in order."""
    return list(dict.fromkeys(items))


def _article(word: str) -> str:
    """The indefinite article of ``word``."""
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


def _the(attrs: Attrs | None) -> str:
    """The canonical definite noun phrase of a filter ("the blue square")."""
    return "the " + noun_phrases(attrs or Attrs())[0]


def _adjectives(attrs: Attrs) -> list[str]:
    """The size word and colour of a filter, as adjectives ("small", "red")."""
    return [w for w in (SIZE_WORDS[attrs.size][0] if attrs.size else "", attrs.colour or "") if w]


def _adjective_phrases(attrs: Attrs) -> list[str]:
    """["small red circular"] for a filter with a kind, [] without."""
    return [" ".join([*_adjectives(attrs), KIND_ADJECTIVES[attrs.kind]])] if attrs.kind else []


def _negated_words(negated: Attrs) -> tuple[str, str]:
    """("red", "red") / ("a circle", "circles") / ("small", "small"): singular and plural predicate."""
    key, value = next((k, v) for k, v in negated.items() if v is not None)
    if key == "kind":
        noun = KIND_NOUNS[value][0]
        return f"{_article(noun)} {noun}", f"{noun}s"
    return value, value


def _relation_suffixes(spec: QuerySpec) -> list[str]:
    """Relation suffixes such as " to the left of the blue square"; [""] without a spatial relation."""
    if spec.direction is None or spec.anchor is None:
        return [""]
    return [f" {rel} {_the(spec.anchor)}" for rel in RELATION_WORDS[spec.direction]]


SLOTS: dict[str, Callable[[QuerySpec], Sequence[str]]] = {
    "phrase": lambda s: noun_phrases(s.attrs),
    "head": lambda s: _heads(s.attrs),
    "group": lambda s: noun_phrases(s.attrs)[:1],
    "adjective_phrase": lambda s: _adjective_phrases(s.attrs),
    "noun": lambda s: KIND_NOUNS[s.attrs.kind][:1] if s.attrs.kind else (),
    "adjectives": lambda s: [" and ".join(_adjectives(s.attrs))] if _adjectives(s.attrs) else [],
    "property": lambda s: PROPERTIES[str(s.prop)].clauses,
    "negated": lambda s: _negated_words(s.negated or Attrs())[:1],
    "negated_plural": lambda s: _negated_words(s.negated or Attrs())[1:],
    "superlative": lambda s: SUPERLATIVE_WORDS[str(s.order)],
    "space": lambda s: (SPACE_WORDS[str(s.order)],),
    "where": _relation_suffixes,
    "edge": lambda s: EXTREME_WORDS[str(s.direction)][:1],
    "edge_clause": lambda s: EXTREME_WORDS[str(s.direction)][1],
    "relation": lambda s: RELATION_WORDS[str(s.direction)],
    "anchor": lambda s: (_the(s.anchor),),
    "comparative": lambda s: COMPARATIVE_WORDS[str(s.order)],
    "other": lambda s: (f"{s.attrs.colour} one" if s.attrs.colour else noun_phrases(s.attrs)[0],),
}


def _why(spec: QuerySpec, obj: SceneObject) -> str:
    """The property's reason sentence, about ``obj``."""
    noun = KIND_NOUNS[obj.kind][0]
    reason = PROPERTIES[str(spec.prop)].reason
    return reason.format(colour=obj.colour, kind=noun, a_kind=f"{_article(noun)} {noun}")


def _own(spec: QuerySpec, obj: SceneObject) -> str:
    """What ``obj`` is instead of the negated attribute ("a square" where the others are circles)."""
    keys = [k for k, v in (spec.negated or Attrs()).items() if v]
    return _negated_words(attrs_of(obj, keys))[0]


OBJECT_SLOTS: dict[str, Callable[[QuerySpec, SceneObject], str]] = {"why": _why, "own": _own}


# ----------------------------------------------------------------------------------------------------
# Expansion
# ----------------------------------------------------------------------------------------------------


def _fields(templates: Sequence[str]) -> list[str]:
    """The fields that ``templates`` use, in the order of ``SLOTS`` then ``OBJECT_SLOTS``."""
    used = {name for t in templates for _, name, _, _ in string.Formatter().parse(t) if name}
    return [name for name in (*SLOTS, *OBJECT_SLOTS) if name in used]


def _expand(spec: QuerySpec, groups: Sequence[Sequence[str]]) -> list[str]:
    """Every template of every group filled with every combination of its fields' words, without repeats."""
    out: list[str] = []
    for templates in groups:
        names = _fields(templates)
        for words in itertools.product(*(SLOTS[name](spec) for name in names)):
            out += [t.format(**dict(zip(names, words))) for t in templates]
    return _dedupe(out)


def phrasings(spec: QuerySpec) -> list[str]:
    """Every wording of ``spec`` (deterministic order, no duplicates); short phrases for "attributes",
    capitalised sentences ending in "." or "?" for the reasoning types."""
    return _expand(spec, TEMPLATES[spec.type])


# ----------------------------------------------------------------------------------------------------
# Explanations (explanatory/train.json "outputs")
# ----------------------------------------------------------------------------------------------------


def _location(scene: Scene, obj: SceneObject) -> str:
    """Where ``obj`` is, in thirds of the image ("in the top left part of the image")."""
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
    """Why ``obj`` is the answer: ``REASONS`` filled with the first word of each field."""
    template = REASONS[spec.type]
    words = {name: OBJECT_SLOTS[name](spec, obj) if name in OBJECT_SLOTS else SLOTS[name](spec)[0]
             for name in _fields([template])}
    return template.format(**words)


def explain(scene: Scene, spec: QuerySpec, target: int) -> str:
    """A two-sentence explanation: where the target is, and why it is the answer."""
    obj = scene.objects[target]
    description = f"{SIZE_WORDS[obj.size][0]} {obj.colour} {KIND_NOUNS[obj.kind][0]}"
    return f"The {description} is {_location(scene, obj)}. {_reason(spec, obj)}"
