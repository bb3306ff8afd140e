"""`modlisa predict` and `modlisa export` on a real tiny run: files, sizes, batch JSONL, bad inputs, export parity."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from inference_helpers import (
    NO_SEG_ANSWER,
    SEG_ANSWER,
    centre_mask_logits,
    draw_image,
    make_data,
    read_png,
    scripted_answers,
    train_tiny_run,
)
from modlisa.cli.export import main as main_export
from modlisa.cli.predict import main as main_predict
from modlisa.config import ConfigError
from modlisa.data import prompts
from modlisa.data.reasonseg import DataError, load_annotation, load_image_rgb, mask_from_shapes
from modlisa.engine.run_eval import run_eval
from modlisa.metrics import intersection_union
from modlisa.overlay import GT_COLOUR, PALETTE, overlay_masks
from modlisa.predict import predict, read_requests, save_prediction
from modlisa.types import SEG_TOKEN
from modlisa.weights import load_checkpoint

EXPORT_ATOL = 1e-4  # LoRA merge reorders float32 sums (see tests/test_io.py)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    return make_data(tmp_path_factory.mktemp("synthetic"))


@pytest.fixture(scope="module")
def run_dir(data_root, tmp_path_factory) -> Path:
    return train_tiny_run(data_root, tmp_path_factory.mktemp("run") / "run", epochs=1)


@pytest.fixture(scope="module")
def loaded(run_dir):
    """(model, tokenizer, processors, cfg) of the run's best checkpoint, decoder logits centred."""
    model, tokenizer, processors, cfg = load_checkpoint(run_dir)
    centre_mask_logits(model)
    return model, tokenizer, processors, cfg


@pytest.fixture(scope="module")
def new_image(tmp_path_factory) -> Path:
    return draw_image(tmp_path_factory.mktemp("pictures") / "drawn.png", width=70, height=50)


def _near(mask: np.ndarray, pixels: int) -> np.ndarray:
    """The mask grown by ``pixels`` (square neighbourhood)."""
    grown = mask.copy()
    for dy in range(-pixels, pixels + 1):
        for dx in range(-pixels, pixels + 1):
            grown |= np.roll(np.roll(mask, dy, axis=0), dx, axis=1)
    return grown


# ---------------------------------------------------------------------- library
def test_predict_on_a_new_image_writes_mask_overlay_and_json(loaded, new_image, tmp_path):
    model, tokenizer, processors, _ = loaded
    with scripted_answers(model, tokenizer, [SEG_ANSWER]):
        result = predict(model, tokenizer, processors, new_image, "the teal disc", is_sentence=False)
    assert result.has_seg and result.seg_count == 1 and result.answer == "[SEG]."
    assert result.question == prompts.eval_question("the teal disc", False)
    assert result.logits.shape == (1, 50, 70)
    record = save_prediction(result, tmp_path, "drawn")
    mask = read_png(tmp_path / "drawn_mask.png")
    overlay = read_png(tmp_path / "drawn_overlay.png")
    image = np.asarray(Image.open(new_image).convert("RGB"))
    assert mask.shape == (50, 70) and overlay.shape == (50, 70, 3)
    assert set(np.unique(mask)) <= {0, 255}
    on = mask == 255
    assert np.array_equal(on, result.masks[0]) and 0 < on.sum() < on.size  # a partial mask
    assert (overlay[on] != image[on]).any(axis=1).all()  # every masked pixel is tinted
    assert np.array_equal(overlay[~_near(on, 2)], image[~_near(on, 2)])  # away from the mask: unchanged
    saved = json.loads((tmp_path / "drawn.json").read_text())
    assert saved == record
    assert saved["has_seg"] is True and saved["mask_area"] == int(on.sum()) and saved["image_size"] == [50, 70]
    assert saved["masks"] == [{"file": "drawn_mask.png", "area": int(on.sum())}]


def test_several_seg_give_numbered_masks(loaded, new_image, tmp_path):
    model, tokenizer, processors, _ = loaded
    with scripted_answers(model, tokenizer, [[SEG_TOKEN, "Ġ", SEG_TOKEN, "</s>"]]):
        result = predict(model, tokenizer, processors, new_image, "both shapes")
    assert result.question == "both shapes"  # is_sentence None: the query is the question
    record = save_prediction(result, tmp_path, "two")
    assert record["seg_count"] == 2 and [m["file"] for m in record["masks"]] == ["two_mask_0.png", "two_mask_1.png"]
    assert not (tmp_path / "two_mask.png").exists()
    for k in range(2):
        assert read_png(tmp_path / f"two_mask_{k}.png").shape == (50, 70)
    assert record["mask_area"] == int(result.mask_union().sum())


