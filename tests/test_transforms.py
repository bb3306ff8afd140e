"""SAM / vision transforms and the augmenter (docs/LISA.md §2)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from modlisa.data.transforms import (
    Augmenter,
    ImageProcessors,
    SamTransform,
    VisionTransform,
    mentions_left_or_right,
    resize_longest_side_shape,
)
from modlisa.types import CLIP_MEAN, CLIP_STD, SAM_MEAN, SAM_STD


def random_image(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize(
    ("hw", "target", "expected"),
    [((480, 640), 1024, (768, 1024)), ((640, 480), 1024, (1024, 768)), ((500, 500), 1024, (1024, 1024)),
     ((333, 1000), 1024, (341, 1024)), ((1000, 333), 224, (224, 75)), ((7, 3), 16, (16, 7))],
)
def test_resize_longest_side_shape(hw: tuple[int, int], target: int, expected: tuple[int, int]) -> None:
    assert resize_longest_side_shape(*hw, target) == expected


@pytest.mark.parametrize(("h", "w"), [(30, 50), (50, 30), (40, 40), (10, 12)])
def test_sam_transform_shape_padding_and_resize_hw(h: int, w: int) -> None:
    out, (rh, rw) = SamTransform(64)(random_image(h, w))
    assert out.shape == (3, 64, 64) and out.dtype == torch.float32
    assert (rh, rw) == resize_longest_side_shape(h, w, 64) and max(rh, rw) == 64
    assert torch.all(out[:, rh:, :] == 0) and torch.all(out[:, :, rw:] == 0)
    assert out[:, :rh, :rw].abs().sum() > 0


def test_sam_transform_normalises_constant_image() -> None:
    image = np.empty((20, 30, 3), dtype=np.uint8)
    image[...] = (10, 128, 250)
    out, (rh, rw) = SamTransform(48)(image)
    for c, value in enumerate((10, 128, 250)):
        expected = (value - SAM_MEAN[c]) / SAM_STD[c]
        assert torch.allclose(out[c, :rh, :rw], torch.full((rh, rw), expected), atol=1e-5)


def test_vision_transform_constant_image_and_shape() -> None:
    image = np.full((50, 80, 3), 200, dtype=np.uint8)
    out = VisionTransform(32)(image)
    assert out.shape == (3, 32, 32) and out.dtype == torch.float32
    for c in range(3):
        assert torch.allclose(out[c], torch.full((32, 32), (200 / 255 - CLIP_MEAN[c]) / CLIP_STD[c]), atol=1e-5)


@pytest.mark.parametrize(("h", "w"), [(61, 97), (97, 61), (20, 20)])
def test_vision_transform_matches_transformers_clip_processor(h: int, w: int) -> None:
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    image = random_image(h, w, seed=h)
    processor = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    expected = processor(images=image, return_tensors="pt")["pixel_values"][0]
    assert torch.allclose(VisionTransform(32)(image), expected.float(), atol=1e-5)


def test_bad_images_raise() -> None:
    with pytest.raises(ValueError, match="uint8 RGB"):
        SamTransform(32)(np.zeros((4, 4), dtype=np.uint8))
    with pytest.raises(ValueError, match="uint8 RGB"):
        VisionTransform(32)(np.zeros((4, 4, 3), dtype=np.float32))
    thin, hw = SamTransform(8)(np.zeros((1, 100, 3), dtype=np.uint8))  # issue 13: a 1x100 image is usable
    assert hw == (1, 8) and thin.shape == (3, 8, 8)
    with pytest.raises(ValueError, match="color_jitter"):
        Augmenter(color_jitter=1.5)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("the cup on the left", True), ("Leftmost person", True), ("RIGHT hand", True), ("the rightmost car", True),
     ("the left-hand glove", True), ("(left)", True), ("a bright lamp", False), ("copyright sign", False),
     ("stand upright", False), ("the red apple", False)],
)
def test_mentions_left_or_right(text: str, expected: bool) -> None:
    assert mentions_left_or_right(text) is expected


def flips_seen(augmenter: Augmenter, queries: list[str], seeds: range) -> int:
    image = random_image(6, 8)
    masks = np.zeros((1, 6, 8), dtype=np.uint8)
    masks[0, :, :2] = 1
    flipped = 0
    for seed in seeds:
        _, out_masks = augmenter(image, masks, queries, np.random.default_rng(seed))
        flipped += int(out_masks[0, 0, -1] == 1)
    return flipped


def test_flip_never_for_left_right_queries_and_about_half_otherwise() -> None:
    augmenter = Augmenter(hflip=True, color_jitter=0.0)
    assert flips_seen(augmenter, ["a mug", "the mug on the LEFT side"], range(40)) == 0
    assert 10 <= flips_seen(augmenter, ["a mug", "the mug"], range(40)) <= 30
    assert flips_seen(Augmenter(hflip=False, color_jitter=0.0), ["a mug"], range(40)) == 0


def test_masks_flipped_with_image() -> None:
    image = random_image(9, 13, seed=5)
    masks = np.stack([(image[..., 0] > 128), (image[..., 1] > 60)]).astype(np.uint8)
    masks[1, 0, 0] = 255
    image_before, masks_before = image.copy(), masks.copy()
    augmenter = Augmenter(hflip=True, color_jitter=0.0)
    seen_flip = False
    for seed in range(10):
        out_image, out_masks = augmenter(image, masks, ["the cat"], np.random.default_rng(seed))
        flipped = not np.array_equal(out_image, image)
        seen_flip |= flipped
        expected_masks = masks[:, :, ::-1] if flipped else masks
        assert np.array_equal(out_masks, expected_masks)
        assert np.array_equal(out_image, image[:, ::-1] if flipped else image)
    assert seen_flip
    assert np.array_equal(image, image_before) and np.array_equal(masks, masks_before)  # inputs untouched


def test_augmenter_is_deterministic_and_jitter_keeps_grey_grey() -> None:
    image = random_image(16, 16, seed=7)
    masks = np.zeros((2, 16, 16), dtype=np.uint8)
    augmenter = Augmenter(hflip=True, color_jitter=0.4)
    a = augmenter(image, masks, ["a dog"], np.random.default_rng(3))
    b = augmenter(image, masks, ["a dog"], np.random.default_rng(3))
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[0], image)
    assert a[0].dtype == np.uint8 and a[0].shape == image.shape

    grey = np.repeat(random_image(16, 16, seed=8)[..., :1], 3, axis=2)
    for seed in range(5):
        out, _ = augmenter(grey, masks, ["a dog"], np.random.default_rng(seed))
        assert np.array_equal(out[..., 0], out[..., 1]) and np.array_equal(out[..., 1], out[..., 2])


def test_image_processors_geometric_augmentation() -> None:
    sam, vision = SamTransform(32), VisionTransform(16)
    assert not ImageProcessors(sam, vision).geometric_augmentation
    assert not ImageProcessors(sam, vision, Augmenter(hflip=False)).geometric_augmentation
    assert ImageProcessors(sam, vision, Augmenter(hflip=True)).geometric_augmentation
