"""The sem_seg sources (ADE20K, COCO-Stuff, PASCAL-Part, PACO-LVIS) on files written in the real layouts by
``make-data --format ...``: masks equal to masks computed independently (LISA's rules applied here to the raw
label PNGs, the synthetic scene's own raster, pycocotools' ``COCO.annToMask``), LISA's ignore rules, class-name
handling and sampling, determinism, and DataErrors naming the file."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image, ImageOps

pytest.importorskip("pycocotools")
from pycocotools.coco import COCO  # noqa: E402

from modlisa.cli import main as modlisa_main  # noqa: E402
from modlisa.data.lisa_layout import ade20k_classes, cocostuff_classes  # noqa: E402
from modlisa.data.reasonseg import DataError  # noqa: E402
from modlisa.data.sem_seg import paco_name, pascal_part_name, sem_seg_source  # noqa: E402
from modlisa.data.sources import SEM_SEG  # noqa: E402
from modlisa.synthetic import rasterise  # noqa: E402
from modlisa.synthetic.semseg_format import FRAME, SEMSEG_FORMATS, make_semseg_dataset  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
PNG_FORMATS, JSON_FORMATS = ("ade20k", "cocostuff"), ("pascal_part", "paco_lvis")
ALL = 99  # a max_targets above any image's number of targets: every target, in LISA's order
# the (object, part) or name LISA makes of each category name the writer uses (written out here, not computed)
EXPECTED_NAMES = {
    "car:wheel": ("car", "wheel"), "bird:head": ("bird", "head"), "tvmonitor:screen": ("tvmonitor", "screen"),
    "bus:license plate": ("bus", "license plate"), "aeroplane:tail": ("aeroplane", "tail"),
    "cat:ear": ("cat", "ear"), "bottle:cap": ("bottle", "cap"),
    "car_(automobile):wheel": ("car", "wheel"), "mug:handle": ("mug", "handle"),
    "television_set:screen": ("television_set", "screen"), "book": "book", "trash_can:lid": ("trash_can", "lid"),
    "bowl": "bowl",
}


@pytest.fixture(scope="module")
def sem_root(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, dict]]:
    root = tmp_path_factory.mktemp("dataset")
    summaries = {f: make_semseg_dataset(root, dataset=f, seed=5, num_images=4, image_size=64) for f in SEMSEG_FORMATS}
    return root, summaries


def _copy(sem_root: tuple[Path, dict], tmp_path: Path) -> Path:
    root = tmp_path / "dataset"
    shutil.copytree(sem_root[0], root)
    return root


def _lisa_png_truth(dataset: str, raw: np.ndarray, text: str) -> np.ndarray:
    """LISA's mask of class ``text`` from a raw label PNG, computed here: 1 = the class's value, 255 = ignored."""
    if dataset == "ade20k":
        value = list(ade20k_classes()).index(text) + 1
        ignored = (raw == 0) | (raw == 255)
    else:
        value = list(cocostuff_classes()).index(text)
        dashed = [i for i, c in enumerate(cocostuff_classes()) if "-" in c]
        ignored = (raw == 255) | np.isin(raw, dashed)
    return np.where(raw == value, 1, np.where(ignored, 255, 0)).astype(np.uint8)


def _edge(mask: np.ndarray) -> np.ndarray:
    """The pixels within one pixel of the boundary of ``mask``."""
    kernel = np.ones((3, 3), np.uint8)
    m = mask.astype(np.uint8)
    return (cv2.dilate(m, kernel) - cv2.erode(m, kernel)).astype(bool)


# --------------------------------------------------------------------------- layout and class lists


def test_layout_is_lisas(sem_root):
    root, _ = sem_root
    ade = sorted((root / "ade20k/images/training").glob("*.jpg"))
    assert ade and all((root / "ade20k/annotations/training" / f"{p.stem}.png").is_file() for p in ade)
    stuff = sorted((root / "cocostuff/train2017").glob("*.png"))
    assert stuff and all((root / "coco/train2017" / f"{p.stem}.jpg").is_file() for p in stuff)
    assert (root / "vlpart/pascal_part/train.json").is_file()
    assert any((root / "vlpart/pascal_part/VOCdevkit/VOC2010/JPEGImages").glob("*.jpg"))
    paco = json.loads((root / "vlpart/paco/annotations/paco_lvis_v1_train.json").read_text())
    assert all(img["file_name"].startswith("train2017/") and (root / "coco" / img["file_name"]).is_file()
               for img in paco["images"])
    for name in SEMSEG_FORMATS:
        source = sem_seg_source(root, name)
        assert source.name == name and source.kind == SEM_SEG and len(source) == 4


def test_class_lists_are_lisas():
    ade, stuff = ade20k_classes(), cocostuff_classes()
    assert len(ade) == len(set(ade)) == 150 and (ade[0], ade[12], ade[-1]) == ("wall", "person", "flag")
    assert len(stuff) == len(set(stuff)) == 182 and (stuff[0], stuff[-1]) == ("person", "wood")
    assert "unlabeled" not in stuff  # LISA skips the file's first line
    assert sum("-" in c for c in stuff) == 28 and "wall-other" in stuff


# --------------------------------------------------------------------------- label PNGs


@pytest.mark.parametrize("dataset", PNG_FORMATS)
def test_png_masks_equal_lisas_rule_and_the_scene(sem_root, dataset):
    root, summaries = sem_root
    source = sem_seg_source(root, dataset)
    for index, item in enumerate(summaries[dataset]["items"]):
        draw = source.draw(index, random.Random(index), ALL)
        raw = np.array(Image.open(item["label"]))
        assert draw.image_path == item["image"] and draw.file == item["label"]
        assert draw.masks.dtype == np.uint8 and draw.masks.shape == (len(draw.texts), *item["hw"])
        shape_classes = {name for name, _ in item["objects"]}
        background = {"ade20k": {"wall"}, "cocostuff": {"sky"}}[dataset]  # "wall-other" is a "-" class
        assert set(draw.texts) == shape_classes | background
        classes = ade20k_classes() if dataset == "ade20k" else cocostuff_classes()
        assert draw.texts == sorted(draw.texts, key=classes.index)  # fewer than max_targets: ascending ids
        shapes_union = np.zeros(item["hw"], bool)
        for text, mask in zip(draw.texts, draw.masks):
            np.testing.assert_array_equal(mask, _lisa_png_truth(dataset, raw, text))
            if text in shape_classes:  # the synthetic scene's own raster of the shapes of that class
                truth = np.any([rasterise(p, *item["hw"]) for n, p in item["objects"] if n == text], axis=0)
                np.testing.assert_array_equal(mask == 1, truth)
                shapes_union |= truth
        frame = np.ones(item["hw"], bool)
        frame[FRAME:-FRAME, FRAME:-FRAME] = False
        assert (draw.masks[:, frame & ~shapes_union] == 255).all()  # the border is ignored (ADE 0 / 255)


def test_ade20k_zero_is_ignored_and_values_shift(sem_root):
    root, summaries = sem_root
    item = summaries["ade20k"]["items"][0]
    raw = np.array(Image.open(item["label"]))
    draw = sem_seg_source(root, "ade20k").draw(0, random.Random(0), ALL)
    wall = draw.masks[draw.texts.index("wall")]
    assert set(np.unique(raw)) >= {0, 1} and ((raw == 0) == (wall == 255)).all() and ((raw == 1) == (wall == 1)).all()


def test_cocostuff_dash_classes_are_ignored(sem_root):
    root, summaries = sem_root
    item = summaries["cocostuff"]["items"][0]
    raw = np.array(Image.open(item["label"]))
    wall_other = cocostuff_classes().index("wall-other")
    assert (raw == wall_other).any()
    draw = sem_seg_source(root, "cocostuff").draw(0, random.Random(0), ALL)
    assert "wall-other" not in draw.texts
    assert (draw.masks[:, raw == wall_other] == 255).all()


@pytest.mark.parametrize("dataset", PNG_FORMATS)
def test_only_ignored_labels_give_none(sem_root, tmp_path, dataset):
    root = _copy(sem_root, tmp_path)
    label = Path(sem_root[1][dataset]["items"][1]["label"].replace(str(sem_root[0]), str(root)))
    raw = np.array(Image.open(label))
    fill = 0 if dataset == "ade20k" else cocostuff_classes().index("floor-wood")  # ADE "other" / a "-" class
    ignored = np.full_like(raw, fill)
    ignored[:3] = 255
    Image.fromarray(ignored, "L").save(label)
    source = sem_seg_source(root, dataset)
    assert source.draw(1, random.Random(0), 3) is None
    assert source.draw(0, random.Random(0), 3) is not None


# --------------------------------------------------------------------------- COCO JSON (parts)


@pytest.mark.parametrize("dataset", JSON_FORMATS)
def test_json_masks_equal_ann_to_mask(sem_root, dataset):
    root, summaries = sem_root
    json_path = Path(summaries[dataset]["annotation"])
    coco = COCO(str(json_path))
    source = sem_seg_source(root, dataset)
    kinds = set()
    for index, item in enumerate(summaries[dataset]["items"]):
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[item["image_id"]]))
        draw = source.draw(index, random.Random(index), ALL)
        assert draw.file == str(json_path) and draw.image_path == item["image"]
        assert len(draw.texts) == len(anns) == len(item["objects"])  # fewer than max_targets: all, in file order
        for ann, text, mask, (name, points) in zip(anns, draw.texts, draw.masks, item["objects"]):
            np.testing.assert_array_equal(mask, coco.annToMask(ann))
            assert coco.cats[ann["category_id"]]["name"] == name
            expected = EXPECTED_NAMES[name]
            if isinstance(expected, tuple):
                obj, part = expected
                assert text in (f"{obj} {part}", f"the {part} of the {obj}")
            else:
                assert text == expected
            truth = rasterise(points, *item["hw"])
            seg = ann["segmentation"]
            kinds.add("polygon" if isinstance(seg, list) else "rle")
            if isinstance(seg, dict):  # RLE: the scene's own raster exactly
                np.testing.assert_array_equal(mask.astype(bool), truth)
            else:  # the same polygon, rasterised by pycocotools: differs from OpenCV's at the edge only
                assert not ((mask.astype(bool) ^ truth) & ~_edge(truth)).any()
    assert kinds == {"polygon", "rle"}


def test_part_name_handling():
    assert pascal_part_name("bus:license plate") == ("bus", "license plate")
    assert pascal_part_name(" car:wheel ") == ("car", "wheel")
    with pytest.raises(ValueError):
        pascal_part_name("car")
    assert paco_name("car_(automobile):wheel") == ("car", "wheel")
    assert paco_name("trash_can:lid") == ("trash_can", "lid")  # underscores stay, as in LISA
    assert paco_name("bottle_(glass)") == "bottle" and paco_name("bowl") == "bowl"
    with pytest.raises(ValueError):
        paco_name("a:b:c")


def test_part_phrasings_are_a_fair_coin(sem_root):
    root, _ = sem_root
    source = sem_seg_source(root, "paco_lvis")
    counts = {"joined": 0, "of": 0}
    for seed in range(200):
        for text in source.draw(seed % len(source), random.Random(seed), 1).texts:
            if text.startswith("the ") and " of the " in text:
                counts["of"] += 1
            elif text not in ("book", "bowl"):
                counts["joined"] += 1
    total = counts["of"] + counts["joined"]
    assert total > 100 and 0.35 < counts["of"] / total < 0.65


# --------------------------------------------------------------------------- sampling


@pytest.mark.parametrize("dataset", SEMSEG_FORMATS)
def test_max_targets_determinism_and_no_replacement(sem_root, dataset):
    root, _ = sem_root
    source = sem_seg_source(root, dataset)
    for index in range(len(source)):
        every = source.draw(index, random.Random(0), ALL)
        n = len(every.texts)
        for k in (1, 2, 3):
            draw = source.draw(index, random.Random(k * 7 + index), k)
            again = source.draw(index, random.Random(k * 7 + index), k)
            assert draw.texts == again.texts and np.array_equal(draw.masks, again.masks)
            assert len(draw.texts) == min(k, n)
            # without replacement: each chosen mask is a different one of the image's targets
            matches = [[j for j in range(n) if np.array_equal(m, every.masks[j])] for m in draw.masks]
            assert all(matches) and len({j[0] for j in matches}) == len(matches)
    chosen = {tuple(source.draw(0, random.Random(s), 1).masks[0].ravel()[::7]) for s in range(30)}
    assert len(chosen) > 1  # different seeds choose differently
    with pytest.raises(ValueError):
        source.draw(0, random.Random(0), 0)


def test_undecodable_segmentation_skips_the_item_as_lisa(sem_root, tmp_path, caplog):
    """LISA catches annToMask's error and draws another item: None, with a warning naming the file."""
    root = _copy(sem_root, tmp_path)
    path = root / "vlpart/pascal_part/train.json"
    data = json.loads(path.read_text())
    first = data["images"][0]["id"]
    ann = next(a for a in data["annotations"] if a["image_id"] == first)
    ann["segmentation"] = []
    path.write_text(json.dumps(data))
    source = sem_seg_source(root, "pascal_part")
    with caplog.at_level("WARNING", logger="modlisa.data.sem_seg"):
        assert source.draw(0, random.Random(0), ALL) is None
    assert f"annotation {ann['id']}: cannot decode segmentation" in caplog.text and str(path) in caplog.text
    assert source.draw(1, random.Random(0), ALL) is not None


