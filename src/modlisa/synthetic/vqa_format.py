"""The synthetic scenes as LLaVA-Instruct-150k conversations (LISA's ``vqa`` source, ``modlisa.data.vqa``).

``make_llava_instruct(OUT)`` writes ``OUT/llava_dataset/llava_instruct_150k.json`` (a list of {"id", "image",
"conversations": [{"from": "human" | "gpt", "value"}]}, LLaVA's keys and key order) and the images
``OUT/coco/train2017/%012d.jpg`` (ids from ``FIRST_IMAGE_ID``, apart from the sem_seg writers'). One
conversation per image, 2-4 question/answer turns whose answers are true of the scene: how many shapes, which
colours, whether a named shape is there, the colour of the only shape of a kind, the largest shape. The first
question carries ``<image>`` before it or after it ("<image>\\n..." / "...\\n<image>"), as LLaVA's data does.
Output depends only on the arguments.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from modlisa.data.lisa_layout import LLAVA_IMAGES, LLAVA_JSON
from modlisa.synthetic.dataset import _image_dims, _validate
from modlisa.synthetic.options import SceneOptions
from modlisa.synthetic.phrasing import _article, _dedupe
from modlisa.synthetic.refer_format import save_scene_jpeg
from modlisa.synthetic.scene import COLOURS, KINDS, Scene, make_scene

IMAGE_TOKEN = "<image>"  # LLaVA's DEFAULT_IMAGE_TOKEN (= modlisa.types.IMAGE_TOKEN, which would import torch)
FIRST_IMAGE_ID = 200_000
STREAM = 30  # the scenes' generator stream, apart from the other writers'
LARGEST_MARGIN = 1.3  # "the largest shape" is asked only when it beats the second by this area ratio

QA = tuple[str, str]


def _listing(words: list[str]) -> str:
    """"a", "a and b", "a, b and c"."""
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} and {words[-1]}"


def count_qa(scene: Scene) -> QA:
    """How many shapes the image shows."""
    n = len(scene.objects)
    return "How many shapes are there in the image?", ("There is 1 shape." if n == 1 else f"There are {n} shapes.")


def colours_qa(scene: Scene) -> QA:
    """The colours of the shapes, in drawing order without repeats."""
    colours = _dedupe([obj.colour for obj in scene.objects])
    return "What colours are the shapes?", f"The shapes are {_listing(colours)}."


def presence_qa(rng: np.random.Generator, scene: Scene) -> QA:
    """Whether a shape of a random colour and kind is there (half the time one that is)."""
    if rng.random() < 0.5:
        obj = scene.objects[int(rng.integers(len(scene.objects)))]
        colour, kind = obj.colour, obj.kind
    else:
        colour, kind = list(COLOURS)[int(rng.integers(len(COLOURS)))], KINDS[int(rng.integers(len(KINDS)))]
    there = any(o.colour == colour and o.kind == kind for o in scene.objects)
    a = _article(colour)
    answer = f"Yes, there is {a} {colour} {kind}." if there else f"No, there is no {colour} {kind}."
    return f"Is there {a} {colour} {kind} in the image?", answer


def kind_colour_qa(rng: np.random.Generator, scene: Scene) -> QA | None:
    """The colour of a shape that is the only one of its kind; None when no kind is unique."""
    kinds = [obj.kind for obj in scene.objects]
    unique = [obj for obj in scene.objects if kinds.count(obj.kind) == 1]
    if not unique:
        return None
    obj = unique[int(rng.integers(len(unique)))]
    return f"What colour is the {obj.kind}?", f"The {obj.kind} is {obj.colour}."


def largest_qa(scene: Scene) -> QA | None:
    """The largest shape, when it is clearly the largest (``LARGEST_MARGIN``); None otherwise."""
    ranked = sorted(scene.objects, key=lambda o: o.area, reverse=True)
    if len(ranked) > 1 and ranked[0].area < LARGEST_MARGIN * ranked[1].area:
        return None
    return "Which shape is the largest?", f"The largest shape is the {ranked[0].colour} {ranked[0].kind}."


def scene_conversation(rng: np.random.Generator, scene: Scene) -> list[dict[str, str]]:
    """LLaVA ``conversations`` of a scene: the count first, then 1-3 of the other questions, ``<image>`` in the
    first question."""
    others = [qa for qa in (colours_qa(scene), presence_qa(rng, scene), kind_colour_qa(rng, scene),
                            largest_qa(scene)) if qa is not None]
    picked = rng.permutation(len(others))[: int(rng.integers(1, min(3, len(others)) + 1))]
    turns = [count_qa(scene), *(others[int(k)] for k in picked)]
    first = turns[0][0]
    turns[0] = (f"{IMAGE_TOKEN}\n{first}" if rng.random() < 0.5 else f"{first}\n{IMAGE_TOKEN}", turns[0][1])
    return [{"from": role, "value": value} for question, answer in turns
            for role, value in (("human", question), ("gpt", answer))]


def make_llava_instruct(
    out_dir: str | Path,
    *,
    seed: int = 0,
    num_images: int = 8,
    image_size: int = 128,
    options: SceneOptions | None = None,
) -> dict[str, Any]:
    """Write ``num_images`` conversations and their images under ``out_dir``. Returns {json, image_dir,
    conversations (count), items: [{id, image, objects (count)}]}."""
    _validate(seed, {"train": num_images}, image_size)
    options = options or SceneOptions()
    root = Path(out_dir)
    entries, items = [], []
    for index in range(num_images):
        rng = np.random.default_rng([seed, STREAM, index])
        width, height = _image_dims(rng, image_size)
        scene = make_scene(rng, width, height, options)
        image_id = FIRST_IMAGE_ID + index
        file_name = f"{image_id:012d}.jpg"
        save_scene_jpeg(rng, scene, root / LLAVA_IMAGES / file_name)
        entries.append({"id": f"{image_id:012d}", "image": file_name,
                        "conversations": scene_conversation(rng, scene)})
        items.append({"id": f"{image_id:012d}", "image": str(root / LLAVA_IMAGES / file_name),
                      "objects": len(scene.objects)})
    path = root / LLAVA_JSON
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(entries, indent=1) + "\n", encoding="utf-8")
    return {"json": str(path), "image_dir": str(root / LLAVA_IMAGES), "conversations": len(entries), "items": items}
