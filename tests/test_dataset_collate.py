"""ReasonSegDataset (train / eval protocol, determinism, strictness) and the collate function."""

from __future__ import annotations

import logging
import pickle

import numpy as np
import pytest
import torch
from tokenizers import processors

from modlisa.data import prompts
from modlisa.data.collate import collate_samples, encode_query, make_collate_fn
from modlisa.data.dataset import ReasonSegDataset, item_seed
from modlisa.data.reasonseg import DataError, mask_from_shapes
from modlisa.data.transforms import Augmenter, SamTransform, VisionTransform
from modlisa.model.tokenizer import build_byte_tokenizer
from modlisa.types import IGNORE_INDEX, IMAGE_TOKEN, SEG_TOKEN
from reasonseg_fixtures import GOOD_TRAIN_TEXTS, make_reasonseg, write_bad_files, write_truncated_jpeg

SAM_SIZE, VISION_SIZE = 32, 16


def dataset(root, split="train", **kwargs) -> ReasonSegDataset:
    kwargs.setdefault("train", split == "train")
    return ReasonSegDataset(root, split, SamTransform(SAM_SIZE), VisionTransform(VISION_SIZE), **kwargs)


@pytest.fixture
def data_root(tmp_path):
    return make_reasonseg(tmp_path, n_train=4)


@pytest.fixture(scope="module")
def tokenizer():
    return build_byte_tokenizer()


def same_sample(a, b) -> bool:
    return (a.questions, a.answers, a.queries) == (b.questions, b.answers, b.queries) and all(
        torch.equal(x, y) for x, y in ((a.sam_image, b.sam_image), (a.vision_image, b.vision_image),
                                        (a.masks, b.masks)))


# --------------------------------------------------------------------------- dataset


def test_train_item_samples_distinct_texts_sharing_the_image_mask(data_root):
    ds = dataset(data_root, explanatory_prob=0.0)
    sample = ds[1]
    assert len(sample.queries) == 3 and len(set(sample.queries)) == 3
    assert set(sample.queries) <= set(GOOD_TRAIN_TEXTS)
    ann = ds.annotations[1]
    expected_mask = torch.from_numpy(mask_from_shapes(ann.shapes, sample.original_hw))
    assert sample.masks.dtype == torch.uint8 and sample.masks.shape == (3, *sample.original_hw)
    assert all(torch.equal(m, expected_mask) for m in sample.masks)
    templates = prompts.LONG_QUESTIONS if ann.is_sentence else prompts.SHORT_QUESTIONS
    for question, query in zip(sample.questions, sample.queries):
        shown = query if ann.is_sentence else query.lower()
        assert question in {t.format(x=shown) for t in templates}
    assert all(answer in prompts.ANSWERS for answer in sample.answers)
    assert sample.sam_image.shape == (3, SAM_SIZE, SAM_SIZE) and sample.vision_image.shape == (3, VISION_SIZE,
                                                                                                 VISION_SIZE)
    assert sample.index == 1 and sample.json_path.endswith("train_01.json")
    assert len(dataset(data_root, queries_per_image=10)[0].queries) == len(GOOD_TRAIN_TEXTS)


def test_items_are_deterministic_in_seed_epoch_and_index(data_root):
    ds, again = dataset(data_root), dataset(data_root)
    assert all(same_sample(ds[i], again[i]) for i in range(len(ds)))
    draws = lambda d: [(d[i].queries, d[i].questions, d[i].answers) for i in range(len(d))]  # noqa: E731
    first = draws(ds)
    ds.set_epoch(1)
    assert draws(ds) != first
    ds.set_epoch(0)
    assert draws(ds) == first
    assert draws(dataset(data_root, seed=7)) != first
    assert item_seed(1, 2, 3) == item_seed(1, 2, 3) != item_seed(1, 2, 4)
    assert item_seed(0, 0, 0) == 15793235383387715774  # SeedSequence: the same in every process and run