def test_json_image_without_annotations_gives_none(sem_root, tmp_path):
    root = _copy(sem_root, tmp_path)
    path = root / "vlpart/pascal_part/train.json"
    data = json.loads(path.read_text())
    first = data["images"][0]["id"]
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] != first]
    path.write_text(json.dumps(data))
    source = sem_seg_source(root, "pascal_part")
    assert source.draw(0, random.Random(0), 3) is None and source.draw(1, random.Random(0), 3) is not None


# --------------------------------------------------------------------------- EXIF orientation

PIL_UPRIGHT = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
               5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
               8: Image.Transpose.ROTATE_90}  # PIL's ImageOps.exif_transpose


@pytest.mark.parametrize("orientation", sorted(PIL_UPRIGHT))
def test_annotations_of_the_stored_pixels_are_turned_upright(sem_root, tmp_path, orientation):
    """An image with an EXIF orientation that swaps its sides: its stored-size label is turned with it, as PIL
    turns the image; an orientation that keeps the size leaves the label as it is (as LISA does)."""
    root = _copy(sem_root, tmp_path)
    before = sem_seg_source(root, "cocostuff").draw(0, random.Random(3), ALL)
    image_path = Path(before.image_path)
    assert before.masks.shape[1] != before.masks.shape[2]  # not square: the stored and upright sizes differ
    with Image.open(image_path) as image:
        exif = image.getexif()
        exif[0x0112] = orientation
        image.save(image_path, exif=exif)
    after = sem_seg_source(root, "cocostuff").draw(0, random.Random(3), ALL)
    assert after.texts == before.texts
    if orientation in (5, 6, 7, 8):
        expected = np.stack([np.array(Image.fromarray(m).transpose(PIL_UPRIGHT[orientation])) for m in before.masks])
    else:
        expected = before.masks
    np.testing.assert_array_equal(after.masks, expected)
    with Image.open(image_path) as image:
        assert after.masks.shape[1:] == ImageOps.exif_transpose(image).size[::-1]


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(("dataset", "remove"), [
    ("ade20k", "ade20k/annotations/training"), ("ade20k", "ade20k/images/training"),
    ("cocostuff", "cocostuff/train2017"), ("cocostuff", "coco/train2017"),
    ("pascal_part", "vlpart/pascal_part/train.json"), ("paco_lvis", "vlpart/paco/annotations/paco_lvis_v1_train.json"),
])
def test_missing_folder_or_json(tmp_path, dataset, remove):
    root = tmp_path / "dataset"
    make_semseg_dataset(root, dataset=dataset, seed=1, num_images=1, image_size=64)
    target = root / remove
    shutil.rmtree(target) if target.is_dir() else target.unlink()
    with pytest.raises(DataError, match="not found; expected layout") as err:
        sem_seg_source(root, dataset)
    assert err.value.path == str(target)


