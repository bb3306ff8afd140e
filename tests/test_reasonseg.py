"""ReasonSeg reader: JSON, images, LISA-exact masks, explanations and split scans on real files."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from PIL import Image

from modlisa.data.reasonseg import (
    DataError,
    get_mask_from_json,
    load_annotation,
    load_explanations,
    load_image_rgb,
    mask_from_shapes,
    read_image_size,
    read_json,
    resolve_split_dir,
    scan_split,
)
from modlisa.types import Shape
from reasonseg_fixtures import (
    box,
    make_reasonseg,
    shape,
    write_annotation,
    write_bad_files,
    write_good_item,
    write_image,
    write_truncated_jpeg,
)


def shapes_of(*items: tuple[str, list]) -> list[Shape]:
    return [Shape(label=label, points=points) for label, points in items]


# --------------------------------------------------------------------------- independent references


def naive_rectangle(hw, x0, y0, x1, y1) -> np.ndarray:
    """Inclusive integer rectangle (outline + fill), clipped to the image."""
    mask = np.zeros(hw, dtype=np.uint8)
    mask[max(y0, 0) : y1 + 1, max(x0, 0) : x1 + 1] = 1
    return mask


def point_in_convex(hw, vertices: np.ndarray) -> np.ndarray:
    """Signed distance (pixels) of each pixel to the edges of a convex polygon (either winding): > 0 inside."""
    ys, xs = np.mgrid[0 : hw[0], 0 : hw[1]].astype(np.float64)
    dist = np.full(hw, np.inf)
    n = len(vertices)
    (ux, uy), (vx, vy) = vertices[1] - vertices[0], vertices[2] - vertices[1]
    orientation = np.sign(ux * vy - uy * vx)
    for i in range(n):
        (ax, ay), (bx, by) = vertices[i], vertices[(i + 1) % n]
        ex, ey = bx - ax, by - ay
        side = orientation * (ex * (ys - ay) - ey * (xs - ax)) / np.hypot(ex, ey)
        dist = np.minimum(dist, side)
    return dist


def lisa_reference(shapes: list[dict], hw) -> np.ndarray:
    """A literal transcription of LISA's get_mask_from_json (numpy 1.24's argsort: stable for few items)."""
    areas, kept = [], []
    for item in shapes:
        if item["label"].lower() == "flag":
            continue
        tmp = np.zeros(hw, dtype=np.uint8)
        cv2.polylines(tmp, np.array([item["points"]], dtype=np.int32), True, 1, 1)
        cv2.fillPoly(tmp, np.array([item["points"]], dtype=np.int32), 1)
        areas.append(tmp.sum())
        kept.append(item)
    mask = np.zeros(hw, dtype=np.uint8)
    for idx in np.argsort(areas, kind="stable")[::-1]:
        item = kept[idx]
        value = 255 if "ignore" in item["label"].lower() else 1
        cv2.polylines(mask, np.array([item["points"]], dtype=np.int32), True, value, 1)
        cv2.fillPoly(mask, np.array([item["points"]], dtype=np.int32), value)
    return mask


# --------------------------------------------------------------------------- masks


@pytest.mark.parametrize("rect", [(2, 3, 9, 7), (0, 0, 19, 14), (-4, -2, 5, 6), (12, 9, 30, 40), (5, 5, 5, 5)])
def test_rectangle_matches_naive_inclusive_raster(rect):
    hw = (15, 20)
    mask = mask_from_shapes(shapes_of(("target", box(*rect))), hw)
    assert mask.dtype == np.uint8 and mask.shape == hw
    np.testing.assert_array_equal(mask, naive_rectangle(hw, *rect))


def test_right_triangle_matches_naive_half_plane():
    hw = (20, 20)
    mask = mask_from_shapes(shapes_of(("target", [[2, 3], [12, 3], [2, 13]])), hw)
    ys, xs = np.mgrid[0:20, 0:20]
    expected = ((xs >= 2) & (ys >= 3) & ((xs - 2) + (ys - 3) <= 10)).astype(np.uint8)
    np.testing.assert_array_equal(mask, expected)


@pytest.mark.parametrize("seed", range(5))
def test_convex_polygon_agrees_with_point_in_polygon_away_from_edges(seed):
    rng = np.random.default_rng(seed)
    hw = (40, 50)
    centre, radius = rng.uniform(15, 25, 2), rng.uniform(6, 14)
    angles = np.sort(rng.uniform(0, 2 * np.pi, 7))
    vertices = np.stack([centre[0] + radius * np.cos(angles), centre[1] + radius * np.sin(angles)], 1)
    vertices = np.trunc(vertices)  # integer vertices: the reference sees what OpenCV sees
    mask = mask_from_shapes(shapes_of(("target", vertices.tolist())), hw)
    dist = point_in_convex(hw, vertices)
    assert (mask[dist > 1.0] == 1).all()
    assert (mask[dist < -1.0] == 0).all()


@pytest.mark.parametrize("seed", range(6))
def test_matches_lisa_reference_on_random_files(seed):
    rng = np.random.default_rng(100 + seed)
    hw = (int(rng.integers(20, 60)), int(rng.integers(20, 60)))
    labels = ["target", "ignore", "Ignore_area", "flag", "FLAG", "person", "flags"]
    items = []
    for _ in range(int(rng.integers(1, 7))):
        n = int(rng.integers(3, 9))
        points = np.stack([rng.uniform(-5, hw[1] + 5, n), rng.uniform(-5, hw[0] + 5, n)], 1)
        items.append(shape(str(rng.choice(labels)), points.tolist()))
    expected = lisa_reference(items, hw)
    got = mask_from_shapes([Shape(s["label"], s["points"]) for s in items], hw)
    np.testing.assert_array_equal(got, expected)
    assert set(np.unique(got)) <= {0, 1, 255}


def test_smaller_polygons_are_painted_on_top_whatever_the_file_order():
    hw = (20, 20)
    big_ignore, small_target = ("ignore", box(1, 1, 18, 18)), ("target", box(5, 5, 9, 9))
    for order in ([big_ignore, small_target], [small_target, big_ignore]):
        mask = mask_from_shapes(shapes_of(*order), hw)
        assert (mask[5:10, 5:10] == 1).all()
        assert mask[2, 2] == 255 and mask[0, 0] == 0
    big_target, small_ignore = ("target", box(1, 1, 18, 18)), ("IGNORE", box(5, 5, 9, 9))
    mask = mask_from_shapes(shapes_of(small_ignore, big_target), hw)
    assert (mask[5:10, 5:10] == 255).all() and mask[2, 2] == 1


def test_equal_areas_first_shape_in_file_ends_on_top():
    hw = (20, 20)
    first, second = ("target", box(2, 2, 9, 9)), ("ignore", box(5, 5, 12, 12))  # same area, overlapping
    mask = mask_from_shapes(shapes_of(first, second), hw)
    assert mask[6, 6] == 1
    mask = mask_from_shapes(shapes_of(second, first), hw)
    assert mask[6, 6] == 255


def test_flag_is_skipped_only_when_the_label_is_exactly_flag():
    hw = (10, 10)
    assert mask_from_shapes(shapes_of(("Flag", box(0, 0, 9, 9))), hw).sum() == 0
    assert mask_from_shapes(shapes_of(("flags", box(0, 0, 9, 9))), hw).min() == 1  # LISA: "flag" == label


def test_points_are_truncated_toward_zero_like_int32_cast():
    hw = (12, 12)
    inside = mask_from_shapes(shapes_of(("target", box(1.9, 1.9, 4.9, 4.9))), hw)
    np.testing.assert_array_equal(inside, naive_rectangle(hw, 1, 1, 4, 4))  # not rounded to 2..5
    negative = [[-2.2, 9.5], [8.8, 0.6], [10.1, -2.1]]
    got = mask_from_shapes(shapes_of(("target", negative)), hw)
    truncated = mask_from_shapes(shapes_of(("target", [[-2, 9], [8, 0], [10, -2]])), hw)
    floored = mask_from_shapes(shapes_of(("target", [[-3, 9], [8, 0], [10, -3]])), hw)
    np.testing.assert_array_equal(got, truncated)
    assert not np.array_equal(got, floored)


def test_degenerate_points_follow_opencv_and_empty_points_raise():
    hw = (10, 10)
    line = mask_from_shapes(shapes_of(("target", [[1, 1], [6, 1]])), hw)
    np.testing.assert_array_equal(line, naive_rectangle(hw, 1, 1, 6, 1))
    with pytest.raises(ValueError, match=r"shapes\[0\]"):
        mask_from_shapes(shapes_of(("target", [])), hw)
    with pytest.raises(ValueError, match="int32"):
        mask_from_shapes(shapes_of(("target", [[1, 1], [float("nan"), 2], [3, 3]])), hw)


def test_get_mask_from_json_reads_a_cp1252_file(tmp_path):
    path = write_annotation(tmp_path / "a.json", ["caf\u00e9 \u2013 sign"], False,
                            [shape("target", box(1, 1, 4, 4))], encoding="cp1252")
    with pytest.raises(UnicodeDecodeError):
        path.read_bytes().decode("utf-8")
    assert read_json(path)["text"] == ["caf\u00e9 \u2013 sign"]
    np.testing.assert_array_equal(get_mask_from_json(path, (8, 8)), naive_rectangle((8, 8), 1, 1, 4, 4))


# --------------------------------------------------------------------------- JSON and annotations


def test_data_error_carries_path_and_reason(tmp_path):
    bad = tmp_path / "broken.json"
    bad.write_text("{nope", encoding="utf-8")
    with pytest.raises(DataError) as info:
        read_json(bad)
    assert info.value.path == str(bad)
    assert "malformed JSON" in info.value.reason
    assert str(info.value) == f"{bad}: {info.value.reason}"


def test_load_annotation_fields(tmp_path):
    image, path = write_good_item(tmp_path, "x", texts=["a", "b"], is_sentence=True, with_ignore=True)
    ann = load_annotation(path)
    assert ann.texts == ["a", "b"] and ann.is_sentence is True
    assert ann.image_path == str(image) and ann.json_path == str(path)
    assert [s.label for s in ann.shapes] == ["target", "ignore"]
    assert ann.shapes[0].points[0] == [3.2, 2.7] and ann.shapes[0].shape_type == "polygon"


@pytest.mark.parametrize(("extra", "drop", "message"), [
    ({}, ("is_sentence",), "is_sentence"),
    ({"shapes": {"a": 1}}, (), "shapes"),
    ({"text": []}, (), "text"),
    ({"shapes": [{"points": [[1, 1]]}]}, (), "label"),
])
def test_load_annotation_rejects_malformed_fields(tmp_path, extra, drop, message):
    path = write_annotation(tmp_path / "x.json", ["q"], False, [shape("target", box(1, 1, 3, 3))],
                            extra=extra, drop=drop)
    with pytest.raises(DataError, match=message):
        load_annotation(path)


# --------------------------------------------------------------------------- images


def cv2_rgb(path) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)


def _write_mode_images(tmp_path):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (14, 18, 3), dtype=np.uint8)
    alpha = rng.integers(0, 256, (14, 18), dtype=np.uint8)
    files = {}
    Image.fromarray(rgb[..., 0]).save(files.setdefault("grey", tmp_path / "grey.jpg"), quality=95)
    Image.fromarray(np.dstack([rgb, alpha])).save(files.setdefault("rgba", tmp_path / "rgba.png"))
    Image.fromarray(np.dstack([rgb[..., 1], alpha]), "LA").save(files.setdefault("la", tmp_path / "la.png"))
    Image.fromarray(rgb).convert("P").save(files.setdefault("p", tmp_path / "p.png"))
    Image.fromarray(rgb).convert("CMYK").save(files.setdefault("cmyk", tmp_path / "cmyk.jpg"), quality=95)
    grey16 = rng.integers(0, 65536, (14, 18), dtype=np.uint16)
    cv2.imwrite(str(files.setdefault("grey16", tmp_path / "grey16.png")), grey16)
    cv2.imwrite(str(files.setdefault("rgb16", tmp_path / "rgb16.png")), rng.integers(0, 65536, (14, 18, 3),
                                                                                     dtype=np.uint16))
    write_image(files.setdefault("jpeg", tmp_path / "plain.jpg"), (14, 18), seed=1)
    return files


def test_load_image_rgb_matches_cv2_imread_for_every_mode(tmp_path):
    for name, path in _write_mode_images(tmp_path).items():
        image = load_image_rgb(path)
        assert image.dtype == np.uint8 and image.shape == (14, 18, 3), name
        tolerance = 2 if name == "cmyk" else 0
        assert np.abs(image.astype(int) - cv2_rgb(path)).max() <= tolerance, name


def test_load_image_rgb_applies_exif_orientation_like_cv2(tmp_path):
    path = tmp_path / "rotated.jpg"
    image = Image.fromarray(np.random.default_rng(2).integers(0, 256, (10, 16, 3), dtype=np.uint8))
    exif = image.getexif()
    exif[0x0112] = 6
    image.save(path, exif=exif.tobytes(), quality=95)
    loaded = load_image_rgb(path)
    assert loaded.shape == (16, 10, 3) == cv2_rgb(path).shape
    np.testing.assert_array_equal(loaded, cv2_rgb(path))
    assert read_image_size(path) == (16, 10)


def test_load_image_rgb_errors_name_the_file(tmp_path):
    truncated = write_truncated_jpeg(tmp_path / "cut.jpg")
    garbage = tmp_path / "garbage.jpg"
    garbage.write_bytes(b"not an image")
    for path, words in ((truncated, "truncated"), (garbage, "cannot"), (tmp_path / "none.jpg", "not found")):
        with pytest.raises(DataError, match=words) as info:
            load_image_rgb(path)
        assert info.value.path == str(path)
    assert read_image_size(truncated) == (64, 64)  # the header alone is fine


# --------------------------------------------------------------------------- folders


@pytest.mark.parametrize("layout", ["nested", "flat"])
def test_resolve_split_dir_accepts_both_layouts(tmp_path, layout):
    make_reasonseg(tmp_path, layout=layout)
    expected = tmp_path / "ReasonSeg" / "val" if layout == "nested" else tmp_path / "val"
    assert resolve_split_dir(tmp_path, "val") == expected
    with pytest.raises(DataError, match="no split folder 'dev'"):
        resolve_split_dir(tmp_path, "dev")
    with pytest.raises(DataError, match="does not exist"):
        resolve_split_dir(tmp_path / "absent", "val")


@pytest.mark.parametrize(("layout", "explanatory"), [("nested", "standard"), ("flat", "standard"), ("flat", "seed")])
def test_load_explanations_layouts(tmp_path, layout, explanatory):
    make_reasonseg(tmp_path, layout=layout, explanatory=explanatory, n_val=0, n_test=0, splits=("train",))
    assert load_explanations(tmp_path) == {"train_00.jpg": "Scissors cut paper."}


def test_load_explanations_missing_and_malformed(tmp_path):
    assert load_explanations(tmp_path) == {}
    (tmp_path / "train.json").write_text(json.dumps({"not": "a list"}), encoding="utf-8")
    with pytest.raises(DataError, match="JSON list"):
        load_explanations(tmp_path)


EXPECTED_KINDS = {
    "missing_image": ("missing_image", "error"),
    "unreadable_image": ("unreadable_image", "error"),
    "malformed_json": ("malformed_json", "error"),
    "no_text": ("no_text", "error"),
    "missing_text": ("no_text", "error"),
    "no_target": ("no_target", "error"),
    "ignore_only": ("no_target", "error"),
    "few_points_zero": ("few_points", "error"),
    "few_points_two": ("few_points", "warning"),
    "nonfinite_points": ("nonfinite_points", "error"),
    "out_of_bounds": ("out_of_bounds", "error"),
    "unknown_label": ("unknown_label", "warning"),
    "non_polygon": ("non_polygon", "warning"),
    "bad_field": ("bad_field", "error"),
    "missing_json": ("missing_json", "warning"),
}


def test_scan_split_finds_every_problem_kind(tmp_path):
    make_reasonseg(tmp_path)
    cases = write_bad_files(tmp_path / "ReasonSeg" / "train")
    annotations, problems = scan_split(tmp_path, "train")
    for case, (kind, severity) in EXPECTED_KINDS.items():
        found = [p for p in problems if cases[case] in p.file]
        assert (kind, severity) in {(p.kind, p.severity) for p in found}, (case, found)
    usable = [ann.json_path.rsplit("/", 1)[-1] for ann in annotations]
    assert usable == sorted(usable)
    assert set(usable) == {"train_00.json", "train_01.json", "train_02.json", "bad_cp1252.json",
                           "bad_few_points_two.json", "bad_non_polygon.json", "bad_slightly_outside.json",
                           "bad_truncated_image.json", "bad_unknown_label.json"}
    assert not [p for p in problems if "slightly_outside" in p.file or "cp1252" in p.file]
    by_name = {a.json_path.rsplit("/", 1)[-1]: a for a in annotations}
    assert by_name["train_00.json"].explanation == "Scissors cut paper."
    assert by_name["train_01.json"].explanation is None
    assert by_name["bad_cp1252.json"].texts == ["the caf\u00e9 sign \u2013 left"]


def test_scan_split_evaluation_keeps_files_without_target(tmp_path):
    make_reasonseg(tmp_path, splits=("test",))
    write_annotation(tmp_path / "ReasonSeg" / "test" / "empty.json", ["q"], True, [])
    write_image(tmp_path / "ReasonSeg" / "test" / "empty.jpg", (8, 8))
    annotations, problems = scan_split(tmp_path, "test")
    assert len(annotations) == 3
    assert [(p.kind, p.severity) for p in problems] == [("no_target", "warning")]
    _, problems = scan_split(tmp_path, "test", for_training=True)
    assert [(p.kind, p.severity) for p in problems] == [("no_target", "error")]


def test_scan_split_reports_an_empty_split(tmp_path):
    (tmp_path / "val").mkdir()
    annotations, problems = scan_split(tmp_path, "val")
    assert annotations == [] and [p.kind for p in problems] == ["empty_split"]