def test_eval_item_is_the_first_text_with_the_fixed_prompt(data_root):
    ds = dataset(data_root, "test")
    assert not ds.train and len(ds) == 2
    for i in range(len(ds)):
        sample, ann = ds[i], ds.annotations[i]
        assert sample.queries == [ann.texts[0]]
        assert sample.questions == [prompts.eval_question(ann.texts[0], ann.is_sentence)]
        assert sample.answers == [prompts.EVAL_ANSWER] and sample.masks.shape[0] == 1
    # LISA's validation prompt has a space after "<image>\n" (utils/dataset.py: "\n What is {} ...")
    assert ds[1].questions == [" test query 1 Please output segmentation mask."]
    assert ds[0].questions == [" What is test query 0 in this image? Please output segmentation mask."]
    assert (ds[0].masks == 255).any()  # ignore regions are kept for evaluation


def test_augmenter_moves_image_and_masks_together_in_training_only(data_root):
    flip = Augmenter(hflip=True, color_jitter=0.0)
    plain, augmented = dataset(data_root), dataset(data_root, augmenter=flip)
    flipped_any = False
    for i in range(len(plain)):
        a, b = plain[i], augmented[i]
        if torch.equal(b.masks, a.masks.flip(-1)) and not torch.equal(a.masks, b.masks):
            flipped_any = True
            h, w = b.resize_hw
            assert torch.allclose(b.sam_image[:, :h, :w], a.sam_image[:, :h, :w].flip(-1), atol=1e-5)
        else:
            assert same_sample(a, b)
    assert flipped_any
    evaluation = dataset(data_root, "val", augmenter=flip)
    assert all(same_sample(evaluation[i], dataset(data_root, "val")[i]) for i in range(len(evaluation)))


@pytest.mark.parametrize("layout", ["nested", "flat"])
def test_both_layouts_and_max_samples(tmp_path, layout):
    make_reasonseg(tmp_path, layout=layout, explanatory="seed" if layout == "flat" else "standard")
    assert len(dataset(tmp_path)) == 3 and len(dataset(tmp_path, max_samples=2)) == 2
    assert dataset(tmp_path).annotations[0].explanation == "Scissors cut paper."


def test_strict_raises_listing_all_problems_and_lenient_skips(data_root, caplog):
    cases = write_bad_files(data_root / "ReasonSeg" / "train")
    with pytest.raises(DataError) as info:
        dataset(data_root)
    message = str(info.value)
    for case in ("missing_image", "malformed_json", "no_text", "out_of_bounds", "nonfinite_points", "bad_field"):
        assert cases[case] in message, case
    with caplog.at_level(logging.WARNING, logger="modlisa.data.dataset"):
        lenient = dataset(data_root, strict=False)
    assert lenient.num_skipped == 11 and len(lenient) == 4 + 6  # truncated JPEG: header ok, fails on load
    assert any("skipped 11" in record.message for record in caplog.records)
    assert {p.kind for p in lenient.problems} >= {"missing_image", "no_target", "unknown_label"}


def test_truncated_image_fails_at_load_time_naming_the_file(data_root):
    write_truncated_jpeg(data_root / "ReasonSeg" / "val" / "val_01.jpg", hw=(26, 33))
    ds = dataset(data_root, "val")  # the header is fine: the scan passes
    ds[0]
    with pytest.raises(DataError, match="val_01.jpg: cannot decode image"):
        ds[1]


def test_bad_arguments_are_rejected(data_root):
    with pytest.raises(ValueError, match="queries_per_image"):
        dataset(data_root, queries_per_image=0)
    with pytest.raises(ValueError, match="explanatory_prob"):
        dataset(data_root, explanatory_prob=1.5)
    with pytest.raises(DataError, match="no split folder"):
        dataset(data_root, "dev")


# --------------------------------------------------------------------------- collate


