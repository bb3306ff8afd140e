"""`modlisa eval` on a real tiny run: teacher and generate modes, seg_rate, baseline warnings, mask pictures,
short/long/overall recomputed from the predictions file, the argparse entry point."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest

from inference_helpers import (
    NO_SEG_ANSWER,
    SEG_ANSWER,
    centre_mask_logits,
    fill_mask_logits,
    make_data,
    read_png,
    scripted_answers,
    train_tiny_run,
)
from modlisa.cli.eval import add_eval_arguments
from modlisa.cli.eval import main as main_eval
from modlisa.data.dataset import ReasonSegDataset
from modlisa.data.reasonseg import read_image_size
from modlisa.engine import run_eval as run_eval_module
from modlisa.engine.run_eval import empty_mask_baseline, gt_areas, run_eval, sanity_warnings
from modlisa.metrics import CIOU_EPS
from modlisa.weights import load_checkpoint


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    return make_data(tmp_path_factory.mktemp("synthetic"))


@pytest.fixture(scope="module")
def run_dir(data_root, tmp_path_factory) -> Path:
    return train_tiny_run(data_root, tmp_path_factory.mktemp("run") / "run", epochs=1)


@pytest.fixture(scope="module")
def data_with_empty_gt(data_root, tmp_path_factory) -> Path:
    """The val split plus one image whose annotation has no polygon (empty ground truth, as 2 ReasonSeg test
    files): the empty-mask baseline then scores 1/6."""
    root = tmp_path_factory.mktemp("with_empty")
    shutil.copytree(data_root / "val", root / "val")
    shutil.copy(data_root / "val" / "val_0000.jpg", root / "val" / "zz_empty.jpg")
    (root / "val" / "zz_empty.json").write_text(json.dumps({"text": ["the unicorn"], "is_sentence": False,
                                                            "shapes": []}))
    return root


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _patch_loader(monkeypatch, run_dir: Path, hook=None):
    """Make run_eval load the run's checkpoint with ``hook`` applied; returns (model, tokenizer)."""
    model, tokenizer, processors, cfg = load_checkpoint(run_dir)
    if hook is not None:
        hook(model)
    monkeypatch.setattr(run_eval_module, "load_checkpoint", lambda path: (model, tokenizer, processors, cfg))
    return model, tokenizer


def test_teacher_mode_writes_metrics_baseline_and_predictions(run_dir, data_root, tmp_path):
    result = run_eval(str(run_dir), str(data_root), "val", str(tmp_path))
    payload = json.loads((tmp_path / "eval_val.json").read_text())
    assert payload["mode"] == "teacher" and payload["split"] == "val" and payload["protocol"]["mode"] == "teacher"
    assert payload["num_queries"] == 5 and len(_lines(tmp_path / "predictions_val.jsonl")) == 5
    assert payload["empty_baseline"] == {"giou": 0.0, "ciou": 0.0, "num_queries": 5, "num_empty_gt": 0,
                                         "subsets": payload["empty_baseline"]["subsets"]}
    assert isinstance(payload["warnings"], list) and result["warnings"] == payload["warnings"]
    assert result["masks_dir"] is None and not (tmp_path / "eval_val_masks").exists()


