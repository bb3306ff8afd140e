"""SAM-HQ as the mask decoder: the whole path against ``SamHQModel.forward`` + ``SamHQProcessor``, checkpoint
detection and config errors, training, the frozen-SAM cache, the memory planner, export and reload."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from transformers import (  # noqa: E402
    CLIPVisionConfig,
    CLIPVisionModel,
    SamConfig,
    SamHQProcessor,
    SamModel,
    SamVisionConfig,
)
from transformers.models.sam.image_processing_pil_sam import SamImageProcessorPil  # noqa: E402

from decoder_kind_checks import (  # noqa: E402
    build_with_batch,
    check_cache_round_trip,
    check_export_round_trip,
    check_training_with_cache_equals_without,
    decoder_run_cfg,
    make_decoder_data,
)
from modlisa.config import ConfigError, TrainingConfig  # noqa: E402
from modlisa.data.transforms import SamTransform  # noqa: E402
from modlisa.engine.sam_cache import SamEmbeddingCache, encoder_fingerprint  # noqa: E402
from modlisa.model.backbones import load_sam, tiny_sam  # noqa: E402
from modlisa.model.factory import build_model  # noqa: E402
from modlisa.model.lisa import ModifiedLISA  # noqa: E402
from modlisa.model.mask_decoder import decoder_for, features_at  # noqa: E402
from modlisa.model.sam_hq_decoder import TINY_VIT, SamHQDecoder, tiny_sam_hq  # noqa: E402

SIZE = 64  # vision and SAM-HQ input sizes: features (256, 4, 4) and the early ViT block (4, 4, 64)
FEATURE_SHAPES = [(256, 4, 4), (4, 4, 64)]


def hq_cfg(data_root: Path | str = "unused", out: Path | str = "unused", **overrides) -> TrainingConfig:
    return decoder_run_cfg("sam_hq", SIZE, data_root, out, **overrides)


def hq_processor(size: int) -> SamHQProcessor:
    """transformers' SAM-HQ processor at input size ``size`` (its PIL image processor needs no torchvision)."""
    return SamHQProcessor(SamImageProcessorPil(size={"longest_edge": size}, pad_size={"height": size, "width": size}))


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    return make_decoder_data(tmp_path_factory.mktemp("samhqdata"), SIZE)


@pytest.fixture(scope="module")
def built(data_root):
    """(model, tokenizer, processors, batch of 2 train images with 2 queries each) of the tiny SAM-HQ preset."""
    return build_with_batch(hq_cfg(data_root))


# ---------------------------------------------------------------------- the decoder path = SamHQModel + processor
@pytest.mark.parametrize("original_hw", [(37, 53), (90, 40)])
def test_decode_equals_sam_hq_forward_and_processor_post_process_masks(original_hw, monkeypatch):
    """One sparse token per prompt through ``SamHQModel.forward`` (its prompt encoder made to return our prompts,
    so the forward's own wiring runs: encoder, intermediate embeddings, mask decoder with its default
    ``hq_token_only``), then ``SamHQProcessor.post_process_masks``; our transform = the processor's pixels."""
    torch.manual_seed(0)
    sam = tiny_sam_hq(SIZE).eval()
    decoder = SamHQDecoder()
    image = np.random.default_rng(1).integers(0, 256, size=(*original_hw, 3), dtype=np.uint8)
    pixels, resize_hw = SamTransform(SIZE)(image)
    inputs = hq_processor(SIZE)(images=image, return_tensors="pt")
    assert float((inputs["pixel_values"][0] - pixels).abs().max()) <= 1e-5
    assert inputs["reshaped_input_sizes"][0].tolist() == list(resize_hw)
    prompts = torch.randn(3, 256)
    real_prompt_encoder = sam.prompt_encoder.forward

    def our_prompts(*args, **kwargs):
        _, dense = real_prompt_encoder(*args, **kwargs)  # dense: the no-mask embedding
        return prompts.reshape(1, 3, 1, 256), dense

    with torch.no_grad():
        features = decoder.encode(sam, pixels.unsqueeze(0))
        ours = decoder.decode(sam, prompts, features_at(features, 0), resize_hw, original_hw)
        monkeypatch.setattr(sam.prompt_encoder, "forward", our_prompts)
        out = sam(pixel_values=pixels.unsqueeze(0), input_points=torch.zeros(1, 3, 1, 2), multimask_output=False)
    expected = hq_processor(SIZE).post_process_masks(out.pred_masks, [list(original_hw)], [list(resize_hw)],
                                                     binarize=False)[0][:, 0]
    assert ours.shape == (3, *original_hw) and ours.dtype == torch.float32
    assert float((ours - expected).abs().max()) <= 1e-5
    assert float(ours.std()) > 0.01  # real masks, not a constant both sides could agree on