def test_answer_without_seg_writes_only_the_json(loaded, new_image, tmp_path):
    model, tokenizer, processors, _ = loaded
    with scripted_answers(model, tokenizer, [NO_SEG_ANSWER]):
        result = predict(model, tokenizer, processors, new_image, "What is this?")
    assert not result.has_seg and result.answer == "No" and result.logits.shape == (0, 50, 70)
    record = save_prediction(result, tmp_path, "none")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["none.json"]
    assert record["has_seg"] is False and record["masks"] == [] and record["overlay"] is None
    assert record["mask_area"] == 0


def test_overlay_tints_masks_and_outlines_ground_truth():
    image = np.full((40, 60, 3), 100, dtype=np.uint8)
    mask = np.zeros((40, 60), dtype=bool)
    mask[10:30, 10:30] = True
    gt = np.zeros((40, 60), dtype=np.uint8)
    gt[5:35, 40:55] = 1
    picture = overlay_masks(image, [mask], gt=gt, alpha=0.5)
    expected = np.rint(0.5 * 100 + 0.5 * np.asarray(PALETTE[0])).astype(np.uint8)
    assert np.array_equal(picture[20, 20], expected)  # interior: blended colour
    assert tuple(picture[10, 20]) == PALETTE[0]  # mask outline
    assert tuple(picture[5, 45]) == GT_COLOUR  # ground-truth outline
    assert tuple(picture[20, 35]) == (100, 100, 100)  # elsewhere untouched
    with pytest.raises(ValueError, match="shape"):
        overlay_masks(image, [mask[:10]])


# ---------------------------------------------------------------------- command line
def test_cli_single_image_teacher_mode(run_dir, new_image, tmp_path, capsys):
    out = tmp_path / "out"
    assert main_predict(["--checkpoint", str(run_dir), "--image", str(new_image), "--query", "the olive box",
                         "--is_sentence", "false", "--mode", "teacher", "--out", str(out)]) == 0
    assert "[SEG] x1" in capsys.readouterr().out
    record = json.loads((out / "drawn.json").read_text())
    assert record["mode"] == "teacher" and record["answer"] == prompts.EVAL_ANSWER and record["has_seg"]
    mask = read_png(out / "drawn_mask.png")
    assert mask.shape == (50, 70) and set(np.unique(mask)) <= {0, 255}
    assert read_png(out / "drawn_overlay.png").shape == (50, 70, 3)
    assert record["mask_area"] == int((mask == 255).sum())


def test_teacher_prediction_equals_the_eval_record(run_dir, data_root, tmp_path):
    """predict --mode teacher on a val image scores exactly what `modlisa eval` recorded for it."""
    run_eval(str(run_dir), str(data_root), "val", str(tmp_path / "eval"))
    records = [json.loads(line) for line in (tmp_path / "eval" / "predictions_val.jsonl").read_text().splitlines()]
    model, tokenizer, processors, _ = load_checkpoint(run_dir)
    for record in records[:2]:
        ann = load_annotation(Path(record["file"]).with_suffix(".json"))
        result = predict(model, tokenizer, processors, record["file"], record["query"],
                         is_sentence=record["is_sentence"], mode="teacher")
        gt = mask_from_shapes(ann.shapes, load_image_rgb(record["file"]).shape[:2])
        assert intersection_union(result.masks[0], gt) == (record["I"], record["U"])


def test_cli_batch_jsonl(run_dir, new_image, data_root, tmp_path, capsys):
    val_image = sorted((data_root / "val").glob("*.jpg"))[0]
    batch = tmp_path / "batch.jsonl"
    (tmp_path / "pics").mkdir()
    (tmp_path / "pics" / "copy.png").write_bytes(new_image.read_bytes())
    batch.write_text("\n".join([
        json.dumps({"image": str(new_image), "query": "the teal disc"}),
        "",
        json.dumps({"image": "pics/copy.png", "query": "Which shape is square?", "is_sentence": True}),
        json.dumps({"image": str(val_image), "query": "the red circle", "is_sentence": False}),
    ]) + "\n")
    out = tmp_path / "out"
    assert main_predict(["--checkpoint", str(run_dir), "--jsonl", str(batch), "--mode", "teacher",
                         "--is_sentence", "false", "--out", str(out)]) == 0
    assert "3 predictions (3 with [SEG])" in capsys.readouterr().out
    records = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert [Path(r["image"]).name for r in records] == ["drawn.png", "copy.png", val_image.name]
    assert [r["is_sentence"] for r in records] == [False, True, False]  # --is_sentence fills the gap
    assert records[1]["question"] == prompts.eval_question("Which shape is square?", True)
    for k, record in enumerate(records):
        stem = f"{k:04d}_{Path(record['image']).stem}"
        assert json.loads((out / f"{stem}.json").read_text()) == record
        height, width = record["image_size"]
        assert read_png(out / f"{stem}_mask.png").shape == (height, width)


