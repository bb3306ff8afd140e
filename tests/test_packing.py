"""Shared-image query packing (``pack_queries``): LISA's exact losses with the image tokens computed once per image.

Proof of equivalence on the tiny preset (everything trainable, fp32): per-query CE terms, [SEG] embeddings, mask
logits, every loss term and EVERY gradient of the packed forward equal the unpacked one within fp32 round-off
(atol 1e-5, rtol 1e-4), for 1, 2 and 3 queries per image, with padding and an explanatory answer in the mix,
with the LM's sdpa and eager attention; also on a tiny random llava-hf checkpoint (llava preset, chat
template, GQA). Exact resume with packing on: tests/test_train.py.
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from modlisa.config import TrainingConfig  # noqa: E402
from modlisa.data import prompts  # noqa: E402
from modlisa.data.collate import collate_samples  # noqa: E402
from modlisa.losses import IGNORE_INDEX, compute_losses  # noqa: E402
from modlisa.model.adapters import unwrap_lm  # noqa: E402
from modlisa.model.factory import build_model  # noqa: E402
from modlisa.model.packing import (  # noqa: E402
    block_attention_mask,
    mask_kind,
    pack_blocker,
    packed_labels,
    packed_lengths,
    plan_packing,
)
from modlisa.model.seg import image_token_positions  # noqa: E402
from modlisa.types import Batch, Sample  # noqa: E402

ATOL, RTOL = 1e-5, 1e-4  # fp32 round-off: the packed attention sums the same terms in another order
IMG, SAM = 64, 64  # N = (64 / 32)^2 = 4 image tokens

ANSWERS = ["Sure, [SEG].", "It is [SEG].",
           "Sure, the segmentation result is [SEG]. It is the red square because it lies left of the circle."]
EXPLANATION = "The red square is the target because it lies left of the circle."
QUERIES = ["the shape", "the large blue circle on the right", "the red square that is left of everything else"]


def tiny_cfg(**overrides) -> TrainingConfig:
    overrides.setdefault("model", "tiny")
    return TrainingConfig(img_size=IMG, sam_image_size=SAM, use_mixed_precision=False,
                          freeze_image_encoder=False, freeze_sam=False, freeze_text_encoder=False,
                          train_embeddings="full", lora_dropout=0.0, **overrides)


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return build_model(tiny_cfg())


def make_samples(processors, queries_per_image: tuple[int, ...], seed: int = 0,
                 text_only: tuple[int, ...] = ()) -> list[Sample]:
    """Images with n queries each: questions of different lengths (padding), an explanatory answer among them;
    the images listed in ``text_only`` get LISA's text-only explanatory items (no [SEG], no mask)."""
    rng = np.random.default_rng(seed)
    samples = []
    for i, n in enumerate(queries_per_image):
        h, w = 40 + 10 * i, 56 - 6 * i
        image = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
        sam_image, resize_hw = processors.sam(image)
        picks = [(i + k) % 3 for k in range(n)]
        questions = [prompts.train_question(QUERIES[p], False, random.Random(k))
                     for k, p in enumerate(picks)]
        samples.append(Sample(image_path=f"img{i}.jpg", json_path=f"img{i}.json", sam_image=sam_image,
                              vision_image=processors.vision(image), resize_hw=resize_hw, original_hw=(h, w),
                              questions=questions,
                              answers=[EXPLANATION if i in text_only else ANSWERS[p] for p in picks],
                              queries=[QUERIES[p] for p in picks],
                              masks=torch.from_numpy((rng.random((0 if i in text_only else n, h, w)) > 0.5)
                                                     .astype(np.uint8)),
                              is_sentence=False, index=i))
    return samples


