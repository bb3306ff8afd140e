"""The sources of LISA's training mixture behind one interface (issue 14): every dataset kind is a ``Source``.

A source knows its files and LISA's rules for choosing an item's targets; it does not know prompts, transforms
or tensors. ``modlisa.data.mixture`` turns a ``Draw`` into a ``Sample`` (LISA's question/answer templates, the
model's transforms) and mixes sources by sampling rate.

Kinds (LISA's ``--dataset`` names):

- ``sem_seg``: ADE20K, COCO-Stuff, PASCAL-Part, PACO-LVIS (``modlisa.data.sem_seg``); targets are class names;
- ``refer_seg``: refCOCO, refCOCO+, refCOCOg, refCLEF (``modlisa.data.refer``); targets are referring sentences;
- ``vqa``: LLaVA-Instruct-150k (``modlisa.data.vqa``); a conversation, no target (CE only);
- ``reason_seg``: ReasonSeg (``modlisa.data.dataset.ReasonSegDataset`` is used as it is).

Every random choice of ``draw`` comes from the ``rng`` it is given (seeded by (seed, epoch, index) by the caller),
so a drawn item is a pure function of them: exact resume holds for a mixture as it does for ReasonSeg.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

SEM_SEG, REFER_SEG, VQA, REASON_SEG = "sem_seg", "refer_seg", "vqa", "reason_seg"
KINDS = (SEM_SEG, REFER_SEG, VQA, REASON_SEG)
# the datasets of each kind that modlisa reads (LISA's names; LISA's mapillary is not supported)
DATASET_NAMES = {
    SEM_SEG: ("ade20k", "cocostuff", "pascal_part", "paco_lvis"),
    REFER_SEG: ("refclef", "refcoco", "refcoco+", "refcocog"),
    VQA: ("llava_instruct",),
    REASON_SEG: ("reason_seg",),
}


def mixture_kinds(value: str) -> list[str]:
    """LISA's "a||b||c" option values as a list (blanks dropped)."""
    return [name.strip() for name in str(value).split("||") if name.strip()]


def parse_rates(value: str, count: int) -> list[float]:
    """LISA's "9,3,3,1" sampling rates: ``count`` positive numbers (ValueError otherwise)."""
    try:
        rates = [float(x) for x in str(value).split(",") if x.strip()]
    except ValueError as err:
        raise ValueError(f"sample_rates {value!r}: not a comma-separated list of numbers") from err
    if len(rates) != count or any(not r > 0 for r in rates):
        raise ValueError(f"sample_rates {value!r}: needs {count} positive number(s), one per dataset kind")
    return rates


@dataclass
class Draw:
    """One training item of a source: an image and its n targets (n >= 1), or a text-only conversation.

    texts: n raw target texts as LISA puts them into its short-question template BEFORE ``.lower()``
           (class names such as "wall" or "the wheel of the car"; referring sentences), empty for ``vqa``.
    masks: (n, H, W) uint8 in {0, 1, 255} at the image's original resolution (255 = ignore), one per text;
           (0, H, W) for ``vqa``.
    turns: ``vqa`` only: the conversation as (user, assistant) pairs, the image placeholder removed from the
           first user turn (LISA's ``VQADataset``); empty for segmentation kinds.
    file:  the annotation file (label PNG, JSON) to name in errors.
    """

    image_path: str
    texts: list[str]
    masks: np.ndarray
    file: str
    turns: list[tuple[str, str]] = field(default_factory=list)


class Source(Protocol):
    """A dataset of one kind. ``name`` is the dataset's name as configured (``ade20k``, ``refcoco``, ...)."""

    name: str
    kind: str

    def __len__(self) -> int:
        """Number of items (images for sem_seg / refer_seg, conversations for vqa)."""
        ...

    def draw(self, index: int, rng: random.Random, max_targets: int) -> Draw | None:
        """Item ``index`` (0 <= index < len) with at most ``max_targets`` targets chosen by ``rng`` as LISA chooses
        them; None when the item has no usable target (e.g. a label PNG holding only ignored classes), and the
        caller moves on to another item as LISA does. Raises ``DataError`` naming the file for unreadable input."""
        ...