@pytest.mark.parametrize("line, needle", [
    ("{not json", "not valid JSON"),
    ('["a list"]', "expected an object"),
    ('{"image": "IMG"}', "'query' must be a non-empty string"),
    ('{"image": "IMG", "query": "x", "is_sentence": "yes"}', "'is_sentence' must be true, false or absent"),
    ('{"image": "IMG", "query": "x", "colour": 1}', "unknown key"),
    ('{"image": "nowhere.png", "query": "x"}', "image not found: 'nowhere.png'"),
])
def test_bad_jsonl_line_names_file_and_line(new_image, tmp_path, line, needle):
    batch = tmp_path / "bad.jsonl"
    good = json.dumps({"image": str(new_image), "query": "x"})
    batch.write_text(good + "\n" + line.replace("IMG", str(new_image)) + "\n")
    with pytest.raises(DataError, match=needle) as info:
        read_requests(batch)
    assert f"{batch}:2" in str(info.value)


def test_bad_inputs_fail_before_the_model_loads(new_image, tmp_path):
    missing_ckpt = str(tmp_path / "no-such-checkpoint")
    with pytest.raises(DataError, match="image file not found") as info:
        main_predict(["--checkpoint", missing_ckpt, "--image", str(tmp_path / "gone.jpg"), "--query", "x"])
    assert "gone.jpg" in str(info.value)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    with pytest.raises(DataError, match="no request"):
        main_predict(["--checkpoint", missing_ckpt, "--jsonl", str(empty)])
    with pytest.raises(FileNotFoundError, match="missing.jsonl"):
        main_predict(["--checkpoint", missing_ckpt, "--jsonl", str(tmp_path / "missing.jsonl")])
    with pytest.raises(FileNotFoundError, match="no-such-checkpoint"):
        main_predict(["--checkpoint", missing_ckpt, "--image", str(new_image), "--query", "x"])
    for argv in (["--image", str(new_image)],  # no query
                 ["--image", str(new_image), "--jsonl", str(empty), "--query", "x"],  # both sources
                 ["--image", str(new_image), "--query", "x", "--is_sentence", "maybe"]):
        with pytest.raises(SystemExit) as exit_info:
            main_predict(["--checkpoint", missing_ckpt, *argv])
        assert exit_info.value.code == 2


# ---------------------------------------------------------------------- export
def test_export_then_predict_gives_the_same_masks(run_dir, new_image, tmp_path, capsys):
    export_dir = tmp_path / "export"
    assert main_export(["--checkpoint", str(run_dir), "--out", str(export_dir)]) == 0
    assert (export_dir / "modlisa_config.yaml").is_file()
    with pytest.raises(ConfigError, match="not empty"):
        main_export(["--checkpoint", str(run_dir), "--out", str(export_dir)])
    results = {}
    for name, source in (("checkpoint", run_dir), ("export", export_dir)):
        model, tokenizer, processors, _ = load_checkpoint(source)
        centre_mask_logits(model)
        teacher = predict(model, tokenizer, processors, new_image, "the teal disc", is_sentence=False,
                          mode="teacher")
        with scripted_answers(model, tokenizer, [SEG_ANSWER]):
            generated = predict(model, tokenizer, processors, new_image, "the teal disc", is_sentence=False)
        results[name] = (teacher.logits, generated.logits)
    for a, b in zip(results["checkpoint"], results["export"]):
        assert a.shape == b.shape == (1, 50, 70)
        assert torch.allclose(a, b, atol=EXPORT_ATOL), float((a - b).abs().max())
        clear = (a.abs() > 10 * EXPORT_ATOL) & (b.abs() > 10 * EXPORT_ATOL)
        assert torch.equal((a > 0)[clear], (b > 0)[clear]) and 0 < int((a > 0).sum()) < a.numel()
    out = tmp_path / "from_export"
    assert main_predict(["--checkpoint", str(export_dir), "--image", str(new_image), "--query", "the teal disc",
                         "--is_sentence", "false", "--mode", "teacher", "--out", str(out)]) == 0
    assert read_png(out / "drawn_mask.png").shape == (50, 70)
