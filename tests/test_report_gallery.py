"""The report's eyes (issue 16, item 5): the best / worst gallery from a real `modlisa eval`, the per-step curves
of train_log.jsonl (resumed runs, NaN, old logs) and the query-dependence bars."""

from __future__ import annotations

import base64
import io
import json
import math
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path

import pytest
from PIL import Image

from modlisa.cli import main
from modlisa.report import build_report, load_run
from modlisa.report.gallery import THUMB_SIZE
from modlisa.report.plots import loss_terms_per_step, lr_grad_norm_per_step, query_dependence
from modlisa.report.summary import run_summary, step_losses, step_series
from modlisa.synthetic import make_dataset
from test_report import write_run


# ---------------------------------------------------------------------- a real evaluation with pictures
@pytest.fixture(scope="module")
def evaluated_run(checkpoint_run, tmp_path_factory) -> Path:
    """The session's tiny run (its outputs copied) evaluated on 6 val images by `modlisa eval` with the default
    pictures, and on 5 test images with ``--save_masks 2``."""
    base = tmp_path_factory.mktemp("gallery")
    data = base / "data"
    make_dataset(data, seed=1, num_train=1, num_val=6, num_test=5, image_size=64, progress=False)
    run = base / "run"
    shutil.copytree(checkpoint_run["run"] / "outputs", run / "outputs")
    common = ["eval", "--checkpoint", str(checkpoint_run["run"]), "--data_root", str(data), "--out",
              str(run / "outputs")]
    assert main([*common, "--split", "val"]) == 0  # the default: 4 best + 4 worst (here 4 + 2)
    assert main([*common, "--split", "test", "--save_masks", "2"]) == 0
    return run


def _index(run: Path, split: str) -> list[dict]:
    return json.loads((run / "outputs" / f"eval_{split}_masks" / "index.json").read_text())


def test_eval_saves_default_pictures_with_an_index(evaluated_run):
    records = {r["file"]: r for r in map(json.loads, (evaluated_run / "outputs" / "predictions_val.jsonl")
                                         .read_text().splitlines())}
    index = _index(evaluated_run, "val")
    assert [(e["tag"], e["rank"]) for e in index] == [("best", r) for r in (1, 2, 3, 4)] + [("worst", 1), ("worst", 2)]
    for e in index:
        assert (evaluated_run / "outputs" / "eval_val_masks" / e["overlay"]).is_file()
        assert {k: e[k] for k in ("query", "is_sentence", "IoU")} == {k: records[e["file"]][k]
                                                                      for k in ("query", "is_sentence", "IoU")}
    assert [(e["tag"], e["rank"]) for e in _index(evaluated_run, "test")] == [("best", 1), ("best", 2),
                                                                              ("worst", 1), ("worst", 2)]


class _Figures(HTMLParser):
    """The gallery pictures of report.html: data-* attributes, the img src and the caption text."""

    def __init__(self) -> None:
        super().__init__()
        self.pictures: list[dict] = []
        self.images = 0
        self._caption: list[str] | None = None
        self._in_picture = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.images += 1
        if tag == "figure" and attrs.get("class") == "pic":
            self.pictures.append({**attrs, "caption": ""})
            self._in_picture = True
        elif tag == "img" and self._in_picture:
            self.pictures[-1]["src"] = attrs["src"]
        elif tag == "figcaption" and self._in_picture:
            self._caption = []

    def handle_data(self, data):
        if self._caption is not None:
            self._caption.append(data)

    def handle_endtag(self, tag):
        if tag == "figcaption" and self._caption is not None:
            self.pictures[-1]["caption"] = "".join(self._caption)
            self._caption = None
        elif tag == "figure":
            self._in_picture = False


