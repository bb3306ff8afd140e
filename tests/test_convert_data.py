"""``modlisa convert masks|coco``: real files in, real CLI runs, round-trip masks compared pixel-wise with masks
computed independently (PIL drawing, pycocotools annToMask), check-data on the output, bad inputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from modlisa.cli import main as cli_main
from modlisa.data.convert import binary_to_polygons, masks_to_shapes
from modlisa.data.reasonseg import get_mask_from_json
from reasonseg_fixtures import write_image

HW = (40, 48)  # (H, W)


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli_main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def draw(hw=HW, *, ellipses=(), rects=(), holes=(), ignore_rects=(), ignore_value=255) -> np.ndarray:
    """A uint8 mask drawn with PIL: filled ellipses/rectangles = 1, holes (ellipses) = 0, ignore rects."""
    image = Image.new("L", (hw[1], hw[0]), 0)
    pen = ImageDraw.Draw(image)
    for box in ellipses:
        pen.ellipse(box, fill=1)
    for box in rects:
        pen.rectangle(box, fill=1)
    for box in holes:
        pen.ellipse(box, fill=0)
    for box in ignore_rects:
        pen.rectangle(box, fill=ignore_value)
    return np.asarray(image)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.count_nonzero(a | b)
    return 1.0 if union == 0 else np.count_nonzero(a & b) / union


MASKS = {
    "ring": draw(ellipses=[(6, 4, 40, 36)], holes=[(16, 13, 30, 27)]),
    "blobs": draw(rects=[(3, 3, 12, 10), (28, 20, 44, 35)]),
    "withignore": draw(rects=[(5, 5, 25, 30)], ignore_rects=[(30, 8, 42, 20)]),
}


def make_masks_input(root: Path, masks: dict[str, np.ndarray] = MASKS, queries: str = "jsonl") -> tuple[Path, ...]:
    images, mask_dir = root / "images", root / "masks"
    mask_dir.mkdir(parents=True)
    rows = []
    for i, (stem, mask) in enumerate(masks.items()):
        write_image(images / f"{stem}{'.png' if i == 0 else '.jpg'}", mask.shape, seed=i)
        Image.fromarray(mask).save(mask_dir / f"{stem}.png")
        rows.append({"image": f"{stem}.jpg", "text": [f"the {stem}", f"where is the {stem}?"],
                     "is_sentence": i == 1})
    if queries == "csv":
        path = root / "queries.csv"
        lines = ["image,text,is_sentence"] + [f"{r['image']},{t},{str(r['is_sentence']).lower()}"
                                                for r in rows for t in r["text"]]
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    else:
        path = root / "queries.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return images, mask_dir, path


def test_masks_round_trip_exactly_and_pass_check_data(tmp_path, capsys):
    images, masks, queries = make_masks_input(tmp_path)
    out = tmp_path / "out"
    code, stdout, _ = run(capsys, "convert", "masks", str(images), str(masks), str(out), "--queries", str(queries),
                          "--ignore_value", "255")
    assert code == 0
    assert "wrote 3 items" in stdout and "1 holes kept" in stdout and "worst round-trip IoU" in stdout
    for stem, source in MASKS.items():
        json_path = out / "train" / f"{stem}.json"
        back = get_mask_from_json(json_path, source.shape)
        # keyhole cuts keep the ring's hole: the LISA-exact rasterisation equals the PIL drawing pixel for pixel
        np.testing.assert_array_equal(back, source)
        data = json.loads(json_path.read_text(encoding="utf-8"))
        assert data["text"] == [f"the {stem}", f"where is the {stem}?"]
        assert data["is_sentence"] is (stem == "blobs")
    assert (out / "train" / "ring.png").is_file() and (out / "train" / "blobs.jpg").is_file()
    labels = [s["label"] for s in json.loads((out / "train" / "blobs.json").read_text())["shapes"]]
    assert labels == ["target", "target"]
    labels = [s["label"] for s in json.loads((out / "train" / "withignore.json").read_text())["shapes"]]
    assert labels == ["target", "ignore"]
    code, stdout, _ = run(capsys, "check-data", str(out), "--splits", "train", "--no_progress")
    assert code == 0, stdout


def test_csv_queries_hard_links_and_no_ignore_value(tmp_path, capsys):
    images, masks, queries = make_masks_input(tmp_path, queries="csv")
    out = tmp_path / "out"
    code, stdout, _ = run(capsys, "convert", "masks", str(images), str(masks), str(out), "--queries", str(queries),
                          "--split", "val", "--link")
    assert code == 0 and "3 hard-linked" in stdout
    assert (out / "val" / "blobs.jpg").stat().st_ino == (images / "blobs.jpg").stat().st_ino
    # without --ignore_value the 255 region is target like every non-zero value
    back = get_mask_from_json(out / "val" / "withignore.json", HW)
    np.testing.assert_array_equal(back, (MASKS["withignore"] != 0).astype(np.uint8))
    assert json.loads((out / "val" / "blobs.json").read_text())["is_sentence"] is True
    assert run(capsys, "check-data", str(out), "--splits", "val", "--no_progress")[0] == 0


def test_polygons_of_random_masks_round_trip_over_the_threshold():
    rng = np.random.default_rng(3)
    for _ in range(40):
        blobs = [tuple(int(v) for v in (x, y, x + w, y + h))
                 for x, y, w, h in rng.integers([0, 0, 3, 3], [40, 32, 20, 20], size=(3, 4))]
        holes = [(x, y, x + 5, y + 4) for x, y in rng.integers(0, 40, size=(2, 2))]
        target = draw(ellipses=blobs, holes=holes).astype(bool)
        if not target.any():
            continue
        noise = rng.random(HW) < 0.05
        _, _, score = masks_to_shapes(target ^ noise, None, "x.jpg")
        assert score >= 0.98
    assert binary_to_polygons(np.zeros(HW, np.uint8)) == ([], 0)
    single, _ = binary_to_polygons(np.pad(np.ones((1, 1), np.uint8), 5))
    assert len(single) == 1 and len(single[0]) == 3  # one pixel: padded to 3 points, drawn the same


def bad_case(root: Path, kind: str) -> tuple[list[str], str]:
    """Inputs with one bad item of ``kind`` (+ the good ones); the CLI args and the file the error names."""
    images, masks, queries = make_masks_input(root)
    named = {"missing_mask": "ring.png", "size": "ring.png", "unreadable_image": "ring.png",
             "unreadable_mask": "ring.png", "empty": "ring.png", "seg": "queries.jsonl"}[kind]
    if kind == "missing_mask":
        (masks / "ring.png").unlink()
    elif kind == "size":
        Image.fromarray(MASKS["ring"][:30]).save(masks / "ring.png")
    elif kind == "unreadable_image":
        (images / "ring.png").write_bytes(b"not an image at all")
    elif kind == "unreadable_mask":
        (masks / "ring.png").write_bytes(b"\x89PNG broken")
    elif kind == "empty":
        Image.fromarray(np.zeros(HW, np.uint8)).save(masks / "ring.png")
    elif kind == "seg":
        with queries.open("a", encoding="utf-8") as f:
            f.write(json.dumps({"image": "ring", "text": "segment it [SEG]"}) + "\n")
    args = ["convert", "masks", str(images), str(masks), str(root / "out"), "--queries", str(queries),
            "--ignore_value", "255"]
    return args, named


BAD_KINDS = ["missing_mask", "size", "unreadable_image", "unreadable_mask", "empty"]


@pytest.mark.parametrize("kind", [*BAD_KINDS, "seg"])
def test_bad_input_is_one_line_naming_the_file_and_writes_nothing(tmp_path, capsys, kind):
    args, named = bad_case(tmp_path, kind)
    code, _, err = run(capsys, *args)
    assert code == 2
    assert err.startswith("modlisa convert: error: ") and err.count("\n") == 1 and named in err, err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("kind", BAD_KINDS)
def test_skip_bad_counts_the_bad_item_and_writes_the_rest(tmp_path, capsys, kind):
    args, named = bad_case(tmp_path, kind)
    code, stdout, _ = run(capsys, *args, "--skip_bad")
    assert code == 0
    assert "wrote 2 items" in stdout and "skipped 1 bad items" in stdout and named in stdout
    assert not (tmp_path / "out" / "train" / "ring.json").exists()
    assert run(capsys, "check-data", str(tmp_path / "out"), "--splits", "train", "--no_progress")[0] == 0


def test_orphans_and_a_non_empty_output_are_refused(tmp_path, capsys):
    images, masks, queries = make_masks_input(tmp_path)
    Image.fromarray(MASKS["ring"]).save(masks / "stray.png")
    args = ["convert", "masks", str(images), str(masks), str(tmp_path / "out"), "--queries", str(queries)]
    code, _, err = run(capsys, *args)
    assert code == 2 and "stray.png" in err and "mask without an image" in err
    (masks / "stray.png").unlink()
    assert run(capsys, *args)[0] == 0
    code, _, err = run(capsys, *args)
    assert code == 2 and "--force" in err
    assert run(capsys, *args, "--force")[0] == 0
    code, _, err = run(capsys, "convert", "shapefile")
    assert code == 2 and "unknown source" in err
    code, _, err = run(capsys, *args, "--split", "../elsewhere")
    assert code == 2 and "--split must be a folder name" in err


# --------------------------------------------------------------------------- COCO


def _uncompressed_rle(mask: np.ndarray) -> dict:
    """COCO's uncompressed RLE (counts of runs over the column-major pixels, starting with zeros)."""
    flat = np.asfortranarray(mask).flatten(order="F").astype(np.uint8)
    counts, value, run_length = [], 0, 0
    for pixel in flat:
        if pixel != value:
            counts.append(run_length)
            value, run_length = pixel, 0
        run_length += 1
    counts.append(run_length)
    return {"size": list(mask.shape), "counts": counts}


