"""Original segment-anything checkpoints (``sam_vit_b_01ec64.pth``, ``sam_vit_l_0b3195.pth``,
``sam_vit_h_4b8939.pth``, or SAM inside a LISA checkpoint) -> a transformers ``SamModel``.

The key mapping is the one transformers' ``models/sam/convert_sam_to_hf.py`` applies (its
``KEYS_TO_MODIFY_MAPPING`` and the hypernetwork-MLP renumbering), written here as one full-match rule per
original parameter, so that every key is either mapped, known to be derived (``pixel_mean`` / ``pixel_std``:
SAM's normalisation, which ``SamTransform`` applies), or reported. Tensors are not changed: the image
encoder's attention keeps ONE fused ``qkv`` projection and its ``rel_pos_h`` / ``rel_pos_w`` tables in both
codebases; the prompt encoder's random-Fourier matrix ``pe_layer.positional_encoding_gaussian_matrix`` becomes
``shared_image_embedding.positional_embedding`` (tied to ``prompt_encoder.shared_embedding``).

The ``SamConfig`` is read off the shapes (ViT-B / L / H are recognised by width, depth and global-attention
blocks; other sizes are converted as they are). One number is not in the weights: the heads of the mask
decoder's two-way transformer, 8 in every released SAM (``build_sam.py``).
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

from torch import Tensor
from transformers import SamConfig, SamMaskDecoderConfig, SamModel, SamPromptEncoderConfig, SamVisionConfig

from modlisa.convert.assign import assign_state
from modlisa.weights.files import WeightsError, read_torch_safely

logger = logging.getLogger(__name__)

ORIGINAL_PARTS = ("image_encoder.", "prompt_encoder.", "mask_decoder.")
DERIVED_KEYS = ("pixel_mean", "pixel_std")  # normalisation constants, not weights
MASK_DECODER_HEADS = 8  # TwoWayTransformer(num_heads=8) of segment_anything's build_sam.py
LAYER_NORM_EPS = 1e-6  # LayerNorm(eps=1e-6) / LayerNorm2d(eps=1e-6) throughout segment_anything

# variant -> (width, depth, global-attention blocks, heads) of segment_anything's build_sam.py
VARIANTS: dict[str, tuple[int, int, tuple[int, ...], int]] = {
    "vit_b": (768, 12, (2, 5, 8, 11), 12),
    "vit_l": (1024, 24, (5, 11, 17, 23), 16),
    "vit_h": (1280, 32, (7, 15, 23, 31), 16),
}

_P = r"(weight|bias)"
_PROJ = r"(q_proj|k_proj|v_proj|out_proj)"
# (full-match pattern over an original key, its SamModel name)
RULES: tuple[tuple[str, str], ...] = (
    (r"image_encoder\.pos_embed", r"vision_encoder.pos_embed"),
    (rf"image_encoder\.patch_embed\.proj\.{_P}", r"vision_encoder.patch_embed.projection.\1"),
    (rf"image_encoder\.blocks\.(\d+)\.norm([12])\.{_P}", r"vision_encoder.layers.\1.layer_norm\2.\3"),
    (rf"image_encoder\.blocks\.(\d+)\.attn\.(qkv|proj)\.{_P}", r"vision_encoder.layers.\1.attn.\2.\3"),
    (r"image_encoder\.blocks\.(\d+)\.attn\.rel_pos_([hw])", r"vision_encoder.layers.\1.attn.rel_pos_\2"),
    (rf"image_encoder\.blocks\.(\d+)\.mlp\.lin([12])\.{_P}", r"vision_encoder.layers.\1.mlp.lin\2.\3"),
    (r"image_encoder\.neck\.0\.weight", r"vision_encoder.neck.conv1.weight"),
    (rf"image_encoder\.neck\.1\.{_P}", r"vision_encoder.neck.layer_norm1.\1"),
    (r"image_encoder\.neck\.2\.weight", r"vision_encoder.neck.conv2.weight"),
    (rf"image_encoder\.neck\.3\.{_P}", r"vision_encoder.neck.layer_norm2.\1"),
    (r"prompt_encoder\.pe_layer\.positional_encoding_gaussian_matrix", r"shared_image_embedding.positional_embedding"),
    (r"prompt_encoder\.point_embeddings\.(\d+)\.weight", r"prompt_encoder.point_embed.\1.weight"),
    (r"prompt_encoder\.(not_a_point_embed|no_mask_embed)\.weight", r"prompt_encoder.\1.weight"),
    (rf"prompt_encoder\.mask_downscaling\.0\.{_P}", r"prompt_encoder.mask_embed.conv1.\1"),
    (rf"prompt_encoder\.mask_downscaling\.1\.{_P}", r"prompt_encoder.mask_embed.layer_norm1.\1"),
    (rf"prompt_encoder\.mask_downscaling\.3\.{_P}", r"prompt_encoder.mask_embed.conv2.\1"),
    (rf"prompt_encoder\.mask_downscaling\.4\.{_P}", r"prompt_encoder.mask_embed.layer_norm2.\1"),
    (rf"prompt_encoder\.mask_downscaling\.6\.{_P}", r"prompt_encoder.mask_embed.conv3.\1"),
    (r"mask_decoder\.(iou_token|mask_tokens)\.weight", r"mask_decoder.\1.weight"),
    (rf"mask_decoder\.transformer\.layers\.(\d+)\.(self_attn|cross_attn_token_to_image|cross_attn_image_to_token)"
     rf"\.{_PROJ}\.{_P}", r"mask_decoder.transformer.layers.\1.\2.\3.\4"),
    (rf"mask_decoder\.transformer\.layers\.(\d+)\.norm([1-4])\.{_P}", r"mask_decoder.transformer.layers.\1.layer_norm\2.\3"),
    (rf"mask_decoder\.transformer\.layers\.(\d+)\.mlp\.lin([12])\.{_P}", r"mask_decoder.transformer.layers.\1.mlp.lin\2.\3"),
    (rf"mask_decoder\.transformer\.final_attn_token_to_image\.{_PROJ}\.{_P}",
     r"mask_decoder.transformer.final_attn_token_to_image.\1.\2"),
    (rf"mask_decoder\.transformer\.norm_final_attn\.{_P}", r"mask_decoder.transformer.layer_norm_final_attn.\1"),
    (rf"mask_decoder\.output_upscaling\.0\.{_P}", r"mask_decoder.upscale_conv1.\1"),
    (rf"mask_decoder\.output_upscaling\.1\.{_P}", r"mask_decoder.upscale_layer_norm.\1"),
    (rf"mask_decoder\.output_upscaling\.3\.{_P}", r"mask_decoder.upscale_conv2.\1"),
)
_COMPILED = tuple((re.compile(pattern), target) for pattern, target in RULES)
# segment_anything's MLP(num_layers=d) holds layers.0 .. layers.(d-1); transformers' SamFeedForward names them
# proj_in, layers.0 .. layers.(d-3), proj_out
_MLP = re.compile(rf"(mask_decoder\.output_hypernetworks_mlps\.\d+|mask_decoder\.iou_prediction_head)\.layers\.(\d+)\.{_P}")


def _mlp_depths(keys: list[str]) -> dict[str, int]:
    depths: dict[str, int] = {}
    for key in keys:
        match = _MLP.fullmatch(key)
        if match:
            depths[match[1]] = max(depths.get(match[1], 0), int(match[2]) + 1)
    return depths


def _mlp_name(match: re.Match[str], depth: int) -> str:
    index = int(match[2])
    part = "proj_in" if index == 0 else "proj_out" if index == depth - 1 else f"layers.{index - 1}"
    return f"{match[1]}.{part}.{match[3]}"


def map_key(key: str, mlp_depths: dict[str, int]) -> str | None:
    """The SamModel name of original key ``key`` (None: no rule maps it)."""
    for pattern, target in _COMPILED:
        if pattern.fullmatch(key):
            return pattern.sub(target, key)
    match = _MLP.fullmatch(key)
    return _mlp_name(match, mlp_depths[match[1]]) if match else None


def convert_state(state: dict[str, Tensor], source: str) -> dict[str, Tensor]:
    """Original SAM naming (``image_encoder.*``, ``prompt_encoder.*``, ``mask_decoder.*``) -> SamModel naming.

    ``pixel_mean`` / ``pixel_std`` are dropped; any other key no rule maps is a WeightsError naming ``source``.
    """
    keys = [k for k in state if k not in DERIVED_KEYS]
    depths = _mlp_depths(keys)
    out: dict[str, Tensor] = {}
    unmapped = []
    for key in keys:
        name = map_key(key, depths)
        if name is None:
            unmapped.append(key)
        else:
            out[name] = state[key]
    if unmapped:
        raise WeightsError(f"{source}: {len(unmapped)} key(s) of the SAM weights have no SamModel counterpart: "
                           f"{', '.join(unmapped[:8])}{' ...' if len(unmapped) > 8 else ''}")
    return out


# ---------------------------------------------------------------------- config from shapes
def _need(state: dict[str, Tensor], key: str, source: str) -> Tensor:
    if key not in state:
        raise WeightsError(f"{source}: not an original SAM checkpoint ({key} is missing)")
    return state[key]


def _count(state: dict[str, Tensor], pattern: str) -> int:
    compiled = re.compile(pattern)
    return len({m[1] for k in state if (m := compiled.match(k))})


def _vision_config(state: dict[str, Tensor], source: str) -> tuple[SamVisionConfig, str]:
    patch = _need(state, "image_encoder.patch_embed.proj.weight", source)
    width, channels, patch_size = int(patch.shape[0]), int(patch.shape[1]), int(patch.shape[2])
    grid = int(_need(state, "image_encoder.pos_embed", source).shape[1])
    depth = _count(state, r"image_encoder\.blocks\.(\d+)\.")
    head_dim = int(_need(state, "image_encoder.blocks.0.attn.rel_pos_h", source).shape[1])
    spans = [int(_need(state, f"image_encoder.blocks.{i}.attn.rel_pos_h", source).shape[0]) for i in range(depth)]
    global_blocks = tuple(i for i, span in enumerate(spans) if span == 2 * grid - 1)
    windows = {(span + 1) // 2 for i, span in enumerate(spans) if i not in global_blocks}
    if len(windows) > 1 or width % head_dim:
        raise WeightsError(f"{source}: image-encoder attention tables do not describe one SAM ViT "
                           f"(widths {width}, head dim {head_dim}, window sizes {sorted(windows)})")
    heads = width // head_dim
    variant = next((name for name, spec in VARIANTS.items() if spec == (width, depth, global_blocks, heads)), "custom")
    config = SamVisionConfig(
        hidden_size=width, num_hidden_layers=depth, num_attention_heads=heads, num_channels=channels,
        image_size=grid * patch_size, patch_size=patch_size, layer_norm_eps=LAYER_NORM_EPS,
        qkv_bias="image_encoder.blocks.0.attn.qkv.bias" in state, use_abs_pos=True, use_rel_pos=True,
        window_size=windows.pop() if windows else 0, global_attn_indexes=list(global_blocks),
        mlp_dim=int(_need(state, "image_encoder.blocks.0.mlp.lin1.weight", source).shape[0]),
        output_channels=int(_need(state, "image_encoder.neck.0.weight", source).shape[0]),
        num_pos_feats=int(_need(state, "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix", source).shape[1]),
    )
    return config, variant


def sam_config(state: dict[str, Tensor], source: str) -> tuple[SamConfig, str]:
    """(SamConfig, variant) of an original SAM state dict: variant is vit_b, vit_l, vit_h or custom."""
    vision, variant = _vision_config(state, source)
    dim = int(_need(state, "mask_decoder.iou_token.weight", source).shape[1])
    prompt = SamPromptEncoderConfig(
        hidden_size=dim, image_size=vision.image_size, patch_size=vision.patch_size,
        mask_input_channels=int(_need(state, "prompt_encoder.mask_downscaling.3.weight", source).shape[0]),
        num_point_embeddings=_count(state, r"prompt_encoder\.point_embeddings\.(\d+)\."),
        layer_norm_eps=LAYER_NORM_EPS,
    )
    depths = _mlp_depths(list(state))
    cross = _need(state, "mask_decoder.transformer.layers.0.cross_attn_token_to_image.q_proj.weight", source)
    decoder = SamMaskDecoderConfig(
        hidden_size=dim, num_attention_heads=MASK_DECODER_HEADS,
        num_hidden_layers=_count(state, r"mask_decoder\.transformer\.layers\.(\d+)\."),
        mlp_dim=int(_need(state, "mask_decoder.transformer.layers.0.mlp.lin1.weight", source).shape[0]),
        attention_downsample_rate=dim // int(cross.shape[0]),
        num_multimask_outputs=int(_need(state, "mask_decoder.mask_tokens.weight", source).shape[0]) - 1,
        iou_head_depth=depths.get("mask_decoder.iou_prediction_head", 3),
        iou_head_hidden_dim=int(_need(state, "mask_decoder.iou_prediction_head.layers.0.weight", source).shape[0]),
        layer_norm_eps=LAYER_NORM_EPS,
    )
    return SamConfig(vision_config=vision, prompt_encoder_config=prompt, mask_decoder_config=decoder), variant


# ---------------------------------------------------------------------- loading
def sam_from_original_state(state: dict[str, Tensor], source: str) -> tuple[SamModel, str]:
    """(SamModel holding the tensors of original-naming ``state`` (no copy), variant: vit_b / vit_l / vit_h /
    custom); WeightsError naming ``source`` when a key is unmapped, missing or shaped otherwise than the config
    read off the shapes."""
    if not any(k.startswith(ORIGINAL_PARTS) for k in state):
        raise WeightsError(f"{source}: not an original SAM checkpoint (no image_encoder.* / prompt_encoder.* / "
                           "mask_decoder.* keys)")
    config, variant = sam_config(state, source)
    converted = convert_state(state, source)
    sam = assign_state(lambda: SamModel(config), converted, source)
    logger.info("%s: original SAM %s (%d tensors) converted to SamModel (%dx%d inputs)", source, variant,
                len(converted), config.vision_config.image_size, config.vision_config.image_size)
    return sam, variant


def read_original_state(path: str | os.PathLike[str]) -> dict[str, Tensor]:
    """The tensors of an original SAM ``.pth`` (``torch.load(weights_only=True)``, memory-mapped): a flat state
    dict, or one under a ``model`` / ``state_dict`` key. WeightsError naming the file for any other content."""
    data = read_torch_safely(path, what="SAM checkpoint", mmap=True)
    for key in ("model", "state_dict"):
        if isinstance(data, dict) and isinstance(data.get(key), dict):
            data = data[key]
    if not isinstance(data, dict) or not data or not all(isinstance(k, str) for k in data):
        raise WeightsError(f"{path}: not an original SAM checkpoint (expected a mapping of tensor names)")
    bad = [k for k, v in data.items() if not isinstance(v, Tensor)]
    if bad:
        raise WeightsError(f"{path}: not an original SAM checkpoint ({bad[0]} is not a tensor)")
    return data


def load_original_sam(path: str | os.PathLike[str]) -> SamModel:
    """``SamModel`` from an original segment-anything checkpoint file (vit_b / vit_l / vit_h detected)."""
    return sam_from_original_state(read_original_state(path), str(path))[0]


def is_original_checkpoint(name: str) -> bool:
    """True when ``name`` (a ``sam_model`` value) is a file: a Hugging Face id or folder never is."""
    return Path(name).expanduser().is_file()
