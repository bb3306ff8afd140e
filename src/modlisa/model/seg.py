"""Pure helpers of the LISA wiring: image-token splicing, [SEG] positions, SAM mask decoding.

Shapes: Q sequences of padded length L, N image tokens per image, L' = L + N - 1 expanded length,
h = LM hidden size, D = SAM prompt dim, S = SAM input size, (H, W) = original image size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import SamModel

from modlisa.types import IGNORE_INDEX


def image_token_positions(input_ids: Tensor, image_token_id: int) -> Tensor:
    """(Q,) index of the single ``<image>`` token of each row of ``input_ids`` (Q, L).

    Raises ValueError naming the rows that do not hold exactly one.
    """
    is_image = input_ids == image_token_id
    counts = is_image.sum(dim=1)
    bad = torch.nonzero(counts != 1).flatten().tolist()
    if bad:
        raise ValueError(f"every sequence needs exactly one <image> token (id {image_token_id}); rows {bad} "
                         f"have {counts[bad].tolist()}")
    return is_image.int().argmax(dim=1)


def rows_to_images(offsets: Tensor, num_rows: int) -> Tensor:
    """(Q,) image index of each sequence from ``offsets`` (B+1,): rows offsets[b]:offsets[b+1] belong to b."""
    counts = offsets[1:] - offsets[:-1]
    if int(offsets[0]) != 0 or int(offsets[-1]) != num_rows or bool((counts < 1).any()):
        raise ValueError(f"offsets {offsets.tolist()} do not split {num_rows} sequences into non-empty groups")
    return torch.repeat_interleave(torch.arange(len(counts), device=offsets.device), counts)


def expand_image_tokens(
    text_embeds: Tensor,
    image_embeds: Tensor,
    image_pos: Tensor,
    attention_mask: Tensor,
    labels: Tensor | None = None,
    counts: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Replace each row's ``<image>`` token by its image embeddings.

    text_embeds (Q,L,h), image_embeds (Q,N,h) (one image per row), image_pos (Q,), attention_mask (Q,L),
    labels (Q,L) or None; counts (Q,) int64: row q takes only its first ``counts[q]`` <= N image embeddings (images
    of different token counts, the vlm preset's native resolution; None: all N). Returns inputs_embeds (Q,L',h),
    attention_mask (Q,L') with 1 on the image span, labels (Q,L') with IGNORE_INDEX (-100) on the image span (or
    None); L' = L + N - 1, a row with fewer image tokens ends in N - counts[q] more padding (mask 0, label -100).
    """
    num_rows, length, _ = text_embeds.shape
    n_img = image_embeds.shape[1]
    n_row = torch.full_like(image_pos, n_img) if counts is None else counts.to(image_pos.device)
    t = torch.arange(length + n_img - 1, device=text_embeds.device).unsqueeze(0)  # (1, L')
    start = image_pos.unsqueeze(1)  # (Q, 1)
    span = n_row.unsqueeze(1)  # (Q, 1)
    in_image = (t >= start) & (t < start + span)  # (Q, L')
    in_row = t < length + span - 1  # (Q, L'): False on the extra padding of rows with fewer image tokens
    text_idx = torch.where(t < start, t, t - span + 1).clamp(0, length - 1)
    image_idx = (t - start).clamp(0, n_img - 1)

    def take(source: Tensor, index: Tensor) -> Tensor:
        return torch.gather(source, 1, index.unsqueeze(-1).expand(-1, -1, source.shape[-1]))

    embeds = torch.where(in_image.unsqueeze(-1), take(image_embeds.to(text_embeds.dtype), image_idx),
                         take(text_embeds, text_idx))
    mask = torch.where(in_image, torch.ones_like(in_image, dtype=attention_mask.dtype),
                       torch.gather(attention_mask, 1, text_idx) * in_row)
    new_labels = None
    if labels is not None:
        new_labels = torch.where(in_image | ~in_row, torch.full_like(text_idx, IGNORE_INDEX, dtype=labels.dtype),
                                 torch.gather(labels, 1, text_idx))
    return embeds, mask, new_labels


