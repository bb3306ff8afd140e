"""LISA's training mixture (``train_ds.py``: ``--dataset sem_seg||refer_seg||vqa||reason_seg --sample_rates
9,3,3,1``) as one ``Dataset`` of ``Sample`` items.

Item ``i`` of epoch ``e`` is drawn as LISA's ``HybridDataset`` draws an item, with every random choice from a
generator seeded by (seed, e, i) — so an item is a pure function of them and exact resume holds as for
ReasonSeg alone:

1. the kind, with probability proportional to its sampling rate;
2. one of the kind's datasets, uniformly (LISA's ``random.randint(0, len(datas) - 1)``);
3. one item of that dataset, uniformly; a segmentation item without any usable target is replaced by the next
   one (LISA falls back to item 0);
4. up to ``queries_per_image`` targets (LISA's ``num_classes_per_sample``), each asked with a random short
   question template on ``text.lower()`` and answered with a random answer (``sem_seg`` / ``refer_seg``), a
   ReasonSeg item exactly as ``ReasonSegDataset`` makes it, or the whole LLaVA conversation (``vqa``: no mask,
   cross-entropy only).

The mixture's length (the range the sampler permutes) is the sum of its datasets' lengths; the index only
seeds the draws. ``Sample.source`` names the dataset each item came from, for per-dataset counts and losses.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from modlisa.data import prompts
from modlisa.data.dataset import (
    SEG_ONLY,
    TEXT_ONLY,
    AugmenterFn,
    Dialogue,
    SamTransformFn,
    VisionTransformFn,
    item_seed,
    make_sample,
)
from modlisa.data.reasonseg import DataError, load_image_rgb
from modlisa.data.sources import KINDS, REASON_SEG, REFER_SEG, SEM_SEG, VQA, Draw, Source, parse_rates
from modlisa.types import Sample

MIXTURE_STREAM = 2  # the item_seed stream of the mixture's draws (0: ReasonSeg dialogue, 1: augmentation)


@dataclass(frozen=True)
class MixturePart:
    """One kind of the mixture: its sampling rate and its datasets (sources, or the ReasonSeg split)."""

    kind: str
    rate: float
    datasets: tuple[Any, ...]

    @property
    def size(self) -> int:
        return sum(len(d) for d in self.datasets)


class MixtureDataset(torch.utils.data.Dataset):
    """Items drawn from ``parts`` by sampling rate (module docstring). Exposes what a training split exposes
    (``set_epoch``, ``set_transforms``, ``problems``, ``num_skipped``, ``load_failures``, ``annotations`` — those
    of its ReasonSeg-format folders)."""

    def __init__(self, parts: Sequence[MixturePart], *, seed: int, queries_per_image: int) -> None:
        if not parts:
            raise ValueError("a mixture needs at least one dataset")
        for part in parts:
            if part.kind not in KINDS:
                raise ValueError(f"unknown dataset kind {part.kind!r}; choose from {', '.join(KINDS)}")
            if part.rate <= 0 or not part.datasets or any(len(d) == 0 for d in part.datasets):
                raise ValueError(f"{part.kind}: needs a rate > 0 and non-empty datasets")
        self.parts, self.seed, self.queries_per_image = tuple(parts), seed, queries_per_image
        self.epoch = 0
        self.sam_transform: SamTransformFn | None = None
        self.vision_transform: VisionTransformFn | None = None
        self.augmenter: AugmenterFn | None = None
        self.train = True
        self.reason_sets = [d for p in parts if p.kind == REASON_SEG for d in p.datasets]

    # ------------------------------------------------------------------ the training-split interface
    def __len__(self) -> int:
        return sum(part.size for part in self.parts)

    @property
    def problems(self) -> list[Any]:
        return [problem for dataset in self.reason_sets for problem in dataset.problems]

    @property
    def num_skipped(self) -> int:
        return sum(dataset.num_skipped for dataset in self.reason_sets)

    @property
    def load_failures(self) -> dict[str, str]:
        return {path: reason for dataset in self.reason_sets for path, reason in dataset.load_failures.items()}

    @property
    def annotations(self) -> list[Any]:
        return [ann for dataset in self.reason_sets for ann in dataset.annotations]

    def dataset_names(self) -> list[str]:
        """Every dataset of the mixture, in configuration order."""
        return [_name_of(d) for part in self.parts for d in part.datasets]

    def shares(self) -> dict[str, float]:
        """The expected share of items of each dataset: rate share of its kind / number of datasets of the kind."""
        total = sum(part.rate for part in self.parts)
        return {_name_of(d): part.rate / total / len(part.datasets) for part in self.parts for d in part.datasets}

    def set_transforms(self, sam_transform: SamTransformFn, vision_transform: VisionTransformFn,
                       augmenter: AugmenterFn | None = None) -> None:
        self.sam_transform, self.vision_transform, self.augmenter = sam_transform, vision_transform, augmenter
        for dataset in self.reason_sets:
            dataset.set_transforms(sam_transform, vision_transform, augmenter)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        for dataset in self.reason_sets:
            dataset.set_epoch(epoch)

    # ------------------------------------------------------------------ items
    def choose(self, index: int) -> tuple[MixturePart, Any, random.Random]:
        """(part, dataset, the item's generator after those two draws) of item ``index`` of this epoch."""
        rng = random.Random(item_seed(self.seed, self.epoch, index, stream=MIXTURE_STREAM))
        part = rng.choices(self.parts, weights=[p.rate for p in self.parts])[0]
        return part, part.datasets[rng.randrange(len(part.datasets))], rng

    def __getitem__(self, index: int) -> Sample:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} items")
        if self.sam_transform is None or self.vision_transform is None:
            raise RuntimeError("MixtureDataset has no image transforms yet: call set_transforms first")
        part, dataset, rng = self.choose(index)
        if part.kind == REASON_SEG:
            sample = dataset.make_sample(rng.randrange(len(dataset)), index)
            sample.index, sample.source = index, dataset.name
            return sample
        draw = _draw_usable(dataset, rng, self.queries_per_image)
        image = load_image_rgb(draw.image_path)
        if part.kind == VQA:
            return self._conversation_sample(draw, dataset, image, index)
        return self._segmentation_sample(draw, dataset, image, rng, index)

    def _segmentation_sample(self, draw: Draw, source: Source, image: np.ndarray, rng: random.Random,
                             index: int) -> Sample:
        masks = np.asarray(draw.masks, dtype=np.uint8)
        if masks.shape[1:] != image.shape[:2] or masks.shape[0] != len(draw.texts) or not draw.texts:
            raise DataError(draw.file, f"{source.name}: {masks.shape[0]} target mask(s) of size {masks.shape[1:]} "
                                       f"for {len(draw.texts)} text(s) on the image {draw.image_path} of size "
                                       f"{image.shape[:2]}")
        questions = [prompts.train_question(text.strip().lower(), False, rng) for text in draw.texts]
        answers = [prompts.train_answer(rng) for _ in draw.texts]
        dialogue = Dialogue(questions, answers, [text.strip() for text in draw.texts], SEG_ONLY)
        if self.augmenter is not None:
            aug_rng = np.random.default_rng(item_seed(self.seed, self.epoch, index, stream=1))
            image, masks = self.augmenter(image, masks, [*dialogue.queries, *answers], aug_rng)
        return make_sample(image, masks, dialogue, self.sam_transform, self.vision_transform,
                           image_path=draw.image_path, json_path=draw.file, is_sentence=False, index=index,
                           source=source.name)

    def _conversation_sample(self, draw: Draw, source: Source, image: np.ndarray, index: int) -> Sample:
        if not draw.turns:
            raise DataError(draw.file, f"{source.name}: a conversation without any turn")
        (question, answer), *rest = draw.turns
        dialogue = Dialogue([question], [answer], [""], TEXT_ONLY)
        masks = np.zeros((0, *image.shape[:2]), dtype=np.uint8)
        return make_sample(image, masks, dialogue, self.sam_transform, self.vision_transform,
                           image_path=draw.image_path, json_path=draw.file, is_sentence=False, index=index,
                           source=source.name, extra_turns=list(rest))


