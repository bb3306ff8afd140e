"""`modlisa eval --dataset refcoco|refcoco+|refcocog` on generated files of the refer layout (issue 14 item 3):
every sentence of every ref of the split is one query, and the written gIoU / cIoU equal an independent
recomputation (the refs pickle read with pickle, targets from pycocotools' annToMask, masks from the Predictor)."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from inference_helpers import centre_mask_logits, make_data, train_tiny_run
from modlisa.cli import main
from modlisa.engine import run_eval as run_eval_module
from modlisa.predictor import Predictor
from modlisa.synthetic.refer_format import make_refer_dataset
from modlisa.weights import load_checkpoint

coco_module = pytest.importorskip("pycocotools.coco")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    data = make_data(tmp_path_factory.mktemp("reason"))
    return train_tiny_run(data, tmp_path_factory.mktemp("run") / "run", epochs=1)


@pytest.fixture(scope="module")
def refer_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("refer")
    for dataset in ("refcoco", "refcocog"):
        make_refer_dataset(root, dataset=dataset, seed=3, num_train=2, num_val=3, num_test=2, image_size=64)
    return root


def _patched_model(monkeypatch, run_dir: Path):
    """run_eval loads THIS model (decoder logits centred: real partial masks to score)."""
    model, tokenizer, processors, cfg = load_checkpoint(run_dir)
    centre_mask_logits(model)
    monkeypatch.setattr(run_eval_module, "load_checkpoint", lambda path: (model, tokenizer, processors, cfg))
    return Predictor(model, tokenizer, processors, cfg.max_length)


def _independent(refer_root: Path, dataset: str, split_by: str, split: str, predictor: Predictor) -> dict:
    """gIoU / cIoU of every sentence of the split, computed without modlisa's data or metrics code."""
    with open(refer_root / dataset / f"refs({split_by}).p", "rb") as f:
        refs = pickle.load(f)
    coco = coco_module.COCO(str(refer_root / dataset / "instances.json"))
    keep = (lambda s: s == split) if split != "test" else (lambda s: "test" in s)
    inter, union, ious, queries = 0, 0, [], []
    for ref in refs:
        if not keep(ref["split"]):
            continue
        image_info = coco.imgs[ref["image_id"]]
        with Image.open(refer_root / "images" / "mscoco" / "images" / "train2014" / image_info["file_name"]) as im:
            image = np.asarray(im.convert("RGB"))
        gt = coco.annToMask(coco.anns[ref["ann_id"]]).astype(bool)
        for sent in ref["sentences"]:
            text = sent["sent"].strip().lower()
            predictor.set_image(image)
            pred = (predictor.predict(text, is_sentence=False, mode="teacher").logits[0] > 0).numpy()
            i, u = int((pred & gt).sum()), int((pred | gt).sum())
            inter, union = inter + i, union + u
            ious.append(1.0 if u == 0 else i / (u + 1e-5))
            queries.append(text)
    return {"giou": float(np.mean(ious)), "ciou": inter / (union + 1e-10), "queries": queries}


@pytest.mark.parametrize("dataset, split_by, split", [("refcoco", "unc", "val"), ("refcoco", "unc", "testB"),
                                                      ("refcocog", "umd", "test")])
def test_refer_eval_equals_an_independent_recomputation(run_dir, refer_root, tmp_path, monkeypatch, capsys,
                                                        dataset, split_by, split):
    predictor = _patched_model(monkeypatch, run_dir)
    out = tmp_path / "out"
    assert main(["eval", "--checkpoint", str(run_dir), "--dataset", dataset, "--split", split,
                 "--data_root", str(refer_root), "--out", str(out), "--save_masks", "0"]) == 0
    assert f"{dataset} {split}: gIoU" in capsys.readouterr().out
    written = json.loads((out / f"eval_{dataset}_{split}.json").read_text())
    records = [json.loads(x) for x in (out / f"predictions_{dataset}_{split}.jsonl").read_text().splitlines()]
    with torch.no_grad():
        expected = _independent(refer_root, dataset, split_by, split, predictor)
    assert written["dataset"] == dataset and written["split"] == split
    assert written["num_queries"] == len(expected["queries"]) == len(records)
    assert sorted(r["query"] for r in records) == sorted(expected["queries"])
    assert 0.0 < written["ciou"] < 1.0  # real partial masks: the comparison is not between zeros
    assert written["giou"] == pytest.approx(expected["giou"], abs=1e-9)
    assert written["ciou"] == pytest.approx(expected["ciou"], abs=1e-9)


def test_refer_eval_bad_split_and_missing_root_are_one_line_errors(run_dir, refer_root, tmp_path, capsys,
                                                                  monkeypatch):
    def no_model(path):  # the refer files are read before any model is loaded
        raise AssertionError("the model was loaded before the data was checked")

    monkeypatch.setattr(run_eval_module, "load_checkpoint", no_model)
    assert main(["eval", "--checkpoint", str(run_dir), "--dataset", "refcoco", "--split", "testC",
                 "--data_root", str(refer_root), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "refs(unc).p" in err and "valid splits: train, val, test, testA, testB" in err
    assert main(["eval", "--checkpoint", str(run_dir), "--dataset", "refcoco+", "--split", "val",
                 "--data_root", str(refer_root), "--out", str(tmp_path)]) == 2
    assert "no refcoco+ folder" in capsys.readouterr().err
