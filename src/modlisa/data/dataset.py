"""``ReasonSegDataset``: one ReasonSeg split as ``Sample`` items (image, queries, LISA masks).

Training items sample up to ``queries_per_image`` distinct query texts with random LISA templates;
evaluation items follow LISA's protocol (first text, fixed prompt, answer "[SEG]."). Every random
choice comes from generators seeded by (seed, epoch, index), so an item is a pure function of them.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from modlisa.data import prompts
from modlisa.data.reasonseg import (
    DataError,
    Problem,
    SplitNotFoundError,
    annotation_mask,
    count_annotation_files,
    load_image_rgb,
    resolve_split_dir,
    scan_split,
)
from modlisa.types import Annotation, Sample

logger = logging.getLogger(__name__)

SamTransformFn = Callable[[np.ndarray], tuple[torch.Tensor, tuple[int, int]]]
VisionTransformFn = Callable[[np.ndarray], torch.Tensor]
AugmenterFn = Callable[[np.ndarray, np.ndarray, list[str], np.random.Generator], tuple[np.ndarray, np.ndarray]]


def item_seed(seed: int, epoch: int, index: int, stream: int = 0) -> int:
    """A 64-bit seed that depends only on (seed, epoch, index, stream): stable across processes."""
    return int(np.random.SeedSequence([seed, epoch, index, stream]).generate_state(1, np.uint64)[0])


def problems_error(split_dir: Path, errors: list[Problem]) -> DataError:
    """One DataError listing every error-level problem (file + reason), all of them (one line for one)."""
    if len(errors) == 1:
        p = errors[0]
        return DataError(split_dir, f"1 data error: {p.file}: {p.kind}: {p.message}. Fix or remove this file, or "
                                    "let training skip it (data_strict: false, `--data_strict false`)")
    lines = [f"  {p.file}: {p.kind}: {p.message}" for p in errors]
    reason = (f"{len(errors)} data error(s):\n" + "\n".join(lines) +
              "\nFix or remove these files, or let training skip them (data_strict: false, "
              "`--data_strict false`); `modlisa check-data` lists every problem.")
    return DataError(split_dir, reason)


def check_training_data(root: str | Path, splits: tuple[tuple[str, bool], ...] = (("train", True), ("val", False))
                        ) -> dict[str, list[Problem]]:
    """Scan ``splits`` ((name, for_training) pairs; images verified) and raise ONE DataError listing every
    error of all of them; a missing split other than the first is skipped. Returns the problems per split.

    This is the ``data_strict`` check that runs before a model is built.
    """
    found: dict[str, list[Problem]] = {}
    for i, (split, for_training) in enumerate(splits):
        try:
            _, found[split] = scan_split(root, split, for_training=for_training, verify_images=True)
        except SplitNotFoundError:
            if i == 0:
                raise
    errors = [p for problems in found.values() for p in problems if p.is_error]
    if errors:
        raise problems_error(Path(root), errors)
    return found


class ReasonSegDataset(torch.utils.data.Dataset):
    """A ReasonSeg split. ``problems`` holds everything ``scan_split`` found; ``num_skipped`` the
    number of annotation files left out because of errors (only possible with ``strict=False``).

    ``verify_images``: also find truncated/corrupt images before training (``verify_image``: reads each
    file's tail, decodes only suspicious files). A training item whose image still fails to decode is, with
    ``strict=False``, replaced by the next loadable item and recorded in ``load_failures`` (file -> reason;
    per process: DataLoader workers keep their own); with ``strict=True``, and for evaluation sets (whose
    metrics must not count an item twice), loading it raises DataError naming the file.
    """

    def __init__(
        self,
        root: str | Path,
        split: str,
        sam_transform: SamTransformFn | None,
        vision_transform: VisionTransformFn | None,
        *,
        train: bool,
        seed: int = 0,
        queries_per_image: int = 3,
        explanatory_prob: float = 0.1,
        augmenter: AugmenterFn | None = None,
        strict: bool = True,
        max_samples: int | None = None,
        verify_images: bool = False,
    ) -> None:
        _check_arguments(seed, queries_per_image, explanatory_prob, max_samples)
        self.root, self.split, self.train = Path(root), split, train
        self.name = "reason_seg"  # in a mixture: reason_seg for data_root, the folder's name for another folder
        self.sam_transform, self.vision_transform, self.augmenter = sam_transform, vision_transform, augmenter
        self.seed, self.queries_per_image, self.explanatory_prob = seed, queries_per_image, explanatory_prob
        self.epoch, self.strict = 0, strict
        self.load_failures: dict[str, str] = {}
        self._failed: set[int] = set()
        annotations, self.problems = scan_split(root, split, for_training=train, verify_images=verify_images)
        errors = [p for p in self.problems if p.is_error]
        if errors and strict:
            raise problems_error(resolve_split_dir(root, split), errors)
        self.num_skipped = count_annotation_files(root, split) - len(annotations)
        if errors:
            _log_skipped(root, split, self.num_skipped, errors)
        if not annotations:
            raise DataError(resolve_split_dir(root, split), "no usable annotation in this split")
        self.annotations: list[Annotation] = annotations[:max_samples] if max_samples else annotations

    def __len__(self) -> int:
        return len(self.annotations)

    def set_transforms(self, sam_transform: SamTransformFn, vision_transform: VisionTransformFn,
                       augmenter: AugmenterFn | None = None) -> None:
        """The model's image transforms, for a split scanned before the model was built (``build_run`` checks
        the data first); ``augmenter`` only for a training split."""
        self.sam_transform, self.vision_transform = sam_transform, vision_transform
        if self.train:
            self.augmenter = augmenter

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose random draws (queries, templates, augmentation) items use."""
        self.epoch = int(epoch)

    def _train_dialogue(self, ann: Annotation, rng: random.Random) -> Dialogue:
        return train_dialogue(ann, rng, self.queries_per_image, self.explanatory_prob)

    @staticmethod
    def _eval_dialogue(ann: Annotation) -> tuple[list[str], list[str], list[str]]:
        """LISA's evaluation protocol: the first text only, the fixed prompt, the answer "[SEG]."."""
        query = ann.texts[0]
        return [prompts.eval_question(query, ann.is_sentence)], [prompts.EVAL_ANSWER], [query]

    def _load(self, ann: Annotation) -> tuple[np.ndarray, np.ndarray]:
        """(image (H, W, 3) uint8 RGB, mask (H, W) uint8 in {0, 1, 255}); DataError naming the file."""
        image = load_image_rgb(ann.image_path)
        return image, annotation_mask(ann, image.shape[:2])

    def _load_item(self, index: int) -> tuple[Annotation, np.ndarray, np.ndarray]:
        """(annotation, image, mask) of ``index``; a lenient training set replaces an item that fails to
        load by the next loadable one (deterministic), recording the failure."""
        n = len(self.annotations)
        for j in (index + step for step in range(n)):
            j %= n
            if j in self._failed:
                continue
            try:
                return (self.annotations[j], *self._load(self.annotations[j]))
            except DataError as err:
                if self.strict or not self.train:
                    raise
                self._failed.add(j)
                self.load_failures[err.path] = err.reason
                logger.warning("%s: %s; skipped, replaced by the next loadable item (data_strict=false)",
                               err.path, err.reason)
        raise DataError(resolve_split_dir(self.root, self.split), "no item of this split can be loaded: "
                        f"{len(self.load_failures)} file(s) failed to decode")

    @classmethod
    def from_annotations(cls, annotations: list[Annotation], root: str | Path, split: str,
                         sam_transform: SamTransformFn | None, vision_transform: VisionTransformFn | None
                         ) -> ReasonSegDataset:
        """An EVALUATION set of annotations read elsewhere (e.g. one per refCOCO sentence, ``data/refer.py``),
        evaluated with LISA's protocol like a ReasonSeg split; ``root`` / ``split`` name it in messages."""
        if not annotations:
            raise DataError(root, f"no annotation in split {split!r}")
        dataset = cls.__new__(cls)
        dataset.root, dataset.split, dataset.train, dataset.name = Path(root), split, False, split
        dataset.sam_transform, dataset.vision_transform, dataset.augmenter = sam_transform, vision_transform, None
        dataset.seed, dataset.queries_per_image, dataset.explanatory_prob = 0, 1, 0.0
        dataset.epoch, dataset.strict = 0, True
        dataset.load_failures, dataset._failed = {}, set()
        dataset.problems, dataset.num_skipped, dataset.annotations = [], 0, list(annotations)
        return dataset

    def __getitem__(self, index: int) -> Sample:
        """One image with its n_q queries; masks (n_q, H, W) uint8 at the original resolution."""
        return self.make_sample(index, index)

    def make_sample(self, index: int, draw_index: int) -> Sample:
        """Item ``index`` whose random draws (queries, templates, augmentation) come from (seed, epoch,
        ``draw_index``): ``__getitem__`` uses ``draw_index = index``; a mixture passes its own item index."""
        if not 0 <= index < len(self.annotations):
            raise IndexError(f"index {index} out of range for {len(self.annotations)} items")
        if self.sam_transform is None or self.vision_transform is None:
            raise RuntimeError("ReasonSegDataset has no image transforms yet: call set_transforms first")
        ann, image, mask = self._load_item(index)
        if self.train:
            dialogue = self._train_dialogue(ann, random.Random(item_seed(self.seed, self.epoch, draw_index)))
        else:
            dialogue = Dialogue(*self._eval_dialogue(ann), kind=SEG_ONLY)
        # one mask per [SEG]; a text-only image carries no mask at all (LISA: masks of shape (0, H, W))
        masks = np.repeat(mask[None], dialogue.num_masks, axis=0)
        if self.train and self.augmenter is not None:
            aug_rng = np.random.default_rng(item_seed(self.seed, self.epoch, draw_index, stream=1))
            # The flip rule reads every text the model sees: queries AND answers (explanations name sides).
            image, masks = self.augmenter(image, masks, [*dialogue.queries, *dialogue.answers], aug_rng)
        return make_sample(image, masks, dialogue, self.sam_transform, self.vision_transform,
                           image_path=ann.image_path, json_path=ann.json_path, is_sentence=ann.is_sentence,
                           index=index)


