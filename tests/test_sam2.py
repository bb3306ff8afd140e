"""SAM 2 as the mask decoder: transform and postprocessing against transformers' SAM 2 processor, the decoder
path against ``Sam2Model.forward``, training, evaluation, the frozen-SAM cache, export and reload."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from decoder_kind_checks import (  # noqa: E402
    build_with_batch,
    check_cache_round_trip,
    check_export_round_trip,
    check_training_with_cache_equals_without,
    decoder_run_cfg,
    make_decoder_data,
)
from make_sam2_golden import GOLDEN, IMAGE_CASES, MASK_SIZES, golden_inputs, processor_outputs  # noqa: E402
from modlisa.config import ConfigError, TrainingConfig  # noqa: E402
from modlisa.data.transforms import Sam2Transform  # noqa: E402
from modlisa.model.backbones import load_sam  # noqa: E402
from modlisa.model.factory import build_model  # noqa: E402
from modlisa.model.mask_decoder import decoder_for, features_at  # noqa: E402
from modlisa.model.sam2_decoder import Sam2Decoder, postprocess_masks, tiny_sam2  # noqa: E402

SIZE = 64  # vision and SAM 2 input sizes: SAM 2 features (32, 16, 16), (64, 8, 8), (256, 4, 4)
HAS_TORCHVISION = importlib.util.find_spec("torchvision") is not None


def sam2_cfg(data_root: Path | str = "unused", out: Path | str = "unused", **overrides) -> TrainingConfig:
    return decoder_run_cfg("sam2", SIZE, data_root, out, **overrides)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    return make_decoder_data(tmp_path_factory.mktemp("sam2data"), SIZE)


@pytest.fixture(scope="module")
def built(data_root):
    """(model, tokenizer, processors, batch of 2 train images with 2 queries each) of the tiny SAM 2 preset."""
    return build_with_batch(sam2_cfg(data_root))


# ---------------------------------------------------------------------- against transformers' processor
def test_transform_equals_the_sam2_image_processor():
    images, _ = golden_inputs()
    expected = np.load(GOLDEN)
    worst = 0.0
    for i, (image, (_, _, size)) in enumerate(zip(images, IMAGE_CASES)):
        pixels, resize_hw = Sam2Transform(size)(image)
        assert pixels.shape == (3, size, size) and pixels.dtype == torch.float32 and resize_hw == (size, size)
        worst = max(worst, float((pixels - torch.from_numpy(expected[f"pixels_{i}"])).abs().max()))
    assert worst <= 1e-5, worst


def test_postprocess_equals_sam2_processor_post_process_masks():
    _, logits = golden_inputs()
    expected = np.load(GOLDEN)
    for i, (low_res, hw) in enumerate(zip(logits, MASK_SIZES)):
        ours = postprocess_masks(low_res, hw)
        assert ours.shape == (2, *hw) and ours.dtype == torch.float32
        assert float((ours - torch.from_numpy(expected[f"masks_{i}"])).abs().max()) <= 1e-6


@pytest.mark.skipif(not HAS_TORCHVISION, reason="Sam2ImageProcessor needs torchvision")
def test_golden_file_is_what_the_live_processor_gives():
    expected = np.load(GOLDEN)
    for name, value in processor_outputs().items():
        assert np.abs(value - expected[name]).max() <= 1e-6, name


# ---------------------------------------------------------------------- the decoder path = Sam2Model.forward
def test_encode_and_decode_equal_sam2_model_forward():
    torch.manual_seed(0)
    sam = tiny_sam2(SIZE).eval()
    images = torch.randn(2, 3, SIZE, SIZE)
    decoder = Sam2Decoder()
    with torch.no_grad():
        features = decoder.encode(sam, images)
        reference = sam.get_image_embeddings(images)  # [feat_s0, feat_s1, image_embeddings]
        assert [tuple(f.shape) for f in features] == [(2, 32, 16, 16), (2, 64, 8, 8), (2, 256, 4, 4)]
        assert all(torch.equal(a, b) for a, b in zip(features, reference))
        points = torch.tensor([[[[10.0, 20.0]], [[40.0, 5.0]], [[60.0, 60.0]]]])  # (1 image, 3 queries, 1 point, 2)
        out = sam(pixel_values=images[:1], input_points=points, multimask_output=False)
        sparse, _ = sam.prompt_encoder(points, torch.ones(1, 3, 1, dtype=torch.int), None, None)  # (1, 3, 2, D)
        ours = decoder.decode_tokens(sam, sparse[0], features_at(features, 0))
    assert ours.shape == (3, 1, SIZE // 4, SIZE // 4)
    assert float((ours - out.pred_masks[0]).abs().max()) <= 1e-5


def test_a_sam2_checkpoint_folder_is_detected_by_its_model_type(tmp_path):
    torch.manual_seed(0)
    tiny_sam2(SIZE).save_pretrained(tmp_path / "sam2")
    sam = load_sam(sam2_cfg(sam_kind="sam", sam_model=str(tmp_path / "sam2")))  # the checkpoint decides
    assert type(sam).__name__ == "Sam2Model" and sam.mask_decoder.dynamic_multimask_via_stability is False
    assert isinstance(decoder_for(sam).transform(SIZE), Sam2Transform)
    config = tmp_path / "sam2" / "config.json"  # the Hub's facebook/sam2.1-* folders say sam2_video
    config.write_text(config.read_text().replace('"model_type": "sam2"', '"model_type": "sam2_video"'))
    assert '"sam2_video"' in config.read_text()
    video = load_sam(sam2_cfg(sam_model=str(tmp_path / "sam2")))
    assert type(video).__name__ == "Sam2Model"
    assert all(torch.equal(a, b) for a, b in zip(sam.state_dict().values(), video.state_dict().values()))
    with pytest.raises(ConfigError, match="sam_image_size"):
        load_sam(sam2_cfg(sam_model=str(tmp_path / "sam2"), sam_image_size=128))
    with pytest.raises(ConfigError, match="multiple of 32"):
        build_model(sam2_cfg(sam_image_size=48))
    with pytest.raises(ConfigError, match="sam_kind"):
        sam2_cfg(sam_kind="sam3").validate(check_paths=False)


# ---------------------------------------------------------------------- training and evaluation
def test_one_training_step_reaches_the_decoder_and_the_seg_projection(built):
    model, _, _, batch = built
    model.train()
    model.zero_grad(set_to_none=True)
    out = model(batch)
    loss = sum(F.binary_cross_entropy_with_logits(p, (m == 1).float()) for p, m in zip(out.pred_masks, batch.masks))
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    for name in ("text_hidden_fcs.0.weight", "text_hidden_fcs.2.weight", "sam.mask_decoder.mask_tokens.weight",
                 "sam.mask_decoder.transformer.layers.0.self_attn.q_proj.weight",
                 "sam.mask_decoder.upscale_conv1.weight", "sam.mask_decoder.output_hypernetworks_mlps.0.proj_in.weight"):
        assert grads[name] is not None and float(grads[name].abs().sum()) > 0, name
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    # freeze_sam: what makes the cached features stays frozen, the high-res projections of the decoder included
    assert {"sam.mask_decoder.conv_s0.weight", "sam.mask_decoder.conv_s1.weight", "sam.no_memory_embedding"} <= frozen
    assert not any(n.startswith(("sam.vision_encoder.", "sam.prompt_encoder.")) and n not in frozen for n in grads)
    model.zero_grad(set_to_none=True)


def test_teacher_forced_evaluation_shapes(built):
    model, _, _, batch = built
    model.eval()
    with torch.no_grad():
        out = model.predict_teacher_forced(batch)
    per_image = (batch.offsets[1:] - batch.offsets[:-1]).tolist()  # one [SEG] per query
    queries = sum(per_image)
    assert [tuple(p.shape) for p in out.pred_masks] == [(n, *hw) for n, hw in zip(per_image, batch.original_hw)]
    assert out.seg_prompts.shape == (queries, 256) and out.seg_counts.tolist() == [1] * queries
    assert out.unpacked_logits().shape[:2] == (queries, out.unpacked_labels.shape[1])


# ---------------------------------------------------------------------- frozen-SAM cache
def test_cached_run_equals_uncached_and_disk_entries_round_trip(built, tmp_path):
    model, _, processors, batch = built
    cached, memory_bytes = check_cache_round_trip(model, processors, batch, tmp_path / "cache")
    assert [tuple(f.shape) for f in cached] == [(2, 32, 16, 16), (2, 64, 8, 8), (2, 256, 4, 4)]
    assert memory_bytes == 2 * 4 * (32 * 16 * 16 + 64 * 8 * 8 + 256 * 4 * 4)


def test_training_with_the_cache_equals_training_without(data_root, tmp_path, monkeypatch):
    check_training_with_cache_equals_without(sam2_cfg, data_root, tmp_path, monkeypatch)


# ---------------------------------------------------------------------- export and reload
def test_run_checkpoint_export_and_save_pretrained_round_trip(data_root, tmp_path):
    exported = check_export_round_trip(sam2_cfg, data_root, tmp_path, "Sam2Model")
    assert exported.pretrained.config.sam_kind == "sam2" and isinstance(exported.pretrained.processors.sam,
                                                                        Sam2Transform)