def test_generate_mode_seg_rate_and_consistent_counts(run_dir, data_root, tmp_path, monkeypatch):
    model, tokenizer = _patch_loader(monkeypatch, run_dir, centre_mask_logits)
    with scripted_answers(model, tokenizer, [SEG_ANSWER, NO_SEG_ANSWER]):  # answers 0, 2, 4 hold [SEG]
        result = run_eval(str(run_dir), str(data_root), "val", str(tmp_path), mode="generate")
    assert not (tmp_path / "eval_val.json").exists()  # teacher-mode files are left alone
    payload = json.loads((tmp_path / "eval_val_generate.json").read_text())
    records = _lines(tmp_path / "predictions_val_generate.jsonl")
    assert result["eval_json"] == str(tmp_path / "eval_val_generate.json")
    assert payload["mode"] == "generate" and payload["protocol"]["mode"] == "generate"
    assert [r["has_seg"] for r in records] == [True, False, True, False, True]
    assert [r["answer"] for r in records] == ["[SEG].", "No"] * 2 + ["[SEG]."]
    assert payload["num_with_seg"] == 3 and payload["seg_rate"] == pytest.approx(0.6)
    assert payload["num_queries"] == len(records) == 5
    for name, sub in payload["subsets"].items():
        group = [r for r in records if r["is_sentence"] == (name == "long")]
        assert sub["num_with_seg"] == sum(r["has_seg"] for r in group)
        assert 0.0 <= sub["seg_rate"] <= 1.0 and sub["num_queries"] == len(group)
    for r in records:
        assert 0 <= r["I"] <= r["gt_area"] <= r["U"]
        if not r["has_seg"]:
            assert (r["I"], r["U"], r["IoU"]) == (0, r["gt_area"], 0.0)
    assert any(r["I"] > 0 for r in records if r["has_seg"])  # real masks were scored
    assert payload["giou"] == pytest.approx(np.mean([r["IoU"] for r in records]), abs=1e-12)
    assert payload["empty_baseline"]["num_queries"] == 5


def test_generate_mode_without_any_seg_warns(run_dir, data_root, tmp_path, monkeypatch, caplog):
    model, tokenizer = _patch_loader(monkeypatch, run_dir)
    with scripted_answers(model, tokenizer, [NO_SEG_ANSWER]), caplog.at_level(logging.WARNING):
        run_eval(str(run_dir), str(data_root), "val", str(tmp_path), mode="generate")
    payload = json.loads((tmp_path / "eval_val_generate.json").read_text())
    assert payload["seg_rate"] == 0.0 and payload["giou"] == payload["empty_baseline"]["giou"]
    assert len(payload["warnings"]) == 1 and "never emitted [SEG]" in payload["warnings"][0]
    assert "never emitted [SEG]" in caplog.text


def test_empty_mask_baseline_and_warning_below_it(run_dir, data_with_empty_gt, tmp_path, monkeypatch, caplog):
    dataset = ReasonSegDataset(data_with_empty_gt, "val", lambda x: x, lambda x: x, train=False)
    areas = gt_areas(dataset.annotations)
    assert len(areas) == 6 and [a for a, _ in areas].count(0) == 1
    baseline = empty_mask_baseline(areas)
    assert baseline["giou"] == pytest.approx(1 / 6) and baseline["ciou"] == 0.0 and baseline["num_empty_gt"] == 1
    assert baseline["subsets"]["short"]["giou"] == pytest.approx(1 / 4)  # 3 short queries + the empty one
    assert sanity_warnings({"giou": baseline["giou"], "num_queries": 6}, baseline, "teacher") == []
    # whole-image masks: IoU 0 on the empty image, the object's area fraction (< 10%) elsewhere
    _patch_loader(monkeypatch, run_dir, fill_mask_logits)
    with caplog.at_level(logging.WARNING):
        run_eval(str(run_dir), str(data_with_empty_gt), "val", str(tmp_path))
    payload = json.loads((tmp_path / "eval_val.json").read_text())
    assert payload["giou"] < payload["empty_baseline"]["giou"] == pytest.approx(1 / 6)
    # (the patched whole-image masks ignore the query: the query-blind warning may come too)
    assert any("below the empty-mask baseline" in w for w in payload["warnings"])
    assert "below the empty-mask baseline" in caplog.text