def test_unknown_dataset_name(tmp_path):
    with pytest.raises(ValueError, match="unknown sem_seg dataset 'mapillary'"):
        sem_seg_source(tmp_path, "mapillary")


def test_bad_label_pngs(sem_root, tmp_path):
    root = _copy(sem_root, tmp_path)
    source = sem_seg_source(root, "ade20k")
    label = source.labels[0]
    raw = np.array(Image.open(label))
    label.unlink()
    with pytest.raises(DataError, match="label PNG not found") as err:
        source.draw(0, random.Random(0), 3)
    assert err.value.path == str(label)
    Image.fromarray(raw[:-4], "L").save(label)
    with pytest.raises(DataError, match=r"annotation is \d+x\d+, its image ADE_train_\d+.jpg \d+x\d+") as err:
        source.draw(0, random.Random(0), 3)
    assert err.value.path == str(label)
    Image.fromarray(np.stack([raw] * 3, axis=-1), "RGB").save(label)
    with pytest.raises(DataError, match="must have one channel") as err:
        source.draw(0, random.Random(0), 3)
    assert err.value.path == str(label)
    bad = raw.copy()
    bad[10, 10] = 200  # ADE20K has 150 classes (values 1..150)
    Image.fromarray(bad, "L").save(label)
    with pytest.raises(DataError, match="value 200 is no ade20k class") as err:
        source.draw(0, random.Random(0), 3)
    assert err.value.path == str(label)
    label.write_bytes(b"not a png")
    with pytest.raises(DataError, match="cannot read label PNG"):
        source.draw(0, random.Random(0), 3)
    Path(source.images[1]).unlink()
    with pytest.raises(DataError, match="image file not found") as err:
        source.draw(1, random.Random(0), 3)
    assert err.value.path == str(source.images[1])


