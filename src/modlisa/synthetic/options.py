"""``SceneOptions``: how scenes and queries are drawn, and the ``make-data`` flags that reproduce them."""

from __future__ import annotations

from dataclasses import dataclass

from modlisa.synthetic.queries import KEYS, QUERY_TYPES


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
        """ValueError for an impossible object range or probability, or an unknown query type or key."""
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


def option_arguments(options: SceneOptions) -> str:
    """The ``make-data`` flags that reproduce ``options`` (empty for the defaults)."""
    default, parts = SceneOptions(), []
    if (options.min_objects, options.max_objects) != (default.min_objects, default.max_objects):
        parts.append(f"--objects {options.min_objects}-{options.max_objects}")
    if options.lookalike_prob != default.lookalike_prob:
        parts.append(f"--lookalike_prob {options.lookalike_prob}")
    if options.query_types:
        parts.append(f"--query_types {','.join(options.query_types)}")
    if options.targets_per_scene != default.targets_per_scene:
        parts.append(f"--targets_per_scene {options.targets_per_scene}")
    if options.select_by is not None:
        parts.append(f"--select_by {options.select_by}")
    return "".join(f" {p}" for p in parts)