def make_coco(root: Path) -> Path:
    mask_utils = pytest.importorskip("pycocotools.mask")
    write_image(root / "images" / "street.jpg", HW, seed=7)
    dog = draw(ellipses=[(4, 20, 30, 38)], holes=[(12, 26, 20, 32)]).astype(np.uint8)
    rle = mask_utils.encode(np.asfortranarray(dog))
    rle["counts"] = rle["counts"].decode("ascii")
    crowd = draw(rects=[(32, 22, 46, 38)]).astype(np.uint8)
    data = {
        "images": [{"id": 1, "file_name": "street.jpg", "height": HW[0], "width": HW[1]},
                   {"id": 2, "file_name": "unannotated.jpg", "height": HW[0], "width": HW[1]}],
        "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}],
        "annotations": [
            {"id": 10, "image_id": 1, "category_id": 1, "iscrowd": 0,
             "segmentation": [[5.0, 3.0, 20.5, 4.0, 18.0, 15.5, 6.0, 14.0]],
             "sentences": [{"sent": "the cat on the left"}, "the small cat"]},
            {"id": 11, "image_id": 1, "category_id": 2, "iscrowd": 0, "segmentation": rle},
            {"id": 12, "image_id": 1, "category_id": 2, "iscrowd": 1, "segmentation": _uncompressed_rle(crowd)},
        ],
    }
    path = root / "instances.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


