"""ModifiedLISA: vision tower + projector + causal LM + SAM, wired through the [SEG] token.

Tensors in, tensors out: prompts, tokenisation and image transforms live outside the model (the data layer for
training and evaluation, ``modlisa.predictor.Predictor`` for inference on raw images). The model returns
outputs, never losses. Shapes: B images, Q >= B sequences, L padded token length,
N image tokens, L' = L + N - 1, h = LM hidden size, D = SAM prompt dim, V = vision input size,
S = SAM input size, (H, W) original image size. The mask decoder is SAM, SAM-HQ or SAM 2 behind one interface
(``model/mask_decoder.py``): ``encode_sam`` gives an image's ``ImageFeatures`` (SAM: a (B, D, S/16, S/16) tensor;
SAM-HQ: that and an early ViT block; SAM 2: a tuple of multi-scale tensors), the decoder turns prompts + one
image's features into masks.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from transformers import GenerationConfig, PreTrainedModel

from modlisa.model import packing
from modlisa.model.backbones import Backbones
from modlisa.model.mask_decoder import ImageFeatures, decoder_for, features_at
from modlisa.model.seg import (
    expand_image_tokens,
    image_token_positions,
    rows_to_images,
    seg_positions,
)
from modlisa.types import IMAGE_TOKEN, SEG_TOKEN, Batch, ConversationFormat

logger = logging.getLogger(__name__)


@dataclass
class LISAOutput:
    """What ``ModifiedLISA.forward`` returns.

    logits:         (R, T, vocab) LM logits over the expanded sequences: (Q, L') per query, or, when the
                    queries were packed (``pack_queries``), (B, Lp) per image; ``unpacked_logits()`` is (Q, L').
    labels:         (R, T) labels aligned with ``logits`` (unshifted: logits[:, t] predict labels[:, t + 1]),
                    -100 where nothing is predicted; the causal-LM loss over (logits, labels) is the same in
                    both layouts. ``unpacked_labels`` is (Q, L').
    pred_masks:     B tensors (n_b, H_b, W_b) float32 mask logits at each image's original size, one per
                    [SEG] of that image's sequences, in row then position order.
    seg_counts:     (Q,) number of [SEG] tokens per sequence.
    seg_embeddings: (K, h) the LM hidden states read for the K [SEG] tokens (before ``text_hidden_fcs``).
    seg_prompts:    (K, D) ``text_hidden_fcs(seg_embeddings)``: LISA's prompts for the mask decoder (what it
                    read unless ``forward`` was given ``decoder_prompts``).
    """

    logits: Tensor
    labels: Tensor
    pred_masks: list[Tensor]
    seg_counts: Tensor
    seg_embeddings: Tensor
    seg_prompts: Tensor
    unpacked_labels: Tensor | None = None
    pack_plan: packing.PackPlan | None = None

    def __post_init__(self) -> None:
        if self.unpacked_labels is None:
            self.unpacked_labels = self.labels

    def unpacked_logits(self) -> Tensor:
        """(Q, L', vocab) logits per query (a copy when the queries were packed)."""
        if self.pack_plan is None or self.logits.shape[0] == self.seg_counts.shape[0]:
            return self.logits
        return packing.unpack(self.logits, self.pack_plan)


def _dtype(module: nn.Module) -> torch.dtype:
    return next(module.parameters()).dtype


def _compute_dtype(module: nn.Module) -> torch.dtype:
    """The dtype ``module`` computes in: that of its first frozen floating parameter (its stored weights), else
    of its first parameter (fp32 by model/precision.py's policy; bf16 when DeepSpeed cast the whole model)."""
    floating = [p for p in module.parameters() if p.is_floating_point()]
    frozen = (p.dtype for p in floating if not p.requires_grad)
    return next(frozen, floating[0].dtype if floating else torch.float32)


class ModifiedLISA(nn.Module):
    """LISA with swappable backbones.

    Args:
        vision_tower: CLIP/SigLIP vision model; hidden state ``vision_feature_layer`` feeds the projector.
        projector: (B, N, Cv) -> (B, N, h).
        language_model: causal LM accepting ``inputs_embeds`` (possibly wrapped by peft later).
        sam: Hugging Face ``SamModel``, ``SamHQModel`` or ``Sam2Model``: the mask decoder (its kind:
            ``self.seg_decoder``).
        seg_token_id, image_token_id: ids of ``[SEG]`` and ``<image>`` in the tokenizer.
        vision_image_size: V, the vision tower's input size (positions are interpolated when it differs
            from the tower's own size).
    """

    def __init__(
        self,
        vision_tower: PreTrainedModel,
        projector: nn.Module,
        language_model: PreTrainedModel,
        sam: nn.Module,
        *,
        seg_token_id: int,
        image_token_id: int,
        vision_image_size: int,
        vision_feature_layer: int | list[int] = -2,
        drop_cls: bool = True,
    ) -> None:
        super().__init__()
        self.vision_tower = vision_tower
        self.projector = projector
        self.language_model = language_model
        self.sam = sam
        self.seg_decoder = decoder_for(sam)  # stateless: every call passes self.sam
        hidden = language_model.config.get_text_config().hidden_size
        prompt_dim = self.seg_decoder.prompt_dim(sam)
        self.text_hidden_fcs = nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(inplace=True),
                                             nn.Linear(hidden, prompt_dim))
        self.seg_token_id = int(seg_token_id)
        self.image_token_id = int(image_token_id)
        self.vision_image_size = int(vision_image_size)
        self.vision_feature_layer = vision_feature_layer
        self.drop_cls = drop_cls
        self.sam_image_size = self.seg_decoder.image_size(sam)
        self.conversation = ConversationFormat()  # how its prompts are rendered (set by build_model)
        self.random_init_prefixes: tuple[str, ...] = ()  # frozen random parts (model/random_init.py)
        self.pack_queries = False  # one LM sequence per image in forward (model/packing.py; set by build_model)
        self._num_image_tokens: int | None = None
        self._pack_fallbacks: set[str] = set()  # reasons already logged (``_pack_plan``)

    @classmethod
    def from_backbones(cls, parts: Backbones, vision_image_size: int) -> ModifiedLISA:
        """Assemble from ``build_backbones`` output; token ids come from ``parts.tokenizer``."""
        tok = parts.tokenizer
        return cls(parts.vision_tower, parts.projector, parts.language_model, parts.sam,
                   seg_token_id=tok.convert_tokens_to_ids(SEG_TOKEN),
                   image_token_id=tok.convert_tokens_to_ids(IMAGE_TOKEN),
                   vision_image_size=vision_image_size, vision_feature_layer=parts.vision_feature_layer,
                   drop_cls=parts.drop_cls)

    # ------------------------------------------------------------------ export folder (Hugging Face-style)
    # Thin: modlisa.weights.hub does the work on the one export format (``modlisa export``'s folder; why not
    # PyTorchModelHubMixin: see there). Imported inside the methods: the loader needs the factory, which imports
    # this module; tests/test_layout.py declares this one deferred edge (DEFERRED_EDGES) and checks it stays
    # inside function bodies.
    @classmethod
    def from_pretrained(cls, folder_or_repo_id: str | os.PathLike[str], **kwargs: Any) -> ModifiedLISA:
        """Load an export folder (``modlisa export`` / ``save_pretrained``) or a Hub repo id holding one, in eval
        mode; its tokenizer, image processors and config come with it as ``model.pretrained``. Keywords:
        ``revision``, ``cache_dir``, ``token``, ``device`` (``modlisa.weights.hub.load_pretrained``)."""
        from modlisa.weights import hub

        return hub.from_pretrained(folder_or_repo_id, **kwargs)

    def save_pretrained(self, folder: str | os.PathLike[str], **kwargs: Any) -> Path:
        """Write the export folder of ``modlisa export`` (LoRA merged on a copy); returns it. Keywords:
        ``tokenizer``, ``processors``, ``config`` (default: ``self.pretrained``'s), ``overwrite``,
        ``eval_results`` (``modlisa.weights.hub.save_pretrained``)."""
        from modlisa.weights import hub

        return hub.save_pretrained(self, folder, **kwargs)

    # ------------------------------------------------------------------ encoders
    @property
    def num_image_tokens(self) -> int:
        """N, measured once by running the vision branch on a blank (1, 3, V, V) image."""
        if self._num_image_tokens is None:
            param = next(self.vision_tower.parameters())
            blank = torch.zeros(1, 3, self.vision_image_size, self.vision_image_size, device=param.device)
            with torch.no_grad():
                self._num_image_tokens = int(self.encode_images(blank).shape[1])
        return self._num_image_tokens

    def encode_images(self, vision_images: Tensor) -> Tensor:
        """(B, 3, V, V) -> (B, N, h) projected patch features (CLS dropped when ``drop_cls``)."""
        tower_size = getattr(self.vision_tower.config, "image_size", vision_images.shape[-1])
        extra: dict[str, Any] = {}
        if vision_images.shape[-1] != tower_size or vision_images.shape[-2] != tower_size:
            extra["interpolate_pos_encoding"] = True
        out = self.vision_tower(pixel_values=vision_images.to(_dtype(self.vision_tower)),
                                output_hidden_states=True, **extra)
        layers = self.vision_feature_layer
        if isinstance(layers, int):
            features = out.hidden_states[layers]
        else:
            features = torch.cat([out.hidden_states[i] for i in layers], dim=-1)
        if self.drop_cls:
            features = features[:, 1:]
        return self.projector(features.to(_dtype(self.projector)))

    def encode_batch_images(self, batch: Batch) -> Tensor:
        """(B, N, h) features of ``batch.vision_images`` (the vlm preset reads each image at its
        ``Batch.vision_hw`` size)."""
        return self.encode_images(batch.vision_images)

    def encode_sam(self, sam_images: Tensor) -> ImageFeatures:
        """(B, 3, S, S) SAM-normalised images -> their ``ImageFeatures``: SAM's (B, D, S/16, S/16) image
        embeddings, SAM-HQ's (embeddings, early ViT block) tuple (``model/sam_hq_decoder.py``), or SAM 2's tuple of
        multi-scale features (``model/sam2_decoder.py``)."""
        return self.seg_decoder.encode(self.sam, sam_images)

    @property
    def sam_image_encoder(self) -> nn.Module:
        """The parts of ``self.sam`` that make ``encode_sam``'s output (frozen with ``freeze_sam``)."""
        return self.seg_decoder.encoder(self.sam)

    def project_seg(self, seg_hidden: Tensor) -> Tensor:
        """(K, h) [SEG] hidden states -> (K, D) SAM prompt embeddings."""
        return self.text_hidden_fcs(seg_hidden.to(_dtype(self.text_hidden_fcs)))

    # ------------------------------------------------------------------ teacher-forced forward
    def _splice(self, input_ids: Tensor, attention_mask: Tensor, labels: Tensor | None,
                image_features: Tensor) -> tuple[Tensor, Tensor, Tensor | None, Tensor]:
        """Embed ``input_ids`` (Q, L) and splice ``image_features`` (Q, N, h); also return image_pos (Q,).

        The embeddings come out in the LM's compute dtype (its frozen weights' dtype): a trainable fp32
        embedding must not turn an fp16 LM's residual stream into fp32 (rotary and attention would mix dtypes).
        """
        image_pos = image_token_positions(input_ids, self.image_token_id)
        text_embeds = self.language_model.get_input_embeddings()(input_ids)
        text_embeds = text_embeds.to(_compute_dtype(self.language_model))
        embeds, mask, new_labels = expand_image_tokens(text_embeds, image_features, image_pos, attention_mask,
                                                       labels)
        return embeds, mask, new_labels, image_pos

    def forward(self, batch: Batch, sam_embeddings: ImageFeatures | None = None,
                decoder_prompts: Tensor | None = None, image_features: Tensor | None = None) -> LISAOutput:
        """Teacher-forced pass over a collated batch.

        ``sam_embeddings`` (``ImageFeatures`` of the B images, e.g. SAM's (B, D, S/16, S/16)) may be passed from
        a cache of frozen-SAM embeddings; else they are computed from ``batch.sam_images``.
        ``image_features`` (B, N, h) may be passed as ``encode_images(batch.vision_images)`` computed earlier
        (a ``Predictor`` encodes its image once for many queries); else they are computed here.
        ``decoder_prompts`` (K, D), one per [SEG] in row then position order: what the mask decoder reads
        instead of LISA's ``text_hidden_fcs([SEG])`` (a training-time teacher, engine/prompt_teacher.py);
        LISA's own prompts are still computed and returned in ``seg_prompts``.
        """
        num_rows = batch.input_ids.shape[0]
        image_of_row = rows_to_images(batch.offsets, num_rows)
        if image_features is None:
            image_features = self.encode_batch_images(batch)
        logits, labels, unpacked_labels, seg_hidden, rows, plan = self._run_lm(batch, image_features[image_of_row])
        seg_counts = torch.bincount(rows, minlength=num_rows)
        if sam_embeddings is None:
            sam_embeddings = self.encode_sam(batch.sam_images)
        seg_prompts = self.project_seg(seg_hidden)
        if decoder_prompts is not None and decoder_prompts.shape != seg_prompts.shape:
            raise ValueError(f"decoder_prompts must be (K, D) = {tuple(seg_prompts.shape)}, one per [SEG] token, "
                             f"got {tuple(decoder_prompts.shape)}")
        read = seg_prompts if decoder_prompts is None else decoder_prompts.to(seg_prompts.dtype)
        pred_masks = self._decode_per_image(read, seg_counts, batch, sam_embeddings)
        return LISAOutput(logits=logits, labels=labels, pred_masks=pred_masks, seg_counts=seg_counts,
                          seg_embeddings=seg_hidden, seg_prompts=seg_prompts, unpacked_labels=unpacked_labels,
                          pack_plan=plan)

    def _run_lm(self, batch: Batch, image_features: Tensor) -> tuple[Tensor, Tensor | None, Tensor | None, Tensor,
                                                                    Tensor, packing.PackPlan | None]:
        """The LM over the batch's rows with ``image_features`` (Q, N, h) spliced in: (logits, labels aligned with
        them, the unpacked (Q, L') labels, the (K, h) [SEG] states, their (K,) rows, the pack plan or None)."""
        embeds, mask, labels, image_pos = self._splice(batch.input_ids, batch.attention_mask, batch.labels,
                                                       image_features)
        rows, pos = seg_positions(batch.input_ids, self.seg_token_id, image_pos, image_features.shape[1],
                                  batch.attention_mask)
        plan = self._pack_plan(batch, mask, image_pos, image_features.shape[1]) if self.pack_queries else None
        unpacked_labels = labels
        if plan is None:
            out = self.language_model(inputs_embeds=embeds, attention_mask=mask, output_hidden_states=True,
                                      use_cache=False)
            logits = out.logits  # (Q, L', V)
            seg_hidden = out.hidden_states[-1][rows, pos]  # (K, h), after the final norm
        else:
            logits, labels, seg_hidden = self._packed_lm(embeds, mask, labels, plan, rows, pos)
        return logits, labels, unpacked_labels, seg_hidden, rows, plan

    def _warn_unpacked(self, reason: str) -> None:
        """Say once per reason that these queries run unpacked (``pack_queries``)."""
        if reason not in self._pack_fallbacks:
            self._pack_fallbacks.add(reason)
            logger.warning("pack_queries: %s; these queries run unpacked (the same losses, more LM tokens)", reason)

    def _pack_plan(self, batch: Batch, mask: Tensor, image_pos: Tensor, n_img: int) -> packing.PackPlan | None:
        """The packing of this batch's expanded rows ``mask`` (Q, L'), or None when it runs unpacked: one query
        per image, or rows packing cannot compute exactly (``packing.pack_blocker``; said once per reason)."""
        if batch.input_ids.shape[0] == batch.num_images:
            return None
        offsets = batch.offsets.tolist()
        reason = packing.pack_blocker(self.language_model.config.get_text_config(), mask.shape[1],
                                      batch.input_ids, image_pos, offsets)
        if reason is not None:
            self._warn_unpacked(reason)
            return None
        return packing.plan_packing(mask, image_pos, offsets, n_img)

    def _packed_lm(self, embeds: Tensor, mask: Tensor, labels: Tensor | None, plan: packing.PackPlan,
                   rows: Tensor, pos: Tensor) -> tuple[Tensor, Tensor | None, Tensor]:
        """The LM over one packed sequence per image (``pack_queries``).

        embeds (Q, L', h), mask and labels (Q, L'), the [SEG] read positions (K,) ``rows`` / ``pos`` in the
        unpacked layout. Returns logits (B, Lp, V) with their labels (B, Lp) (``packing.packed_labels``; when
        those do not exist, logits unpacked to (Q, L', V) with the unpacked labels) and the (K, h) [SEG] states.
        """
        kind = packing.mask_kind(self.language_model.config.get_text_config())
        block = packing.block_attention_mask(plan.segment, None if kind == "bool" else embeds.dtype)
        out = self.language_model(inputs_embeds=packing.pack(embeds, plan), attention_mask=block,
                                  position_ids=plan.position_ids, output_hidden_states=True, use_cache=False)
        hidden = out.hidden_states[-1]  # (B, Lp, h)
        seg_hidden = hidden.reshape(-1, hidden.shape[-1])[plan.scatter[rows, pos]]
        logits = out.logits
        packed = packing.packed_labels(labels, plan) if labels is not None else None
        if labels is not None and packed is None:
            return packing.unpack(logits, plan), labels, seg_hidden
        return logits, packed, seg_hidden

    def predict_teacher_forced(self, batch: Batch, sam_embeddings: ImageFeatures | None = None) -> LISAOutput:
        """Evaluation protocol of LISA (answer "[SEG]." given in the input): the same as ``forward``."""
        return self.forward(batch, sam_embeddings)

    def _decode_per_image(self, seg_prompts: Tensor, seg_counts: Tensor, batch: Batch,
                          sam_embeddings: ImageFeatures) -> list[Tensor]:
        """Split (K, D) prompts by image (rows offsets[b]:offsets[b+1]) and decode each image's masks."""
        offsets = batch.offsets.tolist()
        per_image = [int(seg_counts[offsets[b]:offsets[b + 1]].sum()) for b in range(len(offsets) - 1)]
        chunks = torch.split(seg_prompts, per_image)
        return [self.seg_decoder.decode(self.sam, chunk, features_at(sam_embeddings, b), tuple(batch.resize_hw[b]),
                                    tuple(batch.original_hw[b]))
                for b, chunk in enumerate(chunks)]

    # ------------------------------------------------------------------ generation
    @torch.no_grad()
    def generate(self, input_ids: Tensor, image_features: Tensor, sam_embeddings: ImageFeatures,
                 resize_hw: tuple[int, int], original_hw: tuple[int, int], *, max_new_tokens: int = 32,
                 eos_token_id: int | None = None, pad_token_id: int | None = None,
                 vision_hw: tuple[int, int] | None = None) -> tuple[Tensor, Tensor]:
        """Answer one prompt about one image by greedy decoding; decode one mask per generated [SEG].

        input_ids:      (1, L) int64 prompt holding one image token, ending where the answer starts.
        image_features: (1, N, h) ``encode_images`` of the image's (1, 3, V, V) vision input.
        sam_embeddings: ``encode_sam`` of the image's (1, 3, S, S) SAM input (SAM: (1, D, S/16, S/16)).
        resize_hw:      (h', w') of the image inside the SAM input, before padding; original_hw: (H, W).
        vision_hw:      (h', w') of the image's vision input: the vlm preset's native resolution, where N depends
                        on it (None: V x V; the other presets always are).
        Returns ``(new_ids, masks)``: new_ids (T,) int64, the generated tokens (the EOS included when reached,
        T <= max_new_tokens); masks (n, H, W) float32 logits, n = the number of [SEG] in new_ids. Call in eval
        mode (``modlisa.predictor.Predictor`` does).
        """
        new_ids, seg_hidden = self._greedy(input_ids, image_features, max_new_tokens, eos_token_id, pad_token_id,
                                           vision_hw)
        masks = self.seg_decoder.decode(self.sam, self.project_seg(seg_hidden), features_at(sam_embeddings, 0),
                                    tuple(resize_hw), tuple(original_hw))
        return new_ids, masks

    def _greedy(self, input_ids: Tensor, image_features: Tensor, max_new_tokens: int, eos_token_id: int | None,
                pad_token_id: int | None, vision_hw: tuple[int, int] | None = None) -> tuple[Tensor, Tensor]:
        """Greedy decoding over spliced ``inputs_embeds`` with the LM's KV cache.

        input_ids (1, L), image_features (1, N, h) (``vision_hw``: unused, N is fixed). Returns the new token ids
        (T,) and (n_seg, h) hidden states that predicted each generated [SEG] (last layer, after the final norm).
        """
        embeds, mask, _, _ = self._splice(input_ids, torch.ones_like(input_ids), None, image_features)
        # an explicit config: a checkpoint's sampling settings (temperature, repetition penalty…) never apply
        config = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                                  output_hidden_states=True, return_dict_in_generate=True,
                                  pad_token_id=pad_token_id, eos_token_id=eos_token_id)
        out = self.language_model.generate(inputs_embeds=embeds, attention_mask=mask, generation_config=config)
        new_ids = out.sequences[0, -len(out.hidden_states):]
        seg_states = [out.hidden_states[step][-1][0, -1] for step, tok in enumerate(new_ids.tolist())
                      if tok == self.seg_token_id]
        hidden = self.language_model.config.get_text_config().hidden_size
        seg_hidden = torch.stack(seg_states) if seg_states else embeds.new_zeros((0, hidden))
        return new_ids, seg_hidden

    # ------------------------------------------------------------------ memory options
    def enable_gradient_checkpointing(self) -> None:
        """Checkpoint the LM's decoder layers (non-reentrant: no input-grad hook needed)."""
        lm = self.language_model
        kwargs = {"use_reentrant": False}
        if hasattr(lm, "activation_checkpointing_enable"):  # transformers >= 5.x name
            lm.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        self.language_model.config.use_cache = False