def _name_of(dataset: Any) -> str:
    return str(dataset.name)


def _draw_usable(source: Source, rng: random.Random, max_targets: int) -> Draw:
    """A random item of ``source`` with a usable target; the next items when it has none (LISA: item 0)."""
    n = len(source)
    start = rng.randrange(n)
    for step in range(n):
        draw = source.draw((start + step) % n, rng, max_targets)
        if draw is not None:
            return draw
    raise DataError(getattr(source, "root", source.name), f"{source.name}: no item has a usable target")


# --------------------------------------------------------------------------- from the configuration


def configured_shares(config: dict[str, Any]) -> dict[str, float]:
    """The expected share of items of each dataset under a run config's ``dataset`` / ``sample_rates`` /
    ``*_data`` (kind share by rate, split evenly between the kind's datasets); {} for ReasonSeg alone or an
    invalid configuration."""
    from modlisa.data.sources import mixture_kinds

    kinds = mixture_kinds(config.get("dataset") or REASON_SEG)
    if kinds == [REASON_SEG]:
        return {}
    try:
        rates = parse_rates(config["sample_rates"], len(kinds)) \
            if str(config.get("sample_rates") or "").strip() and len(kinds) > 1 else [1.0] * len(kinds)
    except ValueError:
        return {}
    total, out = sum(rates), {}
    for kind, rate in zip(kinds, rates):
        names = mixture_kinds(config.get(f"{kind}_data") or REASON_SEG)
        names = [n if n == REASON_SEG or kind != REASON_SEG else Path(n).name for n in names]
        for name in names:
            out[name] = rate / total / len(names)
    return out


def build_source(kind: str, name: str, dataset_dir: str | Path) -> Source:
    """The source ``name`` of ``kind`` under LISA's dataset folder ``dataset_dir``."""
    if kind == REFER_SEG:
        from modlisa.data.refer import ReferSegSource

        return ReferSegSource(dataset_dir, name)
    if kind == SEM_SEG:
        from modlisa.data.sem_seg import sem_seg_source

        return sem_seg_source(dataset_dir, name)
    if kind == VQA:
        from modlisa.data.vqa import vqa_source

        return vqa_source(dataset_dir, name)
    raise ValueError(f"unknown dataset kind {kind!r}")
