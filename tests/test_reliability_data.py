"""Bad data (issue 7.1): every case of the broken corpus is handled or reported with its file and reason by
``check-data``, by training (strict: one list before any model is built; lenient: skipped and counted in the
run's JSON) and by evaluation (strict: one message listing the files, exit 2)."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from broken_corpus import CASES, Case, build_broken_corpus, case_file, usable_count
from modlisa.cli import main
from modlisa.config import TrainingConfig
from modlisa.data.check import check_dataset
from modlisa.data.dataset import ReasonSegDataset, check_training_data
from modlisa.data.reasonseg import DataError, load_image_rgb, scan_split, verify_image
from modlisa.synthetic import make_dataset

SPLITS = ("train", "val")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("broken")
    build_broken_corpus(root)
    return root


def expected_error(case: Case, split: str) -> str | None:
    return case.train if split == "train" else case.eval


def tiny_config(data_root: Path, out: Path, **overrides) -> TrainingConfig:
    cfg = TrainingConfig(
        data_root=str(data_root), output_dir=str(out), model="tiny", img_size=32, sam_image_size=32,
        batch_size=4, num_epochs=1, learning_rate=1e-3, warmup_steps=1, use_mixed_precision=False, cpu=True,
        log_every_steps=1, seed=3, queries_per_image=1,
    )
    return replace(cfg, **overrides)


def _assert_case_reported(problems: list[dict], split_dir: Path, case: Case, split: str) -> None:
    """The case's error names its file; a handled case has no error; its warning (if any) is there."""
    mine = [p for p in problems if Path(p["file"]).stem == case.stem]
    errors = [(p["kind"], p["file"]) for p in mine if p["severity"] == "error"]
    kind = expected_error(case, split)
    if kind is None:
        assert errors == [], (split, case.stem, errors)
    else:
        assert (kind, str(case_file(split_dir, case))) in errors, (split, case.stem, mine)
        assert all(p["message"] for p in mine)
    if case.warning is not None:
        assert case.warning in {p["kind"] for p in mine if p["severity"] == "warning"}, (split, case.stem, mine)


# ---------------------------------------------------------------------- check-data
def test_check_data_reports_or_handles_every_case(corpus, capsys):
    report = check_dataset(corpus, progress=False)
    assert report["ok"] is False
    for split in SPLITS:
        result = report["splits"][split]
        for case in CASES:
            _assert_case_reported(result["problems"], corpus / split, case, split)
        assert result["usable"] == usable_count(CASES, split), split
        assert result["errors"] == sum(1 for c in CASES if expected_error(c, split))
    assert report["splits"]["test"]["errors"] == 0
    code = main(["check-data", str(corpus), "--no-progress"])
    out, err = capsys.readouterr()
    assert code == 1 and "Traceback" not in err
    assert f"{corpus / 'train' / 'truncated_jpeg.jpg'}: unreadable_image: cannot decode image" in out


def test_every_error_is_listed_however_many(tmp_path, capsys):
    make_dataset(tmp_path, seed=0, num_train=1, num_val=1, num_test=1, image_size=64, progress=False)
    for i in range(60):
        (tmp_path / "train" / f"orphan_{i:02d}.json").write_text("{}", encoding="utf-8")
    assert main(["check-data", str(tmp_path), "--no-progress"]) == 1
    out, _ = capsys.readouterr()
    assert sum(f"orphan_{i:02d}.json: missing_image" in out for i in range(60)) == 60
    with pytest.raises(DataError) as info:
        check_training_data(tmp_path)
    assert str(info.value).count(": missing_image:") == 60