def test_encode_keeps_the_embedding_and_the_first_intermediate_the_decoder_reads():
    torch.manual_seed(0)
    sam = tiny_sam_hq(SIZE).eval()
    decoder = SamHQDecoder()
    images = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        features = decoder.encode(sam, images)
        embeddings, intermediate = sam.get_image_embeddings(images)
        assert [tuple(f.shape[1:]) for f in features] == FEATURE_SHAPES and features[0].shape[0] == 2
        assert torch.equal(features[0], embeddings) and torch.equal(features[1], intermediate[0])
        assert not torch.equal(intermediate[0], intermediate[1])  # block 0's output, not the last block's
        # the early ViT feature and the HQ token both change the mask: hq_token_only=False sums SAM's and HQ's
        sparse = torch.randn(2, 1, 256)
        one = features_at(features, 0)
        masks = decoder.decode_tokens(sam, sparse, one)
        no_vit = decoder.decode_tokens(sam, sparse, (one[0], torch.zeros_like(one[1])))
        dense = sam.prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(1, -1, 4, 4)
        hq_only = sam.mask_decoder(
            image_embeddings=one[0].unsqueeze(0),
            image_positional_embeddings=sam.get_image_wide_positional_embeddings(), sparse_prompt_embeddings=sparse.unsqueeze(0), dense_prompt_embeddings=dense, multimask_output=False,
            hq_token_only=True, intermediate_embeddings=[one[1].unsqueeze(0)])[0][0]
    assert masks.shape == (2, 1, SIZE // 4, SIZE // 4)
    assert float((masks - no_vit).abs().max()) > 1e-3 and float((masks - hq_only).abs().max()) > 1e-3
    assert decoder.decode(sam, torch.zeros(0, 256), one, (SIZE, SIZE), (5, 7)).shape == (0, 5, 7)


# ---------------------------------------------------------------------- checkpoints and config errors
def test_a_sam_hq_checkpoint_folder_is_detected_and_bad_ones_are_config_errors(tmp_path):
    torch.manual_seed(0)
    tiny_sam_hq(SIZE).save_pretrained(tmp_path / "hq")
    sam = load_sam(hq_cfg(sam_kind="sam", sam_model=str(tmp_path / "hq")))  # the checkpoint decides
    assert type(sam).__name__ == "SamHQModel" and decoder_for(sam).kind == "sam_hq"
    assert isinstance(decoder_for(sam).transform(SIZE), SamTransform)
    assert decoder_for(tiny_sam(SIZE)).kind == "sam"  # the plain SAM is not taken for SAM-HQ, nor the reverse
    with pytest.raises(ConfigError, match="sam_image_size"):
        load_sam(hq_cfg(sam_model=str(tmp_path / "hq"), sam_image_size=128))
    CLIPVisionModel(CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                     num_attention_heads=2, image_size=32, patch_size=16)).save_pretrained(
        tmp_path / "clip")
    with pytest.raises(ConfigError, match="'clip_vision_model' checkpoint, not a mask decoder"):
        load_sam(hq_cfg(sam_model=str(tmp_path / "clip")))
    with pytest.raises(ConfigError, match="multiple of 16"):
        build_model(hq_cfg(sam_image_size=40))
    with pytest.raises(ConfigError, match="sam_kind must be one of sam, sam_hq, sam2; got 'sam-hq'"):
        hq_cfg(sam_kind="sam-hq").validate(check_paths=False)


