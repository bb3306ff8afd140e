"""The refer reader (refCOCO / refCOCO+ / refCOCOg umd / refCLEF) on files written in the real refer layout by
``make-data --format ...``: masks pixel-equal to pycocotools' own ``COCO.annToMask`` and, for RLE annotations, to
the synthetic generator's rasterisation; split selection as refer's ``getRefIds``; DataErrors naming the file."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("pycocotools")
from pycocotools import mask as mask_utils  # noqa: E402
from pycocotools.coco import COCO  # noqa: E402

from modlisa.cli import make_data  # noqa: E402
from modlisa.data.reasonseg import DataError  # noqa: E402
from modlisa.data.refer import (  # noqa: E402
    decode_segmentation,
    load_refer,
    read_refs_pickle,
    refer_queries,
    selectable_splits,
)
from modlisa.synthetic import rasterise  # noqa: E402
from modlisa.synthetic.refer_format import REFER_SPLITS, make_refer_dataset, rle_counts, rle_string  # noqa: E402

DATASETS = tuple(REFER_SPLITS)
# pycocotools 2.0.x's decode under numpy 2 (its own code, harmless)
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


@pytest.fixture(scope="module")
def refer_root(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, dict]]:
    root = tmp_path_factory.mktemp("refer_seg")
    summaries = {ds: make_refer_dataset(root, dataset=ds, seed=3, num_train=3, num_val=2, num_test=2, image_size=96)
                 for ds in DATASETS}
    return root, summaries


def _copy(refer_root: tuple[Path, dict], tmp_path: Path, dataset: str = "refcoco") -> Path:
    """A private copy of one dataset (and the shared images) to break."""
    root = tmp_path / "root"
    shutil.copytree(refer_root[0] / dataset, root / dataset)
    shutil.copytree(refer_root[0] / "images", root / "images")
    return root


def _coco(path: Path) -> COCO:
    coco = COCO()
    coco.dataset = json.loads(path.read_text())
    coco.createIndex()
    return coco


# --------------------------------------------------------------------------- layout and splits


def test_layout_and_pickle_names(refer_root):
    root, _ = refer_root
    assert (root / "refcoco" / "refs(unc).p").is_file() and (root / "refcoco+" / "refs(unc).p").is_file()
    assert (root / "refcocog" / "refs(umd).p").is_file() and not (root / "refcocog" / "refs(unc).p").exists()
    assert (root / "refclef" / "refs(unc).p").is_file()
    for ds in DATASETS:
        assert (root / ds / "instances.json").is_file()
    coco_images = sorted((root / "images/mscoco/images/train2014").iterdir())
    assert coco_images and all(p.name.startswith("COCO_train2014_") and len(p.stem) == len("COCO_train2014_") + 12
                               for p in coco_images)
    assert any((root / "images/saiapr_tc-12").rglob("*.jpg"))


def test_refs_pickle_has_refer_keys(refer_root):
    refs = read_refs_pickle(refer_root[0] / "refcoco" / "refs(unc).p")
    for ref in refs:
        assert {"ref_id", "ann_id", "image_id", "split", "sentences", "category_id", "file_name", "sent_ids"} <= set(ref)
        assert ref["sent_ids"] == [s["sent_id"] for s in ref["sentences"]]
        for sent in ref["sentences"]:
            assert set(sent) == {"sent", "raw", "tokens", "sent_id"}


@pytest.mark.parametrize("dataset", DATASETS)
def test_every_split(refer_root, dataset):
    root, summaries = refer_root
    own = REFER_SPLITS[dataset][1]
    expected_valid = ("train", "val", *sorted({"test", *own} - {"train", "val"}))
    refs_file = "refs(umd).p" if dataset == "refcocog" else "refs(unc).p"
    assert selectable_splits([r["split"] for r in read_refs_pickle(root / dataset / refs_file)]) == expected_valid
    counts = summaries[dataset]["splits"]
    for split in own:
        refs = load_refer(root, dataset, split)
        assert len(refs) == counts[split] > 0
        assert {r.split for r in refs} == {split}
    test_total = sum(n for s, n in counts.items() if s.startswith("test"))
    assert len(load_refer(root, dataset, "test")) == test_total


def test_compound_test_split_selection(refer_root, tmp_path):
    """refer's getRefIds: "testA" also takes refs of split "testAB"; "testAB" only those."""
    root = _copy(refer_root, tmp_path)
    path = root / "refcoco" / "refs(unc).p"
    refs = read_refs_pickle(path)
    refs[0]["split"] = "testAB"
    path.write_bytes(pickle.dumps(refs, protocol=2))
    ids_a = {r.ref_id for r in load_refer(root, "refcoco", "testA")}
    ids_b = {r.ref_id for r in load_refer(root, "refcoco", "testB")}
    assert refs[0]["ref_id"] in ids_a & ids_b
    assert [r.ref_id for r in load_refer(root, "refcoco", "testAB")] == [refs[0]["ref_id"]]