def make_sample(image: np.ndarray, masks: np.ndarray, dialogue: Dialogue, sam_transform: SamTransformFn,
                vision_transform: VisionTransformFn, **fields: object) -> Sample:
    """A ``Sample`` of ``image`` (H, W, 3) uint8 RGB and ``masks`` (n_m, H, W) uint8 through the model's
    transforms; ``fields``: the remaining ``Sample`` fields (image_path, json_path, is_sentence, index, ...)."""
    sam_image, resize_hw = sam_transform(image)
    return Sample(
        sam_image=sam_image,
        vision_image=vision_transform(image),
        resize_hw=(int(resize_hw[0]), int(resize_hw[1])),
        original_hw=(int(image.shape[0]), int(image.shape[1])),
        questions=dialogue.questions,
        answers=dialogue.answers,
        queries=dialogue.queries,
        masks=torch.from_numpy(np.ascontiguousarray(masks, dtype=np.uint8)),
        **fields,  # type: ignore[arg-type]
    )


def _log_skipped(root: str | Path, split: str, num_skipped: int, errors: list[Problem]) -> None:
    """One warning: annotation files skipped, and other problems (the explanatory file) by kind."""
    others = [p for p in errors if p.kind == "bad_explanatory"]
    if num_skipped:
        logger.warning("%s/%s: skipped %d annotation file(s) with errors; run `modlisa check-data %s` for the "
                       "list", root, split, num_skipped, root)
    for problem in others:
        logger.warning("%s: %s: explanations not used (training goes on without them): %s", problem.file,
                       problem.kind, problem.message)


