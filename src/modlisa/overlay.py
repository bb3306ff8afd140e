"""Pictures of masks: the image with each mask tinted and outlined (ground truth outlined in green), and PNG files.

Used by ``modlisa predict`` (``predict.save_prediction``) and by ``modlisa eval --save_masks``
(``engine.run_eval.save_mask_pictures``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

# magenta first: rare in photos and distinct from the green ground-truth outline of eval pictures
PALETTE: tuple[tuple[int, int, int], ...] = ((255, 30, 200), (30, 144, 255), (255, 200, 0), (255, 110, 0),
                                             (120, 60, 255))
GT_COLOUR = (0, 230, 0)
OVERLAY_ALPHA = 0.45


def _thickness(hw: tuple[int, int]) -> int:
    return max(1, round(min(hw) / 250))


def _draw_outline(picture: np.ndarray, mask: np.ndarray, colour: tuple[int, int, int], thickness: int) -> None:
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    cv2.drawContours(picture, contours, -1, colour, thickness)


def overlay_masks(image: np.ndarray, masks: Sequence[np.ndarray], *, gt: np.ndarray | None = None,
                  alpha: float = OVERLAY_ALPHA) -> np.ndarray:
    """The image with each mask blended in a palette colour and outlined; ``gt`` is outlined in green.

    image: (H, W, 3) uint8 RGB; masks: n arrays (H, W), non-zero = on; gt: (H, W), 1 = target.
    Returns a new (H, W, 3) uint8 RGB array; pixels off every mask and outline are unchanged.
    """
    hw = (int(image.shape[0]), int(image.shape[1]))
    picture = image.astype(np.float32)
    bool_masks = [np.asarray(m) != 0 for m in masks]
    for k, mask in enumerate(bool_masks):
        if mask.shape != hw:
            raise ValueError(f"overlay_masks: mask {k} has shape {mask.shape}, the image {hw}")
        colour = np.asarray(PALETTE[k % len(PALETTE)], dtype=np.float32)
        picture[mask] = (1.0 - alpha) * picture[mask] + alpha * colour
    picture = np.ascontiguousarray(np.clip(np.rint(picture), 0, 255).astype(np.uint8))
    thickness = _thickness(hw)
    for k, mask in enumerate(bool_masks):
        _draw_outline(picture, mask, PALETTE[k % len(PALETTE)], thickness)
    if gt is not None:
        _draw_outline(picture, np.asarray(gt) == 1, GT_COLOUR, thickness)
    return picture


def write_png(array: np.ndarray, path: Path) -> Path:
    """Write an (H, W) bool/0-1 mask as 0/255 grey PNG, or an (H, W, 3) uint8 RGB picture."""
    if array.ndim == 2:
        array = np.where(array != 0, 255, 0).astype(np.uint8)
    Image.fromarray(array).save(path)
    return path
