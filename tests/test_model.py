"""ModifiedLISA: [SEG] gather rule, image splice, forward/backward, generation, composite and LLaVA presets."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from inference_helpers import ScriptedHead, teacher_forced_masks  # noqa: E402
from modlisa.config import ConfigError, TrainingConfig  # noqa: E402
from modlisa.data import prompts  # noqa: E402
from modlisa.data.collate import collate_samples  # noqa: E402
from modlisa.model.adapters import trainable_parameter_names, unwrap_lm  # noqa: E402
from modlisa.model.backbones import tiny_sam  # noqa: E402
from modlisa.model.factory import LISA_7B_OVERRIDES, apply_preset, build_model  # noqa: E402
from modlisa.model.seg import expand_image_tokens, seg_positions  # noqa: E402
from modlisa.model.tokenizer import build_byte_tokenizer  # noqa: E402
from modlisa.predictor import Predictor  # noqa: E402
from modlisa.types import CLIP_MEAN, IMAGE_TOKEN, SEG_TOKEN, Batch, Sample  # noqa: E402

IMG, SAM = 64, 64  # vision and SAM input sizes of the tests: N = (64 / 32)^2 = 4 image tokens


def tiny_cfg(**overrides) -> TrainingConfig:
    return TrainingConfig(model="tiny", img_size=IMG, sam_image_size=SAM, **overrides)


def make_samples(processors, sizes=((40, 56), (70, 30)), queries_per_image=(2, 1), answer="Sure, [SEG].",
                 seed=0) -> list[Sample]:
    """Random RGB images of the given (H, W) with n queries each, through the model's own transforms."""
    rng = np.random.default_rng(seed)
    samples = []
    for i, ((h, w), n) in enumerate(zip(sizes, queries_per_image)):
        image = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
        sam_image, resize_hw = processors.sam(image)
        masks = torch.from_numpy((rng.random((n, h, w)) > 0.5).astype(np.uint8))
        questions = [prompts.eval_question(f"the shape number {k}", False) for k in range(n)]
        samples.append(Sample(image_path=f"img{i}.jpg", json_path=f"img{i}.json", sam_image=sam_image,
                              vision_image=processors.vision(image), resize_hw=resize_hw, original_hw=(h, w),
                              questions=questions, answers=[answer] * n, queries=[f"q{k}" for k in range(n)],
                              masks=masks, is_sentence=False, index=i))
    return samples


def toy_loss(out, batch: Batch) -> torch.Tensor:
    """CE on the answer tokens + BCE on every mask (enough to reach every trainable part)."""
    ce = F.cross_entropy(out.logits[:, :-1].flatten(0, 1).float(), out.labels[:, 1:].flatten(), ignore_index=-100)
    bce = sum(F.binary_cross_entropy_with_logits(p, (m == 1).float()) for p, m in zip(out.pred_masks, batch.masks))
    return ce + bce


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    model, tokenizer, processors = build_model(tiny_cfg())
    return model, tokenizer, processors


# ---------------------------------------------------------------------- pure helpers
def test_expand_image_tokens_splices_each_rows_image_span():
    q, length, n, h = 3, 7, 4, 2
    text = torch.arange(q * length * h, dtype=torch.float32).reshape(q, length, h)
    image = -torch.arange(1, q * n * h + 1, dtype=torch.float32).reshape(q, n, h)
    image_pos = torch.tensor([0, 3, 6])
    mask = torch.ones(q, length, dtype=torch.long)
    mask[0, 5:] = 0
    labels = torch.arange(q * length).reshape(q, length)
    embeds, new_mask, new_labels = expand_image_tokens(text, image, image_pos, mask, labels)
    assert embeds.shape == (q, length + n - 1, h)
    for r, p in enumerate(image_pos.tolist()):
        assert torch.equal(embeds[r, :p], text[r, :p])
        assert torch.equal(embeds[r, p:p + n], image[r])
        assert torch.equal(embeds[r, p + n:], text[r, p + 1:])
        assert (new_labels[r, p:p + n] == -100).all() and (new_mask[r, p:p + n] == 1).all()
        assert torch.equal(new_labels[r, p + n:], labels[r, p + 1:])
        assert torch.equal(new_mask[r, p + n:], mask[r, p + 1:])
    assert new_mask[0].tolist() == [1] * n + [1] * 4 + [0, 0]