def test_report_shows_exactly_the_saved_pictures(evaluated_run, tmp_path):
    files = build_report([evaluated_run], tmp_path / "report")
    outputs = evaluated_run / "outputs"
    expected = {(split, e["tag"], e["rank"]): e for split in ("val", "test") for e in _index(evaluated_run, split)}
    page = files.html.read_text()
    parser = _Figures()
    parser.feed(page)
    assert len(parser.pictures) == len(expected) == len(files.pictures) == 10
    assert parser.images == len(files.plots) + len(files.pictures)  # nothing else is embedded
    assert not re.search(r"https?://|src=\"(?!data:)|href=\"(?!#)|<link|@import|url\(", page)  # self-contained
    md = files.markdown.read_text()
    for p, thumb in zip(parser.pictures, files.pictures):
        split = thumb.parent.name
        e = expected[(split, p["data-tag"], int(p["data-rank"]))]
        assert p["data-file"] == e["file"] and float(p["data-iou"]) == e["IoU"]
        assert e["query"] in p["caption"] and f"IoU {100 * e['IoU']:.1f} %" in p["caption"]
        assert ("long query" if e["is_sentence"] else "short query") in p["caption"]
        assert Path(e["file"]).name in p["caption"]
        data = base64.b64decode(p["src"].removeprefix("data:image/jpeg;base64,"))
        assert data == thumb.read_bytes()  # the thumbnail written beside report.md, embedded as is
        with Image.open(io.BytesIO(data)) as small, Image.open(outputs / f"eval_{split}_masks" / e["overlay"]) as big:
            assert max(small.size) <= THUMB_SIZE and small.width / small.height == pytest.approx(
                big.width / big.height, rel=0.05)
            # the same picture: a 8x8 version of both agrees to JPEG precision
            a, b = (im.convert("RGB").resize((8, 8)).tobytes() for im in (small, big))
            assert max(abs(x - y) for x, y in zip(a, b)) < 40
        link = thumb.relative_to(files.out_dir).as_posix()
        assert f"]({link})" in md and e["query"] in md
    assert "## Gallery: best and worst predictions" in md and "### Gallery: run: val (teacher mode)" in md
    assert "no best / worst pictures" not in md
    gallery = json.loads(files.json.read_text())["gallery"]
    assert [(g["name"], len(g["pictures"])) for g in gallery] == [("val", 6), ("test", 4)]
    # the real evaluation measured the query dependence: its bars are drawn in the evaluation section
    assert "query_dependence.png" in {p.name for p in files.plots}
    assert md.index("](query_dependence.png)") < md.index("## Gallery")