def per_query_ce(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(Q,) summed CE of each row's answer tokens and (Q,) their counts (LISA: total = sum / count over the batch)."""
    targets = labels[:, 1:]
    loss = F.cross_entropy(logits[:, :-1].float().transpose(1, 2), targets, ignore_index=IGNORE_INDEX,
                           reduction="none")
    return loss.sum(1), (targets != IGNORE_INDEX).sum(1)


def run(model, batch: Batch, pack: bool) -> tuple[dict, dict, object]:
    """Losses, gradients and the output of one forward + backward (packed or not)."""
    model.pack_queries = pack
    model.zero_grad(set_to_none=True)
    out = model(batch)
    losses = compute_losses(out.logits, out.labels, out.pred_masks, batch.masks)
    losses["loss"].backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    return {k: v.detach() for k, v in losses.items()}, grads, out


def assert_close(a: torch.Tensor, b: torch.Tensor, name: str) -> None:
    torch.testing.assert_close(a, b, atol=ATOL, rtol=RTOL, msg=lambda m: f"{name}: {m}")


# ---------------------------------------------------------------------- the plan and the mask
def test_plan_and_block_mask_on_a_small_example():
    # two images: image 0 with rows 0, 1 (prefix 2, N 3 -> shared 5), image 1 with row 2
    mask = torch.tensor([[1] * 7 + [0] * 2, [1] * 9, [1] * 6 + [0] * 3])
    image_pos = torch.tensor([2, 2, 1])
    plan = plan_packing(mask, image_pos, [0, 2, 3], n_img=3)
    assert plan.length == 5 + 2 + 4  # shared + row 0's 2 + row 1's 4 tokens
    assert plan.segment[0].tolist() == [-1] * 5 + [0] * 2 + [1] * 4
    assert plan.position_ids[0].tolist() == [0, 1, 2, 3, 4, 5, 6, 5, 6, 7, 8]
    assert plan.segment[1].tolist() == [-1] * 4 + [0] * 2 + [-2] * 5
    assert plan.gather[0, 7:].tolist() == [9 + t for t in range(5, 9)]  # row 1's segment (L' = 9)
    assert plan.scatter[1, :5].tolist() == list(range(5)) and plan.scatter[1, 5:].tolist() == [7, 8, 9, 10]
    assert plan.scatter[2, :6].tolist() == [11 + t for t in range(6)]
    allowed = block_attention_mask(plan.segment, torch.float32)[:, 0] == 0
    assert allowed[0, 8, :5].all() and allowed[0, 8, 7:9].all()  # row 1's token: shared + itself, causal
    assert not allowed[0, 8, 5:7].any() and not allowed[0, 8, 9:].any()  # never row 0's segment, no future
    assert not allowed[0, 6, 7:].any() and allowed[0, 6, :7].all()
    assert allowed[1, 7].tolist() == [t == 7 for t in range(11)]  # padding attends only to itself
    assert not allowed[0, 3, 4:].any() and allowed[0, 3, :4].all()  # the shared span is causal


def test_bool_mask_for_sdpa_float_for_eager_and_what_blocks_packing():
    segment = torch.tensor([[-1, -1, 0, 0, 1, -2]])
    as_bool = block_attention_mask(segment)
    as_float = block_attention_mask(segment, torch.float32)
    assert as_bool.dtype == torch.bool and torch.equal(as_bool, as_float == 0)
    assert mask_kind(SimpleNamespace(_attn_implementation="sdpa")) == "bool"
    assert mask_kind(SimpleNamespace(_attn_implementation="eager", sliding_window=None)) == "float"
    ids = torch.tensor([[1, 2, 9, 5, 6], [1, 2, 9, 7, 0], [1, 3, 9, 7, 0]])
    image_pos = torch.tensor([2, 2, 2])

    def blocker(impl, window=None, length=100, offsets=(0, 2, 3)):
        config = SimpleNamespace(_attn_implementation=impl, sliding_window=window)
        return pack_blocker(config, length, ids, image_pos, list(offsets))

    assert blocker("sdpa") is None and blocker("eager") is None
    assert blocker("sdpa", window=4096, length=4096) is None
    assert "flash_attention_2" in blocker("flash_attention_2")
    assert "sliding window (64)" in blocker("sdpa", window=64, length=65)
    assert "rows 0 and 2 of image 0 differ before the image token" in blocker("sdpa", offsets=(0, 3))


def test_packed_labels_count_the_same_predictions_or_refuse():
    # one image, rows 0 and 1 (prefix 1 + N 2 -> shared 3), row 0 supervises its last 2 tokens, row 1 its last 1
    mask = torch.tensor([[1] * 6, [1] * 5 + [0]])
    labels = torch.tensor([[-100, -100, -100, -100, 11, 12], [-100, -100, -100, -100, 13, -100]])
    plan = plan_packing(mask, torch.tensor([1, 1]), [0, 2], n_img=2)
    packed = packed_labels(labels, plan)
    # packed row: shared 0..2 | row 0's 3..5 | row 1's 3..4; position p predicts packed[p + 1]
    assert plan.gather[0].tolist() == [0, 1, 2, 3, 4, 5, 9, 10]
    assert packed[0].tolist() == [-100, -100, -100, -100, 11, 12, -100, 13]
    labels[1, 3] = 14  # a supervised token right after the image span: one shared position cannot predict both
    assert packed_labels(labels, plan) is None


def test_packed_lengths_count_the_image_span_once(tiny):
    model, tokenizer, processors = tiny
    batch = collate_samples(make_samples(processors, (3, 1)), tokenizer, 512)
    pos = image_token_positions(batch.input_ids, model.image_token_id)
    n = model.num_image_tokens
    lengths = packed_lengths(batch.attention_mask, pos, batch.offsets.tolist(), n)
    rows = batch.attention_mask.sum(1).tolist()
    shared = int(pos[0]) + n
    assert lengths[0] == shared + sum(r + n - 1 - shared for r in rows[:3])
    assert lengths[1] == rows[3] + n - 1


# ---------------------------------------------------------------------- equivalence
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("queries,text_only", [((1, 1), ()), ((2, 1), ()), ((3, 2), ()), ((3, 3, 1), (1,))])
def test_packed_forward_equals_unpacked(tiny, attn, queries, text_only):
    check_equivalence(*tiny, attn, queries, text_only)


@pytest.fixture(scope="module")
def tiny_llava(tmp_path_factory):
    """The llava preset on a tiny random llava-hf checkpoint (fp32, GQA LM), prompts by its chat template."""
    from llava_fixtures import save_tiny_llava

    folder = save_tiny_llava(tmp_path_factory.mktemp("llava"), dtype=torch.float32)
    torch.manual_seed(0)
    return build_model(tiny_cfg(model="llava", llava_model=folder, use_chat_template=True))


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_forward_equals_unpacked_on_tiny_llava_hf(tiny_llava, attn):
    check_equivalence(*tiny_llava, attn, (3, 2, 1), ())


def check_equivalence(model, tokenizer, processors, attn: str, queries: tuple[int, ...],
                      text_only: tuple[int, ...]) -> None:
    """Losses, per-query CE, [SEG] embeddings and prompts, mask logits and every gradient: packed == unpacked."""
    for part in (unwrap_lm(model.language_model), model.vision_tower):
        part.set_attn_implementation(attn)
    model.train()
    batch = collate_samples(make_samples(processors, queries, seed=len(queries), text_only=text_only), tokenizer,
                            512)
    assert (batch.attention_mask == 0).any() or len(set(queries)) == 1  # padding in the mix
    seen: list[tuple[int, ...]] = []
    hook = model.language_model.register_forward_hook(
        lambda _m, _a, kwargs, _o: seen.append(tuple(kwargs["inputs_embeds"].shape[:2])), with_kwargs=True)
    try:
        base_losses, base_grads, base = run(model, batch, pack=False)
        packed_losses, packed_grads, packed = run(model, batch, pack=True)
    finally:
        hook.remove()
        model.pack_queries = False
        for part in (unwrap_lm(model.language_model), model.vision_tower):
            part.set_attn_implementation("sdpa")
    # the packed run really ran one sequence per image (when some image has more than one query), shorter
    if max(queries) > 1:
        assert seen[1][0] == len(queries) and seen[1][0] * seen[1][1] < seen[0][0] * seen[0][1]
    else:
        assert seen[1] == seen[0]
    for key in base_losses:
        assert_close(packed_losses[key], base_losses[key], key)
    if max(queries) > 1:  # the logits stay packed: (B, Lp, V), one row per image
        assert packed.logits.shape[:2] == seen[1] and packed.labels.shape == seen[1]
    base_sum, base_count = per_query_ce(base.logits, base.labels)
    packed_sum, packed_count = per_query_ce(packed.unpacked_logits(), packed.unpacked_labels)
    assert torch.equal(packed_count, base_count) and torch.equal(packed.unpacked_labels, base.labels)
    assert_close(packed_sum, base_sum, "per-query CE sums")
    assert torch.equal(packed.seg_counts, base.seg_counts)
    assert_close(packed.seg_embeddings, base.seg_embeddings, "[SEG] embeddings")
    assert_close(packed.seg_prompts, base.seg_prompts, "[SEG] prompts")
    for b, (p, u) in enumerate(zip(packed.pred_masks, base.pred_masks)):
        assert_close(p, u, f"mask logits of image {b}")
    assert packed_grads.keys() == base_grads.keys() and len(base_grads) > 10
    for name, grad in base_grads.items():
        assert_close(packed_grads[name], grad, f"gradient of {name}")


def test_explanatory_answer_is_in_the_mix(tiny):
    _, tokenizer, processors = tiny
    batch = collate_samples(make_samples(processors, (3, 2)), tokenizer, 512)
    assert any("because" in a for a in ANSWERS) and batch.num_queries == 5
    answers_tokens = (batch.labels != IGNORE_INDEX).sum(1)
    assert int(answers_tokens.max()) > 3 * int(answers_tokens.min())


def eval_unpacked_then_packed(model, batch: Batch, times: int = 1) -> list:
    """Eval-mode outputs of ``batch``: once with packing off, then ``times`` with it on (left off after)."""
    model.eval()
    with torch.no_grad():
        outputs = [model(batch)]
        model.pack_queries = True
        try:
            outputs += [model(batch) for _ in range(times)]
        finally:
            model.pack_queries = False
    return outputs


def test_rows_without_a_shared_prefix_run_unpacked_with_one_warning(tiny, caplog):
    model, tokenizer, processors = tiny
    batch = collate_samples(make_samples(processors, (2,)), tokenizer, 512)
    ids = batch.input_ids.clone()
    ids[1, 1] = (int(ids[1, 1]) + 1) % 50 + 10
    batch = replace(batch, input_ids=ids)
    with caplog.at_level("WARNING", logger="modlisa.model.lisa"):
        base, packed, again = eval_unpacked_then_packed(model, batch, times=2)
    assert packed.pack_plan is None and again.pack_plan is None and packed.logits.shape == base.logits.shape
    torch.testing.assert_close(packed.logits, base.logits, atol=0, rtol=0)
    warnings = [r.getMessage() for r in caplog.records if "pack_queries" in r.getMessage()]
    assert len(warnings) == 1 and "differ before the image token" in warnings[0] and "unpacked" in warnings[0]


def test_a_supervised_token_after_the_image_unpacks_the_logits_only(tiny):
    model, tokenizer, processors = tiny
    batch = collate_samples(make_samples(processors, (3, 1)), tokenizer, 512)
    labels = batch.labels.clone()
    image_pos = image_token_positions(batch.input_ids, model.image_token_id)
    labels[1, int(image_pos[1]) + 1] = batch.input_ids[1, int(image_pos[1]) + 1]
    batch = replace(batch, labels=labels)
    base, packed = eval_unpacked_then_packed(model, batch)
    assert packed.pack_plan is not None and packed.logits.shape == base.logits.shape
    ce = compute_losses(packed.logits, packed.labels, packed.pred_masks, batch.masks)["ce"]
    assert_close(ce, compute_losses(base.logits, base.labels, base.pred_masks, batch.masks)["ce"], "CE")


def test_pack_queries_is_on_by_default_and_set_on_the_model():
    assert TrainingConfig().pack_queries is True
    model, _, _ = build_model(tiny_cfg(pack_queries=False))
    assert model.pack_queries is False
    model, _, _ = build_model(tiny_cfg())
    assert model.pack_queries is True


# ---------------------------------------------------------------------- the bench (exact resume with packing:
# tests/test_train.py::test_exact_resume_mid_epoch[True])
@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    from modlisa.synthetic import make_dataset

    root = tmp_path_factory.mktemp("synthetic")
    make_dataset(root, seed=0, num_train=8, num_val=5, num_test=4, image_size=64, progress=False)
    return root


@pytest.mark.parametrize("flag", ["true", "false"])
def test_bench_compares_both_settings_in_one_bench_json(data_root, tmp_path, flag, capsys):
    from modlisa.cli.bench import main as main_bench

    repo = Path(__file__).resolve().parents[1]
    out = tmp_path / "bench.json"
    args = ["--config", str(repo / "configs" / "demo.yaml"), "--data_root", str(data_root), "--output_dir",
            str(tmp_path / "run"), "--img_size", "64", "--sam_image_size", "64", "--batch_size", "2",
            "--queries_per_image", "3", "--seg_prompt_teacher_fraction", "0", "--warmup", "1", "--steps", "2",
            "--eval-steps", "0", "--matmul-n", "64", "--pack_queries", flag, "--compare_packing", "--out", str(out)]
    assert main_bench(args) == 0
    r = json.loads(out.read_text())
    assert r["config"]["pack_queries"] is (flag == "true") and r["train"]["pack_queries"] is (flag == "true")
    c = r["packing_comparison"]
    packed, unpacked = c["packed"], c["unpacked"]
    # the configured setting is the main section; the other one was measured in the same process
    assert (packed if flag == "true" else unpacked)["samples_per_s"] == r["train"]["samples_per_s"]
    assert packed["lm_tokens_per_image"] < unpacked["lm_tokens_per_image"]
    assert packed["flops_per_step"] < unpacked["flops_per_step"]
    ratios = c["ratio_packed_to_unpacked"]
    assert ratios["lm_tokens_per_image"] == pytest.approx(packed["lm_tokens_per_image"] /
                                                          unpacked["lm_tokens_per_image"])
    assert ratios["samples_per_s"] == pytest.approx(packed["samples_per_s"] / unpacked["samples_per_s"])
    assert len(packed["losses"]) == len(unpacked["losses"]) == 3  # warm-up + 2 measured steps
    assert all(np.isfinite(packed["losses"])) and c["max_abs_loss_difference"] < 1e-4  # the same training
    assert packed["losses"][0] == pytest.approx(unpacked["losses"][0], abs=1e-5)
    assert "packed / unpacked: samples/s x" in capsys.readouterr().out