def test_lisa_refer_seg_parent_accepted(refer_root, tmp_path):
    """ROOT may be LISA's dataset folder, holding refer_seg/."""
    root = _copy(refer_root, tmp_path)
    parent = tmp_path / "dataset"
    parent.mkdir()
    root.rename(parent / "refer_seg")
    refs = load_refer(parent, "refcoco", "val")
    assert refs and refs[0].image_path.startswith(str(parent / "refer_seg" / "images" / "mscoco"))


# --------------------------------------------------------------------------- masks


@pytest.mark.parametrize("dataset", DATASETS)
def test_masks_equal_pycocotools_annToMask(refer_root, dataset):
    root, summaries = refer_root
    coco = _coco(root / dataset / "instances.json")
    kinds = set()
    for split in REFER_SPLITS[dataset][1]:
        for ref in load_refer(root, dataset, split):
            ann = coco.anns[ref.ann_id]
            expected = coco.annToMask(ann)
            mask = ref.mask()
            assert mask.dtype == np.uint8 and mask.shape == ref.hw
            np.testing.assert_array_equal(mask, expected)
            assert mask.any()
            seg = ann["segmentation"]
            kinds.add("polygon" if isinstance(seg, list) else "rle_string" if isinstance(seg["counts"], str)
                      else "rle_counts")
            for query in ref.queries():
                np.testing.assert_array_equal(query.mask(), expected)
    assert kinds == {"polygon", "rle_string", "rle_counts"}
    # every annotation of the file (referred or not) decodes like annToMask too
    for ann in coco.anns.values():
        img = coco.imgs[ann["image_id"]]
        np.testing.assert_array_equal(decode_segmentation(ann["segmentation"], img["height"], img["width"]),
                                      coco.annToMask(ann))


def test_rle_masks_equal_generator_rasterisation(refer_root):
    root, summaries = refer_root
    polygons = summaries["refcoco"]["polygons"]
    coco = _coco(root / "refcoco" / "instances.json")
    n_rle = 0
    for ann in coco.anns.values():
        img = coco.imgs[ann["image_id"]]
        hw = (img["height"], img["width"])
        mask = decode_segmentation(ann["segmentation"], *hw)
        truth = rasterise(polygons[ann["id"]], *hw)
        if isinstance(ann["segmentation"], dict):  # RLEs encode the generator's own raster exactly
            np.testing.assert_array_equal(mask.astype(bool), truth)
            n_rle += 1
        else:  # polygons: the same polygon; pycocotools rasterises edges differently from OpenCV
            assert np.allclose(np.reshape(ann["segmentation"][0], (-1, 2)), polygons[ann["id"]], atol=0.006)
            inter, union = (mask.astype(bool) & truth).sum(), (mask.astype(bool) | truth).sum()
            assert inter / union > 0.8
    assert n_rle >= 2


def test_rle_string_matches_pycocotools_encode():
    rng = np.random.default_rng(0)
    masks = [np.zeros((7, 5), np.uint8), np.ones((7, 5), np.uint8), (rng.random((40, 33)) < 0.5).astype(np.uint8),
             (rng.random((64, 48)) < 0.05).astype(np.uint8)]
    for m in masks:
        expected = mask_utils.encode(np.asfortranarray(m))["counts"].decode("ascii")
        assert rle_string(rle_counts(m)) == expected


