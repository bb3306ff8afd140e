"""The properties that sentences ask about ("would roll if pushed", "has the colour of fresh grass").

Each ``Property`` is held by the objects of some kinds or of some colours; its clauses are the wordings of
the sentences and its reason the explanation. ``PROPERTIES`` maps a property's key to it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from modlisa.synthetic.scene import SceneObject


@dataclass(frozen=True)
class Property:
    """A property that a query can ask for: held by objects of some kinds or of some colours."""

    clauses: tuple[str, ...]  # third-person verb phrases: "would roll if pushed"
    reason: str  # explanation sentence; may use {colour}, {kind}, {a_kind}
    kinds: frozenset[str] = frozenset()
    colours: frozenset[str] = frozenset()

    def holds(self, obj: SceneObject) -> bool:
        """Whether ``obj`` has this property (by its kind or its colour)."""
        return obj.kind in self.kinds or obj.colour in self.colours


def _kind_prop(kinds: set[str], clauses: tuple[str, ...], reason: str) -> Property:
    """A property held by the objects of ``kinds``."""
    return Property(clauses=clauses, reason=reason, kinds=frozenset(kinds))


def _colour_prop(colours: set[str], clauses: tuple[str, ...], reason: str) -> Property:
    """A property held by the objects of ``colours``."""
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
