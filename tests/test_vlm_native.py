"""The vlm preset's native (dynamic) resolution on tiny random Qwen2.5-VL and Qwen3-VL checkpoints: each image keeps
its aspect ratio and gets its own number of image tokens, as the checkpoint's image processor decides. Checked
against the checkpoint's own pipeline (its image processor, its forward's splice and M-RoPE) on a batch of images of
different shapes, through generation and through export + reload."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from inference_helpers import check_vlm_generation_is_teacher_forcing  # noqa: E402
from modlisa.config import ConfigError, TrainingConfig, resolve_config  # noqa: E402
from modlisa.data.collate import collate_samples  # noqa: E402
from modlisa.data.transforms import NativeVisionTransform  # noqa: E402
from modlisa.model.factory import build_model  # noqa: E402
from modlisa.model.vlm_family import qwen_patchify  # noqa: E402
from modlisa.predictor import Predictor  # noqa: E402
from modlisa.types import SEG_TOKEN  # noqa: E402
from test_model import make_samples, toy_loss  # noqa: E402
from vlm_fixtures import save_tiny_vlm  # noqa: E402

KINDS = ("qwen2_5_vl", "qwen3_vl")
BUDGET = {"qwen2_5_vl": 112, "qwen3_vl": 128}  # img_size: at most img_size^2 pixels (16 image tokens)
SHAPES = ((40, 150), (100, 70), (64, 64))  # (H, W) of the images: three different token grids


def native_cfg(folder: str, kind: str, **overrides) -> TrainingConfig:
    values = {"model": "vlm", "vlm_model": folder, "img_size": BUDGET[kind], "sam_image_size": 64,
              "sam_kind": "sam2", "vlm_resolution": "native", **overrides}
    return TrainingConfig(**values)


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, str]:
    base = tmp_path_factory.mktemp("vlm_native")
    return {kind: save_tiny_vlm(kind, base / kind) for kind in (*KINDS, "idefics3")}


@pytest.fixture(scope="module")
def built(folders):
    torch.set_num_threads(1)
    return {kind: build_model(native_cfg(folders[kind], kind)) for kind in KINDS}


def _image(shape: tuple[int, int], seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (*shape, 3), dtype=np.uint8)


@pytest.mark.parametrize("kind", KINDS)
def test_native_pixels_and_grid_are_the_image_processors(built, kind):
    model, _, processors = built[kind]
    assert isinstance(processors.vision, NativeVisionTransform)
    vision = model.vlm.config.vision_config
    for seed, shape in enumerate(SHAPES):
        image = _image(shape, seed)
        ours = processors.vision(image)
        theirs = model.image_processor(images=[image], return_tensors="pt")
        grid = theirs["image_grid_thw"][0].tolist()
        assert list(ours.shape[1:]) == [grid[1] * vision.patch_size, grid[2] * vision.patch_size]
        assert ours.shape[1] * ours.shape[2] <= BUDGET[kind] ** 2
        patches = qwen_patchify(ours[None], vision.patch_size, vision.spatial_merge_size, vision.temporal_patch_size)
        assert torch.allclose(patches, theirs["pixel_values"], atol=1e-5)
        assert model.family.grid([tuple(ours.shape[1:])]).tolist() == [grid]


def _reference_rows(model, batch, counts: list[int]) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """The batch's rows as the checkpoint's processor writes them: row q's placeholder replaced by counts[q] image
    tokens, right-padded to the longest; returns ids, mask (Q, T) and each row's length."""
    img = model.image_token_id
    rows, lengths = [], []
    for ids, mask, n in zip(batch.input_ids, batch.attention_mask, counts):
        real = ids[mask.bool()]
        p = int((real == img).nonzero())
        rows.append(torch.cat([real[:p], torch.full((n,), model.model_image_token_id), real[p + 1:]]))
        lengths.append(len(rows[-1]))
    width = max(lengths)
    ids = torch.stack([torch.cat([r, torch.zeros(width - len(r), dtype=r.dtype)]) for r in rows])
    mask = torch.stack([(torch.arange(width) < n).long() for n in lengths])
    return ids, mask, lengths


