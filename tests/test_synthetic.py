"""Tests of the synthetic ReasonSeg-format dataset (modlisa.synthetic, ``modlisa make-data``)."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from modlisa import synthetic as syn
from modlisa.cli.make_data import main as main_make_data

SHAPE_KEYS = ["label", "labels", "shape_type", "image_name", "points", "group_id", "group_ids", "flags"]
COUNTS = {"train": 6, "val": 3, "test": 3}
SIZE = 96


def _make(root: Path, seed: int = 0) -> dict:
    return syn.make_dataset(
        root,
        seed=seed,
        num_train=COUNTS["train"],
        num_val=COUNTS["val"],
        num_test=COUNTS["test"],
        image_size=SIZE,
        progress=False,
    )


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("synthetic")
    return root, _make(root)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _fill(points: list, hw: tuple[int, int]) -> np.ndarray:
    """(H, W) uint8 mask of one polygon, LISA-style (int32 truncation, outline + fill)."""
    mask = np.zeros(hw, dtype=np.uint8)
    poly = np.asarray(points, dtype=np.float64).astype(np.int32)
    cv2.polylines(mask, [poly], True, 1, 1)
    cv2.fillPoly(mask, [poly], 1)
    return mask


@pytest.fixture(scope="module")
def examples() -> list[syn.Example]:
    """60 train examples (small images) for frequency checks."""
    return [syn.generate_example(0, "train", i, 64) for i in range(60)]


def test_layout_and_json_schema(dataset: tuple[Path, dict]) -> None:
    root, summary = dataset
    assert sorted(p.name for p in root.iterdir()) == ["README.txt", "explanatory", "test", "train", "val"]
    for split, n in COUNTS.items():
        names = sorted(p.name for p in (root / split).iterdir())
        assert names == sorted(
            [f"{split}_{i:04d}.jpg" for i in range(n)] + [f"{split}_{i:04d}.json" for i in range(n)]
        )
        assert summary["splits"][split]["images"] == n
        for i in range(n):
            data = json.loads((root / split / f"{split}_{i:04d}.json").read_text(encoding="utf-8"))
            # LISA's keys first; then the modlisa extension (target attributes, the other shapes)
            assert list(data) == ["text", "is_sentence", "shapes", "target", "distractors"]
            assert isinstance(data["is_sentence"], bool)
            assert all(isinstance(t, str) and t for t in data["text"])
            assert data["shapes"][0]["label"] == "target"
            for shape in data["shapes"]:
                assert list(shape) == SHAPE_KEYS
                assert shape["labels"] == [shape["label"]] and shape["label"] in ("target", "ignore", "flag")
                assert shape["shape_type"] == "polygon" and shape["image_name"] == f"{split}_{i:04d}.jpg"
                assert shape["group_id"] is None and shape["group_ids"] == [None] and shape["flags"] == {}
                assert len(shape["points"]) >= 3
                assert all(isinstance(c, float) for pt in shape["points"] for c in pt)
    assert "--seed 0" in (root / "README.txt").read_text(encoding="utf-8")


def test_explanatory_file(dataset: tuple[Path, dict]) -> None:
    root, summary = dataset
    entries = json.loads((root / "explanatory" / "train.json").read_text(encoding="utf-8"))
    assert len(entries) == summary["explanatory"]["entries"] >= 1
    for entry in entries:
        assert list(entry) == ["query", "outputs", "image", "json"]
        data = json.loads((root / "train" / entry["json"]).read_text(encoding="utf-8"))
        assert (root / "train" / entry["image"]).is_file()
        assert entry["query"] == data["text"][0]
        assert entry["outputs"].endswith(".") and len(entry["outputs"]) > 20


def test_explanatory_covers_about_half(examples: list[syn.Example]) -> None:
    share = sum(ex.explanation is not None for ex in examples) / len(examples)
    assert 0.3 <= share <= 0.7


def test_rephrasings_per_split(dataset: tuple[Path, dict]) -> None:
    root, _ = dataset
    for split in COUNTS:
        for path in (root / split).glob("*.json"):
            texts = json.loads(path.read_text(encoding="utf-8"))["text"]
            if split == "train":
                assert 2 <= len(texts) <= 6 and len(set(texts)) == len(texts)
            else:
                assert len(texts) == 1


def test_short_long_mix(dataset: tuple[Path, dict]) -> None:
    root, summary = dataset
    for split in COUNTS:
        flags = []
        for path in sorted((root / split).glob("*.json")):
            data = json.loads(path.read_text(encoding="utf-8"))
            flags.append(data["is_sentence"])
            for text in data["text"]:
                if data["is_sentence"]:
                    assert text[0].isupper() and text[-1] in ".?"
                else:
                    assert text == text.lower() and text[-1].isalpha()
        assert summary["splits"][split]["short"] == flags.count(False) >= 1
        assert summary["splits"][split]["long"] == flags.count(True) >= 1
        assert abs(flags.count(True) - flags.count(False)) <= 1


def test_same_seed_same_bytes_other_seed_differs(dataset: tuple[Path, dict], tmp_path: Path) -> None:
    root, _ = dataset
    _make(tmp_path / "again")
    assert _files(tmp_path / "again") == _files(root)
    _make(tmp_path / "other", seed=1)
    other = _files(tmp_path / "other")
    assert other.keys() == _files(root).keys()
    assert other["train/train_0000.jpg"] != _files(root)["train/train_0000.jpg"]
    assert other["val/val_0000.json"] != _files(root)["val/val_0000.json"]


def test_json_matches_regenerated_scene(dataset: tuple[Path, dict]) -> None:
    root, _ = dataset
    for split, n in COUNTS.items():
        for i in range(n):
            ex = syn.generate_example(0, split, i, SIZE)
            data = json.loads((root / split / f"{ex.name}.json").read_text(encoding="utf-8"))
            target = ex.scene.objects[ex.target]
            assert data["shapes"][0]["points"] == [list(p) for p in target.points]
            assert data["text"] == list(ex.texts) and data["is_sentence"] == ex.is_sentence
            with Image.open(root / split / f"{ex.name}.jpg") as img:
                assert img.size == (ex.scene.width, ex.scene.height) and img.format == "JPEG"
                assert "exif" not in img.info


def _parse_short(text: str) -> syn.Attrs:
    """Re-read a short phrase independently of the generator's vocabulary tables' structure."""
    words = set(re.findall(r"[a-z]+", text.replace("-shaped", "")))
    colour = next((c for c in ("red", "green", "blue", "yellow", "purple", "orange") if c in words), None)
    size = "small" if words & {"small", "little"} else "large" if words & {"large", "big"} else None
    kinds = {
        "circle": {"circle", "disc", "circular"},
        "oval": {"oval", "ellipse"},
        "square": {"square"},
        "rectangle": {"rectangle", "rectangular"},
        "triangle": {"triangle", "triangular"},
        "star": {"star"},
        "hexagon": {"hexagon", "hexagonal"},
    }
    kind = next((k for k, names in kinds.items() if words & names), None)
    return syn.Attrs(size=size, colour=colour, kind=kind)


def _naive_extreme(scene: syn.Scene, cands: list[int], direction: str) -> int:
    centre = {
        "top": lambda o: o.cy,
        "bottom": lambda o: -o.cy,
        "left": lambda o: o.cx,
        "right": lambda o: -o.cx,
    }[direction]
    return min(cands, key=lambda i: centre(scene.objects[i]))


def test_every_target_is_unique(examples: list[syn.Example]) -> None:
    more = [syn.generate_example(3, split, i, 128) for split in ("val", "test") for i in range(20)]
    for ex in examples + more:
        scene, spec = ex.scene, ex.spec
        assert syn.resolve(scene, spec) == [ex.target]
        cands = [i for i, o in enumerate(scene.objects) if spec.attrs.matches(o)]
        if spec.type == "attributes":
            for text in ex.texts:
                attrs = _parse_short(text)
                found = [i for i, o in enumerate(scene.objects) if attrs.matches(o)]
                assert found == [ex.target], text
        elif spec.type == "extreme":
            assert _naive_extreme(scene, cands, str(spec.direction)) == ex.target
        elif spec.type == "superlative" and spec.anchor is None:
            areas = [scene.objects[i].area for i in cands]
            pick = cands[int(np.argmax(areas) if spec.order == "larger" else np.argmin(areas))]
            assert pick == ex.target and len(cands) >= 2
        elif spec.type == "comparison":
            assert len(cands) == 2 and ex.target in cands
        elif spec.type == "negation":
            others = [o for i, o in enumerate(scene.objects) if i != ex.target and i in cands]
            assert all(spec.negated.matches(o) for o in others) and not spec.negated.matches(
                scene.objects[ex.target]
            )


def test_query_kinds_are_varied(examples: list[syn.Example]) -> None:
    long_types = {ex.spec.type for ex in examples if ex.is_sentence}
    assert len(long_types) >= 6
    assert {ex.spec.type for ex in examples if not ex.is_sentence} == {"attributes"}
    assert any(ex.spec.anchor is not None for ex in examples)


def test_resolve_rejects_ambiguous_queries() -> None:
    def obj(kind: str, colour: str, size: str, cx: float, cy: float) -> syn.SceneObject:
        r = 10.0 if size == "small" else 20.0
        pts = ((cx - r, cy - r), (cx + r, cy - r), (cx + r, cy + r), (cx - r, cy + r))
        return syn.SceneObject(kind, colour, size, cx, cy, r, pts, syn.COLOURS[colour])

    scene = syn.Scene(
        200, 200, (obj("square", "red", "small", 50, 50), obj("square", "red", "small", 150, 52)), (220,) * 3
    )
    assert syn.resolve(scene, syn.QuerySpec("attributes", syn.Attrs(colour="red"))) == [0, 1]
    assert syn.resolve(scene, syn.QuerySpec("extreme", direction="top")) is None  # 2 px apart: too close
    assert syn.resolve(scene, syn.QuerySpec("extreme", direction="left")) == [0]
    assert syn.resolve(scene, syn.QuerySpec("superlative", order="larger")) is None  # equal areas
    assert syn.resolve(scene, syn.QuerySpec("relation", direction="left")) is None  # no anchor


def test_image_shows_target_colour(examples: list[syn.Example]) -> None:
    palette = np.asarray(list(syn.COLOURS.values()), dtype=np.float64)
    names = list(syn.COLOURS)
    for ex in examples[:20]:
        target = ex.scene.objects[ex.target]
        mask = _fill(list(target.points), (ex.scene.height, ex.scene.width))
        inner = cv2.erode(mask, np.ones((3, 3), np.uint8)).astype(bool)
        mean = np.asarray(ex.image, dtype=np.float64)[inner].mean(axis=0)
        assert names[int(np.argmin(np.linalg.norm(palette - mean, axis=1)))] == target.colour


def test_masks_nonempty_inside_image_and_varied_sizes(dataset: tuple[Path, dict]) -> None:
    root, _ = dataset
    sizes, fractional = set(), 0
    for path in sorted(root.rglob("*_*.json")):
        if path.parent.name == "explanatory":
            continue
        data = json.loads(path.read_text(encoding="utf-8"))
        with Image.open(path.with_suffix(".jpg")) as img:
            w, h = img.size
        sizes.add((w, h))
        for shape in data["shapes"]:
            pts = np.asarray(shape["points"])
            assert (pts >= 0).all() and (pts[:, 0] < w).all() and (pts[:, 1] < h).all()
            fractional += int((pts != np.floor(pts)).any())
        mask = _fill(data["shapes"][0]["points"], (h, w))
        assert 0.005 * w * h < mask.sum() < 0.5 * w * h
    assert any(w != h for w, h in sizes) and fractional > 0


def test_ignore_and_flag_shapes(examples: list[syn.Example]) -> None:
    ignore = [ex for ex in examples if any(label == "ignore" for label, _ in ex.extra_shapes)]
    flag = [ex for ex in examples if any(label == "flag" for label, _ in ex.extra_shapes)]
    assert 2 <= len(ignore) <= 14 and 2 <= len(flag) <= 14
    for ex in ignore + flag:
        hw = (ex.scene.height, ex.scene.width)
        target = _fill(list(ex.scene.objects[ex.target].points), hw).astype(bool)
        for _, points in ex.extra_shapes:
            region = _fill(list(points), hw).astype(bool)
            assert region.any() and not (region & target).any()


def test_main_make_data(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "data"
    args = [str(out), "--num-train", "2", "--num-val", "1", "--num-test", "1", "--image-size", "64"]
    monkeypatch.setattr("modlisa.console.bars_enabled", lambda stream=None: True)  # as on a terminal
    assert main_make_data(args) == 0
    captured = capsys.readouterr()
    assert "make-data" in captured.err and "train: 2 images" in captured.out  # the bar on stderr only
    stale = out / "train" / "train_0099.json"
    stale.write_text("{}", encoding="utf-8")
    assert main_make_data(args) == 2
    assert "--force" in capsys.readouterr().err
    assert main_make_data([*args, "--force", "--no-progress", "--seed", "5"]) == 0
    assert not stale.exists() and len(list((out / "train").glob("*.json"))) == 2
    assert "--seed 5" in (out / "README.txt").read_text(encoding="utf-8")


def test_readme_command_rewrites_byte_identical_files(tmp_path: Path) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    assert main_make_data([str(first), "--num_train", "2", "--num_val", "1", "--num_test", "1", "--image_size", "64",
                           "--objects", "3-4", "--lookalike_prob", "0", "--select_by", "colour", "--no_progress"]) == 0
    readme = (first / "README.txt").read_text(encoding="utf-8")
    assert "(module modlisa.synthetic)" in readme
    command = next(line for line in readme.splitlines() if "modlisa make-data OUT_DIR" in line)
    argv = shlex.split(command)[2:]  # without "modlisa make-data"
    argv[argv.index("OUT_DIR")] = str(second)
    assert main_make_data([*argv, "--no_progress"]) == 0
    files = sorted(p.relative_to(first) for p in first.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(second) for p in second.rglob("*") if p.is_file())
    assert all((first / f).read_bytes() == (second / f).read_bytes() for f in files)


def test_invalid_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="num_val"):
        syn.make_dataset(tmp_path, num_val=-1, progress=False)
    with pytest.raises(ValueError, match="image_size"):
        syn.make_dataset(tmp_path, image_size=16, progress=False)
    with pytest.raises(SystemExit):
        main_make_data([str(tmp_path / "x"), "--num-train", "-3"])


def test_reader_scan_reports_no_problems(dataset: tuple[Path, dict]) -> None:
    reasonseg = pytest.importorskip("modlisa.data.reasonseg")
    root, _ = dataset
    for split, n in COUNTS.items():
        annotations, problems = reasonseg.scan_split(root, split)
        assert problems == [] and len(annotations) == n
        with Image.open(root / split / f"{split}_0000.jpg") as img:
            w, h = img.size
        mask = reasonseg.get_mask_from_json(root / split / f"{split}_0000.json", (h, w))
        assert mask.shape == (h, w) and (mask == 1).any()
    explained = [a for a in reasonseg.scan_split(root, "train")[0] if a.explanation]
    assert len(explained) == len(json.loads((root / "explanatory" / "train.json").read_text()))


def test_select_by_colour_makes_every_query_pick_its_target_by_colour():
    options = syn.SceneOptions(min_objects=3, max_objects=4, lookalike_prob=0.0,
                               query_types=("attributes", "property"), targets_per_scene=3, select_by="colour")
    examples = [ex for i in range(40) for ex in syn.generate_scene_examples(0, "train", i, 96, options)]
    assert {ex.is_sentence for ex in examples} == {False, True}
    for ex in examples:
        assert syn.selects_by(ex.spec, "colour"), ex.texts
        if ex.spec.type == "attributes":
            assert all(ex.spec.attrs.colour in text for text in ex.texts)
        else:
            assert syn.PROPERTIES[ex.spec.prop].colours  # a colour property ("the colour of fresh grass")
        assert syn.resolve(ex.scene, ex.spec) == [ex.target]  # still unambiguous
    with pytest.raises(ValueError, match="select_by"):
        syn.SceneOptions(select_by="shape")


def test_attributes_only_makes_every_query_a_phrase(tmp_path):
    options = syn.SceneOptions(query_types=("attributes",), targets_per_scene=2)
    summary = syn.make_dataset(tmp_path, seed=0, num_train=6, num_val=4, num_test=0, image_size=64,
                               progress=False, options=options)
    files = [json.loads(p.read_text()) for p in (tmp_path / "train").glob("*.json")]
    files += [json.loads(p.read_text()) for p in (tmp_path / "val").glob("*.json")]
    assert files and not any(f["is_sentence"] for f in files)
    assert "--query_types attributes" in (tmp_path / "README.txt").read_text()
    assert summary["splits"]["train"]["short"] == len(list((tmp_path / "train").glob("*.json")))
