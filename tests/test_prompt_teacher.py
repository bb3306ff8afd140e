"""Bag-of-words prompt distillation (engine/prompt_teacher.py): the teacher's pieces, the model's
``decoder_prompts`` hook, and a short run with the teacher: logged, saved in ``checkpoints/last`` only."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from modlisa.config import ConfigError, TrainingConfig
from modlisa.data.collate import collate_samples
from modlisa.data.dataset import ReasonSegDataset
from modlisa.engine.prompt_teacher import (
    BOW_SCALE,
    BagOfWordsPrompt,
    count_seg_tokens,
    distill_loss,
    idf_weights,
    seg_queries,
    teacher_active,
    teacher_prompts,
)
from modlisa.model.factory import build_model
from modlisa.synthetic import make_dataset


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("teacher_data")
    make_dataset(root, seed=3, num_train=6, num_val=2, num_test=1, image_size=64, progress=False)
    return root


def _tiny_config(root: Path, out: Path, **overrides) -> TrainingConfig:
    cfg = TrainingConfig(
        data_root=str(root), output_dir=str(out), model="tiny", img_size=64, sam_image_size=64, batch_size=2,
        num_epochs=2, learning_rate=1e-3, warmup_steps=1, use_mixed_precision=False, cpu=True, use_lora=False,
        freeze_image_encoder=False, freeze_sam=False, freeze_text_encoder=False, log_every_steps=1, seed=5,
        queries_per_image=2, explanatory_prob=0.0, seg_prompt_teacher_fraction=0.5,
    )
    return replace(cfg, **overrides)


def test_bag_of_words_is_the_scaled_mean_of_token_embeddings():
    teacher = BagOfWordsPrompt(vocab_size=10, dim=4)
    ids = [torch.tensor([1, 2, 2]), torch.tensor([], dtype=torch.long), torch.tensor([7])]
    out = teacher(ids)
    assert out.shape == (3, 4)
    words = teacher.words.weight.detach()
    torch.testing.assert_close(out[0].detach(), BOW_SCALE * (words[1] + 2 * words[2]) / 3)
    assert torch.equal(out[1].detach(), torch.zeros(4))  # a query without tokens reads a zero prompt
    torch.testing.assert_close(out[2].detach(), BOW_SCALE * words[7])
    assert teacher([]).shape == (0, 4)


def test_token_weights_give_rare_words_more_say():
    class WordTokenizer:  # one id per word, as the tiny preset's word-level tokenizer
        vocab = {"the": 0, "red": 1, "blue": 2, "shape": 3, "circle": 4}

        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": [self.vocab[w] for w in text.split()]}

    weights = idf_weights(WordTokenizer(), ["the red shape", "the blue shape", "the red circle"], vocab_size=6)
    assert weights.shape == (6,)
    assert weights[0] == pytest.approx(1.0)  # in every text
    assert weights[2] > weights[1] > weights[0]  # "blue" (1 text) > "red" (2 texts) > "the" (3 texts)
    assert weights[5] == weights.max()  # never seen
    teacher = BagOfWordsPrompt(vocab_size=6, dim=4, token_weights=weights)
    words = teacher.words.weight.detach()
    expected = BOW_SCALE * (weights[0] * words[0] + weights[2] * words[2]) / (weights[0] + weights[2])
    torch.testing.assert_close(teacher([torch.tensor([0, 2])])[0].detach(), expected)
    assert "token_weights" not in teacher.state_dict()  # derived from the data at every start, never saved
    with pytest.raises(ValueError, match="token_weights"):
        BagOfWordsPrompt(vocab_size=6, dim=4, token_weights=torch.ones(5))


def test_seg_queries_follow_the_models_seg_order():
    counts = torch.tensor([1, 0, 2])  # a text-only explanation row has no [SEG]
    assert seg_queries(["a", "b", "c"], counts) == ["a", "c", "c"]
    ids = torch.tensor([[5, 9, 0], [5, 5, 5], [9, 1, 9]])
    assert count_seg_tokens(ids, seg_token_id=9).tolist() == [1, 0, 2]


def test_distill_loss_is_a_relative_squared_error_with_a_detached_target():
    teacher = torch.tensor([[3.0, 4.0]], requires_grad=True)
    student = torch.tensor([[3.0, 4.0]], requires_grad=True)
    assert float(distill_loss(student, teacher).detach()) == 0.0
    student = torch.zeros(1, 2, requires_grad=True)
    loss = distill_loss(student, teacher)
    assert float(loss.detach()) == pytest.approx(1.0)
    loss.backward()
    assert teacher.grad is None and student.grad is not None  # only the student moves towards the teacher
    empty = torch.zeros(0, 2, requires_grad=True)
    assert float(distill_loss(empty, torch.zeros(0, 2))) == 0.0


def test_teacher_is_active_for_the_first_fraction_of_steps_only():
    assert [teacher_active(0.3, s, 10) for s in range(10)] == [True] * 3 + [False] * 7
    assert not any(teacher_active(0.0, s, 10) for s in range(10))
    assert all(teacher_active(1.0, s, 10) for s in range(10))


def test_decoder_prompts_replace_what_the_mask_decoder_reads(data_root):
    cfg = TrainingConfig(data_root=str(data_root), model="tiny", img_size=64, sam_image_size=64, cpu=True,
                         use_lora=False, freeze_text_encoder=False, freeze_image_encoder=False, freeze_sam=False)
    model, tokenizer, proc = build_model(cfg)
    model.eval()
    dataset = ReasonSegDataset(str(data_root), "val", proc.sam, proc.vision, train=False)
    samples = [dataset[0], dataset[1]]
    batch = collate_samples(samples, tokenizer)
    with torch.no_grad():
        plain = model(batch)
        teacher = BagOfWordsPrompt(len(tokenizer), plain.seg_prompts.shape[1])
        counts = count_seg_tokens(batch.input_ids, model.seg_token_id)
        prompts = teacher_prompts(teacher, tokenizer, batch.queries, counts, torch.device("cpu"))
        taught = model(batch, decoder_prompts=prompts)
    assert prompts.shape == plain.seg_prompts.shape == (2, plain.seg_prompts.shape[1])
    torch.testing.assert_close(plain.seg_prompts, model.project_seg(plain.seg_embeddings))
    torch.testing.assert_close(taught.seg_prompts, plain.seg_prompts)  # LISA's prompt is still returned
    assert not torch.allclose(taught.pred_masks[0], plain.pred_masks[0])  # but the decoder read the teacher's
    with pytest.raises(ValueError, match="one per \\[SEG\\] token"):
        model(batch, decoder_prompts=prompts[:1])


def test_a_run_with_the_teacher_logs_it_saves_it_in_last_only_and_resumes(data_root, tmp_path):
    from modlisa.engine.train import train

    straight = train(_tiny_config(data_root, tmp_path / "a").validate())  # 3 steps an epoch, teacher steps 1-3
    log = [json.loads(line) for line in (tmp_path / "a" / "outputs" / "train_log.jsonl").read_text().splitlines()]
    # running epoch means: epoch 1 (steps 1-3) had the teacher, epoch 2 did not
    assert [("seg_distill" in r) for r in log] == [True] * 3 + [False] * 3
    assert log[0]["seg_distill"] > 0
    last = tmp_path / "a" / "checkpoints" / "last"
    teacher_state = load_file(str(last / "prompt_teacher.safetensors"))
    assert list(teacher_state) == ["words.weight"]
    best = load_file(straight["best_checkpoint"])
    assert not any("words.weight" in k and "model." in k for k in best)  # the trained model is plain LISA
    assert not any(k.startswith("model.words") for k in best)
    # exact resume inside the teacher's phase: stop at step 2, resume, compare with the straight run
    train(_tiny_config(data_root, tmp_path / "b", stop_after_steps=2).validate())
    train(_tiny_config(data_root, tmp_path / "b", resume_from_checkpoint="latest").validate())
    wa = load_file(str(last / "model.safetensors"))
    wb = load_file(str(tmp_path / "b" / "checkpoints" / "last" / "model.safetensors"))
    for name in wa:
        assert torch.equal(wa[name], wb[name]), name
    tb = load_file(str(tmp_path / "b" / "checkpoints" / "last" / "prompt_teacher.safetensors"))
    assert torch.equal(teacher_state["words.weight"], tb["words.weight"])


def test_teacher_fraction_is_range_checked(data_root, tmp_path):
    with pytest.raises(ConfigError, match="seg_prompt_teacher_fraction"):
        _tiny_config(data_root, tmp_path, seg_prompt_teacher_fraction=1.5).validate()