def test_collate_offsets_labels_and_padding(data_root, tokenizer):
    train, test = dataset(data_root), dataset(data_root, "test")
    samples = [train[0], test[1], train[2]]
    batch = collate_samples(samples, tokenizer)
    counts = [len(s.queries) for s in samples]
    assert batch.offsets.tolist() == [0, 3, 4, 7] and batch.num_queries == sum(counts) and batch.num_images == 3
    assert batch.sam_images.shape == (3, 3, SAM_SIZE, SAM_SIZE)
    assert batch.vision_images.shape == (3, 3, VISION_SIZE, VISION_SIZE)
    assert batch.input_ids.dtype == torch.int64 and batch.input_ids.shape == batch.labels.shape
    assert batch.sample_ids == [0, 1, 2]
    assert batch.queries == [q for s in samples for q in s.queries]
    assert batch.is_sentence == [s.is_sentence for s in samples for _ in s.queries]
    assert [m.shape[0] for m in batch.masks] == counts
    image_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    answers = [a for s in samples for a in s.answers]
    questions = [q for s in samples for q in s.questions]
    for row in range(batch.num_queries):
        ids, labels, attention = batch.input_ids[row], batch.labels[row], batch.attention_mask[row]
        length = int(attention.sum())
        assert attention[:length].all() and not attention[length:].any()
        assert (ids[length:] == tokenizer.pad_token_id).all() and (labels[length:] == IGNORE_INDEX).all()
        assert int((ids == image_id).sum()) == 1
        prompt, full = prompts.format_conversation(questions[row], answers[row], tokenizer)
        n_prompt = len(tokenizer(prompt)["input_ids"])
        assert (labels[:n_prompt] == IGNORE_INDEX).all()
        assert torch.equal(labels[n_prompt:length], ids[n_prompt:length])
        assert tokenizer.decode(ids[n_prompt:length]) == full[len(prompt):]
        assert tokenizer.decode(ids[:length]) == full


def test_collate_with_a_bos_adding_tokenizer(data_root):
    tok = build_byte_tokenizer()
    tok._tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", tok.bos_token_id)])
    sample = dataset(data_root, "val")[0]
    batch = collate_samples([sample], tok)
    assert batch.input_ids[0, 0] == tok.bos_token_id and (batch.input_ids[0] == tok.bos_token_id).sum() == 1
    labelled = batch.labels[0][batch.labels[0] != IGNORE_INDEX]
    assert tok.decode(labelled) == " [SEG].</s>"


def test_truncation_keeps_seg_and_refuses_to_cut_it(data_root, tokenizer):
    question, answer = "What is it? Please output segmentation mask.", "Sure, [SEG]. " + "because " * 40
    full_ids, _ = encode_query(question, answer, tokenizer, 10_000)
    seg_id = tokenizer.convert_tokens_to_ids(SEG_TOKEN)
    keep = full_ids.index(seg_id) + 3
    ids, labels = encode_query(question, answer, tokenizer, keep)
    assert len(ids) == len(labels) == keep and ids[-3] == seg_id and labels[-3] == seg_id
    with pytest.raises(ValueError, match="query 'my query'.*max_length"):
        encode_query(question, answer, tokenizer, keep - 3, query="my query")
    with pytest.raises(ValueError, match="max_length=20"):
        encode_query(question, answer, tokenizer, 20)
    with pytest.raises(ValueError, match="exactly one <image>"):
        encode_query("look at <image> here", answer, tokenizer, 10_000)


def test_collate_fn_is_picklable_and_works_in_a_dataloader(data_root, tokenizer):
    collate = pickle.loads(pickle.dumps(make_collate_fn(tokenizer, max_length=512)))
    loader = torch.utils.data.DataLoader(dataset(data_root, "val"), batch_size=2, collate_fn=collate)
    batches = list(loader)
    assert len(batches) == 1 and batches[0].offsets.tolist() == [0, 1, 2] and batches[0].sample_ids == [0, 1]
    assert np.array_equal(batches[0].masks[1].numpy(), dataset(data_root, "val")[1].masks.numpy())