def seg_positions(
    input_ids: Tensor,
    seg_id: int,
    image_pos: Tensor,
    n_img: int | Tensor,
    attention_mask: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Where the [SEG] embeddings are read in the EXPANDED sequence (docs/LISA.md §2).

    For a [SEG] at index j of ``input_ids`` (Q, L), its expanded index is j + N - 1 when it follows the
    image token (j otherwise); the embedding is the hidden state one position before, i.e. the state
    whose logits predict [SEG]: (j - 1) + (N - 1) after the image, as LISA computes it. ``n_img``: N, or (Q,)
    image-token counts per row (images of different sizes).
    Returns (rows (K,), positions (K,)) sorted by row, then by position (K = total [SEG] count).
    """
    is_seg = input_ids == seg_id
    if attention_mask is not None:
        is_seg = is_seg & attention_mask.bool()
    rows, cols = torch.nonzero(is_seg, as_tuple=True)
    if bool((cols == 0).any()):
        raise ValueError("a [SEG] token at position 0 has no preceding hidden state")
    n_row = n_img[rows] if isinstance(n_img, Tensor) else n_img
    expanded = cols + (cols > image_pos[rows]).long() * (n_row - 1)
    return rows, expanded - 1


def postprocess_masks(low_res: Tensor, resize_hw: tuple[int, int], original_hw: tuple[int, int],
                      sam_input_size: int) -> Tensor:
    """SAM logits (n, 1, h, w) -> (n, H, W) float32 at the original size.

    Bilinear upsampling to the padded input (S, S), crop to the resized image (h_r, w_r), bilinear
    upsampling to (H, W) — SAM's ``postprocess_masks`` as LISA uses it.
    """
    masks = F.interpolate(low_res.float(), size=(sam_input_size, sam_input_size), mode="bilinear",
                          align_corners=False)
    masks = masks[..., : resize_hw[0], : resize_hw[1]]
    masks = F.interpolate(masks, size=tuple(original_hw), mode="bilinear", align_corners=False)
    return masks[:, 0]


def decode_masks(
    sam: SamModel,
    seg_prompts: Tensor,
    image_embeddings: Tensor,
    resize_hw: tuple[int, int],
    original_hw: tuple[int, int],
    sam_input_size: int,
) -> Tensor:
    """Mask logits of one image for its n projected [SEG] embeddings.

    seg_prompts (n, D): each is ONE sparse prompt token; image_embeddings (D, h', w'). The dense prompt is
    SAM's "no mask" embedding; ``multimask_output=False``. The n queries form the point-batch dimension of
    ONE decoder call. Returns (n, H, W) float32 logits (empty (0, H, W) when n == 0).
    """
    num, dim = seg_prompts.shape
    if num == 0:
        return image_embeddings.new_zeros((0, *original_hw), dtype=torch.float32)
    inputs = mask_decoder_inputs(sam, image_embeddings, seg_prompts.reshape(num, 1, dim))
    low_res, _ = sam.mask_decoder(**inputs, multimask_output=False)  # (1, n, 1, 4h', 4w')
    return postprocess_masks(low_res[0], resize_hw, original_hw, sam_input_size)


def mask_decoder_inputs(sam: nn.Module, image_embeddings: Tensor, sparse: Tensor) -> dict[str, Tensor]:
    """What SAM's (and SAM-HQ's) mask decoder takes for ONE image, in the decoder's dtype: its (D, h', w')
    embedding, the image-wide positional embedding, the (n, T, D) sparse prompts as the point-batch dimension (n
    queries, T tokens each) and SAM's "no mask" embedding as the dense prompt."""
    dtype = sam.mask_decoder.iou_token.weight.dtype
    height, width = image_embeddings.shape[-2:]
    dense = sam.prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(1, -1, height, width)
    return {"image_embeddings": image_embeddings.unsqueeze(0).to(dtype),
            "image_positional_embeddings": sam.get_image_wide_positional_embeddings().to(dtype),
            "sparse_prompt_embeddings": sparse.unsqueeze(0).to(dtype), "dense_prompt_embeddings": dense.to(dtype)}