def test_seg_positions_lisa_rule_and_padding():
    seg, img, pad = 9, 8, 0
    ids = torch.tensor([[1, img, 2, 9, 3, pad, pad],   # one [SEG] after the image at j=3
                        [1, 2, 3, img, 9, 4, 9],       # two [SEG]s at j=4, 6
                        [9, 9, 1, img, 2, pad, pad]])  # [SEG]s before the image (not LISA, still defined)
    ids[2, 0] = 5  # keep position 0 free of [SEG]
    mask = (ids != pad).long()
    image_pos = torch.tensor([1, 3, 3])
    rows, pos = seg_positions(ids, seg, image_pos, n_img=5, attention_mask=mask)
    assert rows.tolist() == [0, 1, 1, 2]
    # after the image: (j - 1) + (N - 1); before it: j - 1
    assert pos.tolist() == [3 - 1 + 4, 4 - 1 + 4, 6 - 1 + 4, 1 - 1]


# ---------------------------------------------------------------------- gather rule with a position stub
class PositionLM(nn.Module):
    """Stand-in LM whose last hidden state at (row q, expanded position t) is 1000 q + t in every channel."""

    def __init__(self, vocab: int, hidden: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, hidden)
        self.config = SimpleNamespace(get_text_config=lambda: SimpleNamespace(hidden_size=hidden))
        self.seen_embeds: torch.Tensor | None = None

    def get_input_embeddings(self) -> nn.Module:
        return self.embed

    def forward(self, inputs_embeds, attention_mask, output_hidden_states, use_cache):
        self.seen_embeds = inputs_embeds
        q, length, h = inputs_embeds.shape
        hidden = (torch.arange(length)[None, :, None] + 1000 * torch.arange(q)[:, None, None]).float()
        hidden = hidden.expand(q, length, h) + 0 * inputs_embeds
        return SimpleNamespace(logits=hidden[..., :5], hidden_states=(inputs_embeds, hidden))