@pytest.mark.parametrize("kind", KINDS)
def test_ragged_batch_equals_the_checkpoints_own_pipeline(built, kind):
    """Three images of three shapes (two queries on the first) in one batch: modlisa's logits, [SEG] states and
    M-RoPE positions are the checkpoint's own forward on its processor's pixels and grids."""
    model, tokenizer, processors = built[kind]
    model.eval()
    samples = make_samples(processors, sizes=SHAPES, queries_per_image=(2, 1, 1))
    batch = collate_samples(samples, tokenizer, 512, model.conversation)
    assert batch.vision_hw == [tuple(s.vision_image.shape[1:]) for s in samples]
    assert len(set(batch.vision_hw)) == 3 and batch.vision_images.shape[-2:] == (
        max(h for h, _ in batch.vision_hw), max(w for _, w in batch.vision_hw))
    per_image = model.family.image_token_counts(batch.vision_hw).tolist()
    counts = [per_image[b] for b in (0, 0, 1, 2)]
    assert len(set(per_image)) == 3
    with torch.no_grad():
        ours = model(batch)
        ids, mask, lengths = _reference_rows(model, batch, counts)
        images = [np.asarray(im) for im in (_image_of(samples, 0), _image_of(samples, 0), _image_of(samples, 1),
                                            _image_of(samples, 2))]
        pixels = model.image_processor(images=images, return_tensors="pt")
        theirs = model.vlm(input_ids=ids, attention_mask=mask, pixel_values=pixels["pixel_values"],
                           image_grid_thw=pixels["image_grid_thw"],
                           mm_token_type_ids=(ids == model.model_image_token_id).int(), output_hidden_states=True,
                           use_cache=False)
    for q, n in enumerate(lengths):
        assert torch.allclose(ours.logits[q, :n], theirs.logits[q, :n], atol=1e-5)
        assert not bool(ours.labels[q, n:].ne(-100).any())  # the padding of shorter rows learns nothing
    assert ours.labels.shape[1] > min(lengths)
    seg = tokenizer.convert_tokens_to_ids(SEG_TOKEN)
    read_rows, read_pos = torch.nonzero(ids == seg, as_tuple=True)
    assert ours.seg_counts.tolist() == [1, 1, 1, 1]
    assert torch.allclose(ours.seg_embeddings, theirs.hidden_states[-1][read_rows, read_pos - 1], atol=1e-5)
    positions, _ = model.vlm.model.get_rope_index(ids, mm_token_type_ids=(ids == model.model_image_token_id).int(),
                                                  image_grid_thw=pixels["image_grid_thw"], attention_mask=mask)
    row_hw = [batch.vision_hw[b] for b in (0, 0, 1, 2)]
    ours_pos = model.position_ids(torch.nn.functional.pad(ids, (0, ours.logits.shape[1] - ids.shape[1])),
                                  torch.nn.functional.pad(mask, (0, ours.logits.shape[1] - ids.shape[1])), row_hw)
    assert torch.equal(ours_pos[..., :ids.shape[1]][:, mask.bool()], positions[:, mask.bool()])
    model.train()


def _image_of(samples, b: int) -> np.ndarray:
    """The raw image of make_samples' sample b (it draws them from seed 0 in order)."""
    rng = np.random.default_rng(0)
    for i, (h, w) in enumerate(SHAPES):
        image = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
        rng.random((samples[i].masks.shape[0], h, w))
        if i == b:
            return image
    raise IndexError(b)


@pytest.mark.parametrize("kind", KINDS)
def test_ragged_batch_trains_and_each_image_reads_as_alone(built, kind):
    model, tokenizer, processors = built[kind]
    samples = make_samples(processors, sizes=SHAPES, queries_per_image=(1, 1, 1))
    batch = collate_samples(samples, tokenizer, 512, model.conversation)
    model.eval()
    with torch.no_grad():
        together = model(batch)
        alone = [model(collate_samples([s], tokenizer, 512, model.conversation)) for s in samples]
    for b, out in enumerate(alone):
        assert torch.allclose(together.seg_embeddings[b], out.seg_embeddings[0], atol=1e-5)
        assert torch.allclose(together.pred_masks[b], out.pred_masks[0], atol=1e-4)
    model.train()
    model.zero_grad()
    loss = toy_loss(model(batch), batch)
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad and p.grad is not None}
    assert torch.isfinite(loss) and all(bool(torch.isfinite(g).all()) for g in grads.values())
    for part in ("lora_B", ".delta", "text_hidden_fcs.", "sam.mask_decoder."):  # LM, [SEG] row, head, decoder
        assert any(part in n and g.abs().sum() > 0 for n, g in grads.items()), part
    model.zero_grad()