@pytest.mark.filterwarnings("ignore::DeprecationWarning:pycocotools")
def test_coco_items_match_pycocotools_masks_and_pass_check_data(tmp_path, capsys):
    path = make_coco(tmp_path)
    from pycocotools.coco import COCO

    out = tmp_path / "out"
    code, stdout, _ = run(capsys, "convert", "coco", str(path), str(tmp_path / "images"), str(out))
    assert code == 0 and "wrote 3 items" in stdout, stdout
    coco = COCO(str(path))
    cat, dog, crowd = (coco.annToMask(coco.anns[i]).astype(bool) for i in (10, 11, 12))
    back = get_mask_from_json(out / "train" / "street_c1.json", HW)
    assert iou(back == 1, cat) >= 0.98 and not (back == 255).any()
    np.testing.assert_array_equal(back == 1, cat)  # a simple polygon: exact
    back = get_mask_from_json(out / "train" / "street_c2.json", HW)
    np.testing.assert_array_equal(back == 1, dog)  # RLE with a hole: exact through the keyhole cut
    np.testing.assert_array_equal(back == 255, crowd & ~dog)  # the crowd annotation as ignore
    item = json.loads((out / "train" / "street_c2.json").read_text())
    assert item["text"] == ["dog"] and item["is_sentence"] is False
    item = json.loads((out / "train" / "street_a10.json").read_text())
    assert item["text"] == ["the cat on the left", "the small cat"] and item["is_sentence"] is False
    np.testing.assert_array_equal(get_mask_from_json(out / "train" / "street_a10.json", HW) == 1, cat)
    assert run(capsys, "check-data", str(out), "--splits", "train", "--no_progress")[0] == 0


