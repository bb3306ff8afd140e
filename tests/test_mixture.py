"""LISA's training mixture (issue 14 item 2): sampling by rate, deterministic items, the refer_seg source against
pycocotools, multi-turn conversations, per-dataset counts equal to a replay of the sampler, exact resume,
check-data --config and the config errors."""

from __future__ import annotations

import json
import random
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from modlisa.cli import main
from modlisa.config import ConfigError, TrainingConfig
from modlisa.data.collate import encode_query
from modlisa.data.dataset import ReasonSegDataset
from modlisa.data.mixture import MixtureDataset, MixturePart, configured_shares
from modlisa.data.refer import ReferSegSource
from modlisa.data.transforms import SamTransform, VisionTransform
from modlisa.engine.sampling import TrainSampler
from modlisa.model.tokenizer import build_byte_tokenizer
from modlisa.synthetic import make_dataset
from modlisa.synthetic.refer_format import make_refer_dataset
from modlisa.types import IGNORE_INDEX

pycocotools_coco = pytest.importorskip("pycocotools.coco")


@pytest.fixture(scope="module")
def roots(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("mixture")
    make_dataset(base / "reason", seed=0, num_train=8, num_val=3, num_test=2, image_size=64, progress=False)
    make_refer_dataset(base / "dataset" / "refer_seg", dataset="refcoco", seed=1, num_train=6, num_val=3,
                       num_test=2, image_size=64)
    return {"reason": base / "reason", "dataset": base / "dataset"}


def _mixture(roots: dict[str, Path], rates=(1.0, 3.0), seed: int = 0) -> MixtureDataset:
    reason = ReasonSegDataset(roots["reason"], "train", SamTransform(64), VisionTransform(64), train=True, seed=seed)
    refer = ReferSegSource(roots["dataset"], "refcoco")
    parts = [MixturePart("reason_seg", rates[0], (reason,)), MixturePart("refer_seg", rates[1], (refer,))]
    mixture = MixtureDataset(parts, seed=seed, queries_per_image=2)
    mixture.set_transforms(SamTransform(64), VisionTransform(64))
    return mixture


def test_datasets_are_drawn_by_sampling_rate(roots):
    mixture = _mixture(roots, rates=(1.0, 3.0))
    assert mixture.shares() == {"reason_seg": 0.25, "refcoco": 0.75}
    counts = Counter(mixture.choose(i)[1].name if not isinstance(mixture.choose(i)[1], ReasonSegDataset)
                     else "reason_seg" for i in range(4000))
    assert abs(counts["refcoco"] / 4000 - 0.75) < 0.03  # binomial sd 0.007


def test_items_are_a_function_of_seed_epoch_and_index(roots):
    a, b = _mixture(roots), _mixture(roots)
    for index in range(6):
        sa, sb = a[index], b[index]
        assert (sa.source, sa.questions, sa.answers) == (sb.source, sb.questions, sb.answers)
        assert torch.equal(sa.masks, sb.masks)
    b.set_epoch(1)
    assert any(a[i].questions != b[i].questions for i in range(6))


def test_refer_items_carry_lisa_templates_and_pycocotools_masks(roots):
    mixture = _mixture(roots, rates=(1e-9, 1.0))  # (almost) only refcoco
    coco = pycocotools_coco.COCO(str(roots["dataset"] / "refer_seg" / "refcoco" / "instances.json"))
    refs = {ref.image_path: ref for image in ReferSegSource(roots["dataset"], "refcoco").images for ref in image}
    checked = 0
    for index in range(8):
        sample = mixture[index]
        if sample.source != "refcoco":
            continue
        assert 1 <= len(sample.queries) <= 2 and sample.masks.shape[0] == len(sample.queries)
        assert all("[SEG]" in a for a in sample.answers)
        image_refs = [r for r in ReferSegSource(roots["dataset"], "refcoco").images
                      if r[0].image_path == sample.image_path][0]
        for query, question, mask in zip(sample.queries, sample.questions, sample.masks):
            assert query.lower() in question  # LISA: the short-question template on text.lower()
            owners = [r for r in image_refs if any(s["sent"].strip() == query for s in r.sentences)]
            expected = [coco.annToMask(coco.anns[r.ann_id]) for r in owners]
            assert any(np.array_equal(mask.numpy(), m) for m in expected)
            checked += 1
    assert checked >= 4 and refs


def test_multi_turn_conversation_learns_every_answer_only():
    tokenizer = build_byte_tokenizer()
    ids, labels = encode_query("How many shapes?", "Three.", tokenizer, 512,
                               extra_turns=[("Which colour is the disc?", "It is teal.")])
    learned = tokenizer.decode([t for t, lab in zip(ids, labels) if lab != IGNORE_INDEX])
    eos = tokenizer.eos_token
    assert learned.replace(" ", "") == f"Three.{eos}Itisteal.{eos}".replace(" ", "")
    text = tokenizer.decode(ids)
    assert text.index("How many shapes?") < text.index("Three.") < text.index("USER: Which colour")


def test_configured_shares_from_a_run_config():
    cfg = {"dataset": "sem_seg||refer_seg||vqa||reason_seg", "sample_rates": "9,3,3,1",
           "sem_seg_data": "ade20k||cocostuff", "refer_seg_data": "refcoco", "vqa_data": "llava_instruct"}
    shares = configured_shares(cfg)
    assert shares == pytest.approx({"ade20k": 9 / 32, "cocostuff": 9 / 32, "refcoco": 3 / 16,
                                    "llava_instruct": 3 / 16, "reason_seg": 1 / 16})
    assert configured_shares({"dataset": "reason_seg"}) == {}


def _config(roots: dict[str, Path], out: Path, **overrides) -> TrainingConfig:
    cfg = TrainingConfig(
        data_root=str(roots["reason"]), output_dir=str(out), model="tiny", img_size=64, sam_image_size=64,
        batch_size=2, num_epochs=2, steps_per_epoch=3, learning_rate=1e-3, warmup_steps=1,
        use_mixed_precision=False, cpu=True, freeze_image_encoder=False, freeze_sam=False,
        freeze_text_encoder=False, log_every_steps=1, seed=7, queries_per_image=2,
        dataset="reason_seg||refer_seg", sample_rates="1,3", refer_seg_data="refcoco",
        dataset_dir=str(roots["dataset"]))
    return replace(cfg, **overrides)


def _train(cfg: TrainingConfig) -> dict:
    from modlisa.engine.train import train

    return train(cfg.validate())


def _expected_counts(cfg: TrainingConfig, mixture: MixtureDataset, epoch: int) -> Counter:
    """The images per dataset of ``epoch``, replayed from the sampler and the mixture's draws."""
    sampler = TrainSampler(len(mixture), cfg.steps_per_epoch * cfg.batch_size, seed=cfg.seed)
    sampler.set_epoch(epoch)
    mixture.set_epoch(epoch)
    names = Counter()
    for index in sampler:
        dataset = mixture.choose(index)[1]
        names["reason_seg" if isinstance(dataset, ReasonSegDataset) else dataset.name] += 1
    return names


def test_mixture_run_counts_resume_and_report(roots, tmp_path):
    """A CPU run on reason_seg + refcoco: the per-dataset counts of each epoch equal a replay of the sampler and the
    mixture's draws; a run stopped mid-epoch and resumed ends with the same weights and per-dataset figures."""
    cfg = _config(roots, tmp_path / "a")
    _train(cfg)
    replay = _mixture(roots, rates=(1.0, 3.0), seed=cfg.seed)
    for epoch in (1, 2):
        record = json.loads((tmp_path / "a" / "outputs" / f"metrics_epoch_{epoch}.json").read_text())
        datasets = record["train"]["datasets"]
        assert {k: v["images"] for k, v in datasets.items() if v["images"]} == _expected_counts(cfg, replay,
                                                                                                epoch - 1)
        assert sum(v["share"] for v in datasets.values()) == pytest.approx(1.0)
        for figures in datasets.values():
            if figures["images"]:
                assert figures["ce"] > 0 and figures["mask_dice"] > 0
    lines = [json.loads(x) for x in (tmp_path / "a" / "outputs" / "train_log.jsonl").read_text().splitlines()]
    assert all("refcoco/images" in line or "reason_seg/images" in line for line in lines if "loss" in line)

    _train(_config(roots, tmp_path / "b", stop_after_steps=4))
    _train(_config(roots, tmp_path / "b", resume_from_checkpoint="latest"))
    wa = load_file(str(tmp_path / "a" / "checkpoints" / "last" / "model.safetensors"))
    wb = load_file(str(tmp_path / "b" / "checkpoints" / "last" / "model.safetensors"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    ma = json.loads((tmp_path / "a" / "outputs" / "metrics_epoch_2.json").read_text())["train"]["datasets"]
    mb = json.loads((tmp_path / "b" / "outputs" / "metrics_epoch_2.json").read_text())["train"]["datasets"]
    assert ma.keys() == mb.keys()
    for name in ma:
        for key, value in ma[name].items():
            assert mb[name][key] == pytest.approx(value, rel=1e-9, abs=1e-12), (name, key)

    assert main(["analyze", str(tmp_path / "a"), "--out", str(tmp_path / "report")]) == 0
    report = (tmp_path / "report" / "report.md").read_text()
    assert "Training mixture of a" in report and "Configured shares: reason_seg 25.0 %, refcoco 75.0 %" in report


def test_check_data_config_checks_every_mixture_dataset(roots, tmp_path, capsys):
    import yaml

    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({"data_root": str(roots["reason"]), "dataset": "reason_seg||refer_seg",
                                      "refer_seg_data": "refcoco", "dataset_dir": str(roots["dataset"])}))
    assert main(["check-data", "--config", str(config), "--no_progress"]) == 0
    assert "refcoco" in capsys.readouterr().out
    broken = tmp_path / "broken"
    import shutil

    shutil.copytree(roots["dataset"], broken)
    images = sorted((broken / "refer_seg" / "images").rglob("*.jpg"))
    images[0].unlink()
    config.write_text(yaml.safe_dump({"data_root": str(roots["reason"]), "dataset": "reason_seg||refer_seg",
                                      "refer_seg_data": "refcoco", "dataset_dir": str(broken)}))
    assert main(["check-data", "--config", str(config), "--no_progress"]) == 1
    out = capsys.readouterr().out
    assert images[0].name in out and "FAILED" in out


@pytest.mark.parametrize("overrides, message", [
    ({"dataset": "reason_seg||pets"}, "give each of"),
    ({"dataset": "reason_seg||refer_seg", "sample_rates": "1,2,3"}, "needs 2 positive"),
    ({"dataset": "reason_seg||refer_seg", "refer_seg_data": "refcocoz"}, "refer_seg_data"),
    ({"dataset": "reason_seg||refer_seg", "dataset_dir": None}, "needs dataset_dir"),
])
def test_bad_mixture_configs_are_clear_errors(roots, tmp_path, overrides, message):
    cfg = replace(_config(roots, tmp_path / "x"), **overrides)
    with pytest.raises(ConfigError, match=message):
        cfg.validate()


def test_one_kind_ignores_the_sample_rates_of_a_mixture_config(roots, tmp_path):
    """lisa7b.yaml's 9,3,3,1 with `--dataset reason_seg` (the "(ft)" stage) is valid: one kind needs no rate."""
    replace(_config(roots, tmp_path / "x"), dataset="reason_seg", sample_rates="9,3,3,1").validate()


def test_rng_of_refer_source_is_the_only_randomness(roots):
    source = ReferSegSource(roots["dataset"], "refcoco")
    a = source.draw(0, random.Random(5), 2)
    b = source.draw(0, random.Random(5), 2)
    assert a.texts == b.texts and np.array_equal(a.masks, b.masks)


def test_your_data_mixed_with_reasonseg(roots, tmp_path):
    """DATA.md's fine-tune path: a second ReasonSeg-format folder (as `modlisa convert` writes) drawn beside
    data_root; each is one dataset of the reason_seg kind, counted by its folder name."""
    mine = tmp_path / "my_data"
    make_dataset(mine, seed=5, num_train=4, num_val=0, num_test=0, image_size=64, progress=False)
    cfg = _config(roots, tmp_path / "run", dataset="reason_seg", sample_rates="", num_epochs=1, steps_per_epoch=4,
                  reason_seg_data=f"reason_seg||{mine}")
    _train(cfg)
    datasets = json.loads((tmp_path / "run" / "outputs" / "metrics_epoch_1.json").read_text())["train"]["datasets"]
    assert set(datasets) == {"reason_seg", "my_data"}
    assert sum(d["images"] for d in datasets.values()) == 8 and all(d["images"] > 0 for d in datasets.values())
    with pytest.raises(ConfigError, match="not a folder"):
        replace(cfg, reason_seg_data=f"reason_seg||{tmp_path / 'missing'}").validate()


@pytest.fixture(scope="module")
def lisa_dataset_dir(tmp_path_factory) -> Path:
    """LISA's dataset folder with every kind, written by `modlisa make-data` in each real format."""
    root = tmp_path_factory.mktemp("lisa_dataset")
    for fmt in ("ade20k", "cocostuff", "pascal_part", "paco_lvis", "llava_instruct"):
        assert main(["make-data", str(root), "--format", fmt, "--num_train", "4", "--image_size", "64",
                     "--seed", "2", "--no_progress"]) == 0, fmt
    assert main(["make-data", str(root / "refer_seg"), "--format", "refcoco", "--num_train", "4", "--num_val", "1",
                 "--num_test", "1", "--image_size", "64", "--no_progress"]) == 0
    return root


def test_lisa_mixture_of_every_kind_trains_and_counts(roots, lisa_dataset_dir, tmp_path):
    """LISA's 9 : 3 : 3 : 1 mixture of sem_seg (4 datasets), refer_seg, vqa (multi-turn, no mask) and ReasonSeg:
    a CPU run whose per-dataset counts equal the replay of its draws; check-data --config passes on it."""
    cfg = _config(roots, tmp_path / "run", num_epochs=1, steps_per_epoch=5, batch_size=2,
                  dataset="sem_seg||refer_seg||vqa||reason_seg", sample_rates="9,3,3,1",
                  dataset_dir=str(lisa_dataset_dir))
    _train(cfg)
    datasets = json.loads((tmp_path / "run" / "outputs" / "metrics_epoch_1.json").read_text())["train"]["datasets"]
    assert set(datasets) == {"ade20k", "cocostuff", "pascal_part", "paco_lvis", "refcoco", "llava_instruct",
                             "reason_seg"}
    from modlisa.engine.build import build_mixture

    mixture = build_mixture(cfg, ReasonSegDataset(roots["reason"], "train", None, None, train=True, seed=cfg.seed,
                                                  queries_per_image=2))
    assert {k: v["images"] for k, v in datasets.items() if v["images"]} == _expected_counts(cfg, mixture, 0)
    for name, figures in datasets.items():
        if figures["images"] and name == "llava_instruct":
            assert figures["masks"] == 0 and figures["mask_bce"] is None and figures["ce"] > 0
    import yaml

    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({k: v for k, v in cfg.to_dict().items() if v is not None}))
    assert main(["check-data", "--config", str(config), "--no_progress"]) == 0


def test_demo_mixture_config_trains_on_its_synthetic_data(tmp_path, capsys):
    """configs/demo_mixture.yaml as scripts/demo_mixture.sh runs it (its make-data steps, smaller), for 3 steps."""
    import yaml

    repo = Path(__file__).resolve().parents[1]
    cfg = yaml.safe_load((repo / "configs" / "demo_mixture.yaml").read_text())
    root = tmp_path / "demo_mixture"
    common = ["--seed", "0", "--image_size", "64", "--no_progress"]
    assert main(["make-data", str(root / "reason_seg" / "ReasonSeg"), *common, "--num_train", "6", "--num_val", "2",
                 "--num_test", "2"]) == 0
    assert main(["make-data", str(root / "refer_seg"), "--format", "refcoco", *common, "--num_train", "4",
                 "--num_val", "2", "--num_test", "1"]) == 0
    assert main(["make-data", str(root), "--format", "llava_instruct", *common, "--num_train", "4"]) == 0
    assert cfg["data_root"].startswith(cfg["dataset_dir"])  # the script's layout: everything under dataset_dir
    assert main(["train", "--config", str(repo / "configs" / "demo_mixture.yaml"),
                 "--data_root", str(root / "reason_seg" / "ReasonSeg"), "--dataset_dir", str(root),
                 "--output_dir", str(tmp_path / "run"), "--img_size", "64", "--sam_image_size", "64",
                 "--num_epochs", "1", "--steps_per_epoch", "3", "--batch_size", "2", "--log_every_steps", "1"]) == 0
    step_lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("epoch 1/1 step")]
    assert len(step_lines) == 3 and all("(ce " in line for line in step_lines)  # per-dataset images and losses
    assert any("reason_seg " in line or "refcoco " in line for line in step_lines)
    record = json.loads((tmp_path / "run" / "outputs" / "metrics_epoch_1.json").read_text())
    assert set(record["train"]["datasets"]) == {"refcoco", "llava_instruct", "reason_seg"}
    assert sum(d["images"] for d in record["train"]["datasets"].values()) == 6
