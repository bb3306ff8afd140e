"""Importing published weights without downloads: original SAM checkpoints and LISA checkpoint folders, written
here at toy sizes in their SOURCE layouts (segment_anything names; LISAForCausalLM shards + config + tokenizer)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from modlisa.cli import main  # noqa: E402
from modlisa.config import ConfigError, TrainingConfig  # noqa: E402
from modlisa.convert.lisa import import_lisa  # noqa: E402
from modlisa.convert.sam_original import (  # noqa: E402
    convert_state,
    load_original_sam,
    sam_config,
    sam_from_original_state,
)
from modlisa.data import prompts  # noqa: E402
from modlisa.data.collate import collate_samples  # noqa: E402
from modlisa.model.backbones import load_sam  # noqa: E402
from modlisa.model.seg import decode_masks  # noqa: E402
from modlisa.synthetic import make_dataset  # noqa: E402
from modlisa.types import IM_END_TOKEN, IM_START_TOKEN, IMAGE_TOKEN, SEG_TOKEN, Sample  # noqa: E402
from modlisa.weights import WeightsError, load_checkpoint, load_exported  # noqa: E402
from modlisa.weights.export import merged_language_model  # noqa: E402

# ====================================================================== original SAM
SAM_SIZE = 64  # input pixels: patch 8 -> an 8x8 grid, 4x4... of the mask decoder's image embedding


def tiny_sam_config():
    """A SAM with the real structure at toy size: 4 encoder blocks, blocks 1 and 3 with global attention (the
    others windowed), a neck, the prompt encoder with its mask downscaling and its random-Fourier matrix
    (2, D/2), a two-way decoder of 2 layers with SAM's 8 heads, 4 mask tokens and a depth-3 IoU head."""
    from transformers import SamConfig, SamMaskDecoderConfig, SamPromptEncoderConfig, SamVisionConfig

    return SamConfig(
        vision_config=SamVisionConfig(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, patch_size=8,
                                      image_size=SAM_SIZE, mlp_dim=48, output_channels=32, window_size=3,
                                      global_attn_indexes=[1, 3], num_pos_feats=16),
        prompt_encoder_config=SamPromptEncoderConfig(hidden_size=32, image_size=SAM_SIZE, patch_size=8,
                                                     mask_input_channels=8),
        mask_decoder_config=SamMaskDecoderConfig(hidden_size=32, mlp_dim=40, num_hidden_layers=2, num_attention_heads=8,
                                                 iou_head_hidden_dim=24),
    )


def random_sam(seed: int = 0):
    """A SamModel of ``tiny_sam_config`` with every tensor drawn at a scale that makes outputs depend on it."""
    from transformers import SamModel

    torch.manual_seed(seed)
    sam = SamModel(tiny_sam_config()).eval()
    with torch.no_grad():
        for name, tensor in sam.state_dict(keep_vars=True).items():
            tensor.normal_(1.0 if "layer_norm" in name and name.endswith("weight") else 0.0, 0.2)
    return sam


# the inverse of the conversion, written from transformers' module names back to segment_anything's
_INVERSE = (
    (r"vision_encoder\.pos_embed", r"image_encoder.pos_embed"),
    (r"vision_encoder\.patch_embed\.projection\.(\w+)", r"image_encoder.patch_embed.proj.\1"),
    (r"vision_encoder\.layers\.(\d+)\.layer_norm([12])\.(\w+)", r"image_encoder.blocks.\1.norm\2.\3"),
    (r"vision_encoder\.layers\.(\d+)\.(attn|mlp)\.(.+)", r"image_encoder.blocks.\1.\2.\3"),
    (r"vision_encoder\.neck\.conv1\.weight", r"image_encoder.neck.0.weight"),
    (r"vision_encoder\.neck\.layer_norm1\.(\w+)", r"image_encoder.neck.1.\1"),
    (r"vision_encoder\.neck\.conv2\.weight", r"image_encoder.neck.2.weight"),
    (r"vision_encoder\.neck\.layer_norm2\.(\w+)", r"image_encoder.neck.3.\1"),
    (r"shared_image_embedding\.positional_embedding", r"prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"),
    (r"prompt_encoder\.point_embed\.(\d+)\.weight", r"prompt_encoder.point_embeddings.\1.weight"),
    (r"prompt_encoder\.mask_embed\.conv1\.(\w+)", r"prompt_encoder.mask_downscaling.0.\1"),
    (r"prompt_encoder\.mask_embed\.layer_norm1\.(\w+)", r"prompt_encoder.mask_downscaling.1.\1"),
    (r"prompt_encoder\.mask_embed\.conv2\.(\w+)", r"prompt_encoder.mask_downscaling.3.\1"),
    (r"prompt_encoder\.mask_embed\.layer_norm2\.(\w+)", r"prompt_encoder.mask_downscaling.4.\1"),
    (r"prompt_encoder\.mask_embed\.conv3\.(\w+)", r"prompt_encoder.mask_downscaling.6.\1"),
    (r"prompt_encoder\.(not_a_point_embed|no_mask_embed)\.weight", r"prompt_encoder.\1.weight"),
    (r"mask_decoder\.transformer\.layers\.(\d+)\.layer_norm(\d)\.(\w+)", r"mask_decoder.transformer.layers.\1.norm\2.\3"),
    (r"mask_decoder\.transformer\.layer_norm_final_attn\.(\w+)", r"mask_decoder.transformer.norm_final_attn.\1"),
    (r"mask_decoder\.transformer\.(.+)", r"mask_decoder.transformer.\1"),
    (r"mask_decoder\.upscale_conv1\.(\w+)", r"mask_decoder.output_upscaling.0.\1"),
    (r"mask_decoder\.upscale_layer_norm\.(\w+)", r"mask_decoder.output_upscaling.1.\1"),
    (r"mask_decoder\.upscale_conv2\.(\w+)", r"mask_decoder.output_upscaling.3.\1"),
    (r"mask_decoder\.(output_hypernetworks_mlps\.\d+|iou_prediction_head)\.proj_in\.(\w+)", r"mask_decoder.\1.layers.0.\2"),
    (r"mask_decoder\.(output_hypernetworks_mlps\.\d+|iou_prediction_head)\.proj_out\.(\w+)", r"mask_decoder.\1.layers.2.\2"),
    (r"mask_decoder\.(output_hypernetworks_mlps\.\d+|iou_prediction_head)\.layers\.0\.(\w+)", r"mask_decoder.\1.layers.1.\2"),
    (r"mask_decoder\.(iou_token|mask_tokens)\.weight", r"mask_decoder.\1.weight"),
)


