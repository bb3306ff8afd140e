"""Hugging Face-native exports (issue 16 item 3): ``ModifiedLISA.from_pretrained`` in one call (a folder, or a Hub
repo id through the Hugging Face cache, offline), ``save_pretrained``, the top-level ``config.json`` and the model
card (front matter parsed by huggingface_hub, eval numbers from the run's eval JSON files).

One tiny run WITHOUT LoRA (the conftest's data and run recipe): its export then holds exactly the run's weights
([SEG]-row deltas fold exactly), so the one-call load must predict identically, teacher and generate mode.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from inference_helpers import SEG_ANSWER, scripted_answers  # noqa: E402
from llava_fixtures import single_thread  # noqa: E402, F401  (fixture)
from modlisa.cli import main  # noqa: E402
from modlisa.config import TrainingConfig  # noqa: E402
from modlisa.model.factory import apply_preset  # noqa: E402
from modlisa.model.lisa import ModifiedLISA  # noqa: E402
from modlisa.predictor import Predictor  # noqa: E402
from modlisa.weights import CheckpointError, WeightsError, load_checkpoint, write_manifest  # noqa: E402
from modlisa.weights.card import CARD_FACTS, base_model_sources, card_data, card_text, read_eval_results  # noqa: E402
from modlisa.weights.files import read_manifest  # noqa: E402
from reliability_helpers import _run_config  # noqa: E402

QUERIES = [("the red shape", False), ("What would you pick up to draw a circle?", True)]


# ---------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def hub_run(tmp_path_factory, good_root) -> dict[str, Path]:
    """A finished tiny run without LoRA, its teacher and generate evals in outputs/, and its export."""
    from modlisa.engine.run_eval import run_eval
    from modlisa.engine.train import train

    torch.set_num_threads(1)
    base = tmp_path_factory.mktemp("hub")
    run = base / "run"
    train(_run_config(good_root, run, use_lora=False).validate())
    run_eval(str(run), str(good_root), "val", None)
    run_eval(str(run), str(good_root), "val", None, mode="generate", max_new_tokens=4)
    assert main(["export", "--checkpoint", str(run), "--out", str(base / "export")]) == 0
    return {"run": run, "export": base / "export", "data": good_root}


def _images(data: Path) -> list[np.ndarray]:
    return [np.asarray(Image.open(p).convert("RGB")) for p in sorted((data / "val").glob("*.jpg"))
            + sorted((data / "test").glob("*.jpg"))]


def _predictions(predictor: Predictor, images: list[np.ndarray], scripted: bool = True) -> list[tuple[str, torch.Tensor]]:
    """Teacher-mode and generate-mode (free, then scripted to answer "[SEG].") answers and mask logits."""
    out = []
    for image in images:
        predictor.set_image(image)
        for query, is_sentence in QUERIES:
            for mode in ("teacher", "generate"):
                p = predictor.predict(query, is_sentence=is_sentence, mode=mode, max_new_tokens=4)
                out.append((p.text, p.logits))
            if scripted:
                with scripted_answers(predictor.model, predictor.tokenizer, [SEG_ANSWER]):
                    p = predictor.predict(query, is_sentence=is_sentence, mode="generate", max_new_tokens=4)
                assert p.seg_count == 1
                out.append((p.text, p.logits))
    return out


def _assert_identical(a: list[tuple[str, torch.Tensor]], b: list[tuple[str, torch.Tensor]]) -> None:
    assert len(a) == len(b)
    for (text_a, logits_a), (text_b, logits_b) in zip(a, b):
        assert text_a == text_b
        assert torch.equal(logits_a, logits_b)


def _copy(export: Path, target: Path) -> Path:
    """A hard-linked copy: tests replace files (unlink first), never write into shared inodes."""
    shutil.copytree(export, target, copy_function=os.link)
    return target


def _replace(path: Path, text: str) -> None:
    path.unlink(missing_ok=True)
    path.write_text(text, encoding="utf-8")


def _rewrite_manifest(folder: Path) -> None:
    (folder / "SHA256SUMS").unlink()
    write_manifest(folder)


# ---------------------------------------------------------------------- one-call load
@pytest.mark.slow
@pytest.mark.usefixtures("single_thread")
def test_from_pretrained_in_one_call_predicts_identically_to_the_run(hub_run):
    model, tokenizer, processors, cfg = load_checkpoint(hub_run["run"])
    reference = _predictions(Predictor(model, tokenizer, processors, max_length=cfg.max_length),
                             _images(hub_run["data"]))

    loaded = ModifiedLISA.from_pretrained(hub_run["export"])  # ONE call: model, tokenizer, processors attached
    assert isinstance(loaded, ModifiedLISA) and not loaded.training
    parts = loaded.pretrained
    assert parts.folder == hub_run["export"] and parts.config.model == "composite"
    exported = _predictions(Predictor(loaded, parts.tokenizer, parts.processors, parts.config.max_length),
                            _images(hub_run["data"]))
    _assert_identical(exported, reference)
    _assert_identical(_predictions(Predictor.from_pretrained(str(hub_run["export"])), _images(hub_run["data"])),
                      reference)


@pytest.mark.slow
@pytest.mark.usefixtures("single_thread")
def test_save_pretrained_round_trip(hub_run, tmp_path):
    images = _images(hub_run["data"])[:1]
    model = ModifiedLISA.from_pretrained(hub_run["export"])
    reference = _predictions(Predictor.from_pretrained(hub_run["export"]), images)
    again = model.save_pretrained(tmp_path / "again")
    assert again == tmp_path / "again" and (again / "config.json").is_file()
    listed = read_manifest(again)
    assert {"config.json", "README.md", "modlisa_export.json", "modlisa_heads.safetensors"} <= set(listed)
    _assert_identical(_predictions(Predictor.from_pretrained(again), images), reference)
    first, second = (json.loads((f / "modlisa_export.json").read_text()) for f in (hub_run["export"], again))
    for key in set(CARD_FACTS) & set(first):  # the card's facts survive a re-save
        assert second[key] == first[key], key
    assert {"source_preset", "base_models", "training", "dataset", "lora_merged"} <= set(first)
    assert second["eval_results"] == []  # ... not the numbers: the weights may have changed since
    assert main(["export", "--checkpoint", str(hub_run["export"]), "--out", str(tmp_path / "re")]) == 0
    third = json.loads((tmp_path / "re" / "modlisa_export.json").read_text())  # re-exported as is: all kept
    assert third["eval_results"] == first["eval_results"] != [] and third["training"] == first["training"]

    # a model from load_checkpoint: tokenizer and config passed; the run is not touched (merge on a copy)
    run_model, tokenizer, processors, cfg = load_checkpoint(hub_run["run"])
    with pytest.raises(ValueError, match="tokenizer"):
        run_model.save_pretrained(tmp_path / "bare")
    saved = run_model.save_pretrained(tmp_path / "from_run", tokenizer=tokenizer, processors=processors, config=cfg)
    _assert_identical(_predictions(Predictor.from_pretrained(saved), images), reference)
    _assert_identical(_predictions(Predictor(run_model, tokenizer, processors, cfg.max_length), images), reference)
    with pytest.raises(FileExistsError):
        model.save_pretrained(saved)


@pytest.mark.slow
@pytest.mark.usefixtures("single_thread")
def test_an_export_without_config_json_still_loads(hub_run, tmp_path):
    images = _images(hub_run["data"])[:1]
    reference = _predictions(Predictor.from_pretrained(hub_run["export"]), images, scripted=False)
    older = _copy(hub_run["export"], tmp_path / "older")  # an export of the previous format: no config.json
    (older / "config.json").unlink()
    _rewrite_manifest(older)
    oldest = _copy(older, tmp_path / "oldest")  # ... and of before SHA256SUMS
    (oldest / "SHA256SUMS").unlink()
    for folder in (older, oldest):
        _assert_identical(_predictions(Predictor.from_pretrained(folder), images, scripted=False), reference)
        assert load_checkpoint(folder)[3].model == "composite"


@pytest.mark.slow
def test_a_corrupt_or_missing_config_json_is_named(hub_run, tmp_path):
    export = hub_run["export"]
    missing = _copy(export, tmp_path / "missing")  # listed in SHA256SUMS, deleted
    (missing / "config.json").unlink()
    with pytest.raises(CheckpointError, match=r"config\.json: missing"):
        ModifiedLISA.from_pretrained(missing)

    damaged = _copy(export, tmp_path / "damaged")  # changed after the export: the checksum names it
    _replace(damaged / "config.json", "{not json")
    with pytest.raises(CheckpointError, match=r"config\.json"):
        ModifiedLISA.from_pretrained(damaged)

    valid = json.loads((export / "config.json").read_text())
    cases = {"{not json": r"config\.json: unreadable export config",
             json.dumps({**valid, "model_type": "llama"}): r"config\.json: not a modlisa export config",
             json.dumps({**valid, "format_version": 99}): r"config\.json: format_version 99",
             json.dumps({**valid, "parts": {**valid["parts"], "sam": "sam2"}}): r"config\.json: parts\.sam"}
    for k, (text, needle) in enumerate(cases.items()):  # hand-edited, manifest rewritten: the reader names it
        folder = _copy(export, tmp_path / f"edited{k}")
        _replace(folder / "config.json", text)
        _rewrite_manifest(folder)
        with pytest.raises(WeightsError, match=needle):
            ModifiedLISA.from_pretrained(folder)
        with pytest.raises(WeightsError, match=needle):  # the CLI's loader reads it too
            load_checkpoint(folder)

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match=r"not a modlisa export: no config\.json"):
        ModifiedLISA.from_pretrained(empty)
    with pytest.raises(FileNotFoundError, match="no such export folder"):
        ModifiedLISA.from_pretrained(tmp_path / "absent")


# ---------------------------------------------------------------------- Hub repo ids (offline: the cache)
def _cache_repo(export: Path, cache: Path, repo_id: str) -> Path:
    """Lay ``export`` out as huggingface_hub's cache holds a downloaded model repo (refs/main -> snapshot)."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    shutil.copytree(export, repo / "snapshots" / commit, copy_function=os.link)
    (repo / "snapshots" / commit / ".gitattributes").write_text("*.safetensors filter=lfs\n")  # as on the Hub
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    return repo / "snapshots" / commit


