"""LISA's published ReasonSeg and referring-segmentation results as data: the one place these numbers live.

Values are percentages as printed in the paper (Lai et al., "LISA: Reasoning Segmentation via Large
Language Model", CVPR 2024, ReasonSeg table) and, for the later peers, in their own papers.
Each cell is a (gIoU, cIoU) pair; ``None`` where the source gives no figure.
"""

from __future__ import annotations

from dataclasses import dataclass

Pair = tuple[float, float]

SOURCE = ('Lai et al., "LISA: Reasoning Segmentation via Large Language Model", CVPR 2024 '
          "(ReasonSeg table); READ-7B and UGround-7B from their papers")
FT_NOTE = '"(ft)" = also fine-tuned on the 239 ReasonSeg train images.'
#: The columns of the table, in order: (key, title).
COLUMNS: tuple[tuple[str, str], ...] = (
    ("val", "val"),
    ("test_short", "test short"),
    ("test_long", "test long"),
    ("test_overall", "test overall"),
)


@dataclass(frozen=True)
class ReferenceRow:
    """One published method: gIoU / cIoU (%) on ReasonSeg val and test (short, long, overall)."""

    method: str
    val: Pair | None
    test_short: Pair | None
    test_long: Pair | None
    test_overall: Pair | None
    peer: bool = False  # a later method, not from the LISA paper

    def cell(self, key: str) -> Pair | None:
        """The (gIoU, cIoU) pair of column ``key`` (one of COLUMNS' keys)."""
        return getattr(self, key)

    def to_dict(self) -> dict[str, object]:
        out: dict[str, object] = {"method": self.method, "peer": self.peer}
        for key, _ in COLUMNS:
            pair = self.cell(key)
            out[key] = None if pair is None else {"giou": pair[0], "ciou": pair[1]}
        return out


LISA_TABLE: tuple[ReferenceRow, ...] = (
    ReferenceRow("Grounded-SAM", (26.0, 14.5), (17.8, 10.8), (22.4, 18.6), (21.3, 16.4)),
    ReferenceRow("LISA-7B", (44.4, 46.0), (37.6, 34.4), (36.6, 34.7), (36.8, 34.1)),
    ReferenceRow("LISA-7B (ft)", (52.9, 54.0), (40.6, 40.6), (49.4, 51.0), (47.3, 48.4)),
    ReferenceRow("LISA-13B (ft)", (56.2, 62.9), (44.3, 42.0), (54.0, 54.3), (51.7, 51.1)),
    ReferenceRow("LISA-7B-LLaVA1.5 (ft)", (61.3, 62.9), (48.3, 46.3), (57.9, 59.7), (55.6, 56.9)),
    ReferenceRow("LISA-13B-LLaVA1.5 (ft)", (65.0, 72.9), (55.4, 50.6), (63.2, 65.3), (61.3, 62.2)),
    ReferenceRow("READ-7B", (59.8, 67.6), None, None, (58.5, 58.6), peer=True),
    ReferenceRow("UGround-7B", (66.1, 72.1), None, None, (63.6, 65.4), peer=True),
)


def reference_rows(include_peers: bool = True) -> list[ReferenceRow]:
    """The published rows in the paper's order (peers last)."""
    return [row for row in LISA_TABLE if include_peers or not row.peer]


# --------------------------------------------------------------------------- referring segmentation (cIoU %)

#: The referring benchmarks' columns, in the papers' order: (dataset, split) as ``modlisa eval --dataset D --split S``.
REFER_COLUMNS: tuple[tuple[str, str], ...] = (
    ("refcoco", "val"), ("refcoco", "testA"), ("refcoco", "testB"),
    ("refcoco+", "val"), ("refcoco+", "testA"), ("refcoco+", "testB"),
    ("refcocog", "val"), ("refcocog", "test"),
)
REFER_SOURCE = ('LISA rows: Lai et al., CVPR 2024, referring-segmentation table (cIoU); Sa2VA rows: the '
                "ByteDance/Sa2VA-Qwen3-VL-4B model card, \"Sa2VA Performance\" (RefCOCO / RefCOCO+ / RefCOCOg cIoU, "
                "val splits). UGround publishes refCOCO figures too; they are not listed because they could not "
                "be checked against a stored copy of its paper.")


@dataclass(frozen=True)
class ReferRow:
    """One published method: cIoU (%) per (dataset, split) of ``REFER_COLUMNS``; missing = not given."""

    method: str
    ciou: dict[tuple[str, str], float]

    def to_dict(self) -> dict[str, object]:
        return {"method": self.method, "ciou": {f"{d} {s}": self.ciou.get((d, s)) for d, s in REFER_COLUMNS}}


def _row(method: str, *values: float | None) -> ReferRow:
    return ReferRow(method, {col: v for col, v in zip(REFER_COLUMNS, values) if v is not None})


REFER_TABLE: tuple[ReferRow, ...] = (
    _row("LISA-7B", 74.1, 76.5, 71.1, 62.4, 67.4, 56.5, 66.4, 68.5),
    _row("LISA-7B (ft on refCOCO)", 74.9, 79.1, 72.3, 65.1, 70.8, 58.1, 67.9, 70.6),
    _row("Sa2VA-Qwen2.5-VL-3B", 79.6, None, None, 74.0, None, None, 77.1, None),
    _row("Sa2VA-Qwen3-VL-4B", 81.7, None, None, 77.4, None, None, 80.0, None),
    _row("Sa2VA-InternVL3-8B", 83.3, None, None, 78.9, None, None, 81.8, None),
)
