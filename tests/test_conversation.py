"""Prompt rendering: LLaVA v1 by default (a tokenizer's chat template only on request), LISA's evaluation
prompt (a space after "<image>\\n"), and LISA-7B-v1's <im_start>/<im_end> around the image features."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from llava_fixtures import LLAVA_HF_CHAT_TEMPLATE, save_tiny_llava
from modlisa.config import ConfigError, TrainingConfig
from modlisa.data import prompts
from modlisa.data.collate import collate_samples, encode_query
from modlisa.model.factory import build_model
from modlisa.model.tokenizer import build_byte_tokenizer
from modlisa.types import IGNORE_INDEX, IM_END_TOKEN, IM_START_TOKEN, IMAGE_TOKEN, ConversationFormat, Sample
from test_precision import square_batch

CHAT = ConversationFormat(use_chat_template=True)
SPAN = ConversationFormat(image_start_end=True)


@pytest.fixture
def templated_tokenizer():
    tokenizer = build_byte_tokenizer()
    tokenizer.chat_template = LLAVA_HF_CHAT_TEMPLATE
    return tokenizer


def test_lisa_evaluation_prompt_exactly():
    question = prompts.eval_question("the cat", False)
    prompt, full = prompts.format_conversation(question, prompts.EVAL_ANSWER)
    assert prompt == (f"{prompts.LLAVA_V1_SYSTEM} USER: <image>\n What is the cat in this image? Please output "
                      "segmentation mask. ASSISTANT:")
    assert full == prompt + " [SEG].</s>"
    long_prompt, _ = prompts.format_conversation(prompts.eval_question("Where to sit?", True), None)
    assert long_prompt.endswith("USER: <image>\n Where to sit? Please output segmentation mask. ASSISTANT:")
    span_prompt, _ = prompts.format_conversation(question, None, fmt=SPAN)
    assert "USER: <im_start><image><im_end>\n What is the cat" in span_prompt


def test_a_chat_template_on_the_tokenizer_is_not_used_by_default(templated_tokenizer):
    ids, labels = encode_query("What is x?", "Sure, [SEG].", templated_tokenizer, 512)  # was: found 0 <image>
    text = templated_tokenizer.decode(ids).removeprefix("<s>")
    assert text.startswith(f"{prompts.LLAVA_V1_SYSTEM} USER: <image>\nWhat is x? ASSISTANT:")
    assert templated_tokenizer.decode([t for t, lab in zip(ids, labels) if lab != IGNORE_INDEX]) == " Sure, [SEG].</s>"


def test_chat_template_on_request_renders_llava_hf_content_items(templated_tokenizer):
    prompt, full = prompts.format_conversation("What is x?", "Sure, [SEG].", templated_tokenizer, CHAT)
    assert prompt == "USER: <image>\nWhat is x? ASSISTANT:"
    assert full == "USER: <image>\nWhat is x? ASSISTANT: Sure, [SEG].</s>"
    ids, labels = encode_query("What is x?", "Sure, [SEG].", templated_tokenizer, 512, conversation=CHAT)
    assert templated_tokenizer.decode([t for t, lab in zip(ids, labels) if lab != IGNORE_INDEX]) == " Sure, [SEG].</s>"
    with pytest.raises(ConfigError, match="has no chat template"):
        prompts.format_conversation("q", "a", build_byte_tokenizer(), CHAT)


def test_llava_checkpoint_with_a_chat_template_collates_and_runs(tmp_path):
    folder = save_tiny_llava(tmp_path / "llava", chat_template=True)
    cfg = TrainingConfig(model="llava", llava_model=folder, img_size=64, sam_image_size=64, cpu=True,
                         use_mixed_precision=False)
    model, tokenizer, processors = build_model(cfg)
    assert tokenizer.chat_template  # the checkpoint's template is there, and ignored
    batch = square_batch(tokenizer, processors)
    assert model(batch).pred_masks[0].shape == (2, 48, 64)
    chat_model, chat_tokenizer, _ = build_model(TrainingConfig(**{**cfg.to_dict(), "use_chat_template": True}))
    chat_batch = collate_samples([_one_sample(processors)], chat_tokenizer, conversation=chat_model.conversation)
    decoded = chat_tokenizer.decode(chat_batch.input_ids[0]).removeprefix("<s>")
    assert decoded.startswith("USER: <image>\n What is the square")


def _one_sample(processors) -> Sample:
    """One 48x64 image with the short evaluation question about "the square"."""
    image = np.zeros((48, 64, 3), dtype=np.uint8)
    sam_image, resize_hw = processors.sam(image)
    return Sample(image_path="x.jpg", json_path="x.json", sam_image=sam_image, vision_image=processors.vision(image),
                  resize_hw=tuple(resize_hw), original_hw=(48, 64),
                  questions=[prompts.eval_question("the square", False)], answers=[prompts.EVAL_ANSWER],
                  queries=["the square"], masks=torch.zeros(1, 48, 64, dtype=torch.uint8), is_sentence=False)


def test_image_start_end_tokens_wrap_the_image_features():
    from test_io import tiny_cfg

    _, plain_tok, processors = build_model(tiny_cfg())
    model, tokenizer, _ = build_model(tiny_cfg(use_mm_start_end=True))
    assert model.conversation == SPAN and len(tokenizer) == len(plain_tok) + 2
    start, end = (tokenizer.convert_tokens_to_ids(t) for t in (IM_START_TOKEN, IM_END_TOKEN))
    image_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    batch = collate_samples([_one_sample(processors)], tokenizer, conversation=model.conversation)
    row = batch.input_ids[0].tolist()
    at = row.index(image_id)
    assert row[at - 1: at + 2] == [start, image_id, end]
    model.eval()
    with torch.no_grad():
        out = model(batch)
    n = model.num_image_tokens
    seg_at = row.index(model.seg_token_id)
    assert out.seg_counts.tolist() == [1]
    # the [SEG] embedding is the hidden state just before [SEG] in the expanded sequence (<im_end> is text)
    with torch.no_grad():
        hidden = model.language_model(inputs_embeds=model._splice(batch.input_ids, batch.attention_mask, None,
                                                                   model.encode_images(batch.vision_images))[0],
                                      output_hidden_states=True).hidden_states[-1]
    torch.testing.assert_close(out.seg_embeddings[0], hidden[0, seg_at - 1 + n - 1])
