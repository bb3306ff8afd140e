"""Image transforms of the two branches (docs/LISA.md §2) and training augmentation.

- SAM branch (``SamTransform``): resize the longest side to S with PIL bilinear (what SAM's
  ``ResizeLongestSide.apply_image`` does through torchvision on a PIL image), normalise with SAM's
  mean/std on 0-255 RGB, zero-pad bottom/right to S x S.
- SAM 2 branch (``Sam2Transform``): what transformers' ``Sam2ImageProcessor`` does: resize the whole image to
  S x S (no aspect ratio kept, no padding) with antialiased bilinear interpolation on the uint8 pixels (torch's
  native uint8 kernel, as torchvision's ``resize`` runs it on the CPU), then normalise with ImageNet's mean/std
  on 0-255 RGB.
- Vision branch (``VisionTransform``): CLIP's preprocessing: resize the shortest side to V with
  PIL bicubic (long side ``int(V * long / short)``), centre crop V x V (top/left offsets
  ``(size - V) // 2``), scale to [0, 1], normalise. Same result as transformers'
  ``CLIPImageProcessorPil``.
- Native vision branch (``NativeVisionTransform``, the vlm preset's ``vlm_resolution: native``): what Qwen2-VL's
  image processor does: resize the whole image (aspect ratio kept, no crop) to transformers' ``smart_resize`` size
  (sides multiples of patch x merge, pixel count within [min_pixels, max_pixels]) with PIL bicubic, scale to
  [0, 1], normalise. The output's size varies per image.
- ``Augmenter``: photometric jitter and a horizontal flip that is skipped for left/right queries.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageEnhance

from modlisa.types import CLIP_MEAN, CLIP_STD, SAM_MEAN, SAM_STD

# SAM 2's normalisation (Sam2ImageProcessor: IMAGENET_DEFAULT_MEAN / _STD, on pixels scaled to [0, 1])
SAM2_MEAN = (0.485, 0.456, 0.406)
SAM2_STD = (0.229, 0.224, 0.225)

# "left"/"right" at the start of a word: left, right, leftmost, rightmost, left-hand, Right, ...
_LEFT_RIGHT = re.compile(r"\b(?:left|right)", re.IGNORECASE)


def _check_rgb_uint8(image: np.ndarray, name: str) -> None:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        got = f"{type(image).__name__} {getattr(image, 'dtype', '')} {getattr(image, 'shape', '')}"
        raise ValueError(f"{name}: expected an (H, W, 3) uint8 RGB numpy array, got {got}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"{name}: empty image of shape {image.shape}")


def _normalise(pixels: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """(H, W, 3) array -> (3, H, W) float32 tensor ``(pixels - mean) / std`` per channel."""
    x = torch.from_numpy(np.ascontiguousarray(pixels, dtype=np.float32)).permute(2, 0, 1)
    mean_t = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
    return (x - mean_t) / std_t


def resize_longest_side_shape(h: int, w: int, target: int) -> tuple[int, int]:
    """SAM's ``get_preprocess_shape``: (h', w') with the longest side scaled to ``target``.

    scale = target / max(h, w); each side is ``int(side * scale + 0.5)``.
    """
    if h <= 0 or w <= 0 or target <= 0:
        raise ValueError(f"resize_longest_side_shape: sizes must be positive, got h={h}, w={w}, target={target}")
    scale = target * 1.0 / max(h, w)
    return int(h * scale + 0.5), int(w * scale + 0.5)


class SamTransform:
    """SAM image-encoder input: (H, W, 3) uint8 RGB -> (3, S, S) float32 and the resized (h', w')."""

    def __init__(self, image_size: int = 1024) -> None:
        if image_size <= 0:
            raise ValueError(f"SamTransform: image_size must be positive, got {image_size}")
        self.image_size = image_size

    def __call__(self, image: np.ndarray) -> tuple[torch.Tensor, tuple[int, int]]:
        """Resize longest side to S (PIL bilinear; the short side keeps at least 1 pixel), normalise, zero-pad
        bottom/right.

        Returns (sam_image (3, S, S) float32, resize_hw (h', w')); pixels outside the resized
        region are exactly 0.
        """
        _check_rgb_uint8(image, "SamTransform")
        h, w = image.shape[:2]
        new_h, new_w = resize_longest_side_shape(h, w, self.image_size)
        # A very elongated image (1x300 at S=32) would get a 0-pixel short side, where SAM's own code fails;
        # it keeps 1 pixel instead (the mask is still computed at the original size).
        new_h, new_w = max(1, new_h), max(1, new_w)
        resized = np.asarray(Image.fromarray(image).resize((new_w, new_h), Image.Resampling.BILINEAR))
        out = torch.zeros(3, self.image_size, self.image_size, dtype=torch.float32)
        out[:, :new_h, :new_w] = _normalise(resized, SAM_MEAN, SAM_STD)
        return out, (new_h, new_w)


class Sam2Transform:
    """SAM 2 image-encoder input: (H, W, 3) uint8 RGB -> (3, S, S) float32 and resize_hw (S, S).

    The image is stretched to S x S (SAM 2 keeps no aspect ratio and pads nothing, so its masks are resized
    straight back to (H, W): ``model.sam2_decoder.postprocess_masks``). Same pixels as transformers'
    ``Sam2ImageProcessor(size={"height": S, "width": S})``'s ``pixel_values``: antialiased bilinear resize of
    the uint8 image (uint8 result), then ``(x - 255 * mean) / (255 * std)`` in float32.
    """

    mean = SAM2_MEAN
    std = SAM2_STD

    def __init__(self, image_size: int = 1024) -> None:
        if image_size <= 0:
            raise ValueError(f"Sam2Transform: image_size must be positive, got {image_size}")
        self.image_size = image_size

    def __call__(self, image: np.ndarray) -> tuple[torch.Tensor, tuple[int, int]]:
        """Returns (sam_image (3, S, S) float32, resize_hw (S, S): the whole input is the image)."""
        _check_rgb_uint8(image, "Sam2Transform")
        size = self.image_size
        pixels = torch.tensor(image).permute(2, 0, 1).unsqueeze(0).contiguous()  # (1, 3, H, W) uint8, a copy
        resized = torch.nn.functional.interpolate(pixels, size=(size, size), mode="bilinear", align_corners=False,
                                                  antialias=True)  # (1, 3, S, S) uint8
        mean = torch.tensor(self.mean, dtype=torch.float32).view(3, 1, 1) * 255.0
        std = torch.tensor(self.std, dtype=torch.float32).view(3, 1, 1) * 255.0
        return (resized[0].to(torch.float32) - mean) / std, (size, size)


def _shortest_side_shape(h: int, w: int, target: int) -> tuple[int, int]:
    """transformers' shortest-edge resize: short side = target, long side = int(target * long / short)."""
    if w <= h:
        return int(target * h / w), target
    return target, int(target * w / h)