def test_verified_scan_finds_what_the_full_decode_finds(corpus):
    """The cheap verification (end markers, full decode only when missing) agrees with check-data."""
    for split in SPLITS:
        annotations, problems = scan_split(corpus, split, verify_images=True)
        assert len(annotations) == usable_count(CASES, split)
        as_dicts = [{"file": p.file, "kind": p.kind, "severity": p.severity, "message": p.message} for p in problems]
        for case in CASES:
            _assert_case_reported(as_dicts, corpus / split, case, split)
    _, unverified = scan_split(corpus, "train")
    assert "truncated_jpeg" not in {Path(p.file).stem for p in unverified}  # the header alone reads fine


def test_converted_images_are_rgb_uint8(corpus):
    train = corpus / "train"
    shapes = {"grayscale.jpg": (24, 32), "rgba.png": (24, 32), "grey16.png": (24, 32), "palette.png": (24, 32),
              "cmyk.jpg": (24, 32), "one_pixel.jpg": (1, 1)}
    for name, hw in shapes.items():
        image = load_image_rgb(train / name)
        assert image.shape == (*hw, 3) and image.dtype == np.uint8, name
    grey = load_image_rgb(train / "grayscale.jpg")
    assert np.array_equal(grey[..., 0], grey[..., 1]) and np.array_equal(grey[..., 1], grey[..., 2])
    grey16 = load_image_rgb(train / "grey16.png")
    assert grey16.max() > 100  # 16-bit values scaled to 8 bits, not clipped to 255 or truncated to 0


def test_verify_image_accepts_trailing_bytes_and_rejects_truncation(tmp_path):
    good = tmp_path / "good.jpg"
    rng = np.random.default_rng(0)
    from PIL import Image

    Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(good, quality=90)
    verify_image(good)
    padded = tmp_path / "padded.jpg"
    padded.write_bytes(good.read_bytes() + b"\0" * 10_000)  # camera trailer beyond the tail window
    verify_image(padded)  # the marker is not in the tail: decoded fully, which succeeds
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(good.read_bytes()[:-200])
    with pytest.raises(DataError, match="cut.jpg: cannot decode image"):
        verify_image(cut)


# ---------------------------------------------------------------------- training
def test_strict_training_stops_before_building_a_model_listing_both_splits(corpus, tmp_path, capsys):
    with pytest.raises(DataError) as info:
        check_training_data(corpus)
    message = str(info.value)
    for split in SPLITS:
        for case in CASES:
            if expected_error(case, split):
                assert str(case_file(corpus / split, case)) in message, (split, case.stem)
    assert "data_strict: false" in message
    out = tmp_path / "strict_run"
    code = main(["train", "--data_root", str(corpus), "--output_dir", str(out), "--data_strict", "true",
                 "--cpu", "true", "--use_mixed_precision", "false"])
    _, err = capsys.readouterr()
    assert code == 2 and "Traceback" not in err
    assert err.startswith("modlisa train: error: ") and str(corpus / "val" / "truncated_jpeg.jpg") in err
    assert not out.exists()  # stopped before the run folder (and the model) was made


