"""Write ``tests/data/sam2_processor_golden.npz``: what transformers' SAM 2 processor makes of fixed inputs.

``Sam2ImageProcessor`` needs torchvision, which does not install beside this project's torch pin, so
``tests/test_sam2.py`` compares our SAM 2 transform and mask postprocessing against these stored outputs (and
against the live processor wherever torchvision imports). Run with torchvision importable::

    python tests/make_sam2_golden.py

Inputs are regenerated from seeds by ``golden_inputs`` (shared with the test), only outputs are stored.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

GOLDEN = Path(__file__).resolve().parent / "data" / "sam2_processor_golden.npz"
# (H, W, S): upscaling, mixed, and downscaling (antialiasing) cases of the image transform
IMAGE_CASES = ((37, 53, 32), (90, 40, 48), (200, 150, 64))
# original (H, W) of the mask postprocessing cases; logits are (2, 1, 16, 16)
MASK_SIZES = ((37, 53), (90, 40), (13, 200))


def golden_inputs() -> tuple[list[np.ndarray], list[torch.Tensor]]:
    """(images (H, W, 3) uint8 of IMAGE_CASES, low-res logits (2, 1, 16, 16) float32 per MASK_SIZES entry)."""
    rng = np.random.default_rng(15)
    images = [rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8) for h, w, _ in IMAGE_CASES]
    logits = [torch.from_numpy(rng.normal(0.0, 4.0, size=(2, 1, 16, 16)).astype(np.float32)) for _ in MASK_SIZES]
    return images, logits


def processor_outputs() -> dict[str, np.ndarray]:
    """The live ``Sam2ImageProcessor``'s pixel_values and ``Sam2Processor.post_process_masks`` (binarize=False)."""
    from transformers import Sam2ImageProcessor, Sam2Processor

    images, logits = golden_inputs()
    out = {}
    for i, (image, (_, _, size)) in enumerate(zip(images, IMAGE_CASES)):
        processor = Sam2ImageProcessor(size={"height": size, "width": size})
        out[f"pixels_{i}"] = processor(images=image, return_tensors="pt").pixel_values[0].numpy()
    processor = Sam2Processor(image_processor=Sam2ImageProcessor())
    masks = processor.post_process_masks(logits, [list(hw) for hw in MASK_SIZES], binarize=False)
    for i, mask in enumerate(masks):
        out[f"masks_{i}"] = mask[:, 0].numpy()
    return out


if __name__ == "__main__":
    GOLDEN.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(GOLDEN, **processor_outputs())
    print(f"wrote {GOLDEN}")
