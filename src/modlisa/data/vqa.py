"""LLaVA-Instruct-150k, LISA's ``vqa`` training source (issue 14): conversations about COCO images.

Layout (LISA's README, "Training Data Preparation"; ROOT is LISA's ``dataset`` folder)::

    ROOT/llava_dataset/llava_instruct_150k.json   a list of {"id", "image", "conversations": [{"from", "value"}]}
    ROOT/coco/train2017/<image>                   "image" is a bare COCO file name, e.g. "000000033471.jpg"

``from`` is "human" or "gpt"; the first human turn holds the image placeholder ``<image>`` (before or after
its question). ``turns`` follows LISA's ``utils/vqa_dataset.py``: ``preprocess_multimodal`` takes ``<image>``
out of the message that holds it and strips that message (then puts the placeholder back at its start: the
CALLER does that, at the start of the first user turn); a conversation starting with "gpt" loses that first
message; the rest must alternate human, gpt (LISA asserts it). Messages without the placeholder are kept
exactly as written.

``draw`` returns a ``Draw`` with no texts, masks of shape (0, H, W) (H, W from the image's header, as LISA's
``torch.rand(0, *ori_size)``) and ``turns`` as (user, assistant) pairs. The conversations are checked when the
source is built: a file that is not a list of such entries, a role other than human / gpt, roles that do not
alternate, a last human message without an answer, ``<image>`` anywhere but the first human message, or a
reserved token ([SEG], <im_start>, <im_end>) in a message raise ``DataError`` naming the file and the
conversation id; a missing image raises it in ``draw``, naming the image and the conversation id.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np

from modlisa.data.lisa_layout import LAYOUTS, LLAVA_IMAGES, LLAVA_JSON
from modlisa.data.reasonseg import DataError, read_image_size, read_json, reserved_token_in
from modlisa.data.sources import VQA, Draw
from modlisa.types import IMAGE_TOKEN

ROLES = ("human", "gpt")


def conversation_turns(item: Any, position: int, path: Path) -> list[tuple[str, str]]:
    """(user, assistant) pairs of one LLaVA entry, the ``<image>`` placeholder removed as LISA's
    ``preprocess_multimodal`` does (``value.replace("<image>", "").strip()``). DataError naming ``path`` and
    the entry's id (or its position) for a malformed entry."""
    if not isinstance(item, dict):
        raise DataError(path, f"entry #{position} is not an object with id, image and conversations")
    where = f"conversation {item.get('id', f'#{position}')!s}"
    messages = item.get("conversations")
    if not isinstance(item.get("image"), str) or not isinstance(messages, list) or not messages:
        raise DataError(path, f"{where}: needs a string 'image' and a non-empty 'conversations' list")
    for j, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("value"), str):
            raise DataError(path, f"{where}: message {j} must be an object with a string 'value'")
        if message.get("from") not in ROLES:
            raise DataError(path, f"{where}: message {j} is from {message.get('from')!r}, not human or gpt")
    if messages[0]["from"] != "human":  # LISA: "Skip the first one if it is not from human"
        messages = messages[1:]
    values = []
    for j, message in enumerate(messages):
        if message["from"] != ROLES[j % 2]:
            raise DataError(path, f"{where}: roles must alternate human, gpt; message {j} (after a leading gpt "
                                  f"message is dropped) is from {message['from']}")
        value = message["value"]
        if IMAGE_TOKEN in value:
            if j != 0:
                raise DataError(path, f"{where}: {IMAGE_TOKEN} appears in message {j}; only the first human "
                                      "message may hold the image")
            value = value.replace(IMAGE_TOKEN, "").strip()
        token = reserved_token_in(value)
        if token is not None:
            raise DataError(path, f"{where}: message {j} contains the reserved token {token}")
        values.append(value)
    if not values:
        raise DataError(path, f"{where}: no human message (a leading gpt message is dropped, as LISA does)")
    if len(values) % 2:
        raise DataError(path, f"{where}: the last human message has no gpt answer")
    return list(zip(values[0::2], values[1::2]))


class LlavaInstructSource:
    """LLaVA-Instruct-150k: item i is the i-th conversation of the JSON."""

    name = "llava_instruct"
    kind = VQA

    def __init__(self, root: str | Path, json_name: str = LLAVA_JSON.name) -> None:
        root = Path(root)
        self.json_path = root / LLAVA_JSON.parent / json_name
        self.image_root = root / LLAVA_IMAGES
        if not self.json_path.is_file():
            raise DataError(self.json_path, "LLaVA-Instruct JSON not found; expected layout (LISA's README): "
                                            f"{LAYOUTS['llava_instruct']}")
        data = read_json(self.json_path)
        if not isinstance(data, list):
            raise DataError(self.json_path, "top level must be a list of conversations")
        self.items = []
        for i, item in enumerate(data):
            turns = conversation_turns(item, i, self.json_path)
            self.items.append((str(item.get("id", f"#{i}")), item["image"], turns))

    def __len__(self) -> int:
        return len(self.items)

    def draw(self, index: int, rng: random.Random, max_targets: int) -> Draw:
        """Conversation ``index``: its turns, no targets (``rng`` and ``max_targets`` are unused)."""
        conv_id, image, turns = self.items[index]
        image_path = self.image_root / image
        if not image_path.is_file():
            raise DataError(image_path, f"image file not found (conversation {conv_id} of {self.json_path.name})")
        height, width = read_image_size(image_path)
        return Draw(str(image_path), [], np.zeros((0, height, width), dtype=np.uint8), str(self.json_path),
                    turns=list(turns))


def vqa_source(root: str | Path, name: str = "llava_instruct") -> LlavaInstructSource:
    """The ``vqa`` source ``name`` under ROOT: ``llava_instruct`` (LISA's ``llava_instruct_150k``)."""
    if name not in ("llava_instruct", "llava_instruct_150k"):
        raise ValueError(f"unknown vqa dataset {name!r}; choose llava_instruct")
    return LlavaInstructSource(root)