@pytest.mark.parametrize("kind", KINDS)
def test_native_generation_and_export_reload(built, folders, kind, tmp_path):
    from modlisa.model.lisa import ModifiedLISA

    model, tokenizer, processors = built[kind]
    image = _image((37, 120), 7)  # wide: a 2 x 8-ish token grid, not the square budget
    predictor = Predictor(model, tokenizer, processors)
    predictor.set_image(image)
    assert predictor._image.image_features.shape[1] < model.num_image_tokens
    check_vlm_generation_is_teacher_forcing(predictor, image)  # KV-cache steps vs one pass
    teacher = predictor.predict("the red circle", is_sentence=False, mode="teacher")
    folder = model.save_pretrained(tmp_path / "export", tokenizer=tokenizer, processors=processors,
                                   config=native_cfg(folders[kind], kind))
    loaded = ModifiedLISA.from_pretrained(folder)
    assert loaded.pretrained.config.vlm_resolution == "native"
    again = Predictor(loaded, loaded.pretrained.tokenizer, loaded.pretrained.processors)
    again.set_image(image)
    assert isinstance(again.processors.vision, NativeVisionTransform)
    assert torch.allclose(again.predict("the red circle", is_sentence=False, mode="teacher").logits, teacher.logits,
                          atol=1e-4)
    model.train()


def test_native_resolution_choices_and_presets(folders):
    with pytest.raises(ConfigError, match="vlm_resolution must be one of fixed, native"):
        TrainingConfig(model="vlm", vlm_model="x", vlm_resolution="dynamic").validate(check_paths=False)
    with pytest.raises(ConfigError, match="native needs a Qwen2-VL"):
        build_model(TrainingConfig(model="vlm", vlm_model=folders["idefics3"], img_size=64, sam_image_size=64,
                                   sam_kind="sam2", vlm_resolution="native"))
    for preset, expected in (("qwen2.5-vl-3b-sam2", "native"), ("qwen3-vl-4b-sam2", "native"),
                             ("smolvlm-256m-sam2", "fixed")):
        cfg, sources = resolve_config({"model": preset}, {})
        assert cfg.vlm_resolution == expected
    cfg, sources = resolve_config({"model": "qwen2.5-vl-3b-sam2"}, {"vlm_resolution": "fixed"})
    assert cfg.vlm_resolution == "fixed" and sources["vlm_resolution"] == "cli"


def test_expand_image_tokens_with_per_row_counts_is_the_naive_splice():
    from modlisa.model.seg import expand_image_tokens

    rng = np.random.default_rng(4)
    lengths, places, counts = [6, 4, 5], [2, 0, 4], [3, 5, 1]  # real tokens, placeholder index, image tokens
    width, n_max = max(lengths), max(counts)
    text = torch.randn(3, width, 2)
    image = torch.randn(3, n_max, 2)
    mask = torch.tensor([[1] * n + [0] * (width - n) for n in lengths])
    labels = torch.from_numpy(rng.integers(0, 50, (3, width)))
    embeds, new_mask, new_labels = expand_image_tokens(text, image, torch.tensor(places), mask, labels,
                                                       torch.tensor(counts))
    assert embeds.shape == (3, width + n_max - 1, 2)
    for q, (n, p, k) in enumerate(zip(lengths, places, counts)):
        row = torch.cat([text[q, :p], image[q, :k], text[q, p + 1:n]])
        assert torch.equal(embeds[q, :len(row)], row)
        assert new_mask[q].tolist() == [1] * len(row) + [0] * (embeds.shape[1] - len(row))
        expected = labels[q, :p].tolist() + [-100] * k + labels[q, p + 1:n].tolist()
        assert new_labels[q, :len(row)].tolist() == expected
        assert bool((new_labels[q, width + k - 1:] == -100).all())  # the extra padding of rows with fewer tokens
