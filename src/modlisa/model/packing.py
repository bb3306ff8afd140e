"""Shared-image query packing (``TrainingConfig.pack_queries``): the queries of one image in ONE LM sequence.

LISA gives every query its own sequence ``prefix <image> question answer``, so the LM processes the prefix
(system text, BOS) and the N image tokens once per query. Packed, image b's row is

    prefix + image span (once) | segment 1 (query 1's text after the image) | segment 2 | ...

with a block attention mask (a segment attends to the shared prefix + image span and causally to itself, never
to another segment) and position ids that restart after the image span for every segment: each segment computes
exactly what its own unpacked sequence computes (up to float round-off of the attention kernels).

Everything here works in the EXPANDED sequence (after the image features were spliced in): the model packs the
spliced rows, runs the LM on (B, Lp) and maps logits / hidden states back to the unpacked (Q, L') layout, so
labels, the [SEG] gather and the losses are those of the unpacked batch. Shapes: Q rows, L' expanded length,
B images, Lp packed length, N image tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor


@dataclass
class PackPlan:
    """Index maps between the unpacked (Q, L') rows and the packed (B, Lp) rows.

    gather:       (B, Lp) flat index into the unpacked (Q * L') tokens of each packed token (pads: 0).
    segment:      (B, Lp) -1 on the shared prefix + image span, j >= 0 on segment j, -2 on padding.
    position_ids: (B, Lp) int64: t for the shared span, the unpacked row's position for each segment token.
    scatter:      (Q, L') flat index into the packed (B * Lp) tokens of each unpacked token (padding: 0).
    """

    gather: Tensor
    segment: Tensor
    position_ids: Tensor
    scatter: Tensor

    @property
    def length(self) -> int:
        return int(self.gather.shape[1])


def _row_lengths(mask: Tensor) -> list[int]:
    """Real-token count of each right-padded row of ``mask`` (Q, L'); ValueError when a row is not right-padded."""
    lengths = mask.sum(dim=1)
    t = torch.arange(mask.shape[1], device=mask.device).unsqueeze(0)
    if not bool(((t < lengths.unsqueeze(1)) == mask.bool()).all()):
        raise ValueError("pack_queries needs right-padded rows (real tokens first, then padding)")
    return lengths.tolist()


def packed_lengths(attention_mask: Tensor, image_pos: Tensor, offsets: list[int], n_img: int) -> list[int]:
    """Lp_b of each image: shared (prefix + N) + the text after the image of each of its rows.

    attention_mask (Q, L) of the UNEXPANDED rows, image_pos (Q,) their <image> index.
    """
    lengths = attention_mask.sum(dim=1).tolist()
    out = []
    for b in range(len(offsets) - 1):
        rows = range(offsets[b], offsets[b + 1])
        shared = int(image_pos[offsets[b]]) + 1  # prefix + the <image> token (N after the splice)
        out.append(shared + n_img - 1 + sum(int(lengths[r]) - shared for r in rows))
    return out


def plan_packing(mask: Tensor, image_pos: Tensor, offsets: list[int], n_img: int) -> PackPlan:
    """The index maps that pack the expanded rows (``mask`` (Q, L'), right-padded) image by image.

    image_pos (Q,) is each row's image-span start in the expanded sequence (= its <image> index), N = ``n_img``.
    """
    num_rows, length = mask.shape
    lengths = _row_lengths(mask)
    device = mask.device
    plans: list[tuple[list[int], list[int], list[int]]] = []
    scatter = torch.zeros(num_rows, length, dtype=torch.int64)
    for b in range(len(offsets) - 1):
        first = offsets[b]
        shared = int(image_pos[first]) + n_img
        gather = [first * length + t for t in range(shared)]
        segment = [-1] * shared
        position = list(range(shared))
        scatter[first, :shared] = torch.arange(shared)
        for j, r in enumerate(range(first, offsets[b + 1])):
            count = lengths[r] - shared
            start = len(gather)
            gather += [r * length + t for t in range(shared, lengths[r])]
            segment += [j] * count
            position += list(range(shared, lengths[r]))
            scatter[r, :shared] = torch.arange(shared)
            scatter[r, shared:lengths[r]] = torch.arange(start, start + count)
        plans.append((gather, segment, position))
    packed = max(len(g) for g, _, _ in plans)
    gather_t = torch.zeros(len(plans), packed, dtype=torch.int64)
    segment_t = torch.full((len(plans), packed), -2, dtype=torch.int64)
    position_t = torch.zeros(len(plans), packed, dtype=torch.int64)
    for b, (gather, segment, position) in enumerate(plans):
        gather_t[b, :len(gather)] = torch.tensor(gather)
        segment_t[b, :len(segment)] = torch.tensor(segment)
        position_t[b, :len(position)] = torch.tensor(position)
        scatter[offsets[b]:offsets[b + 1]] += b * packed
    return PackPlan(gather_t.to(device), segment_t.to(device), position_t.to(device), scatter.to(device))


MASK_KINDS = {"sdpa": "bool", "eager": "float"}  # the LM attention implementations that honour a custom 4D mask


def mask_kind(text_config: Any) -> str:
    """"bool" (sdpa) or "float" (eager): the 4D mask the LM's attention reads as given.

    Transformers (5.x) passes a 4D ``attention_mask`` to the attention as it is: sdpa reads a bool mask whatever
    the query dtype (autocast), eager ADDS the mask to the scores (a float mask).
    """
    return MASK_KINDS[getattr(text_config, "_attn_implementation", None) or "eager"]


def pack_blocker(text_config: Any, expanded_length: int, input_ids: Tensor, image_pos: Tensor,
                 offsets: list[int]) -> str | None:
    """Why these rows cannot be packed exactly (the model then runs them unpacked: same losses, more LM tokens),
    or None when they can.

    Packing needs 1D rotary positions (not Qwen's M-RoPE), an attention implementation that honours a custom 4D
    mask (sdpa or eager; flash attention ignores it), no sliding window the unpacked rows would reach (the block mask has no window), and one
    shared prompt prefix per image (rows of an image equal up to and including their <image> token).
    """
    rope = getattr(text_config, "rope_parameters", None) or getattr(text_config, "rope_scaling", None) or {}
    if isinstance(rope, dict) and rope.get("mrope_section"):
        return "the LM's position ids are multimodal RoPE (M-RoPE, 3 x B x L), which the packed 1D positions do not give"
    impl = getattr(text_config, "_attn_implementation", None) or "eager"
    if impl not in MASK_KINDS:
        return f"the LM's attention implementation is {impl!r}, which ignores a custom 4D mask (sdpa or eager do not)"
    window = getattr(text_config, "sliding_window", None)
    if window and expanded_length > int(window):
        return f"sequences of {expanded_length} tokens exceed the LM's sliding window ({window})"
    for b in range(len(offsets) - 1):
        first = offsets[b]
        end = int(image_pos[first]) + 1
        for r in range(first + 1, offsets[b + 1]):
            if int(image_pos[r]) + 1 != end or not torch.equal(input_ids[r, :end], input_ids[first, :end]):
                return f"rows {first} and {r} of image {b} differ before the image token (no shared prefix)"
    return None


def packed_labels(labels: Tensor, plan: PackPlan) -> Tensor | None:
    """(B, Lp) labels for the PACKED logits such that the causal-LM loss over (B, Lp) -- logits[:, t] predict
    labels[:, t + 1] -- counts exactly the (position, target) pairs of the unpacked (Q, L') rows; None when no
    such labels exist (a supervised token right after the image span, which every row would predict from the one
    shared span): then the logits must be unpacked.

    ``labels`` (Q, L') expanded, -100 where nothing is predicted.
    """
    ignore = -100
    target = torch.full_like(labels, ignore)  # target[r, t] = labels[r, t + 1]: what position t predicts
    target[:, :-1] = labels[:, 1:]
    # every row's targets on the shared span must be ignored (the span is computed, and would be counted, once);
    # an unpacked position is on it when it maps to a shared packed token (padding maps there too: ignored targets)
    on_shared = plan.segment.reshape(-1)[plan.scatter] == -1  # (Q, L')
    if bool((target[on_shared] != ignore).any()):
        return None
    packed_target = pack(target, plan)
    packed_target[plan.segment == -2] = ignore
    out = torch.full_like(packed_target, ignore)
    out[:, 1:] = packed_target[:, :-1]
    if bool((packed_target[:, -1] != ignore).any()):
        return None
    return out


def block_attention_mask(segment: Tensor, dtype: torch.dtype | None = None) -> Tensor:
    """(B, 1, Lp, Lp) mask of the packed rows: bool (True = attend) when ``dtype`` is None, else additive float
    of ``dtype`` (0 = attend, dtype's min = blocked).

    Token i attends to token j <= i when j is on the shared span (-1) or on i's own segment; padding (-2)
    attends only to itself (no row is fully blocked, so no softmax over nothing).
    """
    length = segment.shape[1]
    idx = torch.arange(length, device=segment.device)
    causal = idx.unsqueeze(0) <= idx.unsqueeze(1)  # (Lp, Lp): [i, j] = j <= i
    seg_i, seg_j = segment.unsqueeze(2), segment.unsqueeze(1)  # (B, Lp, 1), (B, 1, Lp)
    allowed = causal & (seg_i != -2) & ((seg_j == -1) | ((seg_j == seg_i) & (seg_j >= 0)))
    allowed = allowed | torch.eye(length, dtype=torch.bool, device=segment.device)
    if dtype is None:
        return allowed.unsqueeze(1)
    blocked = torch.zeros(allowed.shape, dtype=dtype, device=segment.device)
    blocked.masked_fill_(~allowed, torch.finfo(dtype).min)
    return blocked.unsqueeze(1)


def pack(values: Tensor, plan: PackPlan) -> Tensor:
    """(Q, L', ...) unpacked -> (B, Lp, ...) packed (padding holds a copy of token 0)."""
    flat = values.reshape(-1, *values.shape[2:])
    return flat[plan.gather.reshape(-1)].reshape(*plan.gather.shape, *values.shape[2:])


def unpack(values: Tensor, plan: PackPlan) -> Tensor:
    """(B, Lp, ...) packed -> (Q, L', ...) unpacked (an unpacked padding position reads packed token 0)."""
    flat = values.reshape(-1, *values.shape[2:])
    return flat[plan.scatter.reshape(-1)].reshape(*plan.scatter.shape, *values.shape[2:])


def lm_tokens(input_ids: Tensor, attention_mask: Tensor, offsets: list[int], image_token_id: int, n_img: int,
              pack: bool) -> int:
    """Tokens the LM processes (padding included) for one collated batch: Q * L' unpacked, B * Lp packed."""
    num_rows, length = input_ids.shape
    if not pack or num_rows == len(offsets) - 1:
        return num_rows * (length + n_img - 1)
    image_pos = (input_ids == image_token_id).int().argmax(dim=1)
    return (len(offsets) - 1) * max(packed_lengths(attention_mask, image_pos, offsets, n_img))
