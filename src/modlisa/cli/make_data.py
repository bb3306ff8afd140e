"""``modlisa make-data``: write the synthetic ReasonSeg-format dataset."""

from __future__ import annotations

from collections.abc import Sequence

from modlisa.data.synthetic import main_make_data


def main(argv: Sequence[str] | None = None) -> int:
    return main_make_data(argv)