def test_multi_polygon_and_rle_lists():
    """Several polygons of one annotation (overlapping): the union, as annToMask; a list of RLE dicts: merged."""
    h, w = 30, 40
    seg = [[2, 2, 20, 2, 20, 20, 2, 20], [10, 10, 35, 10, 35, 28, 10, 28]]
    coco = COCO()
    coco.dataset = {"images": [{"id": 1, "height": h, "width": w, "file_name": "x.jpg"}], "categories": [],
                    "annotations": [{"id": 5, "image_id": 1, "category_id": 1, "segmentation": seg, "iscrowd": 0}]}
    coco.createIndex()
    expected = coco.annToMask(coco.anns[5])
    mask = decode_segmentation(seg, h, w)
    np.testing.assert_array_equal(mask, expected)
    assert set(np.unique(mask)) == {0, 1}
    parts = [decode_segmentation([p], h, w) for p in seg]
    rles = [{"size": [h, w], "counts": rle_string(rle_counts(p))} for p in parts]
    np.testing.assert_array_equal(decode_segmentation(rles, h, w), parts[0] | parts[1])
    np.testing.assert_array_equal(decode_segmentation([], h, w), np.zeros((h, w), np.uint8))


# --------------------------------------------------------------------------- queries


def test_queries_one_per_sentence(refer_root):
    root, _ = refer_root
    refs = load_refer(root, "refcocog", "val")
    queries = refer_queries(root, "refcocog", "val")
    assert len(queries) == sum(len(r.sentences) for r in refs)
    by_ref = {r.ref_id: r for r in refs}
    for q in queries:
        ref = by_ref[q.ref_id]
        assert q.query in [s["sent"].strip().lower() for s in ref.sentences]
        assert q.image_path == ref.image_path and not q.is_sentence
        with Image.open(q.image_path) as image:
            assert (image.height, image.width) == q.hw


# --------------------------------------------------------------------------- errors


def test_missing_refs_pickle(refer_root, tmp_path):
    root = _copy(refer_root, tmp_path)
    (root / "refcoco" / "refs(unc).p").unlink()
    with pytest.raises(DataError) as err:
        load_refer(root, "refcoco", "val")
    assert err.value.path == str(root / "refcoco" / "refs(unc).p") and "not found" in str(err.value)


def test_refcocog_needs_umd_pickle(refer_root, tmp_path):
    root = _copy(refer_root, tmp_path, "refcocog")
    (root / "refcocog" / "refs(umd).p").rename(root / "refcocog" / "refs(unc).p")
    with pytest.raises(DataError) as err:
        load_refer(root, "refcocog", "val")
    assert "refs(umd).p" in str(err.value) and "holds refs(unc).p" in str(err.value)
    assert load_refer(root, "refcocog", "val", split_by="unc")


def test_missing_instances(refer_root, tmp_path):
    root = _copy(refer_root, tmp_path)
    (root / "refcoco" / "instances.json").unlink()
    with pytest.raises(DataError, match="instances.json not found") as err:
        load_refer(root, "refcoco", "val")
    assert err.value.path == str(root / "refcoco" / "instances.json")


def test_unknown_split_lists_valid_ones(refer_root):
    root, _ = refer_root
    with pytest.raises(DataError) as err:
        load_refer(root, "refcoco", "dev")
    assert "unknown split 'dev' (refcoco); valid splits: train, val, test, testA, testB" in str(err.value)
    assert err.value.path.endswith("refs(unc).p")
    with pytest.raises(DataError, match="no ref of split 'testC' in this file"):
        load_refer(root, "refcoco", "testC")
    with pytest.raises(DataError, match="no ref of split 'testA' .*valid splits: train, val, test$"):
        load_refer(root, "refcocog", "testA")


def test_ref_with_missing_ann_id_or_image_id(refer_root, tmp_path):
    root = _copy(refer_root, tmp_path)
    path = root / "refcoco" / "refs(unc).p"
    refs = read_refs_pickle(path)
    val = next(r for r in refs if r["split"] == "val")
    val["ann_id"] = 999_999_999
    path.write_bytes(pickle.dumps(refs, protocol=2))
    with pytest.raises(DataError, match=f"ref {val['ref_id']} of refs\\(unc\\).p names ann_id 999999999") as err:
        load_refer(root, "refcoco", "val")
    assert err.value.path.endswith("instances.json")
    load_refer(root, "refcoco", "train")  # other splits are unaffected
    val["ann_id"], val["image_id"] = read_refs_pickle(refer_root[0] / "refcoco" / "refs(unc).p")[
        refs.index(val)]["ann_id"], 424242
    path.write_bytes(pickle.dumps(refs, protocol=2))
    with pytest.raises(DataError, match="names image_id 424242"):
        load_refer(root, "refcoco", "val")