def test_runs_without_pictures_say_how_to_make_them(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    root = write_run(tmp_path / "r", data_root=data)
    masks = root / "outputs" / "eval_test_masks"
    masks.mkdir()
    Image.new("RGB", (40, 30), (200, 10, 10)).save(masks / "best_01_x_overlay.png")
    (masks / "index.json").write_text(json.dumps([
        {"tag": "best", "rank": 1, "file": "x0.jpg", "query": "q", "is_sentence": False, "IoU": 0.25,
         "overlay": "best_01_x_overlay.png"},
        {"tag": "worst", "rank": 1, "file": "x1.jpg", "query": "q", "is_sentence": True, "IoU": 0.0,
         "overlay": "../../../outside.png"},  # never read: not a file of the folder
    ]))
    run = load_run(root)
    assert [e["tag"] for e in run.pictures["test"]] == ["best"]
    assert "eval_test_masks/index.json: 1 entry without a readable picture skipped" in run.notes
    files = build_report([root], tmp_path / "out")
    md = files.markdown.read_text()
    assert f"no best / worst pictures for val; make them with `modlisa eval --checkpoint {root} --split val " \
           "--save_masks 4`" in md
    # predictions_test.jsonl gives x0.jpg an IoU of 0.4: these pictures are an earlier evaluation's
    assert "do not match predictions_test.jsonl" in md
    assert files.html.read_text().count('class="pic"') == 1


# ---------------------------------------------------------------------- per-step curves
RESUMED_LOG = [  # epoch 1 logged every step; the run resumed from step 2 and re-logged steps 3 and 4
    {"epoch": 1, "step": 1, "global_step": 1, "loss": 4.0, "ce": 2.0, "mask_bce": 1.0, "mask_dice": 1.0,
     "mask_focal": 0.0, "lr": 1e-4, "grad_norm": 3.0},
    {"epoch": 1, "step": 2, "global_step": 2, "loss": 3.0, "ce": 1.5, "mask_bce": 0.75, "mask_dice": 0.75,
     "mask_focal": 0.0, "lr": 2e-4, "grad_norm": float("nan")},
    {"epoch": 1, "step": 3, "global_step": 3, "loss": 99.0, "ce": 99.0, "mask_bce": 9.0, "mask_dice": 9.0,
     "mask_focal": 0.0, "lr": 9e-4, "grad_norm": 9.0},  # before the crash: replaced by the resumed record
    {"epoch": 1, "step": 4, "global_step": 4, "loss": 99.0, "ce": 99.0, "mask_bce": 9.0, "mask_dice": 9.0,
     "mask_focal": 0.0, "lr": 9e-4, "grad_norm": 9.0},
    {"epoch": 1, "step": 3, "global_step": 3, "loss": 2.5, "ce": 1.0, "mask_bce": 0.5, "mask_dice": 1.0,
     "mask_focal": 0.0, "lr": 3e-4, "grad_norm": 2.0},
    {"global_step": 3, "val": {"loss": 2.0, "giou": 0.1, "ciou": 0.1}},
    {"epoch": 1, "step": 4, "global_step": 4, "loss": 2.5, "ce": float("inf"), "mask_bce": 0.5, "mask_dice": 1.0,
     "mask_focal": 0.0, "lr": 4e-4, "grad_norm": 1.0},
    {"epoch": 2, "step": 1, "global_step": 5, "loss": 1.0, "lr": 5e-4},  # an older writer: no terms, no grad_norm
]


def _resumed_run(tmp_path: Path) -> Path:
    root = write_run(tmp_path / "resumed", data_root=tmp_path / "data", epochs=2)
    (root / "outputs" / "train_log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in RESUMED_LOG))
    return root


def _same(a: list, b: list) -> bool:
    return len(a) == len(b) and all((x is None and y is None) or (x is not None and y is not None and (
        x == y or (math.isnan(x) and math.isnan(y)))) for x, y in zip(a, b))


def test_step_series_keeps_the_last_record_and_the_raw_values(tmp_path):
    run = load_run(_resumed_run(tmp_path))
    series = step_series(run)
    assert series["global_step"] == [1, 2, 3, 4, 5] and series["epoch"] == [1, 1, 1, 1, 2]
    last = {r["global_step"]: r for r in RESUMED_LOG if "val" not in r}  # what the log says, last record wins
    for key in ("loss", "ce", "mask_bce", "mask_dice", "mask_focal", "lr", "grad_norm"):
        assert _same(series["logged"][key], [last[s].get(key) for s in range(1, 6)]), key
    assert series["missing"] == [] and series["nonfinite"] == {"ce": [4], "grad_norm": [2]}
    # interval means from the running means: loss 4, 2, 1.5, 2.5 | 1; ce's inf at step 4 is a gap
    assert series["interval"]["loss"] == pytest.approx([4.0, 2.0, 1.5, 2.5, 1.0])
    assert series["interval"]["ce"][:3] == pytest.approx([2.0, 1.0, 0.0]) and series["interval"]["ce"][3:] == [None,
                                                                                                              None]
    assert [s["interval_loss"] for s in step_losses(run)] == pytest.approx(series["interval"]["loss"])


def test_step_curves_are_drawn_from_the_series_with_gaps(tmp_path):
    root = _resumed_run(tmp_path)
    s = run_summary(load_run(root))
    fig = lr_grad_norm_per_step([s])
    lr_line, grad_line = (ax.lines[0] for ax in fig.axes if ax.get_visible())
    assert list(lr_line.get_xdata()) == [1, 2, 3, 4, 5]
    assert list(lr_line.get_ydata()) == pytest.approx([1e-4, 2e-4, 3e-4, 4e-4, 5e-4])
    grad = list(grad_line.get_ydata())
    assert math.isnan(grad[1]) and math.isnan(grad[4]) and [grad[i] for i in (0, 2, 3)] == [3.0, 2.0, 1.0]
    terms = loss_terms_per_step([s])
    titles = [ax.get_title() for ax in terms.axes if ax.get_visible()]
    assert titles == ["total loss", "ce (text)", "mask BCE", "mask Dice"]  # focal is zero everywhere: left out
    ce_interval = list(terms.axes[1].lines[0].get_ydata())
    assert ce_interval[:3] == pytest.approx([2.0, 1.0, 0.0]) and all(math.isnan(v) for v in ce_interval[3:])
    files = build_report([root], tmp_path / "out")
    names = {p.name for p in files.plots}
    assert {"loss_terms_per_step.png", "lr_grad_norm_per_step.png"} <= names
    for name in ("loss_terms_per_step.png", "lr_grad_norm_per_step.png"):
        with Image.open(files.out_dir / name) as img:
            assert img.format == "PNG" and img.width > 300
        assert f"]({name})" in files.markdown.read_text()
    md = files.markdown.read_text()
    assert "grad_norm is NaN or infinite at 1 logged step(s) (2): drawn as gaps" in md
    assert "ce is NaN or infinite at 1 logged step(s) (4)" in md


def test_an_old_log_without_terms_draws_no_term_curves(tmp_path):
    root = write_run(tmp_path / "old", data_root=tmp_path / "data", epochs=1)
    log = [{"epoch": 1, "step": 1, "global_step": 1, "loss": 2.0}, {"epoch": 1, "step": 2, "global_step": 2,
                                                                     "loss": 1.5}]
    (root / "outputs" / "train_log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in log))
    s = run_summary(load_run(root))
    assert s["step_series"]["missing"] == ["ce", "mask_bce", "mask_dice", "mask_focal", "lr", "grad_norm"]
    assert loss_terms_per_step([s]) is None and lr_grad_norm_per_step([s]) is None
    md = build_report([root], tmp_path / "out").markdown.read_text()
    assert "train_log.jsonl has no ce, mask_bce, mask_dice, lr, grad_norm (an older log?): not drawn" in md


# ---------------------------------------------------------------------- query dependence
def test_query_dependence_plot_only_when_measured(tmp_path):
    root = write_run(tmp_path / "r", data_root=tmp_path / "data")
    s = run_summary(load_run(root))
    assert s["query_dependence"] == [] and query_dependence([s]) is None
    assert "query_dependence.png" not in {p.name for p in build_report([root], tmp_path / "a").plots}
    path = root / "outputs" / "eval_test.json"
    payload = json.loads(path.read_text())
    payload["wrong_query_baseline"] = {"giou": 0.125, "ciou": 0.1, "num_queries": 5}
    payload["grounding"] = {"accuracy": 0.8, "num_queries": 5}
    path.write_text(json.dumps(payload))
    s = run_summary(load_run(root))
    assert s["query_dependence"] == [{"split": "test", "giou": pytest.approx(payload["giou"]), "wrong_giou": 0.125,
                                      "grounding": 0.8}]
    fig = query_dependence([s])
    heights = [p.get_height() for p in fig.axes[0].patches]
    assert heights == pytest.approx([100 * payload["giou"], 12.5, 80.0])
    files = build_report([root], tmp_path / "b")
    assert "query_dependence.png" in {p.name for p in files.plots}
    assert "](query_dependence.png)" in files.markdown.read_text()
