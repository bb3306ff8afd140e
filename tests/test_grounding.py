"""Does the model follow its query? Wrong-query pairing, grounding accuracy, the query-blind warning of
`modlisa eval`, and the distractor shapes of the synthetic data (which LISA's reader must ignore)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from inference_helpers import make_data, train_tiny_run
from modlisa.cli.eval import main as main_eval
from modlisa.data.dataset import ReasonSegDataset
from modlisa.data.reasonseg import get_mask_from_json, load_annotation, mask_from_shapes, read_image_size
from modlisa.engine import run_eval as run_eval_module
from modlisa.engine.grounding import (
    WrongQueryDataset,
    grounding_accuracy,
    is_grounded,
    query_blind_warning,
    wrong_query_partners,
)
from modlisa.synthetic import SceneOptions, generate_scene_examples, make_dataset, rasterise
from modlisa.types import Annotation


def _ann(text: str, is_sentence: bool) -> Annotation:
    return Annotation(json_path=f"{text}.json", image_path=f"{text}.jpg", texts=[text], is_sentence=is_sentence)


def test_partners_pair_same_kind_with_a_different_text():
    anns = [_ann(f"q{i}", i % 3 == 0) for i in range(10)] + [_ann("q1", False)]  # "q1" twice
    partners = wrong_query_partners(anns)
    assert partners == wrong_query_partners(anns)  # deterministic
    for i, p in enumerate(partners):
        assert p != i
        assert anns[p].is_sentence == anns[i].is_sentence
        assert anns[p].texts[0] != anns[i].texts[0]


def test_partners_fall_back_to_the_whole_split_and_need_two_images():
    assert wrong_query_partners([_ann("only", False)]) is None
    partners = wrong_query_partners([_ann("a", False), _ann("b", False), _ann("long", True)])
    assert partners[2] in (0, 1) and partners[0] == 1 and partners[1] == 0


def test_is_grounded_by_iou_against_every_distractor():
    gt = np.zeros((20, 20), np.uint8)
    gt[2:6, 2:6] = 1  # target, 16 px
    big = np.zeros((1, 20, 20), bool)
    big[0, 10:20, 10:20] = True  # distractor, 100 px
    assert is_grounded(gt == 1, gt, big)
    assert not is_grounded(big[0], gt, big)
    everything = (gt == 1) | big[0]
    assert not is_grounded(everything, gt, big)  # covers both: IoU 16/116 with the target, 100/116 with the other
    assert not is_grounded(np.zeros((20, 20), bool), gt, big)  # an empty mask is never grounded
    gt_ignore = gt.copy()
    gt_ignore[10:20, 10:20] = 255  # the distractor lies in an ignore region: removed before comparing
    assert is_grounded(everything, gt_ignore, big)
    assert grounding_accuracy([{"grounded": True}, {"grounded": False}, {"grounded": None}]) == {
        "accuracy": 0.5, "num_queries": 2}
    assert grounding_accuracy([{"IoU": 1.0}]) is None


def test_query_blind_warning_threshold():
    own = {"giou": 0.40, "num_queries": 10}
    assert query_blind_warning(own, {"giou": 0.38}) is not None
    assert query_blind_warning(own, {"giou": 0.45}) is not None  # below the baseline: warned too
    assert query_blind_warning(own, {"giou": 0.20}) is None
    assert query_blind_warning(own, None) is None


def test_distractors_are_stored_beside_lisas_keys_and_ignored_by_its_reader(tmp_path: Path):
    options = SceneOptions(min_objects=3, max_objects=4, targets_per_scene=3)
    make_dataset(tmp_path, seed=2, num_train=4, num_val=2, num_test=2, image_size=64, progress=False,
                 options=options)
    files = sorted((tmp_path / "train").glob("*.json"))
    assert len(files) > 4  # several targets per train scene
    for path in files:
        data = json.loads(path.read_text())
        assert [s["label"] for s in data["shapes"]][0] == "target"
        assert all(s["label"] in ("target", "ignore", "flag") for s in data["shapes"])
        hw = read_image_size(path.with_suffix(".jpg"))
        target_only = mask_from_shapes(load_annotation(path).shapes, hw)
        assert np.array_equal(get_mask_from_json(path, hw), target_only)  # distractors never painted
        ann = load_annotation(path)
        assert len(ann.distractors) == len(data["distractors"]) >= 2
        for shape, item in zip(ann.distractors, data["distractors"]):
            assert shape.label == f"{item['size']} {item['colour']} {item['kind']}"
            drawn = mask_from_shapes([shape], hw) == 1
            assert not (drawn & (target_only == 1)).any()  # shapes never overlap the target


def test_targets_per_scene_share_the_image_and_differ_in_target():
    examples = generate_scene_examples(0, "train", 5, 64, SceneOptions(min_objects=3, max_objects=4,
                                                                        targets_per_scene=3))
    assert len(examples) >= 2
    assert len({ex.target for ex in examples}) == len(examples)
    assert all(np.array_equal(np.asarray(ex.image), np.asarray(examples[0].image)) for ex in examples)
    masks = [rasterise(ex.scene.objects[ex.target].points, 64, 64) for ex in examples]
    assert not (masks[0] & masks[1]).any()
    # val/test scenes keep one file each
    assert len(generate_scene_examples(0, "val", 5, 64, SceneOptions(targets_per_scene=3))) == 1


@pytest.fixture(scope="module")
def run_and_data(tmp_path_factory) -> tuple[Path, Path]:
    data = make_data(tmp_path_factory.mktemp("synthetic"))
    return train_tiny_run(data, tmp_path_factory.mktemp("run") / "run", epochs=1), data


def test_wrong_query_dataset_keeps_image_and_mask(run_and_data):
    from modlisa.engine.run_eval import load_checkpoint

    run, data = run_and_data
    _, _, processors, _ = load_checkpoint(run)
    dataset = ReasonSegDataset(data, "val", processors.sam, processors.vision, train=False)
    partners = wrong_query_partners(dataset.annotations)
    wrong = WrongQueryDataset(dataset, partners)
    for i in range(len(dataset)):
        own, swapped = dataset[i], wrong[i]
        assert torch.equal(own.masks, swapped.masks) and torch.equal(own.sam_image, swapped.sam_image)
        assert swapped.queries == [dataset.annotations[partners[i]].texts[0]]
        assert swapped.queries != own.queries


def test_eval_warns_on_a_query_blind_model(run_and_data, tmp_path, monkeypatch, capsys):
    """No training: a checkpoint whose [SEG] projection ignores its input (last layer's weight zeroed, so
    every query gives the same prompt) must be flagged, with the baseline and grounding in the JSON."""
    run, data = run_and_data
    real_loader = run_eval_module.load_checkpoint

    def blind_loader(path, overrides=None):
        model, tokenizer, processors, cfg = real_loader(path, overrides)
        with torch.no_grad():
            model.text_hidden_fcs[-1].weight.zero_()
            model.text_hidden_fcs[-1].bias.normal_()
        return model, tokenizer, processors, cfg

    monkeypatch.setattr(run_eval_module, "load_checkpoint", blind_loader)
    assert main_eval(["--checkpoint", str(run), "--split", "val", "--data_root", str(data),
                      "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "wrong-query baseline" in printed and "the masks do not depend on the query" in printed
    result = json.loads((tmp_path / "eval_val.json").read_text())
    wrong = result["wrong_query_baseline"]
    assert wrong["num_queries"] == result["num_queries"] == 5
    assert wrong["giou"] == pytest.approx(result["giou"], abs=1e-9)  # blind: identical masks
    assert any("do not depend on the query" in w for w in result["warnings"])
    assert result["grounding"]["num_queries"] == 5
    lines = (tmp_path / "predictions_val_wrong_query.jsonl").read_text().splitlines()
    own_lines = (tmp_path / "predictions_val.jsonl").read_text().splitlines()
    assert len(lines) == 5 and {json.loads(x)["query"] for x in lines} == {json.loads(x)["query"] for x in own_lines}


def test_grounding_helpers_match_processors_sizes(run_and_data):
    """The distractor masks are drawn at the image's own size (as the ground truth)."""
    from modlisa.engine.grounding import distractor_masks

    _, data = run_and_data
    ann = load_annotation(sorted((Path(data) / "val").glob("*.json"))[0])
    hw = read_image_size(ann.image_path)
    masks = distractor_masks(ann, hw)
    assert masks is not None and masks.shape[1:] == hw and masks.dtype == bool
    assert len(masks) == len(ann.distractors)