def test_coco_bad_inputs(tmp_path, capsys):
    path = make_coco(tmp_path)
    data = json.loads(path.read_text())
    data["images"][0]["width"] = 50
    path.write_text(json.dumps(data))
    code, _, err = run(capsys, "convert", "coco", str(path), str(tmp_path / "images"), str(tmp_path / "o"))
    assert code == 2 and "street.jpg" in err and "50x40" in err
    data["images"][0]["width"] = HW[1]
    data["annotations"][0]["sentences"] = ["find the [SEG] cat"]
    path.write_text(json.dumps(data))
    code, _, err = run(capsys, "convert", "coco", str(path), str(tmp_path / "images"), str(tmp_path / "o"))
    assert code == 2 and "instances.json" in err and "[SEG]" in err
    data["annotations"][0].pop("sentences")
    data["images"][0]["file_name"] = "absent.jpg"
    path.write_text(json.dumps(data))
    code, stdout, _ = run(capsys, "convert", "coco", str(path), str(tmp_path / "images"), str(tmp_path / "o"),
                          "--skip_bad")
    assert code == 0 and "skipped 1 bad items" in stdout and "absent.jpg" in stdout
    # two image files of one stem in different folders would give items of one name: refused, naming the file
    data["images"][0]["file_name"] = "street.jpg"
    write_image(tmp_path / "images" / "sub" / "street.jpg", HW, seed=8)
    data["images"].append({"id": 3, "file_name": "sub/street.jpg", "height": HW[0], "width": HW[1]})
    data["annotations"].append({**data["annotations"][0], "id": 20, "image_id": 3})
    path.write_text(json.dumps(data))
    code, _, err = run(capsys, "convert", "coco", str(path), str(tmp_path / "images"), str(tmp_path / "o2"))
    assert code == 2 and "sub/street.jpg" in err and "street_c1" in err


# pixel-sized holes side by side: a keyhole cut paints one of them (the one non-exact case found in 3000 random
# 12x12 masks has IoU 0.989); --min_iou decides whether that is acceptable
SPECKLED = np.array([[int(c) for c in row] for row in (
    "011111111111", "110111111111", "110111011011", "111111101111", "111101011011", "010111111011",
    "101111111111", "100111111111", "111111111011", "110011101111", "111110101011", "111111111111")],
    dtype=np.uint8)


def test_min_iou_rejects_an_inexact_round_trip(tmp_path, capsys):
    _, _, score = masks_to_shapes(SPECKLED.astype(bool), None, "x.png")
    assert 0.98 <= score < 1.0
    images, masks, queries = make_masks_input(tmp_path, {"speckled": SPECKLED})
    args = ["convert", "masks", str(images), str(masks), str(tmp_path / "out"), "--queries", str(queries)]
    code, _, err = run(capsys, *args, "--min_iou", "1.0")
    assert code == 2 and "speckled.png" in err and f"round-trip IoU {score:.4f}" in err
    code, stdout, _ = run(capsys, *args)
    assert code == 0 and f"speckled {score:.4f}" in stdout
    back = get_mask_from_json(tmp_path / "out" / "train" / "speckled.json", SPECKLED.shape)
    assert iou(back == 1, SPECKLED == 1) == pytest.approx(score)


def test_coco_without_pycocotools_says_what_to_install(tmp_path, capsys, monkeypatch):
    import sys

    path = make_coco(tmp_path)
    monkeypatch.setitem(sys.modules, "pycocotools", None)
    code, _, err = run(capsys, "convert", "coco", str(path), str(tmp_path / "images"), str(tmp_path / "o"))
    assert code == 2 and "pip install 'modlisa[coco]'" in err


@pytest.mark.parametrize(("name", "content", "message"), [
    ("q.jsonl", '{"image": "ring", "text": "a"}\n{not json\n', "line 2: malformed JSON"),
    ("q.jsonl", '{"image": "ring", "text": "a"}\n{"image": "ring.jpg", "text": "b", "is_sentence": true}\n',
     "line 2: is_sentence of 'ring.jpg' differs"),
    ("q.csv", "name,query\nring,a\n", "needs a header with the columns image,text"),
    ("q.txt", "ring a\n", "must be .jsonl or .csv"),
])
def test_malformed_queries_files_are_one_line_errors(tmp_path, capsys, name, content, message):
    images, masks, _ = make_masks_input(tmp_path)
    (tmp_path / name).write_text(content, encoding="utf-8")
    code, _, err = run(capsys, "convert", "masks", str(images), str(masks), str(tmp_path / "out"),
                       "--queries", str(tmp_path / name))
    assert code == 2 and name in err and message in err, err
