"""A tiny random llava-hf checkpoint (``LlavaForConditionalGeneration`` + tokenizer) saved like the real ones.

``llava-hf/llava-1.5-7b-hf`` is stored in fp16 and its tokenizer carries a chat template whose user turn is a
list of ``{"type": "image"}`` / ``{"type": "text"}`` items; ``save_tiny_llava`` writes the same, at toy sizes,
so the real-scale code paths (fp16 weights, chat template, resized vocabulary) run on CPU in seconds.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from modlisa.model.tokenizer import build_byte_tokenizer
from modlisa.types import IMAGE_TOKEN

# The chat template of llava-hf/llava-1.5-7b-hf (tokenizer_config.json / chat_template.json).
LLAVA_HF_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] != 'system' %}{{ message['role'].upper() + ': '}}"
    "{% endif %}{# Render all images first #}{% for content in message['content'] | selectattr('type', "
    "'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}{# Render all text next #}{% if message['role'] != "
    "'assistant' %}{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ content['text'] + ' '}}{% endfor %}{% else %}{% for content in message['content'] | selectattr('type', "
    "'equalto', 'text') %}{% generation %}{{ content['text'] + ' '}}{% endgeneration %}{% endfor %}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)

IMG = 64  # vision input size: (64 / 32)^2 = 4 image tokens
LM_SIZES = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
            "num_key_value_heads": 2, "vocab_size": 260}  # 260 < tokenizer size: the factory resizes


def save_tiny_llava(folder: Path, *, dtype: torch.dtype = torch.float16, chat_template: bool = True,
                    seed: int = 0) -> str:
    """Write a random tiny llava-hf checkpoint (weights stored in ``dtype``) + byte tokenizer to ``folder``."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    tokenizer = build_byte_tokenizer()
    if chat_template:
        tokenizer.chat_template = LLAVA_HF_CHAT_TEMPLATE
    tokenizer.save_pretrained(folder)
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(hidden_size=48, intermediate_size=96, num_hidden_layers=3,
                                       num_attention_heads=4, image_size=IMG, patch_size=32),
        text_config=LlamaConfig(**LM_SIZES),
        image_token_id=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        vision_feature_layer=-2, vision_feature_select_strategy="default",
    )
    torch.manual_seed(seed)
    LlavaForConditionalGeneration(config).to(dtype).save_pretrained(folder)
    return str(folder)


@pytest.fixture
def single_thread() -> Iterator[None]:
    """One torch thread for the test: on a shared 2-core machine two threads spin against the other load and
    made the 30-step runs 5-9x slower (measured); results do not depend on it."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