# ---------------------------------------------------------------------- training and the cache
def test_one_training_step_reaches_the_hq_decoder_and_the_seg_projection(built):
    model, _, _, batch = built
    assert model.seg_decoder.kind == "sam_hq"
    model.train()
    model.zero_grad(set_to_none=True)
    out = model(batch)
    loss = sum(F.binary_cross_entropy_with_logits(p, (m == 1).float()) for p, m in zip(out.pred_masks, batch.masks))
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    for name in ("text_hidden_fcs.0.weight", "text_hidden_fcs.2.weight", "sam.mask_decoder.mask_tokens.weight",
                 "sam.mask_decoder.hq_token.weight", "sam.mask_decoder.hq_mask_mlp.proj_in.weight",
                 "sam.mask_decoder.compress_vit_conv1.weight", "sam.mask_decoder.encoder_conv1.weight",
                 "sam.mask_decoder.output_hypernetworks_mlps.0.proj_in.weight"):
        assert grads[name] is not None and float(grads[name].abs().sum()) > 0, name
    assert not any(n.startswith(("sam.vision_encoder.", "sam.prompt_encoder.")) for n in grads)  # freeze_sam
    model.zero_grad(set_to_none=True)


def test_cached_run_equals_uncached_and_sam_entries_are_not_served_to_sam_hq(built, tmp_path):
    model, _, processors, batch = built
    cached, memory_bytes = check_cache_round_trip(model, processors, batch, tmp_path / "cache")
    assert [tuple(f.shape) for f in cached] == [(2, *s) for s in FEATURE_SHAPES]
    assert memory_bytes == 2 * 4 * (256 * 4 * 4 + 4 * 4 * 64)
    # a SAM holding the same ViT weights (as SAM-HQ checkpoints do: SAM's ViT, frozen) has the same encoder
    # fingerprint; the decoder kind in the key keeps its single-tensor entries from being served to SAM-HQ
    sam = SamModel(SamConfig(vision_config=SamVisionConfig(image_size=SIZE, output_channels=256, **TINY_VIT),
                             prompt_encoder_config=model.sam.config.prompt_encoder_config.to_dict()))
    sam.vision_encoder.load_state_dict(model.sam.vision_encoder.state_dict())
    assert encoder_fingerprint(sam.vision_encoder) == encoder_fingerprint(model.sam_image_encoder)
    sam_model = ModifiedLISA(model.vision_tower, model.projector, model.language_model, sam.requires_grad_(False),
                             seg_token_id=model.seg_token_id, image_token_id=model.image_token_id,
                             vision_image_size=SIZE)
    path = batch.image_paths[0]
    cache = SamEmbeddingCache(model, processors.sam)
    assert SamEmbeddingCache(sam_model, processors.sam).key(path, "r") != cache.key(path, "r")


def test_training_with_the_cache_equals_training_without(data_root, tmp_path, monkeypatch):
    weights = check_training_with_cache_equals_without(hq_cfg, data_root, tmp_path, monkeypatch)
    assert any(k.startswith("sam.mask_decoder.hq_") for k in weights)


def test_memory_planner_builds_the_sam_hq_skeleton_and_counts_its_cache(built):
    from modlisa.bench.architectures import architecture_for, build_skeleton
    from modlisa.bench.memory_plan import sam_geometry

    model = built[0]
    cfg = hq_cfg()
    arch = architecture_for(cfg)
    assert arch.describe()["sam"]["kind"] == "sam_hq"
    skeleton = build_skeleton(arch, cfg)
    assert type(skeleton.sam).__name__ == "SamHQModel"
    assert sum(p.numel() for p in skeleton.sam.parameters()) == sum(p.numel() for p in model.sam.parameters())
    with torch.no_grad():
        features = model.encode_sam(torch.zeros(1, 3, SIZE, SIZE))
    assert sam_geometry(arch.sam).cache_floats == sum(f.numel() for f in features)


# ---------------------------------------------------------------------- export and reload
def test_run_checkpoint_export_and_save_pretrained_round_trip(data_root, tmp_path):
    exported = check_export_round_trip(hq_cfg, data_root, tmp_path, "SamHQModel")
    assert json.loads((tmp_path / "export" / "sam" / "config.json").read_text())["model_type"] == "sam_hq"
    assert exported.pretrained.config.sam_kind == "sam_hq"
