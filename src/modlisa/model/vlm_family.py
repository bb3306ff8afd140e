"""What an image-text-to-text checkpoint's processor does at the run's vision input budget (the ``vlm`` preset).

``vlm_resolution: fixed``: every image V x V, N tokens. ``native`` (Qwen families): the processor's dynamic
resolution, each image h' x w' (aspect ratio kept, at most V^2 pixels, sides multiples of patch x merge), so N varies
per image: ``image_token_counts`` gives it from the (h', w') of each image.

Per family (Qwen2-VL / Qwen2.5-VL: ``qwen``; Qwen3-VL: ``qwen3``; Idefics3 / SmolVLM: ``idefics3``): the vision input
multiple, N image tokens per V x V image, the image token the chat template writes and the placeholder text around
ONE ``<image>`` that modlisa's prompts carry (``VLMFamily``); Qwen's flat patch layout (``qwen_patchify``); the
expansion of the placeholder to N model image tokens (``expand_image_ids``). No model code here: ``model/vlm.py``
runs the model; ``model/backbones.py`` loads it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from modlisa.config import ConfigError
from modlisa.model.seg import expand_image_tokens
from modlisa.types import IMAGE_TOKEN

# model_type -> family; SmolVLM-256M/500M/2.2B-Instruct are idefics3 checkpoints, SmolVLM2 is smolvlm
FAMILIES = {"qwen2_vl": "qwen", "qwen2_5_vl": "qwen", "qwen3_vl": "qwen3", "idefics3": "idefics3",
            "smolvlm": "idefics3"}
# Idefics3Processor.replace_image_token for an image without splitting (rows = cols = 0)
IDEFICS3_FAKE = "<fake_token_around_image>"
IDEFICS3_GLOBAL = "<global-img>"


@dataclass
class VLMFamily:
    """What a family's processor does, in numbers: the LM's module prefix (LoRA stays inside it), the vision input
    multiple, the image token string the chat template writes, and the placeholder text around one ``<image>``."""

    name: str
    model_type: str
    lm_prefix: str  # named-module prefix of the text model inside the *ForConditionalGeneration
    size_multiple: int  # V must be a multiple (Qwen: patch * merge; Idefics3: V = the tower's image_size)
    template_image: str  # what the chat template writes for an image item
    image_text: str  # what replaces it in modlisa's prompts (holds one IMAGE_TOKEN)
    num_image_tokens: int  # N at the run's V (native resolution: the most one image can have)
    patch_size: int = 0  # Qwen: the vision patch (a (h', w') image has (h' / patch) x (w' / patch) patches)
    merge_size: int = 1  # Qwen: patches merged per side into one token

    def grid(self, hw: Sequence[tuple[int, int]], device: torch.device | None = None) -> Tensor:
        """(n, 3) int64 ``image_grid_thw`` of n Qwen images of sizes ``hw``: (1, h' / patch, w' / patch)."""
        rows = [[1, int(h) // self.patch_size, int(w) // self.patch_size] for h, w in hw]
        return torch.tensor(rows, dtype=torch.int64, device=device).reshape(-1, 3)

    def image_token_counts(self, hw: Sequence[tuple[int, int]], device: torch.device | None = None) -> Tensor:
        """(n,) int64 image tokens of n images of vision input sizes ``hw`` (Idefics3: always N)."""
        if self.patch_size == 0:
            return torch.full((len(hw),), self.num_image_tokens, dtype=torch.int64, device=device)
        return self.grid(hw, device)[:, 1:].prod(dim=1) // self.merge_size ** 2


def family_of(config: Any, name: str) -> str:
    """The family of a checkpoint config; ConfigError naming ``vlm_model`` when it is not one modlisa drives."""
    model_type = getattr(config, "model_type", None)
    if model_type not in FAMILIES:
        raise ConfigError(f"vlm_model {name!r} has model_type {model_type!r}, not an image-text-to-text checkpoint "
                          f"the vlm preset drives; supported: {', '.join(FAMILIES)} (Qwen2-VL, Qwen2.5-VL, Qwen3-VL, "
                          "Idefics3 / SmolVLM)")
    return FAMILIES[model_type]


def image_tokens_at(config: Any, family: str, size: int) -> int:
    """N image tokens of one ``size`` x ``size`` image, by the processors' arithmetic (Qwen: (V / patch)^2 /
    merge^2; Idefics3: ``image_seq_len`` = (V / patch)^2 / scale_factor^2). The runtime takes Qwen's N from the
    image processor itself (``describe_family``); the memory planner, which has no processor, from here."""
    vision = config.vision_config
    if family in ("qwen", "qwen3"):
        return (size // int(vision.patch_size)) ** 2 // int(vision.spatial_merge_size) ** 2
    return int((size // int(vision.patch_size)) ** 2 / int(config.scale_factor) ** 2)


def configure_image_processor(image_processor: Any, family: str, size: int, resolution: str = "fixed") -> None:
    """Set the image processor to the run's input (in place; saved with an export): ``fixed``, one V x V image ->
    N tokens; ``native`` (Qwen), at most V^2 pixels and at least the checkpoint's own minimum (capped at V^2).
    ConfigError for ``native`` with a family whose processor has no dynamic resolution of one image."""
    if resolution == "native" and family not in ("qwen", "qwen3"):
        raise ConfigError("vlm_resolution: native needs a Qwen2-VL / Qwen2.5-VL / Qwen3-VL checkpoint; Idefics3 / "
                          "SmolVLM split large images into tiles instead: use vlm_resolution: fixed")
    if family in ("qwen", "qwen3"):
        least = size * size
        if resolution == "native":
            least = min(int(image_processor.size["shortest_edge"]), size * size)
        image_processor.size = {"shortest_edge": least, "longest_edge": size * size}
    else:
        image_processor.do_image_splitting = False
        image_processor.size = {"longest_edge": size}
        image_processor.max_image_size = {"longest_edge": size}


def describe_family(vlm: nn.Module, image_processor: Any, family: str, size: int, name: str) -> VLMFamily:
    """The ``VLMFamily`` of a loaded VLM at vision input size ``size``; ConfigError naming ``img_size`` when the
    size cannot give a fixed token grid."""
    config = vlm.config
    if family in ("qwen", "qwen3"):
        vision = config.vision_config
        multiple = int(vision.patch_size) * int(vision.spatial_merge_size)
        if size % multiple:
            raise ConfigError(f"img_size={size}: {name} needs a multiple of {multiple} (patch {vision.patch_size} x "
                              f"merge {vision.spatial_merge_size}), e.g. {max(multiple, size // multiple * multiple)}")
        probe = image_processor(images=[torch.zeros(3, size, size, dtype=torch.uint8).numpy().transpose(1, 2, 0)],
                                return_tensors="pt")
        grid = probe["image_grid_thw"][0]
        tokens = int(grid.prod()) // int(vision.spatial_merge_size) ** 2  # Qwen processors' count of <|image_pad|>
        return family_spec(config, family, size, tokens)
    vision = config.vision_config
    if size != int(vision.image_size):
        raise ConfigError(f"img_size={size}: {name} takes {vision.image_size} x {vision.image_size} images (its "
                          f"vision tower's image_size); set img_size: {vision.image_size}")
    return family_spec(config, family, size, image_tokens_at(config, family, size))


def family_spec(config: Any, family: str, size: int, tokens: int) -> VLMFamily:
    """The ``VLMFamily`` of a checkpoint config with N = ``tokens`` image tokens at vision input ``size``."""
    if family in ("qwen", "qwen3"):
        multiple = int(config.vision_config.patch_size) * int(config.vision_config.spatial_merge_size)
        return VLMFamily(family, config.model_type, "model.language_model", multiple, "<|image_pad|>", IMAGE_TOKEN,
                         tokens, int(config.vision_config.patch_size), int(config.vision_config.spatial_merge_size))
    return VLMFamily(family, config.model_type, "model.text_model", size, IMAGE_TOKEN,
                     f"{IDEFICS3_FAKE}{IDEFICS3_GLOBAL}{IMAGE_TOKEN}{IDEFICS3_FAKE}", tokens)


def qwen_patchify(images: Tensor, patch: int, merge: int, temporal: int) -> Tensor:
    """(B, 3, h', w') -> (B * gh * gw, 3 * temporal * patch^2) with (gh, gw) = (h', w') / patch: Qwen2-VL's image processor's flat
    patch layout (``Qwen2VLImageProcessorPil.patchify``: merge-window order, the frame repeated ``temporal`` times)."""
    batch, channel, height, width = images.shape
    gh, gw = height // patch, width // patch
    x = images.reshape(batch, channel, gh // merge, merge, patch, gw // merge, merge, patch)
    x = x.permute(0, 2, 5, 3, 6, 1, 4, 7)  # (B, gh/m, gw/m, m, m, C, p, p)
    x = x.unsqueeze(6).expand(*x.shape[:6], temporal, patch, patch)
    return x.reshape(batch * gh * gw, channel * temporal * patch * patch)


def expand_image_ids(input_ids: Tensor, image_pos: Tensor, attention_mask: Tensor, labels: Tensor | None,
                     counts: Tensor, model_image_id: int) -> tuple[Tensor, Tensor, Tensor | None]:
    """(Q, L) ids with one placeholder per row -> (Q, L') ids with ``counts[q]`` ``model_image_id`` there
    (L' = L + max(counts) - 1), the (Q, L') mask and labels (-100 on the image span and on the padding of rows with
    fewer image tokens): ``seg.expand_image_tokens`` on ids viewed as 1-channel embeddings."""
    n_max = int(counts.max())
    image = torch.full((input_ids.shape[0], n_max, 1), model_image_id, dtype=input_ids.dtype, device=input_ids.device)
    ids, mask, new_labels = expand_image_tokens(input_ids.unsqueeze(-1), image, image_pos, attention_mask, labels,
                                                counts)
    return ids[..., 0], mask, new_labels
