"""The vocabulary shared by the data layer and the model, below both (imports nothing of modlisa).

- Token strings of the prompts and the tokenizer (``IMAGE_TOKEN``, ``SEG_TOKEN``, LISA-7B-v1's image span
  ``IM_START_TOKEN`` / ``IM_END_TOKEN``), the label value ``IGNORE_INDEX``, the image normalisation constants.
- ``ConversationFormat``: how a question and answer become text (the model carries the one it was trained with).
- Typed containers: ReasonSeg ``Shape`` / ``Annotation``, a dataset item ``Sample``, a collated ``Batch``.

Shapes use: S = SAM input size (e.g. 1024), V = vision-tower input size (``img_size``),
B = images in a batch, Q = queries (sequences) in a batch, L = padded token length,
H, W = original image height and width.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import torch

IMAGE_TOKEN = "<image>"
SEG_TOKEN = "[SEG]"
IM_START_TOKEN = "<im_start>"  # LISA-7B-v1 (LLaVA-Lightning v1) wraps the image features in these
IM_END_TOKEN = "<im_end>"

IGNORE_INDEX = -100  # label value of the tokens that are not learned (prompt, padding, image span)

# SAM's normalisation on 0-255 RGB; CLIP's (LLaVA / LISA) on [0, 1] RGB
SAM_MEAN = (123.675, 116.28, 103.53)
SAM_STD = (58.395, 57.12, 57.375)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class ConversationFormat:
    """How a question and answer become text (rendered by ``data.prompts.format_conversation``).

    use_chat_template: render with the tokenizer's chat template (``TrainingConfig.use_chat_template``);
        False (default): LLaVA v1, LISA's format, whatever template the tokenizer carries.
    image_start_end: the image placeholder is ``<im_start><image><im_end>`` (LISA-7B-v1's
        ``use_mm_start_end``; ``TrainingConfig.use_mm_start_end``) instead of ``<image>``.
    template_image / image_text (the vlm preset's, set by the factory from the checkpoint's processor): the chat
        template renders the image as a content item, whose ``template_image`` (e.g. Qwen's ``<|image_pad|>``) is
        replaced by ``image_text`` (the processor's text around ONE ``<image>``).
    """

    use_chat_template: bool = False
    image_start_end: bool = False
    template_image: str = ""
    image_text: str = ""

    @classmethod
    def from_config(cls, cfg: Any) -> ConversationFormat:
        """The format a ``TrainingConfig`` asks for."""
        return cls(use_chat_template=bool(getattr(cfg, "use_chat_template", False)),
                   image_start_end=bool(getattr(cfg, "use_mm_start_end", False)))

    @property
    def image_placeholder(self) -> str:
        return f"{IM_START_TOKEN}{IMAGE_TOKEN}{IM_END_TOKEN}" if self.image_start_end else IMAGE_TOKEN


@dataclass
class Shape:
    """One polygon of a ReasonSeg annotation, as read from the JSON (no validation applied)."""

    label: str
    points: list[list[float]]  # [[x, y], ...] float pixel coordinates of the original image
    shape_type: str = "polygon"


@dataclass
class Annotation:
    """One ReasonSeg annotation JSON and the image beside it."""

    json_path: str
    image_path: str
    texts: list[str]  # the query and its rephrasings (train: up to 6, val/test: 1)
    is_sentence: bool  # True = long sentence query, False = short phrase
    shapes: list[Shape] = field(default_factory=list)
    explanation: str | None = None  # from explanatory/train.json, when present
    # modlisa extension (synthetic data): the image's non-target shapes, for grounding accuracy. LISA's
    # reader ignores the JSON key "distractors"; here label = "size colour kind" of the shape.
    distractors: list[Shape] = field(default_factory=list)
    # Targets not stored as polygons (refCOCO's COCO RLE / polygons decoded by pycocotools): a callable giving
    # the (H, W) uint8 mask in {0, 1, 255}; ``shapes`` is then empty (``reasonseg.annotation_mask`` reads either).
    target_mask: Any = None


@dataclass
class Sample:
    """One dataset item: one image and its queries (one sequence per query).

    sam_image:    (3, S, S) float32, SAM-normalised, resized longest side to S, zero-padded bottom/right.
    vision_image: (3, V, V) float32, normalised for the vision tower (resize shortest side + centre crop); with the
                  vlm preset's native resolution (3, h', w'), the image's own size (``NativeVisionTransform``).
    masks:        (n_m, H, W) uint8 in {0, 1, 255} at the ORIGINAL image resolution (255 = ignore), one per
                  [SEG] of the answers: n_m = n_q, or 0 for a text-only (explanation) item.
    """

    image_path: str
    json_path: str
    sam_image: torch.Tensor
    vision_image: torch.Tensor
    resize_hw: tuple[int, int]  # (h, w) of the image inside sam_image, before padding
    original_hw: tuple[int, int]  # (H, W) of the original image
    questions: list[str]  # n_q user turns WITHOUT the image placeholder (prompts.py adds it)
    answers: list[str]  # n_q assistant answers, each with one "[SEG]" (none in a text-only item)
    queries: list[str]  # n_q raw query texts (for predictions files)
    masks: torch.Tensor
    is_sentence: bool
    index: int = -1  # dataset index of this item (Batch.sample_ids, exact-once evaluation); -1 = unknown
    source: str = "reason_seg"  # the dataset the item came from (a mixture's per-dataset counts and losses)
    # a multi-turn conversation (vqa): the turns AFTER (questions[0], answers[0]), learned like the first answer
    extra_turns: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class Batch:
    """A collated batch: B images, Q >= B query sequences.

    sam_images:     (B, 3, S, S) float32
    vision_images:  (B, 3, V, V) float32 (native resolution: (B, 3, max h', max w'), each image zero-padded
                    bottom/right; its own size is ``vision_hw[b]``)
    input_ids:      (Q, L) int64, right-padded; each row holds exactly one image placeholder token
    attention_mask: (Q, L) int64, 1 for real tokens
    labels:         (Q, L) int64, -100 everywhere except the assistant answer tokens
    offsets:        (B + 1,) int64; the sequences of image b are rows offsets[b]:offsets[b + 1]
    masks:          list of B tensors (n_b, H_b, W_b) uint8 in {0, 1, 255}, original resolution
    """

    sam_images: torch.Tensor
    vision_images: torch.Tensor
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    offsets: torch.Tensor
    masks: list[torch.Tensor]
    resize_hw: list[tuple[int, int]]
    original_hw: list[tuple[int, int]]
    image_paths: list[str]
    queries: list[str]  # Q raw query texts
    is_sentence: list[bool]  # Q flags
    sample_ids: list[int] = field(default_factory=list)  # B dataset indices (for exact-once evaluation)
    sources: list[str] = field(default_factory=list)  # B dataset names (``Sample.source``)
    vision_hw: list[tuple[int, int]] = field(default_factory=list)  # B (h', w') inside vision_images; [] = all

    def vision_sizes(self) -> list[tuple[int, int]]:
        """B (h', w'): each vision image's size inside ``vision_images`` (the whole tensor when not recorded)."""
        if self.vision_hw:
            return [(int(h), int(w)) for h, w in self.vision_hw]
        return [tuple(self.vision_images.shape[-2:])] * self.num_images

    @property
    def num_images(self) -> int:
        return int(self.sam_images.shape[0])

    @property
    def num_queries(self) -> int:
        return int(self.input_ids.shape[0])

    def to(self, device: torch.device | str) -> Batch:
        """Move every tensor to ``device`` (float tensors keep their dtype)."""
        return replace(
            self,
            sam_images=self.sam_images.to(device),
            vision_images=self.vision_images.to(device),
            input_ids=self.input_ids.to(device),
            attention_mask=self.attention_mask.to(device),
            labels=self.labels.to(device),
            offsets=self.offsets.to(device),
            masks=[m.to(device) for m in self.masks],
        )