def to_original(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A SamModel state dict in segment_anything's names (the tied alias of the Fourier matrix left out)."""
    out = {}
    for name, tensor in state.items():
        if name == "prompt_encoder.shared_embedding.positional_embedding":
            continue
        pattern, target = next((p, t) for p, t in _INVERSE if re.fullmatch(p, name))
        out[re.sub(pattern, target, name)] = tensor
    return out


def original_sam_names(depth: int, decoder_layers: int, mask_tokens: int) -> set[str]:
    """Every parameter name of segment_anything's Sam (build_sam.py's modules), enumerated by hand."""
    wb = ("weight", "bias")
    names = {"image_encoder.pos_embed", *(f"image_encoder.patch_embed.proj.{p}" for p in wb),
             "image_encoder.neck.0.weight", "image_encoder.neck.2.weight",
             *(f"image_encoder.neck.{i}.{p}" for i in (1, 3) for p in wb)}
    for b in range(depth):
        block = f"image_encoder.blocks.{b}"
        names |= {f"{block}.{m}.{p}" for m in ("norm1", "norm2", "attn.qkv", "attn.proj", "mlp.lin1", "mlp.lin2")
                  for p in wb}
        names |= {f"{block}.attn.rel_pos_h", f"{block}.attn.rel_pos_w"}
    names |= {"prompt_encoder.pe_layer.positional_encoding_gaussian_matrix", "prompt_encoder.not_a_point_embed.weight",
              "prompt_encoder.no_mask_embed.weight", *(f"prompt_encoder.point_embeddings.{i}.weight" for i in range(4)),
              *(f"prompt_encoder.mask_downscaling.{i}.{p}" for i in (0, 1, 3, 4, 6) for p in wb)}
    attention = ("q_proj", "k_proj", "v_proj", "out_proj")
    for layer in range(decoder_layers):
        base = f"mask_decoder.transformer.layers.{layer}"
        names |= {f"{base}.{a}.{proj}.{p}" for a in ("self_attn", "cross_attn_token_to_image",
                                                     "cross_attn_image_to_token") for proj in attention for p in wb}
        names |= {f"{base}.{m}.{p}" for m in ("norm1", "norm2", "norm3", "norm4", "mlp.lin1", "mlp.lin2") for p in wb}
    names |= {f"mask_decoder.transformer.final_attn_token_to_image.{proj}.{p}" for proj in attention for p in wb}
    names |= {f"mask_decoder.transformer.norm_final_attn.{p}" for p in wb}
    names |= {"mask_decoder.iou_token.weight", "mask_decoder.mask_tokens.weight",
              *(f"mask_decoder.output_upscaling.{i}.{p}" for i in (0, 1, 3) for p in wb),
              *(f"mask_decoder.iou_prediction_head.layers.{i}.{p}" for i in range(3) for p in wb),
              *(f"mask_decoder.output_hypernetworks_mlps.{k}.layers.{i}.{p}" for k in range(mask_tokens)
                for i in range(3) for p in wb)}
    return names


@pytest.fixture(scope="module")
def sam_pair():
    """(a SamModel whose weights were set natively, the same tensors in segment_anything's layout)."""
    sam = random_sam()
    original = {k: v.clone() for k, v in to_original(sam.state_dict()).items()}
    return sam, original


def test_tiny_original_state_has_segment_anything_names(sam_pair):
    _, original = sam_pair
    assert set(original) == original_sam_names(depth=4, decoder_layers=2, mask_tokens=4)
    assert original["image_encoder.blocks.0.attn.rel_pos_h"].shape == (2 * 3 - 1, 16)  # windowed block: 2w - 1
    assert original["image_encoder.blocks.1.attn.rel_pos_h"].shape == (2 * 8 - 1, 16)  # global block: 2 * grid - 1
    assert original["image_encoder.blocks.0.attn.qkv.weight"].shape == (96, 32)  # one fused qkv, as in SAM


def test_conversion_consumes_every_key_and_rebuilds_the_config(sam_pair):
    sam, original = sam_pair
    config, variant = sam_config(original, "test")
    assert variant == "custom"
    vision, decoder = config.vision_config, config.mask_decoder_config
    assert (vision.hidden_size, vision.num_hidden_layers, vision.num_attention_heads) == (32, 4, 2)
    assert (vision.image_size, vision.patch_size, vision.window_size, list(vision.global_attn_indexes)) == (64, 8, 3, [1, 3])
    assert (vision.mlp_dim, vision.output_channels) == (48, 32)
    assert config.prompt_encoder_config.mask_input_channels == 8
    assert (decoder.num_hidden_layers, decoder.mlp_dim, decoder.iou_head_hidden_dim, decoder.num_multimask_outputs) == (
        2, 40, 24, 3)
    converted = convert_state({**original, "pixel_mean": torch.zeros(3, 1, 1), "pixel_std": torch.ones(3, 1, 1)}, "test")
    expected = {k for k in sam.state_dict() if k != "prompt_encoder.shared_embedding.positional_embedding"}
    assert set(converted) == expected
    rebuilt, _ = sam_from_original_state(original, "test")
    for name, tensor in sam.state_dict().items():
        assert torch.equal(rebuilt.state_dict()[name], tensor), name


def test_converted_sam_gives_the_native_models_outputs(sam_pair, tmp_path):
    sam, original = sam_pair
    torch.save(original, tmp_path / "sam_tiny.pth")
    converted = load_original_sam(tmp_path / "sam_tiny.pth").eval()
    torch.manual_seed(1)
    pixels = torch.randn(1, 3, SAM_SIZE, SAM_SIZE)
    prompts_ = torch.randn(3, 32)
    with torch.no_grad():
        outputs = []
        for model in (sam, converted):
            embedding = model.vision_encoder(pixel_values=pixels).last_hidden_state
            masks = decode_masks(model, prompts_, embedding[0], (SAM_SIZE, 48), (40, 30), SAM_SIZE)
            points = model(pixel_values=pixels, input_points=torch.tensor([[[[10.0, 20.0]]]]),
                           input_labels=torch.tensor([[[1]]]))
            outputs.append((embedding, masks, points.pred_masks, points.iou_scores))
    for native, ours in zip(*outputs):
        assert torch.allclose(native, ours, atol=1e-6), (native - ours).abs().max()
    assert outputs[0][1].shape == (3, 40, 30) and outputs[0][1].std() > 0  # masks depend on the weights


def test_sam_model_accepts_an_original_checkpoint_file(sam_pair, tmp_path):
    _, original = sam_pair
    path = tmp_path / "sam_vit_tiny.pth"
    torch.save({"model": original}, path)  # also accepted under a "model" key
    cfg = TrainingConfig(sam_model=str(path), sam_image_size=SAM_SIZE, data_root=str(tmp_path))
    cfg.validate(cuda_available=False)  # a .pth file is a valid sam_model
    assert load_sam(cfg).config.vision_config.image_size == SAM_SIZE
    from modlisa.bench.architectures import sam_config as planner_sam_config

    assert planner_sam_config(cfg)[0].to_dict() == sam_config(original, "x")[0].to_dict()  # the memory planner
    with pytest.raises(ConfigError, match="sam_image_size=1024 but SAM model"):
        load_sam(TrainingConfig(sam_model=str(path)))


@pytest.mark.parametrize(("variant", "width", "depth", "heads", "blocks"), [
    ("vit_b", 768, 12, 12, [2, 5, 8, 11]), ("vit_l", 1024, 24, 16, [5, 11, 17, 23]),
    ("vit_h", 1280, 32, 16, [7, 15, 23, 31])])
def test_released_variants_are_recognised_from_shapes(variant, width, depth, heads, blocks):
    """The real sizes, as shapes only (meta tensors: nothing allocated)."""
    from transformers import SamConfig, SamModel, SamVisionConfig

    with torch.device("meta"):
        sam = SamModel(SamConfig(vision_config=SamVisionConfig(hidden_size=width, num_hidden_layers=depth,
                                                               num_attention_heads=heads, global_attn_indexes=blocks)))
    original = to_original(sam.state_dict())
    assert set(original) == original_sam_names(depth=depth, decoder_layers=2, mask_tokens=4)
    config, found = sam_config(original, variant)
    assert found == variant
    assert config.vision_config.to_dict() == sam.config.vision_config.to_dict()
    assert config.mask_decoder_config.to_dict() == sam.config.mask_decoder_config.to_dict()
    assert config.prompt_encoder_config.to_dict() == sam.config.prompt_encoder_config.to_dict()
    assert set(convert_state(original, variant)) | {"prompt_encoder.shared_embedding.positional_embedding"} == set(
        sam.state_dict())


def test_bad_sam_checkpoints_are_one_line_errors_naming_the_file(sam_pair, tmp_path):
    _, original = sam_pair
    extra = tmp_path / "extra.pth"
    torch.save({**original, "image_encoder.adapter.weight": torch.zeros(2)}, extra)
    with pytest.raises(WeightsError, match=r"extra\.pth: 1 key\(s\) .*no SamModel counterpart: image_encoder\.adapter"):
        load_original_sam(extra)
    other = tmp_path / "other.pth"
    torch.save({"backbone.weight": torch.zeros(2)}, other)
    with pytest.raises(WeightsError, match=r"other\.pth: not an original SAM checkpoint"):
        load_original_sam(other)
    values = tmp_path / "values.pth"
    torch.save({"image_encoder.pos_embed": 3}, values)
    with pytest.raises(WeightsError, match=r"values\.pth: not an original SAM checkpoint \(image_encoder.pos_embed"):
        load_original_sam(values)
    short = tmp_path / "short.pth"
    torch.save({k: v for k, v in original.items() if k != "mask_decoder.transformer.layers.1.mlp.lin2.weight"}, short)
    with pytest.raises(WeightsError, match=r"short\.pth: the weights do not fit SamModel: 1 missing "
                                           r"\(mask_decoder\.transformer\.layers\.1\.mlp\.lin2\.weight\)"):
        load_original_sam(short)


# ====================================================================== LISA checkpoint folders
CLIP_SIZE = 64  # CLIP input pixels, patch 16: 16 image tokens
LM_HIDDEN = 64


def lisa_tokenizer():
    """A byte-level tokenizer extended as LISA's training script extends its LLaVA tokenizer: [SEG] with
    ``add_tokens`` (not special), then <im_start> / <im_end> as special tokens; pad = unk. No <image> token:
    LISA splices the image at id -200."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {tok: i for i, tok in enumerate(["<unk>", "<s>", "</s>", *sorted(alphabet)])}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    core.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    tokenizer.add_tokens(SEG_TOKEN)
    tokenizer.add_tokens([IM_START_TOKEN, IM_END_TOKEN], special_tokens=True)
    tokenizer.pad_token = tokenizer.unk_token
    return tokenizer


def lisa_sources(seed: int = 0) -> dict:
    """The models a LISA checkpoint is made of, at toy size, random."""
    from transformers import CLIPVisionConfig, CLIPVisionModel, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    tokenizer = lisa_tokenizer()
    lm = LlamaForCausalLM(LlamaConfig(hidden_size=LM_HIDDEN, intermediate_size=128, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=4, vocab_size=len(tokenizer),
                                      tie_word_embeddings=False)).eval()
    clip = CLIPVisionModel(CLIPVisionConfig(hidden_size=48, intermediate_size=96, num_hidden_layers=3,
                                            num_attention_heads=4, image_size=CLIP_SIZE, patch_size=16)).eval()
    projector = torch.nn.Linear(48, LM_HIDDEN)
    head = torch.nn.Sequential(torch.nn.Linear(LM_HIDDEN, LM_HIDDEN), torch.nn.ReLU(), torch.nn.Linear(LM_HIDDEN, 32))
    return {"tokenizer": tokenizer, "lm": lm, "clip": clip, "projector": projector, "head": head,
            "sam": random_sam(seed)}


def lisa_state(src: dict, with_vision: bool) -> dict[str, torch.Tensor]:
    """The state dict of LISAForCausalLM as LISA saves it (merge_lora_weights_and_save_hf_model.py)."""
    state = dict(src["lm"].state_dict())  # model.embed_tokens, model.layers.*, model.norm, lm_head
    state.update({f"model.mm_projector.{k}": v for k, v in src["projector"].state_dict().items()})
    state.update({f"model.visual_model.{k}": v for k, v in to_original(src["sam"].state_dict()).items()})
    state.update({f"model.text_hidden_fcs.0.{k}": v for k, v in src["head"].state_dict().items()})
    if with_vision:  # CLIPVisionTower.vision_tower = CLIPVisionModel, written by transformers 4 (vision_model.*)
        state.update({f"model.vision_tower.vision_tower.vision_model.{k.removeprefix('vision_model.')}": v
                      for k, v in src["clip"].state_dict().items()})
    return {k: v.detach().clone().contiguous() for k, v in state.items()}


def lisa_config(src: dict, clip_id: str) -> dict:
    """config.json as LISA writes it: LLaVA's LlavaConfig (a LlamaConfig) + LISA's fields."""
    lm = src["lm"].config
    return {"architectures": ["LISAForCausalLM"], "model_type": "llava", "hidden_size": lm.hidden_size,
            "intermediate_size": lm.intermediate_size, "num_hidden_layers": lm.num_hidden_layers,
            "num_attention_heads": lm.num_attention_heads, "num_key_value_heads": lm.num_key_value_heads,
            "max_position_embeddings": lm.max_position_embeddings, "rms_norm_eps": lm.rms_norm_eps,
            "hidden_act": "silu", "initializer_range": 0.02, "vocab_size": len(src["tokenizer"]),
            "tie_word_embeddings": False, "torch_dtype": "float32", "use_cache": False, "bos_token_id": 1,
            "eos_token_id": 2, "pad_token_id": 0, "freeze_mm_mlp_adapter": True, "image_aspect_ratio": "square",
            "mm_hidden_size": 48, "mm_use_im_patch_token": False, "mm_use_im_start_end": True,
            "mm_vision_select_feature": "patch", "mm_vision_select_layer": -2, "mm_vision_tower": clip_id,
            "vision_tower": clip_id, "out_dim": 32, "train_mask_decoder": True, "tune_mm_mlp_adapter": False,
            "use_mm_proj": True}


def write_lisa_folder(folder: Path, src: dict, *, fmt: str = "bin", with_vision: bool = False,
                      clip_id: str = "openai/clip-vit-large-patch14", dtype: torch.dtype = torch.float32) -> Path:
    """A LISA checkpoint folder: config.json, the tokenizer, two weight shards and their index."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True)
    src["tokenizer"].save_pretrained(folder)
    (folder / "config.json").write_text(json.dumps(lisa_config(src, clip_id), indent=2))
    state = {k: v.to(dtype) for k, v in lisa_state(src, with_vision).items()}
    keys = sorted(state)
    shards = [keys[: len(keys) // 2], keys[len(keys) // 2:]]
    weight_map = {}
    for i, names in enumerate(shards, start=1):
        name = f"pytorch_model-{i:05d}-of-00002.bin" if fmt == "bin" else f"model-{i:05d}-of-00002.safetensors"
        part = {k: state[k] for k in names}
        torch.save(part, folder / name) if fmt == "bin" else save_file(part, str(folder / name))
        weight_map.update(dict.fromkeys(names, name))
    index = "pytorch_model.bin.index.json" if fmt == "bin" else "model.safetensors.index.json"
    (folder / index).write_text(json.dumps({"metadata": {"total_size": 0}, "weight_map": weight_map}))
    return folder


@pytest.fixture(scope="module")
def lisa(tmp_path_factory):
    """The toy sources, their CLIP saved as a folder, a LISA folder without the tower (as LISA releases them)
    and its import."""
    base = tmp_path_factory.mktemp("lisa")
    src = lisa_sources()
    src["clip"].save_pretrained(base / "clip")
    folder = write_lisa_folder(base / "LISA-toy", src)
    out = base / "imported"
    assert main(["import-lisa", str(folder), str(out), "--vision_model", str(base / "clip")]) == 0
    return {"src": src, "base": base, "folder": folder, "out": out}


def _batch(model, tokenizer, processors, rng_seed: int = 0):
    """One image with two queries, LLaVA-v1 prompts with <im_start><image><im_end>, answer "Sure, [SEG]."."""
    rng = np.random.default_rng(rng_seed)
    image = rng.integers(0, 256, size=(50, 70, 3), dtype=np.uint8)
    sam_image, resize_hw = processors.sam(image)
    questions = [prompts.eval_question(q, False) for q in ("the disc", "the box")]
    sample = Sample(image_path="a.jpg", json_path="a.json", sam_image=sam_image, vision_image=processors.vision(image),
                    resize_hw=resize_hw, original_hw=(50, 70), questions=questions, answers=["Sure, [SEG]."] * 2,
                    queries=["the disc", "the box"], masks=torch.zeros(2, 50, 70, dtype=torch.uint8),
                    is_sentence=False, index=0)
    return collate_samples([sample], tokenizer, conversation=model.conversation)


def _lisa_reference_prompts(src: dict, batch, image_token_id: int, seg_token_id: int) -> torch.Tensor:
    """text_hidden_fcs([SEG]) computed from the SOURCE modules the way LISA's model_forward does it: the image
    features (CLIP layer -2, CLS dropped, mm_projector) replace the image token, the LM runs on the spliced
    embeddings, the state one position before each [SEG] (input_ids[:, 1:] == seg, shifted by N - 1 after the
    image) goes through text_hidden_fcs."""
    lm, clip, projector, head = src["lm"], src["clip"], src["projector"], src["head"]
    with torch.no_grad():
        features = projector(clip(batch.vision_images, output_hidden_states=True).hidden_states[-2][:, 1:])
        out = []
        for row in range(batch.input_ids.shape[0]):
            ids = batch.input_ids[row][batch.attention_mask[row].bool()]
            at = int((ids == image_token_id).nonzero())
            embed = lm.get_input_embeddings()
            spliced = torch.cat([embed(ids[:at]), features[0], embed(ids[at + 1:])]).unsqueeze(0)
            hidden = lm(inputs_embeds=spliced, output_hidden_states=True).hidden_states[-1][0]
            seg_mask = torch.cat([torch.zeros(features.shape[1] - 1, dtype=torch.bool), ids[1:] == seg_token_id,
                                  torch.zeros(1, dtype=torch.bool)])
            out.append(head(hidden[seg_mask]))
    return torch.cat(out)


def test_import_writes_an_export_with_lisas_ids_and_every_weight(lisa):
    src, out = lisa["src"], lisa["out"]
    info = json.loads((out / "modlisa_export.json").read_text())
    seg_id = src["tokenizer"].convert_tokens_to_ids(SEG_TOKEN)
    assert info["seg_token_id"] == seg_id and info["projector"] == "linear" and info["source_preset"] == "lisa-import"
    assert info["vision_feature_layer"] == -2 and info["drop_cls"] is True
    assert info["imported_from"]["vision_tower"] == str(lisa["base"] / "clip")
    model, tokenizer, processors, cfg = load_exported(out)
    assert (cfg.model, cfg.projector, cfg.use_mm_start_end, cfg.img_size, cfg.sam_image_size) == (
        "composite", "linear", True, CLIP_SIZE, SAM_SIZE)
    assert model.seg_token_id == seg_id and tokenizer.convert_tokens_to_ids(SEG_TOKEN) == seg_id
    assert isinstance(model.projector, torch.nn.Linear)
    for name, tensor in src["projector"].state_dict().items():
        assert torch.equal(model.projector.state_dict()[name], tensor)
    for name, tensor in src["head"].state_dict().items():
        assert torch.equal(model.text_hidden_fcs.state_dict()[name], tensor)
    for name, tensor in src["sam"].state_dict().items():
        assert torch.equal(model.sam.state_dict()[name], tensor), name
    for name, tensor in src["clip"].state_dict().items():
        assert torch.equal(model.vision_tower.state_dict()[name], tensor), name
    rows = len(src["tokenizer"])
    lm_state = merged_language_model(model).state_dict()  # [SEG]-row wrappers folded: the plain LM
    for name, tensor in src["lm"].state_dict().items():
        assert torch.equal(lm_state[name][:rows] if name.endswith(("embed_tokens.weight", "lm_head.weight"))
                           else lm_state[name], tensor), name
    image_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    assert image_id == rows and info["imported_from"]["added_vocabulary_rows"] == [rows]
    assert lm_state["model.embed_tokens.weight"].shape[0] == rows + 1
    assert not lm_state["model.embed_tokens.weight"][image_id].any()
    unk = tokenizer.unk_token_id
    assert torch.equal(lm_state["lm_head.weight"][image_id], lm_state["lm_head.weight"][unk])


def test_seg_path_gives_the_source_weights_text_hidden_fcs_output(lisa):
    src = lisa["src"]
    model, tokenizer, processors, _ = load_exported(lisa["out"])
    batch = _batch(model, tokenizer, processors)
    text = tokenizer.decode(batch.input_ids[0])
    assert f"{IM_START_TOKEN}{IMAGE_TOKEN}{IM_END_TOKEN}" in text  # LISA-7B-v1's image span
    with torch.no_grad():
        out = model(batch)
    reference = _lisa_reference_prompts(src, batch, model.image_token_id, model.seg_token_id)
    assert out.seg_prompts.shape == reference.shape == (2, 32)
    assert torch.allclose(out.seg_prompts, reference, atol=1e-5), (out.seg_prompts - reference).abs().max()
    with torch.no_grad():
        native = decode_masks(src["sam"], reference, model.encode_sam(batch.sam_images)[0],
                              tuple(batch.resize_hw[0]), (50, 70), SAM_SIZE)
    assert torch.allclose(out.pred_masks[0], native, atol=1e-4)


@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
def test_import_with_the_tower_in_the_checkpoint_and_bf16_shards(lisa, tmp_path, fmt):
    """LISA folders that kept the tower (model.vision_tower.vision_tower.*) need no --vision_model; the config
    then comes from mm_vision_tower. bf16 shards, as LISA-7B-v1's."""
    folder = write_lisa_folder(tmp_path / "with_tower", lisa["src"], fmt=fmt, with_vision=True,
                               clip_id=str(lisa["base"] / "clip"), dtype=torch.bfloat16)
    result = import_lisa(folder, tmp_path / "out")
    assert result.vision_tower == "checkpoint" and result.sam_variant == "custom"
    model, *_ = load_exported(tmp_path / "out")
    for name, tensor in lisa["src"]["clip"].state_dict().items():
        assert torch.equal(model.vision_tower.state_dict()[name].float(), tensor.to(torch.bfloat16).float()), name


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    make_dataset(root, seed=0, num_train=2, num_val=1, num_test=1, image_size=64, progress=False)
    return root


def test_imported_folder_evaluates_predicts_and_fine_tunes(lisa, data_root, tmp_path, capsys):
    out = lisa["out"]
    assert main(["eval", "--checkpoint", str(out), "--data_root", str(data_root), "--split", "val",
                 "--out", str(tmp_path / "eval"), "--precision", "fp32"]) == 0
    metrics = json.loads((tmp_path / "eval" / "eval_val.json").read_text())
    assert metrics["num_queries"] >= 1 and 0.0 <= metrics["giou"] <= 1.0
    image = tmp_path / "photo.png"
    Image.fromarray(np.full((40, 56, 3), 120, dtype=np.uint8)).save(image)
    assert main(["predict", "--checkpoint", str(out), "--image", str(image), "--query", "the grey thing",
                 "--mode", "teacher", "--out", str(tmp_path / "pred")]) == 0
    record = json.loads((tmp_path / "pred" / "photo.json").read_text())
    assert record["has_seg"] is True and (tmp_path / "pred" / "photo_mask.png").is_file()
    run = tmp_path / "run"
    assert main(["train", "--init_from", str(out), "--data_root", str(data_root), "--output_dir", str(run),
                 "--num_epochs", "1", "--stop_after_steps", "1", "--batch_size", "1", "--queries_per_image", "1",
                 "--use_mixed_precision", "false", "--cpu", "true", "--warmup_steps", "0", "--learning_rate", "1e-2",
                 "--lora_r", "4", "--lora_alpha", "8", "--max_val_samples", "1"]) == 0
    saved = (run / "outputs" / "config.yaml").read_text()
    assert "init_from: " + str(out.resolve()) in saved and "projector: linear" in saved and "model: composite" in saved
    tuned, _, _, cfg = load_checkpoint(run)
    start, *_ = load_exported(out)
    assert isinstance(tuned.projector, torch.nn.Linear) and torch.equal(tuned.projector.weight, start.projector.weight)
    assert cfg.init_from == str(out) and tuned.conversation.image_start_end is True  # rebuilt through init_from
    changed = not torch.equal(tuned.text_hidden_fcs[0].weight, start.text_hidden_fcs[0].weight)
    assert changed  # one optimizer step moved the [SEG] head
    assert main(["export", "--checkpoint", str(run), "--out", str(tmp_path / "tuned")]) == 0  # self-contained again
    exported, _, _, exported_cfg = load_exported(tmp_path / "tuned")
    assert exported_cfg.init_from is None and exported_cfg.projector == "linear"
    assert torch.equal(exported.text_hidden_fcs[0].weight, tuned.text_hidden_fcs[0].weight)
    assert torch.equal(exported.projector.weight, start.projector.weight)


def test_bad_lisa_folders_are_one_line_errors_naming_the_file(lisa, tmp_path, capsys):
    src = lisa["src"]
    clip = ["--vision_model", str(lisa["base"] / "clip")]
    # unknown layout: a config, no weights in any known form
    odd = tmp_path / "odd"
    odd.mkdir()
    (odd / "config.json").write_text(json.dumps(lisa_config(src, "x")))
    torch.save({}, odd / "weights.pt")
    assert main(["import-lisa", str(odd), str(tmp_path / "o1")]) == 2
    assert re.search(r"error: .*odd: unknown weights layout", capsys.readouterr().err)
    # not LISA's config
    (odd / "config.json").write_text(json.dumps({"model_type": "llama"}))
    assert main(["import-lisa", str(odd), str(tmp_path / "o1")]) == 2
    assert re.search(r"odd/config\.json: not a LISA config", capsys.readouterr().err)
    # a missing shard
    missing = write_lisa_folder(tmp_path / "missing", src)
    (missing / "pytorch_model-00002-of-00002.bin").unlink()
    assert main(["import-lisa", str(missing), str(tmp_path / "o2"), *clip]) == 2
    assert re.search(r"missing/pytorch_model-00002-of-00002\.bin: missing \(listed in pytorch_model\.bin\.index\.json\)",
                     capsys.readouterr().err)
    # an unmapped key
    extra = write_lisa_folder(tmp_path / "extra", src)
    shard = extra / "pytorch_model-00001-of-00002.bin"
    part = torch.load(shard, weights_only=True)
    torch.save({**part, "model.region_head.weight": torch.zeros(2)}, shard)
    index = json.loads((extra / "pytorch_model.bin.index.json").read_text())
    index["weight_map"]["model.region_head.weight"] = shard.name
    (extra / "pytorch_model.bin.index.json").write_text(json.dumps(index))
    assert main(["import-lisa", str(extra), str(tmp_path / "o3"), *clip]) == 2
    err = capsys.readouterr().err
    assert re.search(r"extra/pytorch_model-00001-of-00002\.bin: 1 key\(s\) with no place .*model\.region_head\.weight", err)
    assert len(err.strip().splitlines()) == 1
    # no tower in the checkpoint and the config's CLIP id not available offline
    assert main(["import-lisa", str(lisa["folder"]), str(tmp_path / "o4")]) == 2
    assert "vision_model='openai/clip-vit-large-patch14' could not be loaded" in capsys.readouterr().err
    # nothing half-written
    assert not any((tmp_path / name).exists() for name in ("o1", "o2", "o3", "o4"))


def test_unmerged_lora_keys_get_a_hint(lisa, tmp_path):
    folder = write_lisa_folder(tmp_path / "lora", lisa["src"])
    shard = folder / "pytorch_model-00001-of-00002.bin"
    part = torch.load(shard, weights_only=True)
    torch.save({**part, "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": torch.zeros(2)}, shard)
    (folder / "pytorch_model.bin.index.json").unlink()  # index-less shards are found too
    with pytest.raises(WeightsError, match="LoRA not merged"):
        import_lisa(folder, tmp_path / "out", vision_model=str(lisa["base"] / "clip"))


def test_init_from_needs_an_export_folder(tmp_path):
    cfg = TrainingConfig(init_from=str(tmp_path), data_root=str(tmp_path))
    with pytest.raises(ConfigError, match="init_from .* is not a modlisa export folder"):
        cfg.validate(cuda_available=False)
    with pytest.raises(ConfigError, match="projector=linear applies to the composite preset only"):
        TrainingConfig(projector="linear").validate(check_paths=False, cuda_available=False)


def test_lisa_7b_recipe_on_an_imported_folder(lisa):
    """`--model lisa-7b --init_from OUT`: LISA's LoRA / embedding settings, the imported folder's models."""
    from modlisa.model.factory import apply_preset

    cfg = apply_preset(TrainingConfig(model="lisa-7b", init_from=str(lisa["out"])))
    assert (cfg.model, cfg.llava_model, cfg.projector, cfg.use_mm_start_end) == ("composite", None, "linear", True)
    assert cfg.language_model == str(lisa["out"].resolve() / "language_model")
    assert (cfg.img_size, cfg.sam_image_size) == (CLIP_SIZE, SAM_SIZE)
    assert (cfg.use_lora, cfg.lora_r, cfg.lora_alpha, cfg.train_embeddings) == (True, 8, 16, "full")
    assert apply_preset(cfg) == cfg  # idempotent: a run folder's resolved config rebuilds the same model
    cfg.validate(check_paths=False, cuda_available=False)


class _Payload:
    """Pickles as a call of print: what a malicious checkpoint would do with os.system."""

    def __reduce__(self):
        return (print, ("payload ran",))


def test_pickle_payloads_are_refused_not_run(lisa, sam_pair, tmp_path, capsys):
    folder = write_lisa_folder(tmp_path / "evil", lisa["src"])
    shard = folder / "pytorch_model-00002-of-00002.bin"
    part = torch.load(shard, weights_only=True)
    torch.save({**part, next(iter(part)): _Payload()}, shard)
    assert main(["import-lisa", str(folder), str(tmp_path / "out"), "--vision_model", str(lisa["base"] / "clip")]) == 2
    captured = capsys.readouterr()
    assert "payload ran" not in captured.out
    assert re.search(r"evil/pytorch_model-00002-of-00002\.bin: refused", captured.err)
    sam = tmp_path / "sam_vit_evil.pth"
    torch.save({**sam_pair[1], "image_encoder.pos_embed": _Payload()}, sam)
    with pytest.raises(WeightsError, match=r"sam_vit_evil\.pth: refused"):
        load_original_sam(sam)
    assert "payload ran" not in capsys.readouterr().out


def test_out_must_be_new_or_overwritten(lisa, tmp_path):
    clip = str(lisa["base"] / "clip")
    with pytest.raises(ConfigError, match="OUT .* is the LISA folder itself"):
        import_lisa(lisa["folder"], lisa["folder"], vision_model=clip)
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("mine")
    with pytest.raises(ConfigError, match="OUT .* exists and is not empty; pass --overwrite"):
        import_lisa(lisa["folder"], busy, vision_model=clip)
    assert (busy / "keep.txt").read_text() == "mine"
    import_lisa(lisa["folder"], busy, vision_model=clip, overwrite=True)
    assert not (busy / "keep.txt").exists() and (busy / "SHA256SUMS").is_file()
