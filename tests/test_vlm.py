"""The vlm preset on tiny random Qwen2.5-VL, Qwen3-VL and Idefics3 (SmolVLM) checkpoints: the [SEG] gather, the
processor's image tokens and M-RoPE positions (equal to the model's own pipeline), a training step, teacher and
generated answers, export + reload."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from inference_helpers import check_vlm_generation_is_teacher_forcing  # noqa: E402
from modlisa.config import ConfigError, TrainingConfig  # noqa: E402
from modlisa.data.collate import collate_samples  # noqa: E402
from modlisa.model.adapters import trainable_parameter_names  # noqa: E402
from modlisa.model.factory import build_model  # noqa: E402
from modlisa.model.vlm_family import qwen_patchify  # noqa: E402
from modlisa.predictor import Predictor  # noqa: E402
from modlisa.types import Batch  # noqa: E402
from test_model import make_samples, toy_loss  # noqa: E402
from vlm_fixtures import QWEN2_5_VL_TEMPLATE, VLM_IMG, VLM_KINDS, save_tiny_vlm  # noqa: E402

SAM = 64


def vlm_cfg(folder: str, kind: str, **overrides) -> TrainingConfig:
    values = {"model": "vlm", "vlm_model": folder, "img_size": VLM_IMG[kind], "sam_image_size": SAM,
              "sam_kind": "sam2", **overrides}
    return TrainingConfig(**values)


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, str]:
    base = tmp_path_factory.mktemp("vlm")
    return {kind: save_tiny_vlm(kind, base / kind) for kind in VLM_KINDS}


@pytest.fixture(scope="module")
def built(folders):
    torch.set_num_threads(1)
    return {kind: build_model(vlm_cfg(folders[kind], kind)) for kind in VLM_KINDS}


def _batch(model, processors, rows: list[list[int]], mask: list[list[int]], images: list[np.ndarray],
           offsets: list[int]) -> Batch:
    ids = torch.tensor(rows)
    sams = [processors.sam(im) for im in images]
    return Batch(sam_images=torch.stack([s for s, _ in sams]),
                 vision_images=torch.stack([processors.vision(im) for im in images]), input_ids=ids,
                 attention_mask=torch.tensor(mask), labels=torch.full_like(ids, -100), offsets=torch.tensor(offsets),
                 masks=[torch.zeros(1, *im.shape[:2]) for im in images], resize_hw=[hw for _, hw in sams],
                 original_hw=[im.shape[:2] for im in images], image_paths=["a"] * len(images),
                 queries=["x"] * len(rows), is_sentence=[False] * len(rows))


def _native(model, kind: str, ids: torch.Tensor, mask: torch.Tensor, crops: list[np.ndarray]):
    """The checkpoint's own pipeline, no modlisa code: its image processor's pixels, its forward's splice and
    (Qwen) its own M-RoPE positions from mm_token_type_ids + image_grid_thw."""
    vlm = model.vlm
    if kind in ("idefics3", "smolvlm"):
        pixels = model.image_processor(images=[[c] for c in crops], return_tensors="pt")
        return vlm(input_ids=ids, attention_mask=mask, pixel_values=pixels["pixel_values"],
                   pixel_attention_mask=pixels["pixel_attention_mask"], output_hidden_states=True, use_cache=False)
    pixels = model.image_processor(images=crops, return_tensors="pt")
    return vlm(input_ids=ids, attention_mask=mask, pixel_values=pixels["pixel_values"],
               image_grid_thw=pixels["image_grid_thw"], mm_token_type_ids=(ids == vlm.config.image_token_id).int(),
               output_hidden_states=True, use_cache=False)


class PositionNorm(torch.nn.Module):
    """Stand-in final norm: the state at (row q, expanded position t) is 1000 q + t in every channel."""

    def forward(self, hidden):
        q, length, h = hidden.shape
        index = (torch.arange(length)[None, :, None] + 1000 * torch.arange(q)[:, None, None]).to(hidden.dtype)
        return index.expand(q, length, h) + 0 * hidden


@pytest.mark.parametrize("kind", VLM_KINDS)
def test_seg_gather_is_the_state_before_each_seg_and_equals_the_models_own_pipeline(built, kind):
    model, tokenizer, processors = built[kind]
    model.eval()
    n = model.num_image_tokens
    assert n == 4
    img, seg = model.image_token_id, model.seg_token_id
    rows = [[5, 6, img, 7, 8, seg, 10],            # image 0: image token at 2, one [SEG]
            [img, 7, seg, 8, seg, 9, 0],           # image 0: image token at 0, two [SEG]s, padding
            [5, 6, 7, 8, img, seg, 0]]             # image 1: image token at 4, one [SEG], padding
    mask = [[1] * 7, [1] * 6 + [0], [1] * 6 + [0]]
    size = VLM_IMG[kind]
    rng = np.random.default_rng(0)
    crops = [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(2)]  # V x V: no resize, no crop
    batch = _batch(model, processors, rows, mask, crops, [0, 2, 3])
    # 1. the read positions: (j - 1) + (N - 1) after the image, in the expanded rows
    text_model = model.vlm.get_submodule(model.family.lm_prefix)
    norm, text_model.norm = text_model.norm, PositionNorm()
    try:
        with torch.no_grad():
            out = model(batch)
    finally:
        text_model.norm = norm
    expected = [0 * 1000 + (5 - 1) + (n - 1), 1000 + (2 - 1) + (n - 1), 1000 + (4 - 1) + (n - 1),
                2000 + (5 - 1) + (n - 1)]
    assert out.seg_embeddings[:, 0].tolist() == expected
    assert out.seg_counts.tolist() == [1, 2, 1] and out.labels.shape == (3, 7 + n - 1)
    # 2. the same rows through the checkpoint's own pipeline: the same logits and [SEG] states
    with torch.no_grad():
        ours = model(batch)
        ids = torch.tensor(rows)
        image_pos = (ids == img).int().argmax(1)
        expanded = torch.stack([torch.cat([r[:p], torch.full((n,), model.model_image_token_id), r[p + 1:]])
                                for r, p in zip(ids, image_pos)])
        full_mask = torch.stack([torch.cat([m[:p], torch.ones(n, dtype=m.dtype), m[p + 1:]])
                                 for m, p in zip(torch.tensor(mask), image_pos)])
        native = _native(model, kind, expanded, full_mask, [crops[0], crops[0], crops[1]])
    real = full_mask.bool()
    assert torch.allclose(ours.logits[real], native.logits[real], atol=1e-5)
    read_rows = torch.tensor([0, 1, 1, 2])
    read_pos = torch.tensor(expected) - 1000 * read_rows
    assert torch.allclose(ours.seg_embeddings, native.hidden_states[-1][read_rows, read_pos], atol=1e-5)
    # the state read is the one whose logits predict [SEG]
    head = model.vlm.get_output_embeddings()
    assert torch.allclose(head(ours.seg_embeddings), ours.logits[read_rows, read_pos], atol=1e-5)
    if model.family.name != "idefics3":  # M-RoPE: modlisa's explicit positions are the model's own
        token_type = (expanded == model.model_image_token_id).int()
        side = size // model.vlm.config.vision_config.patch_size
        grid = torch.tensor([[1, side, side]] * 3)  # what the image processor gives for a V x V image
        theirs, _ = model.vlm.model.get_rope_index(expanded, mm_token_type_ids=token_type, image_grid_thw=grid,
                                                   attention_mask=full_mask)
        assert torch.equal(model.position_ids(expanded, full_mask), theirs)
        assert theirs.shape == (3, 3, 7 + n - 1)
    model.train()


@pytest.mark.parametrize("kind", ["qwen2_5_vl", "qwen3_vl"])
def test_qwen_patchify_is_the_image_processors(built, kind):
    model, _, processors = built[kind]
    size = VLM_IMG[kind]
    crop = np.random.default_rng(1).integers(0, 256, (size, size, 3), dtype=np.uint8)
    vision = model.vlm.config.vision_config
    ours = qwen_patchify(processors.vision(crop)[None], vision.patch_size, vision.spatial_merge_size,
                         vision.temporal_patch_size)
    theirs = model.image_processor(images=[crop], return_tensors="pt")["pixel_values"]
    assert ours.shape == theirs.shape and torch.allclose(ours, theirs, atol=1e-5)


@pytest.mark.parametrize("kind", VLM_KINDS)
def test_training_step_reaches_lora_seg_row_and_decoder_only(built, kind):
    model, tokenizer, processors = built[kind]
    names = set(trainable_parameter_names(model))
    lora = [n for n in names if "lora_" in n]
    assert lora and all(f".{model.family.lm_prefix}." in n for n in lora)  # never the vision tower's q/v
    assert {n.split(".")[-4] for n in lora} == {"q_proj", "v_proj"}
    assert not any(n.startswith(("vision_tower.", "projector.")) for n in names)
    batch = collate_samples(make_samples(processors), tokenizer, 512, model.conversation)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    loss = toy_loss(model(batch), batch)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()
    changed = {n for n, p in model.named_parameters() if n in before and not torch.equal(p, before[n])}
    assert any("lora_B" in n for n in changed) and any(n.startswith("text_hidden_fcs.") for n in changed)
    assert any(".delta" in n for n in changed)  # the [SEG] row (train_embeddings: seg_row)
    assert any(n.startswith("sam.mask_decoder.") for n in changed)
    assert torch.isfinite(loss)


def test_bf16_checkpoint_autocast_and_gradient_checkpointing_give_the_same_gradients(tmp_path):
    """Qwen3-VL (M-RoPE + DeepStack) stored in bf16 as published, autocast bf16, with and without checkpointing."""
    folder = save_tiny_vlm("qwen3_vl", tmp_path / "qwen3", dtype=torch.bfloat16)
    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(1)
        model, tokenizer, processors = build_model(vlm_cfg(folder, "qwen3_vl", gradient_checkpointing=checkpointing,
                                                           lora_dropout=0.0))
        with torch.no_grad():
            for name, param in model.named_parameters():
                if "lora_B" in name:
                    param.normal_(0, 0.1)
        batch = collate_samples(make_samples(processors), tokenizer, 512, model.conversation)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(batch)
        toy_loss(out, batch).backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.grad is not None})
    assert next(model.vlm.parameters()).dtype == torch.bfloat16
    assert grads[0].keys() == grads[1].keys() and any("lora_A" in n for n in grads[0])
    for name, grad in grads[0].items():
        assert torch.equal(grad, grads[1][name]), name


def test_pack_queries_qwen_falls_back_with_one_warning_idefics3_packs_exactly(built, caplog):
    for kind in VLM_KINDS:
        model, tokenizer, processors = built[kind]
        model._pack_fallbacks.clear()
        batch = collate_samples(make_samples(processors), tokenizer, 512, model.conversation)  # 2 + 1 queries
        caplog.clear()
        model.eval()  # no LoRA dropout: the passes compare
        with torch.no_grad():
            packed, again = model(batch), model(batch)
            model.pack_queries = False
            unpacked = model(batch)
            model.pack_queries = True
        model.train()
        warnings = [r.getMessage() for r in caplog.records if "pack_queries" in r.getMessage()]
        if model.family.name == "idefics3":  # 1D RoPE (Idefics3, SmolVLM2): one sequence per image, the same numbers as one per query
            assert not warnings and packed.pack_plan is not None and packed.logits.shape[0] == 2
            assert torch.allclose(packed.unpacked_logits(), unpacked.logits, atol=1e-5)
            assert torch.allclose(packed.seg_embeddings, unpacked.seg_embeddings, atol=1e-5)
            assert all(torch.allclose(a, b, atol=1e-4) for a, b in zip(packed.pred_masks, unpacked.pred_masks))
        else:  # M-RoPE: unpacked, said once
            assert len(warnings) == 1 and "M-RoPE" in warnings[0] and packed.pack_plan is None
            assert torch.equal(packed.logits, unpacked.logits) and torch.equal(packed.logits, again.logits)


@pytest.mark.parametrize("kind", VLM_KINDS)
def test_teacher_and_generation_agree_with_teacher_forcing(built, kind):
    model, tokenizer, processors = built[kind]
    image = np.random.default_rng(3).integers(0, 256, (45, 61, 3), dtype=np.uint8)
    predictor = Predictor(model, tokenizer, processors)
    predictor.set_image(image)
    teacher = predictor.predict("the red circle", is_sentence=False, mode="teacher")
    assert teacher.logits.shape == (1, 45, 61)
    check_vlm_generation_is_teacher_forcing(predictor, image)  # KV-cache steps vs one pass


def test_bad_vlm_inputs_name_the_value(tmp_path, folders):
    from modlisa.model.backbones import tiny_sam

    sam = tmp_path / "sam"
    tiny_sam(64).save_pretrained(sam)  # a folder whose model is not image-text-to-text
    with pytest.raises(ConfigError, match="vlm_model .*model_type 'sam'"):
        build_model(TrainingConfig(model="vlm", vlm_model=str(sam), img_size=56, sam_image_size=SAM))
    with pytest.raises(ConfigError, match="img_size=60: .* multiple of 28"):
        build_model(vlm_cfg(folders["qwen2_5_vl"], "qwen2_5_vl", img_size=60))
    bare = Path(save_tiny_vlm("qwen2_5_vl", tmp_path / "bare"))  # a base checkpoint: no chat template
    (bare / "chat_template.jinja").unlink(missing_ok=True)
    values = json.loads((bare / "tokenizer_config.json").read_text())
    values.pop("chat_template", None)
    (bare / "tokenizer_config.json").write_text(json.dumps(values))
    with pytest.raises(ConfigError, match="neither its tokenizer nor its processor has a chat template"):
        build_model(vlm_cfg(str(bare), "qwen2_5_vl"))
    # a template kept only in the processor's legacy chat_template.json (AutoTokenizer does not read it) is used
    (bare / "chat_template.json").write_text(json.dumps({"chat_template": QWEN2_5_VL_TEMPLATE}))
    model, tokenizer, _ = build_model(vlm_cfg(str(bare), "qwen2_5_vl"))
    assert tokenizer.chat_template == QWEN2_5_VL_TEMPLATE
    (bare / "chat_template.json").write_text("{not json")
    with pytest.raises(ConfigError, match="chat_template.json is not a readable chat template file"):
        build_model(vlm_cfg(str(bare), "qwen2_5_vl"))
    with pytest.raises(ConfigError, match="model=vlm needs vlm_model"):
        TrainingConfig(model="vlm").validate(check_paths=False)


@pytest.mark.parametrize("kind", VLM_KINDS)
def test_export_and_from_pretrained_give_identical_predictions(built, folders, kind, tmp_path):
    from modlisa.model.lisa import ModifiedLISA

    model, tokenizer, processors = built[kind]
    with torch.no_grad():  # trained-looking adapters: LoRA B, the [SEG] row and the head all non-zero
        for name, param in model.named_parameters():
            if param.requires_grad and ("lora_B" in name or name.endswith(".delta")):
                param.normal_(0, 0.05)
    image = np.random.default_rng(5).integers(0, 256, (40, 52, 3), dtype=np.uint8)

    def predictions(net, tok, procs):
        predictor = Predictor(net, tok, procs)
        predictor.set_image(image)
        teacher = predictor.predict("the red circle", is_sentence=False, mode="teacher")
        generated = predictor.predict("the red circle", is_sentence=False, max_new_tokens=6)
        return teacher, generated

    before = predictions(model, tokenizer, processors)
    folder = model.save_pretrained(tmp_path / "export", tokenizer=tokenizer, processors=processors,
                                   config=vlm_cfg(folders[kind], kind))
    loaded = ModifiedLISA.from_pretrained(folder)
    assert type(loaded).__name__ == "VLMLISA" and loaded.pretrained.config.model == "vlm"
    assert loaded.conversation == model.conversation and loaded.num_image_tokens == model.num_image_tokens
    after = predictions(loaded, loaded.pretrained.tokenizer, loaded.pretrained.processors)
    assert after[1].text == before[1].text
    for ours, theirs in zip(before, after):
        assert torch.allclose(ours.logits, theirs.logits, atol=1e-4)
    model.train()


def test_four_bit_qwen_trains_through_lora_and_exports_dequantized(folders, tmp_path):
    """use_quantization with the vlm preset: only the text model is 4-bit (vision tower, merger, head are skipped),
    a step trains LoRA, and the export holds the de-quantised LM predicting the same masks."""
    pytest.importorskip("bitsandbytes", reason="the quant extra: pip install 'modlisa[quant]'")
    from modlisa.model.lisa import ModifiedLISA
    from modlisa.model.quantization import is_quantized

    cfg = vlm_cfg(folders["qwen2_5_vl"], "qwen2_5_vl", use_quantization=True, quantization_bits=4, lora_r=4,
                  lora_alpha=8)
    model, tokenizer, processors = build_model(cfg)
    four_bit = [n for n, m in model.vlm.named_modules() if type(m).__name__ == "Linear4bit"]
    assert four_bit and all(n.startswith(model.family.lm_prefix + ".") for n in four_bit)
    assert is_quantized(model.language_model) and not is_quantized(model.vision_tower)
    batch = collate_samples(make_samples(processors), tokenizer, 512, model.conversation)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    lora_b = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_B" in n}
    loss = toy_loss(model(batch), batch)
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss) and any(not torch.equal(p, lora_b[n]) for n, p in model.named_parameters()
                                        if n in lora_b)
    image = np.random.default_rng(6).integers(0, 256, (40, 52, 3), dtype=np.uint8)
    before = Predictor(model, tokenizer, processors)
    before.set_image(image)
    folder = model.save_pretrained(tmp_path / "export", tokenizer=tokenizer, processors=processors, config=cfg)
    loaded = ModifiedLISA.from_pretrained(folder)
    assert not is_quantized(loaded.language_model) and loaded.pretrained.config.use_quantization is False
    after = Predictor(loaded, loaded.pretrained.tokenizer, loaded.pretrained.processors)
    after.set_image(image)
    a = before.predict("the red circle", is_sentence=False, mode="teacher").logits
    b = after.predict("the red circle", is_sentence=False, mode="teacher").logits
    assert torch.allclose(a, b, atol=1e-3, rtol=1e-3), float((a - b).abs().max())


# ---------------------------------------------------------------------- presets, planner, the commands
def test_named_presets_fix_checkpoints_sizes_and_chat_template():
    from modlisa.config import resolve_config
    from modlisa.model.factory import VLM_PRESET_FIELDS, apply_preset

    for name, fields in VLM_PRESET_FIELDS.items():
        cfg = apply_preset(TrainingConfig(model=name))
        assert (cfg.vlm_model, cfg.sam_model, cfg.img_size) == (fields["vlm_model"], fields["sam_model"],
                                                                 fields["img_size"])
        assert cfg.sam_image_size == 1024 and cfg.sam_kind == "sam2" and cfg.use_chat_template
        resolved, sources = resolve_config({}, {"model": name})
        assert resolved.steps_per_epoch == 500 and sources["learning_rate"] == "preset"
    own = apply_preset(TrainingConfig(model="qwen2.5-vl-3b-sam2", vlm_model="/my/qwen", img_size=224))
    assert own.vlm_model == "/my/qwen" and own.img_size == 224  # a given checkpoint keeps the config's size


def test_planner_skeleton_counts_the_real_models_parameters(built, folders):
    from modlisa.bench.architectures import architecture_for, build_skeleton

    for kind in VLM_KINDS:
        model, _, _ = built[kind]
        cfg = vlm_cfg(folders[kind], kind)
        arch = architecture_for(cfg)
        assert arch.num_image_tokens == model.num_image_tokens  # the processors' arithmetic = the processor
        skeleton = build_skeleton(arch, cfg)
        count = sum(p.numel() for p in skeleton.parameters())
        # the real model's vocabulary grew by <image> / [SEG] (2 rows of embedding + head), the skeleton's did not
        extra = sum(p.numel() for n, p in model.named_parameters() if n.endswith(("embed_tokens.weight",
                    "lm_head.weight")) and "base_layer" not in n) - sum(
            p.numel() for n, p in skeleton.named_parameters() if n.endswith(("embed_tokens.weight", "lm_head.weight")))
        assert count + extra == sum(p.numel() for p in model.parameters())
        assert set(trainable_parameter_names(skeleton)) == set(trainable_parameter_names(model))


def test_plan_memory_answers_for_the_vlm_presets(capsys):
    from modlisa.bench.memory_plan import estimate
    from modlisa.cli import main

    expected = {"qwen2.5-vl-3b-sam2": (3.98e9, 256), "qwen3-vl-4b-sam2": (4.67e9, 256),
                "smolvlm-256m-sam2": (0.289e9, 64)}
    assert main(["bench", "--plan_memory", "--model", "qwen2.5-vl-3b-sam2", "--gpu_gb", "24"]) == 0
    out = capsys.readouterr().out
    assert "Qwen/Qwen2.5-VL-3B-Instruct, facebook/sam2.1-hiera-large" in out and "fits: needs" in out
    for name, (params, tokens) in expected.items():
        plan = estimate(TrainingConfig(model=name))
        assert abs(plan["params_total"] - params) / params < 0.01
        assert plan["architecture"]["vision"]["tokens"] == tokens
        assert plan["architecture"]["sam"]["kind"] == "sam2"


@pytest.mark.slow
def test_cli_train_eval_predict_export_with_tiny_qwen_and_sam2(folders, tmp_path):
    """Every command on a tiny Qwen2.5-VL at native resolution (the Qwen presets' default) + a tiny SAM 2."""
    from accelerate.state import AcceleratorState

    from modlisa.cli import main

    AcceleratorState._reset_state(reset_partial_state=True)
    data, run, export = tmp_path / "data", tmp_path / "run", tmp_path / "export"
    assert main(["make-data", str(data), "--num_train", "4", "--num_val", "2", "--num_test", "1", "--image_size",
                 "64", "--no_progress"]) == 0
    assert main(["train", "--model", "vlm", "--vlm_model", folders["qwen2_5_vl"], "--sam_kind", "sam2",
                 "--vlm_resolution", "native", "--img_size", "56", "--sam_image_size", "64", "--data_root", str(data), "--output_dir", str(run),
                 "--num_epochs", "1", "--stop_after_steps", "3", "--batch_size", "1", "--queries_per_image", "2",
                 "--cpu", "true", "--use_mixed_precision", "false", "--log_every_steps", "1",
                 "--warmup_steps", "1"]) == 0
    losses = [json.loads(line)["loss"] for line in (run / "outputs" / "train_log.jsonl").read_text().splitlines()
              if "loss" in json.loads(line)]
    assert len(losses) == 3 and all(np.isfinite(losses))
    assert main(["eval", "--checkpoint", str(run), "--split", "val", "--mode", "teacher"]) == 0
    assert main(["eval", "--checkpoint", str(run), "--split", "val", "--mode", "generate", "--max_new_tokens", "3",
                 "--out", str(tmp_path / "gen")]) == 0
    assert json.loads((run / "outputs" / "eval_val.json").read_text())
    assert main(["export", "--checkpoint", str(run), "--out", str(export)]) == 0
    image = next((data / "val").glob("*.jpg"))
    for source, out in ((run, tmp_path / "p1"), (export, tmp_path / "p2")):
        assert main(["predict", "--checkpoint", str(source), "--image", str(image), "--query", "the red circle",
                     "--mode", "teacher", "--out", str(out)]) == 0
    first, second = (np.asarray(__import__("PIL.Image").Image.open(next(p.glob("*_mask.png"))))
                     for p in (tmp_path / "p1", tmp_path / "p2"))
    assert np.array_equal(first, second)
    assert main(["analyze", str(run)]) == 0
    assert main(["bench", "--model", "vlm", "--vlm_model", folders["qwen2_5_vl"], "--sam_kind", "sam2",
                 "--vlm_resolution", "native", "--img_size", "56", "--sam_image_size", "64", "--data_root", str(data), "--output_dir",
                 str(tmp_path / "bench"), "--warmup", "1", "--steps", "1", "--eval_steps", "1", "--batch_size", "1",
                 "--cpu", "true", "--use_mixed_precision", "false"]) == 0
    assert json.loads((tmp_path / "bench" / "outputs" / "bench.json").read_text())


@pytest.mark.parametrize("name", ["qwen2.5_vl_3b_sam2", "qwen3_vl_4b_sam2", "smolvlm_256m_sam2"])
def test_vlm_yaml_configs_resolve_to_their_preset(name):
    from modlisa.config import load_yaml, resolve_config
    from modlisa.model.factory import apply_preset

    root = Path(__file__).resolve().parents[1]
    values = load_yaml(root / "configs" / f"{name}.yaml")
    cfg, sources = resolve_config(values, {})
    cfg.validate(check_paths=False)
    assert apply_preset(cfg) == cfg  # the file spells out the preset's fixed model settings
    assert cfg.model == name.replace("_", "-") and sources["vlm_model"] == "yaml"