def test_lenient_dataset_replaces_an_item_that_fails_to_load(tmp_path):
    """An image that passes the scan but fails to decode: skipped and counted when lenient, an error otherwise."""
    make_dataset(tmp_path, seed=0, num_train=3, num_val=2, num_test=1, image_size=64, progress=False)
    broken = sorted((tmp_path / "train").glob("*.jpg"))[1]
    data = broken.read_bytes()
    broken.write_bytes(data[: len(data) // 2])

    def dataset(**kwargs) -> ReasonSegDataset:
        identity = lambda image: (torch.zeros(3, 8, 8), (8, 8))  # noqa: E731
        return ReasonSegDataset(tmp_path, "train", identity, lambda image: torch.zeros(3, 8, 8), **kwargs)

    lenient = dataset(train=True, strict=False)
    samples = [lenient[i] for i in range(len(lenient))]
    assert [s.image_path for s in samples].count(str(broken)) == 0 and len(samples) == 3
    assert list(lenient.load_failures) == [str(broken)]
    with pytest.raises(DataError, match=f"{broken.name}: cannot decode image"):
        dataset(train=True, strict=True)[1]
    with pytest.raises(DataError, match=f"{broken.name}: cannot decode image"):
        dataset(train=False, strict=False)[1]  # evaluation never double-counts a substitute
    verified = dataset(train=True, strict=False, verify_images=True)
    assert len(verified) == 2 and verified.num_skipped == 1


@pytest.mark.slow
def test_lenient_training_skips_counts_and_handles_the_rest(corpus, tmp_path):
    """Every handled case (1x1 and 8000x6000 images included) goes through training and validation."""
    from modlisa.engine.train import train

    n_train = usable_count(CASES, "train")
    cfg = tiny_config(corpus, tmp_path / "lenient", steps_per_epoch=-(-n_train // 4))  # one pass covers all
    summary = train(cfg.validate())
    data = summary["data"]
    for split in SPLITS:
        errors = [c for c in CASES if expected_error(c, split)]
        assert data[split]["usable"] == usable_count(CASES, split), split
        assert data[split]["skipped"] == len(errors), split
        assert data[split]["skipped_at_load"] == 0
        for case in errors:
            assert str(case_file(corpus / split, case)) in data[split]["skipped_files"], (split, case.stem)
    assert data["train"]["problems_by_kind"]["large_image (warning)"] == 1
    saved = json.loads((tmp_path / "lenient" / "outputs" / "train_summary.json").read_text())
    assert saved["data"] == json.loads(json.dumps(data))
    record = json.loads((tmp_path / "lenient" / "outputs" / "metrics_epoch_1.json").read_text())
    assert record["data"]["train"]["skipped"] == data["train"]["skipped"]
    assert record["val"]["num_queries"] == usable_count(CASES, "val")
    assert np.isfinite(record["train"]["loss"]) and np.isfinite(record["val"]["loss"])


def test_training_without_a_val_split_runs_without_validation(tmp_path, caplog):
    from modlisa.engine.train import train

    make_dataset(tmp_path / "data", seed=0, num_train=2, num_val=1, num_test=1, image_size=64, progress=False)
    shutil.rmtree(tmp_path / "data" / "val")
    summary = train(tiny_config(tmp_path / "data", tmp_path / "run", batch_size=2, data_strict=True).validate())
    assert list(summary["data"]) == ["train"] and summary["global_step"] == 1
    assert "no val split" in caplog.text
    record = json.loads((tmp_path / "run" / "outputs" / "metrics_epoch_1.json").read_text())
    assert record["val"] is None


# ---------------------------------------------------------------------- evaluation
@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    from modlisa.engine.train import train

    root = tmp_path_factory.mktemp("clean")
    make_dataset(root / "data", seed=0, num_train=2, num_val=1, num_test=1, image_size=64, progress=False)
    train(tiny_config(root / "data", root / "run", batch_size=2).validate())
    return root / "run"


def test_eval_on_a_broken_split_lists_every_file_and_exits_2(corpus, checkpoint, tmp_path, capsys):
    code = main(["eval", "--checkpoint", str(checkpoint), "--data_root", str(corpus), "--split", "val",
                 "--out", str(tmp_path / "eval")])
    _, err = capsys.readouterr()
    assert code == 2 and "Traceback" not in err and err.startswith("modlisa eval: error: ")
    for case in CASES:
        if case.eval:
            assert str(case_file(corpus / "val", case)) in err, case.stem


def test_strict_evaluation_dataset_with_verification_lists_every_file(corpus):
    def transform(image):
        return torch.zeros(3, 8, 8), (8, 8)

    with pytest.raises(DataError) as info:
        ReasonSegDataset(corpus, "val", transform, lambda image: torch.zeros(3, 8, 8), train=False, strict=True,
                         verify_images=True)
    for case in CASES:
        if case.eval:
            assert str(case_file(corpus / "val", case)) in str(info.value), case.stem