def test_seg_embedding_is_the_state_before_each_seg_in_the_expanded_sequence(tiny):
    model, tokenizer, processors = tiny
    stub = PositionLM(len(tokenizer), model.text_hidden_fcs[0].in_features)
    original, model.language_model = model.language_model, stub
    try:
        n = model.num_image_tokens
        assert n == (IMG // 32) ** 2
        img, seg = model.image_token_id, model.seg_token_id
        rows = [[5, 6, img, 7, 8, seg, 10],            # image 0: image token at 2, one [SEG]
                [img, 7, seg, 8, seg, 9, 0],           # image 0: image token at 0, two [SEG]s, padding
                [5, 6, 7, 8, img, seg, 0]]             # image 1: image token at 4, one [SEG], padding
        ids = torch.tensor(rows)
        mask = torch.tensor([[1] * 7, [1] * 6 + [0], [1] * 6 + [0]])
        rng = np.random.default_rng(0)
        images = [rng.integers(0, 256, (30, 40, 3), dtype=np.uint8), rng.integers(0, 256, (50, 20, 3), dtype=np.uint8)]
        sams = [processors.sam(im) for im in images]
        batch = Batch(sam_images=torch.stack([s for s, _ in sams]),
                      vision_images=torch.stack([processors.vision(im) for im in images]),
                      input_ids=ids, attention_mask=mask, labels=torch.full_like(ids, -100),
                      offsets=torch.tensor([0, 2, 3]), masks=[torch.zeros(2, 30, 40), torch.zeros(1, 50, 20)],
                      resize_hw=[hw for _, hw in sams], original_hw=[(30, 40), (50, 20)], image_paths=["a", "b"],
                      queries=["x"] * 3, is_sentence=[False] * 3)
        out = model(batch)
        expected = [0 * 1000 + (5 - 1) + (n - 1), 1000 + (2 - 1) + (n - 1), 1000 + (4 - 1) + (n - 1),
                    2000 + (5 - 1) + (n - 1)]
        assert out.seg_embeddings[:, 0].tolist() == expected
        assert (out.seg_embeddings == out.seg_embeddings[:, :1]).all()
        assert out.seg_counts.tolist() == [1, 2, 1]
        assert [tuple(m.shape) for m in out.pred_masks] == [(3, 30, 40), (1, 50, 20)]
        # the image span of row 2 (image 1) holds image 1's projected features
        feats = model.encode_images(batch.vision_images)
        assert torch.allclose(stub.seen_embeds[2, 4:4 + n], feats[1])
        assert torch.allclose(stub.seen_embeds[1, 0:n], feats[0])
        assert out.labels.shape == (3, 7 + n - 1)
    finally:
        model.language_model = original


# ---------------------------------------------------------------------- tiny preset end to end
def test_tiny_forward_shapes_backward_and_post_norm_states(tiny):
    model, tokenizer, processors = tiny
    samples = make_samples(processors)
    batch = collate_samples(samples, tokenizer, max_length=512)
    out = model(batch)
    q, length = batch.input_ids.shape
    n = model.num_image_tokens
    assert out.pack_plan is not None  # pack_queries (the default): image 0's two queries share one LM row
    assert out.logits.shape == (2, out.pack_plan.length, len(tokenizer)) and out.labels.shape == (2, out.pack_plan.length)
    logits = out.unpacked_logits()
    assert logits.shape == (q, length + n - 1, len(tokenizer))
    assert out.unpacked_labels.shape == (q, length + n - 1)
    assert [tuple(m.shape) for m in out.pred_masks] == [(2, 40, 56), (1, 70, 30)]
    assert all(m.dtype == torch.float32 for m in out.pred_masks)
    assert out.seg_counts.tolist() == [1, 1, 1]
    # the gathered state is the one whose logits predict [SEG] (after the final norm)
    rows, pos = torch.nonzero(out.unpacked_labels == model.seg_token_id, as_tuple=True)
    head = unwrap_lm(model.language_model).get_output_embeddings()
    assert torch.allclose(head(out.seg_embeddings), logits[rows, pos - 1], atol=1e-5)
    model.zero_grad()
    toy_loss(out, batch).backward()
    grads = {n for n, p in model.named_parameters() if p.grad is not None}
    trainable = set(trainable_parameter_names(model))
    assert grads <= trainable
    assert trainable - grads == {n for n in trainable if ".iou_prediction_head." in n}  # unused head
    model.zero_grad()


def test_sam_embeddings_argument_matches_computed(tiny):
    model, tokenizer, processors = tiny
    batch = collate_samples(make_samples(processors), tokenizer)
    model.eval()
    with torch.no_grad():
        a = model(batch)
        b = model(batch, sam_embeddings=model.encode_sam(batch.sam_images))
    model.train()
    for x, y in zip(a.pred_masks, b.pred_masks):
        assert torch.equal(x, y)


def test_gradient_checkpointing_gives_same_gradients():
    grads = []
    for ckpt in (False, True):
        torch.manual_seed(1)
        model, tokenizer, processors = build_model(tiny_cfg(gradient_checkpointing=ckpt, lora_dropout=0.0))
        with torch.no_grad():  # non-zero LoRA B so LoRA A gets a non-trivial gradient
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.1)
        batch = collate_samples(make_samples(processors), tokenizer)
        toy_loss(model(batch), batch).backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    lora_a = [n for n in grads[0] if "lora_A" in n]
    assert lora_a and all(grads[0][n].abs().sum() > 0 for n in lora_a)
    for name in grads[0]:
        assert torch.allclose(grads[0][name], grads[1][name], atol=1e-5), name


# ---------------------------------------------------------------------- generation
def _with_script(model, tokenizer, script_tokens: list[str]):
    lm = unwrap_lm(model.language_model)
    ids = [tokenizer.convert_tokens_to_ids(t) for t in script_tokens]
    lm.set_output_embeddings(ScriptedHead(lm.get_output_embeddings(), ids))
    return lm


def _predict(model, tokenizer, processors, image, query, **kwargs):
    """One query through a ``Predictor`` (generation through ``ModifiedLISA.generate``)."""
    predictor = Predictor(model, tokenizer, processors)
    predictor.set_image(image)
    return predictor.predict(query, **kwargs)