class VisionTransform:
    """Vision-tower input: (H, W, 3) uint8 RGB -> (3, V, V) float32 (CLIP-style preprocessing)."""

    def __init__(
        self,
        image_size: int = 224,
        mean: Sequence[float] = CLIP_MEAN,
        std: Sequence[float] = CLIP_STD,
    ) -> None:
        if image_size <= 0:
            raise ValueError(f"VisionTransform: image_size must be positive, got {image_size}")
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise ValueError(f"VisionTransform: mean and std need 3 values (std > 0), got {mean}, {std}")
        self.image_size = image_size
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)

    def __call__(self, image: np.ndarray) -> torch.Tensor:
        """Resize shortest side to V (PIL bicubic), centre crop V x V, /255, normalise -> (3, V, V)."""
        _check_rgb_uint8(image, "VisionTransform")
        v = self.image_size
        new_h, new_w = _shortest_side_shape(image.shape[0], image.shape[1], v)
        resized = np.asarray(Image.fromarray(image).resize((new_w, new_h), Image.Resampling.BICUBIC))
        top, left = (new_h - v) // 2, (new_w - v) // 2
        crop = resized[top : top + v, left : left + v].astype(np.float32) / 255.0
        return _normalise(crop, self.mean, self.std)


class NativeVisionTransform:
    """Dynamic-resolution vision input: (H, W, 3) uint8 RGB -> (3, h', w') float32, (h', w') = transformers'
    ``smart_resize(H, W, factor, min_pixels, max_pixels)``: Qwen2-VL / Qwen2.5-VL / Qwen3-VL's preprocessing."""

    def __init__(self, factor: int, min_pixels: int, max_pixels: int, mean: Sequence[float],
                 std: Sequence[float]) -> None:
        if factor <= 0 or min_pixels <= 0 or max_pixels < min_pixels or max_pixels < factor * factor:
            raise ValueError(f"NativeVisionTransform: need factor > 0 and factor^2 <= max_pixels >= min_pixels > 0, "
                             f"got factor={factor}, min_pixels={min_pixels}, max_pixels={max_pixels}")
        self.factor, self.min_pixels, self.max_pixels = int(factor), int(min_pixels), int(max_pixels)
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)

    def output_shape(self, height: int, width: int) -> tuple[int, int]:
        """(h', w') of an H x W image: sides multiples of ``factor``, aspect ratio kept as closely as can be."""
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

        try:
            return smart_resize(height, width, self.factor, self.min_pixels, self.max_pixels)
        except ValueError as err:  # an aspect ratio over 200
            raise ValueError(f"NativeVisionTransform: a {height} x {width} image: {err}") from None

    def __call__(self, image: np.ndarray) -> torch.Tensor:
        """Resize to ``output_shape`` (PIL bicubic), /255, normalise -> (3, h', w')."""
        _check_rgb_uint8(image, "NativeVisionTransform")
        new_h, new_w = self.output_shape(image.shape[0], image.shape[1])
        resized = np.asarray(Image.fromarray(image).resize((new_w, new_h), Image.Resampling.BICUBIC))
        return _normalise(resized.astype(np.float32) / 255.0, self.mean, self.std)