def _edit_json(path: Path, edit) -> None:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def test_bad_part_json(sem_root, tmp_path):
    root = _copy(sem_root, tmp_path)
    path = root / "vlpart/paco/annotations/paco_lvis_v1_train.json"
    original = path.read_text()

    def unknown_category(data):
        data["annotations"][2]["category_id"] = 4242

    _edit_json(path, unknown_category)
    with pytest.raises(DataError, match="has category_id 4242, which the categories do not hold") as err:
        sem_seg_source(root, "paco_lvis")
    assert err.value.path == str(path)
    path.write_text(original[:-20])
    with pytest.raises(DataError, match="malformed JSON") as err:
        sem_seg_source(root, "paco_lvis")
    assert err.value.path == str(path)
    path.write_text(json.dumps({"images": [], "annotations": {}}))
    with pytest.raises(DataError, match="'annotations' must be a list"):
        sem_seg_source(root, "paco_lvis")
    path.write_text(original)

    def bad_segmentation(data):
        data["annotations"][0]["segmentation"] = {"size": [3, 3], "counts": "9"}

    _edit_json(path, bad_segmentation)
    with pytest.raises(DataError, match="annotation .*: mask is 3x3, its image's height / width in the JSON") as err:
        sem_seg_source(root, "paco_lvis").draw(0, random.Random(0), 99)
    assert err.value.path == str(path)
    path.write_text(original)
    image = root / "coco" / json.loads(original)["images"][0]["file_name"]
    image.unlink()
    with pytest.raises(DataError, match="image file not found") as err:
        sem_seg_source(root, "paco_lvis").draw(0, random.Random(0), 3)
    assert err.value.path == str(image)
    pascal = root / "vlpart/pascal_part/train.json"

    def no_part(data):
        data["categories"][0]["name"] = "car"

    _edit_json(pascal, no_part)
    with pytest.raises(DataError, match="category 1: category name 'car' is not 'object:part'") as err:
        sem_seg_source(root, "pascal_part")
    assert err.value.path == str(pascal)


# --------------------------------------------------------------------------- make-data


def test_make_data_cli(tmp_path, capsys):
    out = tmp_path / "dataset"
    argv = ["make-data", str(out), "--format", "cocostuff", "--num_train", "2", "--image_size", "64", "--seed", "4"]
    assert modlisa_main(argv) == 0
    assert "cocostuff: 2 images" in capsys.readouterr().out
    files = sorted(p for p in out.rglob("*") if p.is_file())
    first = [p.read_bytes() for p in files]
    assert modlisa_main(argv) == 2
    assert "exists; pass --force" in capsys.readouterr().err
    assert modlisa_main([*argv, "--force"]) == 0
    assert sorted(p for p in out.rglob("*") if p.is_file()) == files and [p.read_bytes() for p in files] == first
    assert modlisa_main(["make-data", str(out), "--format", "paco_lvis", "--num_train", "2", "--image_size", "64"]) == 0
    assert len(sem_seg_source(out, "paco_lvis")) == 2 and len(sem_seg_source(out, "cocostuff")) == 2
    assert modlisa_main(["make-data", str(out), "--format", "ade20k", "--targets_per_scene", "2"]) == 2
    assert "--targets_per_scene apply to --format reasonseg only" in capsys.readouterr().err