def test_generate_collects_seg_states_like_teacher_forcing(tiny):
    model, tokenizer, processors = tiny
    image = np.random.default_rng(3).integers(0, 256, (45, 61, 3), dtype=np.uint8)
    lm = _with_script(model, tokenizer, [SEG_TOKEN, "Ġ", SEG_TOKEN, tokenizer.eos_token])
    head = lm.get_output_embeddings()
    try:
        result = _predict(model, tokenizer, processors, image, "the red circle", is_sentence=False)
        assert result.has_seg and result.seg_count == 2
        assert result.text == f"{SEG_TOKEN} {SEG_TOKEN}"
        assert result.logits.shape == (2, 45, 61) and result.logits.dtype == torch.float32
        # teacher forcing prompt + generated tokens gives the same masks (KV-cache generation vs full pass)
        masks, counts = teacher_forced_masks(model, tokenizer, processors, image,
                                             prompts.eval_question("the red circle", False), result.text)
        assert counts == [2]
        assert torch.allclose(masks, result.logits, atol=1e-4)
        assert model.training
    finally:
        lm.set_output_embeddings(head.base)


def test_generate_without_seg(tiny):
    model, tokenizer, processors = tiny
    image = np.zeros((20, 30, 3), dtype=np.uint8)
    lm = _with_script(model, tokenizer, ["a", "b", tokenizer.eos_token])
    head = lm.get_output_embeddings()
    try:
        result = _predict(model, tokenizer, processors, image, "Which object is red? Please output segmentation mask.",
                          max_new_tokens=8)
    finally:
        lm.set_output_embeddings(head.base)
    assert not result.has_seg and result.seg_count == 0
    assert result.text == "ab"
    assert result.logits.shape == (0, 20, 30)


# ---------------------------------------------------------------------- checkpoints from disk
def _save_tokenizer(folder: Path):
    tokenizer = build_byte_tokenizer()
    tokenizer.save_pretrained(folder)
    return tokenizer


def _save_sam(folder: Path) -> str:
    torch.manual_seed(0)
    tiny_sam(SAM).save_pretrained(folder)
    return str(folder)


LM_SIZES = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
            "num_key_value_heads": 2, "vocab_size": 260}  # 260 < tokenizer size: the factory must resize


def _save_lm(folder: Path, kind: str) -> str:
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    config_cls, model_cls = (LlamaConfig, LlamaForCausalLM) if kind == "llama" else (Qwen2Config, Qwen2ForCausalLM)
    model_cls(config_cls(**LM_SIZES, tie_word_embeddings=kind == "qwen2")).save_pretrained(folder)
    _save_tokenizer(folder)
    return str(folder)


def _save_vision(folder: Path, kind: str) -> str:
    from transformers import CLIPVisionConfig, CLIPVisionModel, SiglipVisionConfig, SiglipVisionModel

    sizes = {"hidden_size": 48, "intermediate_size": 96, "num_hidden_layers": 2, "num_attention_heads": 4,
             "image_size": IMG, "patch_size": 32}
    model = CLIPVisionModel(CLIPVisionConfig(**sizes)) if kind == "clip" else SiglipVisionModel(SiglipVisionConfig(**sizes))
    model.save_pretrained(folder)
    return str(folder)


def _forward_backward(model, tokenizer, processors) -> None:
    batch = collate_samples(make_samples(processors), tokenizer)
    out = model(batch)
    assert [tuple(m.shape) for m in out.pred_masks] == [(2, 40, 56), (1, 70, 30)]
    toy_loss(out, batch).backward()
    grads = {n for n, p in model.named_parameters() if p.grad is not None}
    assert any("lora_B" in n for n in grads) and any(n.startswith("sam.mask_decoder.") for n in grads)
    assert any(n.startswith("text_hidden_fcs.") for n in grads)


@pytest.mark.parametrize("vision_kind,lm_kind", [("clip", "llama"), ("siglip", "qwen2")])
def test_composite_from_saved_folders(tmp_path, vision_kind, lm_kind):
    cfg = TrainingConfig(model="composite", vision_model=_save_vision(tmp_path / "vision", vision_kind),
                         language_model=_save_lm(tmp_path / "lm", lm_kind), sam_model=_save_sam(tmp_path / "sam"),
                         img_size=96, sam_image_size=SAM)
    model, tokenizer, processors = build_model(cfg)
    assert model.num_image_tokens == 9  # 96 / 32 = 3 -> 3 x 3 patches, positions interpolated, CLS dropped
    assert unwrap_lm(model.language_model).get_input_embeddings().weight.shape[0] == len(tokenizer) == 262
    assert processors.vision.mean == ((0.5,) * 3 if vision_kind == "siglip" else CLIP_MEAN)
    assert model.drop_cls == (vision_kind == "clip")
    _forward_backward(model, tokenizer, processors)


