"""The LLaVA-Instruct-150k source on files written by ``make-data --format llava_instruct`` and on hand-made
conversations: LISA's ``preprocess_multimodal`` / role rules, empty (0, H, W) masks, DataErrors naming the
file and the conversation id."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from modlisa.cli import make_data
from modlisa.data.reasonseg import DataError
from modlisa.data.sources import VQA
from modlisa.data.vqa import conversation_turns, vqa_source
from modlisa.synthetic.vqa_format import IMAGE_TOKEN, make_llava_instruct
from modlisa.types import IMAGE_TOKEN as MODEL_IMAGE_TOKEN


@pytest.fixture(scope="module")
def llava_root(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("dataset")
    return root, make_llava_instruct(root, seed=2, num_images=6, image_size=64)


def _write(root: Path, entries) -> Path:
    path = root / "llava_dataset" / "llava_instruct_150k.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(entries))
    return path


def _entry(*messages: tuple[str, str], conv_id: str = "c1", image: str = "x.jpg") -> dict:
    return {"id": conv_id, "image": image, "conversations": [{"from": r, "value": v} for r, v in messages]}


def test_layout_and_json_keys(llava_root):
    root, summary = llava_root
    path = root / "llava_dataset" / "llava_instruct_150k.json"
    data = json.loads(path.read_text())
    assert summary["json"] == str(path) and len(data) == 6 and IMAGE_TOKEN == MODEL_IMAGE_TOKEN
    for entry in data:
        assert list(entry) == ["id", "image", "conversations"]
        assert (root / "coco" / "train2017" / entry["image"]).is_file()
        roles = [m["from"] for m in entry["conversations"]]
        assert roles == ["human", "gpt"] * (len(roles) // 2) and 4 <= len(roles) <= 8
        assert IMAGE_TOKEN in entry["conversations"][0]["value"]
        assert not any(IMAGE_TOKEN in m["value"] for m in entry["conversations"][1:])
    first_values = [e["conversations"][0]["value"] for e in data]
    assert any(v.startswith(IMAGE_TOKEN) for v in first_values) and any(v.endswith(IMAGE_TOKEN) for v in first_values)


def test_draws_follow_lisa(llava_root):
    root, summary = llava_root
    source = vqa_source(root)
    data = json.loads(Path(summary["json"]).read_text())
    assert source.name == "llava_instruct" and source.kind == VQA and len(source) == len(data)
    for index, (entry, item) in enumerate(zip(data, summary["items"])):
        draw = source.draw(index, random.Random(0), 3)
        values = [m["value"] for m in entry["conversations"]]
        values[0] = values[0].replace("<image>", "").strip()  # LISA's preprocess_multimodal, minus the re-add
        assert draw.turns == list(zip(values[0::2], values[1::2]))
        assert draw.texts == [] and draw.file == summary["json"] and draw.image_path == item["image"]
        with Image.open(item["image"]) as image:
            assert draw.masks.shape == (0, image.height, image.width) and draw.masks.dtype == np.uint8
        n = item["objects"]
        assert draw.turns[0] == ("How many shapes are there in the image?",
                                 "There is 1 shape." if n == 1 else f"There are {n} shapes.")
        assert draw.turns == source.draw(index, random.Random(99), 1).turns  # no randomness in a vqa draw


def test_lisa_turn_rules(tmp_path):
    path = tmp_path / "x.json"
    # a leading gpt message is dropped; <image> is taken out of the message holding it, which is stripped
    entry = _entry(("gpt", "hello"), ("human", "  What is <image> this?\n"), ("gpt", " It is a cat. "),
                   ("human", "Sure?"), ("gpt", "Yes."))
    assert conversation_turns(entry, 0, path) == [("What is  this?", " It is a cat. "), ("Sure?", "Yes.")]
    # without the placeholder nothing is stripped
    assert conversation_turns(_entry(("human", " Hi "), ("gpt", "Hey")), 0, path) == [(" Hi ", "Hey")]


@pytest.mark.parametrize(("messages", "match"), [
    ((("human", "q"), ("assistant", "a")), "message 1 is from 'assistant', not human or gpt"),
    ((("human", "<image>\nq"), ("human", "q2"), ("gpt", "a")), "roles must alternate human, gpt; message 1"),
    ((("human", "<image>\nq"), ("gpt", "a"), ("human", "q2")), "the last human message has no gpt answer"),
    ((("gpt", "only"),), "no human message"),
    ((("human", "<image>\nq"), ("gpt", "a"), ("human", "and <image>?"), ("gpt", "b")), "<image> appears in message 2"),
    ((("human", "<image>\nq"), ("gpt", "It is [SEG].")), r"message 1 contains the reserved token \[SEG\]"),
    ((("human", 3), ("gpt", "a")), "message 0 must be an object with a string 'value'"),
])
def test_bad_conversations_name_file_and_id(tmp_path, messages, match):
    path = _write(tmp_path, [_entry(("human", "<image>\nok"), ("gpt", "fine"), conv_id="good"),
                             _entry(*messages, conv_id="000000042")])
    with pytest.raises(DataError, match=f"conversation 000000042: {match}") as err:
        vqa_source(tmp_path)
    assert err.value.path == str(path)


def test_bad_files(tmp_path):
    with pytest.raises(DataError, match="LLaVA-Instruct JSON not found; expected layout") as err:
        vqa_source(tmp_path)
    assert err.value.path == str(tmp_path / "llava_dataset" / "llava_instruct_150k.json")
    path = _write(tmp_path, [])
    path.write_text('[{"id": "1", "image": ')
    with pytest.raises(DataError, match="malformed JSON") as err:
        vqa_source(tmp_path)
    assert err.value.path == str(path)
    _write(tmp_path, {"id": "1"})
    with pytest.raises(DataError, match="top level must be a list"):
        vqa_source(tmp_path)
    _write(tmp_path, [{"id": "7", "conversations": []}])
    with pytest.raises(DataError, match="conversation 7: needs a string 'image' and a non-empty 'conversations'"):
        vqa_source(tmp_path)
    _write(tmp_path, ["text"])
    with pytest.raises(DataError, match="entry #0 is not an object"):
        vqa_source(tmp_path)
    with pytest.raises(ValueError, match="unknown vqa dataset"):
        vqa_source(tmp_path, "vqav2")


def test_missing_image_names_it_and_the_conversation(llava_root, tmp_path):
    root = tmp_path / "dataset"
    shutil.copytree(llava_root[0], root)
    source = vqa_source(root)
    image = Path(source.draw(1, random.Random(0), 3).image_path)
    image.unlink()
    with pytest.raises(DataError, match="image file not found \\(conversation 000000200001 of") as err:
        source.draw(1, random.Random(0), 3)
    assert err.value.path == str(image)


def test_make_data_cli_is_deterministic(tmp_path, capsys):
    out = tmp_path / "dataset"
    argv = [str(out), "--format", "llava_instruct", "--num_train", "3", "--image_size", "64", "--seed", "9"]
    assert make_data.main(argv) == 0
    assert "llava_instruct: 3 conversations" in capsys.readouterr().out
    json_path = out / "llava_dataset" / "llava_instruct_150k.json"
    first = json_path.read_bytes()
    assert make_data.main(argv) == 2 and "exists; pass --force" in capsys.readouterr().err
    assert make_data.main([*argv, "--force"]) == 0 and json_path.read_bytes() == first
    assert len(vqa_source(out)) == 3
