"""The ``vlm`` preset's reasoner: any image-text-to-text checkpoint (Qwen2.5-VL, Qwen3-VL, Idefics3 / SmolVLM,
SmolVLM2).

The batch stays modlisa's: one ``<image>`` placeholder per token row, ``vision_images`` stacked. With
``vlm_resolution: fixed`` every image is V x V (``img_size``) and gives the same N image tokens; with ``native``
(Qwen) each image keeps its aspect ratio (``NativeVisionTransform``: at most V^2 pixels), the batch holds them
zero-padded to (B, 3, max h', max w') with their sizes in ``Batch.vision_hw``, and image b gives N_b tokens
(``VLMFamily.image_token_counts``): rows are expanded to L' = L + max N_b - 1, shorter ones padded at the end.
What the checkpoint's own processor would do is reproduced per family (``VLMFamily``) and done by transformers'
modules:

- Image tokens. The chat template renders the image item (Qwen: ``<|vision_start|><|image_pad|><|vision_end|>``,
  Idefics3: ``<image>``); the processor's expansion of that one image token, collapsed to ONE ``<image>``, is the
  prompt's placeholder text (``image_text``: Qwen ``<image>`` inside the template's vision start / end,
  Idefics3 ``<fake_token_around_image><global-img><image><fake_token_around_image>``: its processor's string for
  an image without splitting). N comes from the image processor (Qwen: the patch grid / merge^2 of each image's
  (h', w'); Idefics3: ``image_seq_len``, splitting off, longest edge V).
- Pixels. ``vision_images`` are normalised with the image processor's mean / std; Qwen's flat patch layout is the
  image processor's ``patchify`` (``qwen_patchify`` of each image at its own size, concatenated, with the
  (B, 3) ``image_grid_thw``; checked equal to the processor's in tests/test_vlm.py); Idefics3 takes (B, 1, 3, V, V).
- Features. The model's own ``get_image_features`` (vision tower + merger / connector; Qwen3-VL's DeepStack
  features ride along as extra channels of the (B, N, (1 + k) h) tensor).
- Splice and positions. The placeholder becomes N copies of the model's image token id (``expand_image_ids``: the
  same index arithmetic as ``seg.expand_image_tokens``, so labels, masks and the [SEG] gather are those of the
  other presets), and the VLM itself runs on those ids with the precomputed features (``mm_encoder_outputs``): its
  own splice (``masked_scatter`` / ``inputs_merger``), DeepStack, and the position ids given explicitly: Qwen's
  M-RoPE (3, Q, L') from ``model.model.get_rope_index``; Idefics3's 1D positions (None: the LM's own).
- [SEG]: the hidden state one position before each [SEG] of the expanded sequence (``seg.seg_positions``).
- Query packing: Idefics3 (1D RoPE) packs exactly as the other presets (its own ``inputs_merger`` splices, then
  ``ModifiedLISA._packed_lm``); Qwen's 3D M-RoPE positions make ``packing.pack_blocker`` fall back to unpacked rows
  with its one warning.

Shapes: B images, Q rows, L token length, N image tokens (N_b per image, N = max), L' = L + N - 1, h LM hidden
size, V vision input size, (h', w') one image's native vision input size.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import Tensor, nn

from modlisa.model import packing
from modlisa.model.adapters import unwrap_lm
from modlisa.model.lisa import ModifiedLISA, _compute_dtype
from modlisa.model.seg import image_token_positions, rows_to_images, seg_positions
from modlisa.model.vlm_family import VLMFamily, expand_image_ids, qwen_patchify

logger = logging.getLogger(__name__)

PACK_REASON = "the VLM's own forward adds vision features inside the LM (DeepStack), which the packed rows do not drive"


class VLMLISA(ModifiedLISA):
    """ModifiedLISA whose reasoner is a whole image-text-to-text model (``language_model``: the
    ``*ForConditionalGeneration``, LoRA-wrapped or not). ``vision_tower`` / ``projector`` are ITS vision tower and
    merger / connector (the same modules, registered again so freezing and ``freeze_image_encoder`` see them;
    Qwen's merger lives inside its tower: ``projector`` is then an ``nn.Identity``)."""

    def __init__(self, *args: Any, family: VLMFamily, model_image_token_id: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.family = family
        self.model_image_token_id = int(model_image_token_id)
        self.lora_scope = family.lm_prefix  # adapters.py: LoRA only inside the text model
        self.image_processor: Any = None  # the configured HF image processor (saved with an export)

    # ------------------------------------------------------------------ the model's own parts
    @property
    def vlm(self) -> nn.Module:
        """The transformers ``*ForConditionalGeneration`` (inside peft's wrapper when LoRA is on)."""
        return unwrap_lm(self.language_model)

    @property
    def num_image_tokens(self) -> int:
        return self.family.num_image_tokens

    def encode_images(self, vision_images: Tensor, vision_hw: list[tuple[int, int]] | None = None) -> Tensor:
        """(B, 3, V, V) processor-normalised images (native resolution: image b in the top-left ``vision_hw[b]``
        of a zero-padded (B, 3, h'max, w'max)) -> (B, N, C) features of the model's own ``get_image_features``,
        image b's N_b in its first rows (the rest zero): C = h, or (1 + k) h for Qwen3-VL (k DeepStack levels
        after the merged features)."""
        vlm = self.vlm
        if self.family.name == "idefics3":
            out = vlm.model.get_image_features(vision_images.unsqueeze(1))
            return torch.stack(list(out.pooler_output))
        sizes = vision_hw or [tuple(vision_images.shape[-2:])] * vision_images.shape[0]
        vision = vlm.config.vision_config
        patches = torch.cat([qwen_patchify(image[None, :, :h, :w], vision.patch_size, vision.spatial_merge_size,
                                           vision.temporal_patch_size) for image, (h, w) in zip(vision_images, sizes)])
        out = vlm.model.get_image_features(patches, self.family.grid(sizes, vision_images.device))
        levels = [out.pooler_output, *(getattr(out, "deepstack_features", None) or [])]
        return torch.cat([nn.utils.rnn.pad_sequence(list(level), batch_first=True) for level in levels], dim=-1)

    def encode_batch_images(self, batch: Any) -> Tensor:
        """(B, N, C) ``encode_images`` of the batch's images, each at its ``Batch.vision_hw`` size."""
        return self.encode_images(batch.vision_images, batch.vision_sizes())

    def _row_images(self, batch: Any) -> tuple[Tensor, list[tuple[int, int]]]:
        """(Q,) image tokens of each row's image and the Q (h', w') vision input sizes of the rows' images."""
        sizes = batch.vision_sizes()
        row_hw = [sizes[b] for b in rows_to_images(batch.offsets, batch.input_ids.shape[0]).tolist()]
        return self.family.image_token_counts(row_hw, batch.input_ids.device), row_hw

    def _image_outputs(self, features: Tensor, counts: Tensor) -> dict[str, Any]:
        """(Q, N, C) features, row q's first ``counts[q]`` real -> the ``mm_encoder_outputs`` the VLM's forward
        takes precomputed (one (N_q, h) tensor per row)."""
        from transformers.modeling_outputs import BaseModelOutputWithPooling

        hidden = self.vlm.config.get_text_config().hidden_size
        rows = [row[:n] for row, n in zip(features, counts.tolist())]
        pooled = [row[:, :hidden] for row in rows]
        if self.family.name != "qwen3":
            return {"image": BaseModelOutputWithPooling(pooler_output=pooled)}
        from transformers.models.qwen3_vl.modeling_qwen3_vl import BaseModelOutputWithDeepstackFeatures

        levels = features.shape[-1] // hidden - 1
        deepstack = [[row[:, (i + 1) * hidden:(i + 2) * hidden] for row in rows] for i in range(levels)]
        return {"image": BaseModelOutputWithDeepstackFeatures(pooler_output=pooled, deepstack_features=deepstack)}

    def position_ids(self, ids: Tensor, mask: Tensor, vision_hw: list[tuple[int, int]] | None = None
                     ) -> Tensor | None:
        """Position ids of expanded rows ``ids`` / ``mask`` (Q, L'): Qwen's M-RoPE (3, Q, L') from the model's
        ``get_rope_index`` (row q's image grid (1, h' / patch, w' / patch) from ``vision_hw[q]``, default V x V);
        None for 1D-RoPE families."""
        if self.family.name == "idefics3":
            return None
        token_type = (ids == self.model_image_token_id).int()
        sizes = vision_hw or [(self.vision_image_size, self.vision_image_size)] * ids.shape[0]
        positions, _ = self.vlm.model.get_rope_index(ids, mm_token_type_ids=token_type,
                                                     image_grid_thw=self.family.grid(sizes, ids.device),
                                                     attention_mask=mask)
        return positions

    def _expand(self, input_ids: Tensor, attention_mask: Tensor, labels: Tensor | None, counts: Tensor
                ) -> tuple[Tensor, Tensor, Tensor | None, Tensor]:
        image_pos = image_token_positions(input_ids, self.image_token_id)
        ids, mask, new_labels = expand_image_ids(input_ids, image_pos, attention_mask, labels, counts,
                                                 self.model_image_token_id)
        return ids, mask, new_labels, image_pos

    def _call(self, ids: Tensor, mask: Tensor, features: Tensor | None, positions: Tensor | None,
              counts: Tensor | None = None, cache: Any = None, use_cache: bool = False) -> Any:
        extra: dict[str, Any] = {}
        if features is not None:
            extra["mm_encoder_outputs"] = self._image_outputs(features, counts)
        return self.language_model(input_ids=ids, attention_mask=mask, position_ids=positions, cache=cache,
                                   use_cache=use_cache, output_hidden_states=True, **extra)

    # ------------------------------------------------------------------ teacher-forced forward
    def _run_lm(self, batch: Any, image_features: Tensor) -> tuple[Tensor, Tensor | None, Tensor | None, Tensor,
                                                                     Tensor, Any]:
        """The VLM over the expanded rows: (logits (Q, L', V), or (B, Lp, V) packed, their labels, the unpacked
        (Q, L') labels, [SEG] states (K, h), [SEG] rows (K,), the pack plan (Idefics3 with ``pack_queries``) or
        None)."""
        counts, row_hw = self._row_images(batch)
        ids, mask, labels, image_pos = self._expand(batch.input_ids, batch.attention_mask, batch.labels, counts)
        rows, pos = seg_positions(batch.input_ids, self.seg_token_id, image_pos, counts, batch.attention_mask)
        plan = self._vlm_pack_plan(batch, ids, mask, image_pos) if self.pack_queries else None
        if plan is None:
            out = self._call(ids, mask, image_features, self.position_ids(ids, mask, row_hw), counts)
            seg_hidden = out.hidden_states[-1][rows, pos]  # after the final norm
            return out.logits, labels, labels, seg_hidden, rows, None
        # 1D RoPE (Idefics3, SmolVLM2): the model's own splice, then the packed rows as the other presets run them
        embeds = self._splice_features(ids, image_features.reshape(-1, image_features.shape[-1]))
        logits, packed_labels, seg_hidden = self._packed_lm(embeds, mask, labels, plan, rows, pos)
        return logits, packed_labels, labels, seg_hidden, rows, plan

    def _splice_features(self, ids: Tensor, features: Tensor) -> Tensor:
        """(Q, L') expanded ids, (Q * N, h) image features -> (Q, L', h) embeddings with the features at the image
        tokens, by the model's own splice (Idefics3's ``inputs_merger``; SmolVLM2's ``get_placeholder_mask`` +
        ``masked_scatter``, what its forward does)."""
        inner, embeds = self.vlm.model, self._embed(ids)
        if hasattr(inner, "inputs_merger"):
            return inner.inputs_merger(input_ids=ids, inputs_embeds=embeds, image_hidden_states=features)
        where = inner.get_placeholder_mask(ids, inputs_embeds=embeds, image_features=features)
        return embeds.masked_scatter(where, features.to(embeds.dtype))

    def _embed(self, ids: Tensor) -> Tensor:
        """(Q, L') ids -> (Q, L', h) token embeddings in the LM's compute dtype (the [SEG] row's delta included)."""
        return self.language_model.get_input_embeddings()(ids).to(_compute_dtype(self.language_model))

    def _vlm_pack_plan(self, batch: Any, ids: Tensor, mask: Tensor, image_pos: Tensor) -> packing.PackPlan | None:
        """The packing of the expanded rows, or None (one warning per reason): Qwen's M-RoPE positions are 3D
        (``packing.pack_blocker`` says so), Qwen3-VL's DeepStack needs the model's own forward; Idefics3 packs."""
        if batch.input_ids.shape[0] == batch.num_images:
            return None
        reason = packing.pack_blocker(self.vlm.config.get_text_config(), ids.shape[1], batch.input_ids, image_pos,
                                      batch.offsets.tolist())
        if reason is None and self.family.name != "idefics3":
            reason = PACK_REASON
        if reason is not None:
            self._warn_unpacked(reason)
            return None
        return packing.plan_packing(mask, image_pos, batch.offsets.tolist(), self.num_image_tokens)

    # ------------------------------------------------------------------ generation
    def _greedy(self, input_ids: Tensor, image_features: Tensor, max_new_tokens: int, eos_token_id: int | None,
                pad_token_id: int | None, vision_hw: tuple[int, int] | None = None) -> tuple[Tensor, Tensor]:
        """Greedy decoding with the VLM's KV cache: the prompt (1, L) expanded and run once with the image
        features, then one token a step at the next position (Qwen: max M-RoPE position + 1 + t on all three
        axes, what its ``rope_deltas`` give; Idefics3: L' + t). Returns new ids (T,) and the (n_seg, h) states that
        predicted each generated [SEG]. ``vision_hw``: the image's (h', w') (native resolution; None: V x V).
        (``pad_token_id``: unused, one prompt is never padded.)"""
        sizes = [vision_hw or (self.vision_image_size, self.vision_image_size)]
        counts = self.family.image_token_counts(sizes, input_ids.device)
        ids, mask, _, _ = self._expand(input_ids, torch.ones_like(input_ids), None, counts)
        positions = self.position_ids(ids, mask, sizes)
        out = self._call(ids, mask, image_features, positions, counts, use_cache=True)
        start = int(positions.max()) + 1 if positions is not None else ids.shape[1]
        new_ids: list[int] = []
        seg_states = []
        for step in range(max_new_tokens):
            token = int(out.logits[0, -1].argmax())
            if token == self.seg_token_id:
                seg_states.append(out.hidden_states[-1][0, -1])
            new_ids.append(token)
            if token == eos_token_id or step == max_new_tokens - 1:
                break
            mask = torch.cat([mask, mask.new_ones(1, 1)], dim=1)
            position = torch.full((1, 1), start + step, dtype=torch.int64, device=ids.device)
            step_positions = position.expand(3, 1, 1) if positions is not None else position
            out = self._call(torch.tensor([[token]], device=ids.device), mask, None, step_positions, cache=out.cache,
                             use_cache=True)
        hidden = self.vlm.config.get_text_config().hidden_size
        dtype = _compute_dtype(self.language_model)
        seg_hidden = torch.stack(seg_states) if seg_states else torch.zeros(0, hidden, dtype=dtype, device=ids.device)
        return torch.tensor(new_ids, dtype=torch.int64, device=ids.device), seg_hidden