def test_save_masks_writes_k_best_and_k_worst(run_dir, data_root, tmp_path, monkeypatch):
    _patch_loader(monkeypatch, run_dir, centre_mask_logits)
    result = run_eval(str(run_dir), str(data_root), "val", str(tmp_path), save_masks=2)
    folder = tmp_path / "eval_val_masks"
    assert result["masks_dir"] == str(folder)
    assert len(list(folder.glob("*_overlay.png"))) == 4 and len(list(folder.glob("*_mask.png"))) == 4
    index = json.loads((folder / "index.json").read_text())
    records = {r["file"]: r for r in _lines(tmp_path / "predictions_val.jsonl")}
    assert [(e["tag"], e["rank"]) for e in index] == [("best", 1), ("best", 2), ("worst", 1), ("worst", 2)]
    assert min(e["IoU"] for e in index[:2]) >= max(e["IoU"] for e in index[2:])
    assert max(e["IoU"] for e in index[:2]) == max(r["IoU"] for r in records.values())
    for entry in index:
        assert entry["IoU"] == records[entry["file"]]["IoU"]
        height, width = read_image_size(entry["file"])
        mask = read_png(folder / entry["mask"])
        assert mask.shape == (height, width) and set(np.unique(mask)) <= {0, 255}
        assert read_png(folder / entry["overlay"]).shape == (height, width, 3)
    run_eval(str(run_dir), str(data_root), "val", str(tmp_path), save_masks=1)  # older pictures replaced
    assert len(list(folder.glob("*_overlay.png"))) == 2


def test_save_masks_in_generate_mode(run_dir, data_root, tmp_path, monkeypatch):
    model, tokenizer = _patch_loader(monkeypatch, run_dir, centre_mask_logits)
    with scripted_answers(model, tokenizer, [SEG_ANSWER]):
        run_eval(str(run_dir), str(data_root), "val", str(tmp_path), mode="generate", save_masks=1)
    folder = tmp_path / "eval_val_generate_masks"
    assert sorted(p.name.split("_")[0] for p in folder.glob("*_overlay.png")) == ["best", "worst"]


def test_test_split_overall_combines_short_and_long(run_dir, data_root, tmp_path, monkeypatch):
    _patch_loader(monkeypatch, run_dir, centre_mask_logits)
    run_eval(str(run_dir), str(data_root), "test", str(tmp_path))
    payload = json.loads((tmp_path / "eval_test.json").read_text())
    records = _lines(tmp_path / "predictions_test.jsonl")
    groups = {"overall": records, "short": [r for r in records if not r["is_sentence"]],
              "long": [r for r in records if r["is_sentence"]]}
    assert groups["short"] and groups["long"] and sum(r["I"] for r in records) > 0
    for name, group in groups.items():
        reported = payload if name == "overall" else payload["subsets"][name]
        assert reported["num_queries"] == len(group)
        assert reported["giou"] == pytest.approx(np.mean([r["IoU"] for r in group]), abs=1e-12)
        assert reported["ciou"] == pytest.approx(sum(r["I"] for r in group) / (sum(r["U"] for r in group) + CIOU_EPS),
                                                 abs=1e-12)
    short, long = payload["subsets"]["short"], payload["subsets"]["long"]
    assert payload["num_queries"] == short["num_queries"] + long["num_queries"]
    weighted = (short["giou"] * short["num_queries"] + long["giou"] * long["num_queries"]) / payload["num_queries"]
    assert payload["giou"] == pytest.approx(weighted, abs=1e-12)
    assert payload["intersection"] == short["intersection"] + long["intersection"]
    assert payload["union"] == short["union"] + long["union"]


def test_main_eval_entry_point(run_dir, data_root, tmp_path, capsys):
    import argparse

    defaults = add_eval_arguments(argparse.ArgumentParser()).parse_args(["--checkpoint", "x"])
    assert (defaults.mode, defaults.save_masks, defaults.split, defaults.batch_size) == ("teacher", 4, "val", 1)
    assert main_eval(["--checkpoint", str(run_dir), "--data_root", str(data_root), "--mode", "generate",
                      "--max_samples", "2", "--max_new_tokens", "4", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "[SEG] rate" in out and "empty-mask baseline" in out and "eval_val_generate.json" in out
    assert json.loads((tmp_path / "eval_val_generate.json").read_text())["max_new_tokens"] == 4
    for bad in (["--save_masks", "-1"], ["--mode", "chat"], ["--batch_size", "0"]):
        with pytest.raises(SystemExit) as info:
            main_eval(["--checkpoint", str(run_dir), *bad])
        assert info.value.code == 2