@pytest.mark.slow
def test_a_hub_repo_id_loads_from_the_cache_offline_and_fails_clearly_when_absent(hub_run, tmp_path):
    from huggingface_hub import constants

    assert constants.HF_HUB_OFFLINE  # these tests never reach the network
    cache = tmp_path / "hf_cache"
    snapshot = _cache_repo(hub_run["export"], cache, "someone/tiny-lisa")
    model = ModifiedLISA.from_pretrained("someone/tiny-lisa", cache_dir=cache)
    assert model.pretrained.folder == snapshot and model.pretrained.source == "someone/tiny-lisa"
    assert isinstance(Predictor.from_pretrained("someone/tiny-lisa", cache_dir=cache), Predictor)
    with pytest.raises(FileNotFoundError, match=r"'someone/absent' is not a local folder.*HF_HUB_OFFLINE=1"):
        ModifiedLISA.from_pretrained("someone/absent", cache_dir=cache)

    old = _cache_repo(hub_run["export"], cache, "someone/older")  # an older export (no SHA256SUMS, no config.json)
    for name in ("SHA256SUMS", "config.json"):
        (old / name).unlink()
    assert ModifiedLISA.from_pretrained("someone/older", cache_dir=cache).pretrained.folder == old


@pytest.mark.slow
def test_cli_commands_take_a_hub_repo_id_from_the_cache(hub_run, tmp_path, monkeypatch, capsys):
    """`modlisa predict / eval --checkpoint owner/name`: the export in the Hugging Face cache (HF_HUB_CACHE),
    offline; the same masks as the export folder; an absent repo id is one clear line, exit 2."""
    from huggingface_hub import constants

    cache = tmp_path / "hf_cache"
    _cache_repo(hub_run["export"], cache, "someone/tiny-lisa")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    image = sorted((hub_run["data"] / "val").glob("*.jpg"))[0]
    masks = []
    for source, out in (("someone/tiny-lisa", tmp_path / "p_hub"), (str(hub_run["export"]), tmp_path / "p_dir")):
        assert main(["predict", "--checkpoint", source, "--image", str(image), "--query", "the red shape",
                     "--mode", "teacher", "--out", str(out)]) == 0
        masks.append(np.asarray(Image.open(next(out.glob("*_mask.png")))))
    assert np.array_equal(masks[0], masks[1])
    assert main(["eval", "--checkpoint", "someone/tiny-lisa", "--data_root", str(hub_run["data"]), "--split", "val",
                 "--out", str(tmp_path / "eval")]) == 0
    hub_eval = json.loads((tmp_path / "eval" / "eval_val.json").read_text())
    assert hub_eval["checkpoint"] == "someone/tiny-lisa" and hub_eval["num_queries"] > 0
    assert main(["export", "--checkpoint", "someone/tiny-lisa", "--out", str(tmp_path / "again")]) == 0
    assert (tmp_path / "again" / "config.json").is_file()
    capsys.readouterr()
    assert main(["eval", "--checkpoint", "someone/tiny-lisa", "--data_root", str(hub_run["data"])]) == 2
    assert "is a Hub repo id" in capsys.readouterr().err  # no run folder to write into: --out is needed
    assert main(["predict", "--checkpoint", "someone/absent", "--image", str(image), "--query", "x",
                 "--out", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err
    assert "'someone/absent' is not a local folder" in err and "Traceback" not in err


# ---------------------------------------------------------------------- config.json and the model card
@pytest.mark.slow
def test_config_json_states_the_format(hub_run):
    export = hub_run["export"]
    config = json.loads((export / "config.json").read_text())
    assert (config["model_type"], config["architectures"], config["library_name"]) == (
        "modlisa", ["ModifiedLISA"], "modlisa")
    assert config["modlisa_version"] and config["format_version"] == 1
    assert all((export / name).exists() for name in config["parts"].values())
    assert {"config.json", "README.md"} <= set(read_manifest(export))


@pytest.mark.slow
def test_model_card_front_matter_holds_the_eval_numbers(hub_run):
    from huggingface_hub import ModelCard

    card = ModelCard.load(hub_run["export"] / "README.md")
    data = card.data.to_dict()
    assert data["library_name"] == "modlisa" and data["pipeline_tag"] == "image-segmentation"
    assert {"reasoning-segmentation", "lisa", "image-segmentation"} <= set(data["tags"])
    assert data["datasets"] == ["modlisa-synthetic-reasonseg"]
    assert "license" not in data and "base_model" not in data  # the tiny preset: random backbones, none known
    got = {(r.dataset_split, r.metric_config, r.dataset_config, r.metric_type): r.metric_value
           for r in card.data.eval_results}
    expected = {}
    for mode, name in (("teacher", "eval_val.json"), ("generate", "eval_val_generate.json")):
        record = json.loads((hub_run["run"] / "outputs" / name).read_text())
        for subset, scores in (("overall", record), *record["subsets"].items()):
            if subset != "overall" and scores["num_queries"] == 0:
                continue  # an empty subset has no number to report
            for metric in ("giou", "ciou"):
                expected[("val", mode, subset, metric)] = round(100 * scores[metric], 2)
    assert got == expected
    assert {r.task_type for r in card.data.eval_results} == {"image-segmentation"}
    for text in ("ModifiedLISA.from_pretrained", "Predictor.from_pretrained", "modlisa predict --checkpoint",
                 "## Training configuration", "| learning_rate | `0.001` |", "How the numbers are measured"):
        assert text in card.text, text


def test_card_metadata_of_presets_with_hub_backbones():
    lisa = apply_preset(TrainingConfig(model="lisa-7b"))
    assert base_model_sources(lisa) == {"llava_model": "llava-hf/llava-1.5-7b-hf", "sam_model": "facebook/sam-vit-huge"}
    data = card_data({"base_models": base_model_sources(lisa)}, "m").to_dict()
    assert data["base_model"] == ["facebook/sam-vit-huge", "llava-hf/llava-1.5-7b-hf"]
    assert "license" not in data  # llama2 and apache-2.0 differ: none stated
    smol = TrainingConfig(model="smol", sam_model="facebook/sam-vit-base")
    data = card_data({"base_models": base_model_sources(smol)}, "m").to_dict()
    assert data["license"] == "apache-2.0"
    assert "model-index" not in data  # no eval results: no model-index
    local = TrainingConfig(model="composite", language_model="/nonexistent/local/lm", vision_model="openai/clip-x")
    assert base_model_sources(local) == {"vision_model": "openai/clip-x"}  # a path is no Hub id


def test_card_numbers_equal_the_eval_files(tmp_path):
    """Non-zero numbers (the tiny run's are 0): every eval file's gIoU / cIoU per subset, in percent, parsed back
    by huggingface_hub; the wrong-query baseline and files of another checkpoint are left off."""
    from huggingface_hub import ModelCard

    outputs = tmp_path / "outputs"
    outputs.mkdir()
    other = tmp_path / "other_export"
    other.mkdir()
    (other / "modlisa_config.yaml").write_text("model: composite\n")
    teacher = {"split": "val", "mode": "teacher", "precision": "bf16", "checkpoint": "gone/run", "giou": 0.61234,
               "ciou": 0.70011, "num_queries": 200, "subsets": {
                   "short": {"giou": 0.5, "ciou": 0.55555, "num_queries": 50},
                   "long": {"giou": 0.64978, "ciou": 0.72, "num_queries": 150}}}
    generate = {**teacher, "mode": "generate", "split": "test", "giou": 0.4, "ciou": 0.123456,
                "subsets": {"short": {"giou": 0.1, "ciou": 0.2, "num_queries": 0}}}
    files = {"eval_val.json": teacher, "eval_test_generate.json": generate,
             "eval_val_wrong_query.json": {**teacher, "giou": 0.01},
             "eval_train.json": {**teacher, "split": "train", "checkpoint": str(other)}}
    for name, record in files.items():
        (outputs / name).write_text(json.dumps(record))
    results = read_eval_results(outputs, same_checkpoint=lambda recorded: recorded != str(other))
    assert [r["file"] for r in results] == ["eval_test_generate.json", "eval_val.json"]
    info = {"modlisa_version": "0", "source_preset": "lisa-7b", "eval_results": results,
            "base_models": {"sam_model": "facebook/sam-vit-huge"}, "dataset": {"id": "reasonseg", "name": "ReasonSeg"}}
    (tmp_path / "README.md").write_text(card_text(info, "my-lisa"))
    card = ModelCard.load(tmp_path / "README.md")
    assert card.data.to_dict()["license"] == "apache-2.0" and card.data.base_model == ["facebook/sam-vit-huge"]
    got = {(r.dataset_split, r.metric_config, r.dataset_config, r.metric_type): r.metric_value
           for r in card.data.eval_results}
    expected = {("test", "generate", "overall", "giou"): 40.0, ("test", "generate", "overall", "ciou"): 12.35}
    for subset, scores in (("overall", teacher), *teacher["subsets"].items()):
        for metric in ("giou", "ciou"):
            expected[("val", "teacher", subset, metric)] = round(100 * scores[metric], 2)
    assert got == expected
    assert {r.dataset_name for r in card.data.eval_results} == {"ReasonSeg"}
    assert "| val | teacher | long | 64.98 | 72.00 | 150 | bf16 |" in card.text


def test_an_imported_lisa_card_names_its_source_not_a_training_run():
    info = {"modlisa_version": "0", "source_preset": "lisa-import", "training": {"num_epochs": 1},
            "imported_from": {"architectures": ["LISAForCausalLM"], "vision_tower": "openai/clip-vit-large-patch14",
                              "sam": "vit_h"}}
    text = card_text(info, "lisa-7b-v1")
    assert "## Source" in text and "LISAForCausalLM" in text and "## Training configuration" not in text