def test_composite_rejects_mismatched_sam_size(tmp_path):
    cfg = TrainingConfig(model="composite", vision_model=_save_vision(tmp_path / "v", "clip"),
                         language_model=_save_lm(tmp_path / "lm", "llama"), sam_model=_save_sam(tmp_path / "sam"),
                         img_size=IMG, sam_image_size=128)
    with pytest.raises(ConfigError, match="sam_image_size=128"):
        build_model(cfg)


def _save_llava(folder: Path) -> str:
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    tokenizer = _save_tokenizer(folder)
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(hidden_size=48, intermediate_size=96, num_hidden_layers=3,
                                       num_attention_heads=4, image_size=IMG, patch_size=32),
        text_config=LlamaConfig(**LM_SIZES),  # 260 rows < len(tokenizer): the view must be resized
        image_token_id=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        vision_feature_layer=-2, vision_feature_select_strategy="default",
    )
    torch.manual_seed(0)
    LlavaForConditionalGeneration(config).save_pretrained(folder)
    return str(folder)


def test_llava_from_saved_folder_shares_llava_weights(tmp_path):
    from transformers import LlavaForConditionalGeneration

    folder = _save_llava(tmp_path / "llava")
    cfg = TrainingConfig(model="llava", llava_model=folder, sam_model=_save_sam(tmp_path / "sam"), img_size=IMG,
                         sam_image_size=SAM)
    model, tokenizer, processors = build_model(cfg)
    reference = LlavaForConditionalGeneration.from_pretrained(folder)
    lm = unwrap_lm(model.language_model)
    assert type(model.projector).__name__ == "LlavaMultiModalProjector"
    assert lm.lm_head.weight.shape[0] == lm.model.embed_tokens.weight.shape[0] == len(tokenizer) == 262
    assert torch.equal(lm.lm_head.weight[:260], reference.lm_head.weight)
    assert torch.equal(lm.model.embed_tokens.weight[:260], reference.model.language_model.embed_tokens.weight)
    assert torch.equal(lm.model.layers[1].mlp.up_proj.weight, reference.model.language_model.layers[1].mlp.up_proj.weight)
    # the vision branch is LLaVA's own image-feature path (layer -2, CLS dropped, projector)
    pixels = torch.randn(2, 3, IMG, IMG)
    with torch.no_grad():
        ours = model.encode_images(pixels)
        theirs = torch.stack(list(reference.get_image_features(pixel_values=pixels).pooler_output))
    assert torch.allclose(ours, theirs, atol=1e-5)
    _forward_backward(model, tokenizer, processors)


def test_lisa_7b_preset_settings_and_trainable_set(tmp_path):
    cfg = apply_preset(TrainingConfig(model="lisa-7b", lora_r=64, train_embeddings="none", freeze_sam=False))
    assert cfg.llava_model == "llava-hf/llava-1.5-7b-hf" and cfg.sam_model == "facebook/sam-vit-huge"
    assert cfg.img_size == 336
    for name, value in LISA_7B_OVERRIDES.items():
        assert getattr(cfg, name) == value
    assert apply_preset(tiny_cfg()) == tiny_cfg()
    # the LISA trainable set on a tiny LLaVA checkpoint: LoRA q/v, full embeddings + head, decoder, projection
    folder = _save_llava(tmp_path / "llava")
    sam = tmp_path / "sam"
    torch.manual_seed(0)
    tiny_sam(1024).save_pretrained(sam)
    model, _, _ = build_model(TrainingConfig(model="lisa-7b", llava_model=folder, sam_model=str(sam), img_size=IMG))
    names = set(trainable_parameter_names(model))
    prefix = "language_model.base_model.model."
    expected = {n for n, _ in model.named_parameters()
                if n.startswith(("sam.mask_decoder.", "text_hidden_fcs."))
                or (n.startswith(prefix) and ("lora_A" in n or "lora_B" in n))}
    expected |= {prefix + "model.embed_tokens.weight", prefix + "lm_head.weight"}
    assert names == expected
    assert {n.split(".")[-4] for n in names if "lora_" in n} == {"q_proj", "v_proj"}
    assert all(m.r["default"] == 8 for m in model.modules() if hasattr(m, "lora_A") and m.lora_A)