SEG_ONLY, SEG_EXPLANATION, TEXT_ONLY = "seg", "seg+explanation", "text"


@dataclass
class Dialogue:
    """The sequences of one image: n_q questions (user turns without the image placeholder), n_q answers,
    the n_q raw query texts, and ``kind``: ``seg`` ([SEG] answers), ``seg+explanation`` ([SEG] + a space +
    the explanation) or ``text`` (the explanation alone: no [SEG], no mask)."""

    questions: list[str]
    answers: list[str]
    queries: list[str]
    kind: str

    @property
    def num_masks(self) -> int:
        return 0 if self.kind == TEXT_ONLY else len(self.queries)


def explanation_choice(ann: Annotation, rng: random.Random, explanatory_prob: float) -> str:
    """LISA's ONE draw per image with an explanation (``reason_seg_dataset.py``): text only with probability
    ``explanatory_prob``, else a fair coin between [SEG] and [SEG] + explanation. Images without one: [SEG]."""
    if not ann.explanation:
        return SEG_ONLY
    if rng.random() < explanatory_prob:
        return TEXT_ONLY
    return SEG_EXPLANATION if rng.random() < 0.5 else SEG_ONLY


def train_dialogue(ann: Annotation, rng: random.Random, queries_per_image: int, explanatory_prob: float) -> Dialogue:
    """A training item's sequences as LISA's ReasonSeg dataset builds them (docs/LISA.md §3).

    Up to ``queries_per_image`` distinct texts; one ``explanation_choice`` for the image, applied to ALL of them:
    ``seg``: a random question template (short phrases lower-cased, as LISA does) and a random answer;
    ``seg+explanation``: "{query} {explanatory question}" answered "{random answer} {explanation}";
    ``text``: the raw query as the question, the explanation as the answer (no [SEG], no mask).
    """
    k = min(queries_per_image, len(ann.texts))
    chosen = [ann.texts[j] for j in rng.sample(range(len(ann.texts)), k)]
    kind = explanation_choice(ann, rng, explanatory_prob)
    explanation = (ann.explanation or "").strip()
    questions, answers = [], []
    for text in chosen:
        if kind == TEXT_ONLY:
            question, answer = text.strip(), explanation
        elif kind == SEG_EXPLANATION:
            question, answer = prompts.explanatory_pair(text, explanation, rng)
        else:
            shown = text if ann.is_sentence else text.lower()  # LISA: class_name=text.lower()
            question, answer = prompts.train_question(shown, ann.is_sentence, rng), prompts.train_answer(rng)
        questions.append(question)
        answers.append(answer)
    return Dialogue(questions, answers, chosen, kind)


def _check_arguments(seed: int, queries_per_image: int, explanatory_prob: float, max_samples: int | None) -> None:
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    if queries_per_image < 1:
        raise ValueError(f"queries_per_image must be >= 1, got {queries_per_image}")
    if not 0.0 <= explanatory_prob <= 1.0:
        raise ValueError(f"explanatory_prob must be in [0, 1], got {explanatory_prob}")
    if max_samples is not None and max_samples < 1:
        raise ValueError(f"max_samples must be >= 1 or None, got {max_samples}")