def mentions_left_or_right(text: str) -> bool:
    """True when a word of ``text`` starts with "left" or "right" (case-insensitive)."""
    return _LEFT_RIGHT.search(text) is not None


_ENHANCERS = (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color)


class Augmenter:
    """Training augmentation: brightness/contrast/saturation jitter and a left/right-safe flip.

    Hue is never changed (queries name colours). The horizontal flip (p = 0.5) moves the image
    and its masks together and is skipped when any query mentions left or right.
    """

    def __init__(self, hflip: bool = True, color_jitter: float = 0.2) -> None:
        if not 0.0 <= color_jitter < 1.0:
            raise ValueError(f"Augmenter: color_jitter must be in [0, 1), got {color_jitter}")
        self.hflip = hflip
        self.color_jitter = color_jitter

    def _jitter(self, image: np.ndarray, factors: np.ndarray, order: np.ndarray) -> np.ndarray:
        """Apply brightness, contrast and saturation (PIL ImageEnhance) in ``order`` with ``factors``."""
        pil = Image.fromarray(image)
        for k in order:
            pil = _ENHANCERS[k](pil).enhance(float(factors[k]))
        return np.asarray(pil).copy()

    def __call__(
        self, image: np.ndarray, masks: np.ndarray, queries: list[str], rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        """Augment one training image.

        image: (H, W, 3) uint8 RGB; masks: (n, H, W) integer masks of the same image; queries: the
        texts trained on this image. Returns new (image, masks) arrays; the inputs are not changed.
        The same ``rng`` draws are consumed whatever the inputs, so results are deterministic.
        """
        _check_rgb_uint8(image, "Augmenter")
        if masks.ndim != 3 or masks.shape[1:] != image.shape[:2]:
            raise ValueError(f"Augmenter: masks must be (n, H, W) with (H, W) = {image.shape[:2]}, got {masks.shape}")
        flip_draw = rng.random()
        factors = rng.uniform(1.0 - self.color_jitter, 1.0 + self.color_jitter, size=3)
        order = rng.permutation(3)
        out_image = self._jitter(image, factors, order) if self.color_jitter > 0 else image.copy()
        out_masks = masks.copy()
        if self.hflip and flip_draw < 0.5 and not any(mentions_left_or_right(q) for q in queries):
            out_image = np.ascontiguousarray(out_image[:, ::-1])
            out_masks = np.ascontiguousarray(out_masks[:, :, ::-1])
        return out_image, out_masks


@dataclass
class ImageProcessors:
    """The transforms of one model: SAM (or SAM 2) branch, vision branch, optional training augmentation."""

    sam: SamTransform | Sam2Transform
    vision: VisionTransform | NativeVisionTransform
    augmenter: Augmenter | None = None

    @property
    def geometric_augmentation(self) -> bool:
        """True when augmentation moves pixels (flips): cached SAM embeddings would then be wrong."""
        return self.augmenter is not None and self.augmenter.hflip