def test_missing_image(refer_root, tmp_path):
    root = _copy(refer_root, tmp_path)
    ref = load_refer(root, "refcoco", "val")[0]
    Path(ref.image_path).unlink()
    with pytest.raises(DataError, match="image file not found") as err:
        load_refer(root, "refcoco", "val")
    assert err.value.path == ref.image_path
    assert load_refer(root, "refcoco", "val", check_images=False)


def test_missing_dataset_folder_and_unknown_dataset(tmp_path):
    with pytest.raises(DataError, match="no refcoco folder") as err:
        load_refer(tmp_path, "refcoco", "val")
    assert err.value.path == str(tmp_path / "refcoco")
    with pytest.raises(ValueError, match="unknown refer dataset 'refcocoz'"):
        load_refer(tmp_path, "refcocoz", "val")


def test_pickle_naming_a_class_is_refused(refer_root, tmp_path):
    root = _copy(refer_root, tmp_path)
    path = root / "refcoco" / "refs(unc).p"
    path.write_bytes(pickle.dumps([{"x": Path("a")}], protocol=2))
    with pytest.raises(DataError, match="malformed refs pickle.*refused") as err:
        load_refer(root, "refcoco", "val")
    assert err.value.path == str(path)
    refs = read_refs_pickle(refer_root[0] / "refcoco" / "refs(unc).p")
    refs[0]["sent_ids"] = tuple(refs[0]["sent_ids"])  # builtin containers are plain data
    refs[0]["extra"] = {1, 2}
    path.write_bytes(pickle.dumps(refs, protocol=0))
    assert read_refs_pickle(path)[0]["extra"] == {1, 2}
    path.write_bytes(pickle.dumps([{"ref_id": 1}], protocol=0))
    with pytest.raises(DataError, match="ref #0 has no ann_id, image_id, split, sentences"):
        load_refer(root, "refcoco", "val")


# --------------------------------------------------------------------------- make-data


def test_make_data_cli_refcocog(tmp_path, capsys):
    out = tmp_path / "out"
    argv = [str(out), "--format", "refcocog", "--num_train", "1", "--num_val", "1", "--num_test", "1",
            "--image_size", "64", "--seed", "1"]
    assert make_data.main(argv) == 0
    assert "refs(umd).p" in capsys.readouterr().out
    first = (out / "refcocog" / "refs(umd).p").read_bytes(), (out / "refcocog" / "instances.json").read_bytes()
    assert make_data.main(argv) == 2
    assert "exists; pass --force" in capsys.readouterr().err
    assert make_data.main([*argv, "--force"]) == 0
    assert ((out / "refcocog" / "refs(umd).p").read_bytes(), (out / "refcocog" / "instances.json").read_bytes()) == first
    assert refer_queries(out, "refcocog", "test")
    assert make_data.main([str(tmp_path / "other"), "--format", "refcoco", "--select_by", "colour"]) == 2
    assert "--select_by apply to --format reasonseg only" in capsys.readouterr().err


def _py2_str(text: bytes) -> bytes:
    return b"U" + bytes([len(text)]) + text  # SHORT_BINSTRING: a Python 2 str


def test_python2_pickle_with_non_ascii_bytes(tmp_path):
    """The published refs files were pickled by Python 2: its byte strings are read as latin1 when not ASCII."""
    sentence = b"}(" + _py2_str(b"sent") + _py2_str(b"caf\xe9 sign") + b"u"
    ref = (b"}(" + _py2_str(b"ref_id") + b"K\x01" + _py2_str(b"ann_id") + b"K\x02" + _py2_str(b"image_id")
           + b"K\x03" + _py2_str(b"split") + _py2_str(b"val") + _py2_str(b"sentences") + b"]" + sentence + b"a"
           + b"u")
    path = tmp_path / "refs(unc).p"
    path.write_bytes(b"\x80\x02]" + ref + b"a.")
    refs = read_refs_pickle(path)
    assert refs == [{"ref_id": 1, "ann_id": 2, "image_id": 3, "split": "val", "sentences": [{"sent": "café sign"}]}]
