"""Examples and files: one scene's examples (``generate_scene_examples``), a dataset (``make_dataset``).

Files follow docs/LISA.md §1: ``{train,val,test}/<name>.jpg`` + ``<name>.json`` and
``explanatory/train.json``. Output depends only on (seed, split, index, image_size, options): every scene has
its own generator seeded from these, JSON is written with a fixed key order, JPEGs carry no metadata.
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from modlisa import __version__
from modlisa.console import progress as progress_bar
from modlisa.synthetic.options import SceneOptions, option_arguments
from modlisa.synthetic.phrasing import explain, phrasings
from modlisa.synthetic.queries import QuerySpec, choose_query
from modlisa.synthetic.render import Points, extra_shapes, render
from modlisa.synthetic.scene import Scene, SceneObject, make_scene

logger = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
SPLIT_IDS = {"train": 0, "val": 1, "test": 2}
MIN_IMAGE_SIZE = 64
EXPLANATORY_PROB = 0.5  # fraction of train images listed in explanatory/train.json
MAX_SCENE_ATTEMPTS = 200

# ----------------------------------------------------------------------------------------------------
# Examples: scene, query, texts, extra shapes, image
# ----------------------------------------------------------------------------------------------------


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


def _pick_texts(rng: np.random.Generator, candidates: list[str], split: str) -> tuple[str, ...]:
    """Train: 2-6 distinct rephrasings (fewer if the query has fewer wordings); val/test: exactly 1."""
    count = 1 if split != "train" else min(int(rng.integers(2, 7)), len(candidates))
    order = rng.permutation(len(candidates))[:count]
    return tuple(candidates[int(i)] for i in order)


def _scene_and_query(
    rng: np.random.Generator, width: int, height: int, is_sentence: bool, name: str, options: SceneOptions
) -> tuple[Scene, QuerySpec, int]:
    """A scene, a query of the wanted kind (short or sentence) and its target; new scenes until one fits."""
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
    extras = extra_shapes(rng, scene, target)
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
    """One LISA shape entry (a labelled polygon)."""
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
    """An object's attributes and polygon (the "distractors" entries)."""
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
    """UTF-8 JSON, indented, with a final newline."""
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def write_example(example: Example, split_dir: Path) -> None:
    """Write ``<name>.jpg`` (JPEG quality 95, no metadata) and ``<name>.json`` into ``split_dir``."""
    example.image.save(split_dir / f"{example.name}.jpg", format="JPEG", quality=95, subsampling=0)
    _write_json(annotation_dict(example), split_dir / f"{example.name}.json")


def _readme_text(seed: int, counts: dict[str, int], image_size: int, options: SceneOptions) -> str:
    """README.txt: what the folder holds and the command that rewrites it."""
    args = " ".join(f"--num_{s} {counts[s]}" for s in SPLITS) + option_arguments(options)
    return (
        "Synthetic ReasonSeg-format dataset (images of flat coloured shapes).\n\n"
        f"Generated by modlisa {__version__} (module modlisa.synthetic) with:\n"
        f"  modlisa make-data OUT_DIR --seed {seed} {args} --image_size {image_size}\n"
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
    """ValueError for a negative seed or count, no scenes at all, or too small an image size."""
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
    """The zeroed counters of one split."""
    counters = ("images", "short", "long", "texts", "ignore_shapes", "flag_shapes")
    return {"path": str(path), **dict.fromkeys(counters, 0)}


def _count(summary: dict[str, Any], example: Example) -> None:
    """Add ``example`` to its split's counters."""
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
    examples = (ex for split, index in progress_bar(jobs, enabled=progress, desc="make-data", unit="scene",
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
