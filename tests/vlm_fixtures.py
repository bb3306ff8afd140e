"""Tiny random image-text-to-text checkpoints (Qwen2.5-VL, Qwen3-VL, Idefics3 / SmolVLM) saved like the real ones.

Each ``save_tiny_vlm(kind, folder)`` writes a random ``*ForConditionalGeneration`` at toy sizes and its processor
(image processor, a byte tokenizer with the family's special tokens, the family's chat template), offline, so the
``vlm`` preset's real code paths (the processor's image tokens, M-RoPE, DeepStack, Idefics3's connector) run on CPU
in seconds. The chat templates are the published checkpoints' templates, trimmed to what a single image and text
need (Qwen2.5-VL-Instruct: its default system turn; Qwen3-VL-Instruct: none; SmolVLM-Instruct: ``User:<image>``).
"""

from __future__ import annotations

from pathlib import Path

import torch

from modlisa.model.tokenizer import build_byte_tokenizer

VLM_KINDS = ("qwen2_5_vl", "qwen3_vl", "idefics3", "smolvlm")  # smolvlm: SmolVLM2's model_type
VLM_IMG = {"qwen2_5_vl": 56, "qwen3_vl": 64, "idefics3": 64, "smolvlm": 64}  # vision input sizes: N = 4 tokens each

# Qwen2.5-VL-Instruct's chat template (chat_template.json), the video branch and add_vision_id dropped
QWEN2_5_VL_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}<|im_start|>system\n"
    "You are a helpful assistant.<|im_end|>\n{% endif %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n{% else %}"
    "{% for content in message['content'] %}{% if content['type'] == 'image' %}"
    "<|vision_start|><|image_pad|><|vision_end|>{% elif 'text' in content %}{{ content['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# Qwen3-VL-Instruct's: no default system turn
QWEN3_VL_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for content in message['content'] %}{% if content['type'] == 'image' %}"
    "<|vision_start|><|image_pad|><|vision_end|>{% elif 'text' in content %}{{ content['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# SmolVLM-Instruct's (Idefics3)
IDEFICS3_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{message['role'] | capitalize}}"
    "{% if message['content'][0]['type'] == 'image' %}{{':'}}{% else %}{{': '}}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{line['text']}}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}<end_of_utterance>\n{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)

QWEN_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
               "<|image_pad|>", "<|video_pad|>"]
IDEFICS3_TOKENS = ["<|im_start|>", "<end_of_utterance>", "<fake_token_around_image>", "<global-img>", "<image>"]
QWEN_VISION = {"depth": 2, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2, "out_hidden_size": 64,
               "spatial_merge_size": 2, "temporal_patch_size": 2}
TEXT = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2}


def _tokenizer(special: list[str], eos: str, template: str, bos: str | None = None):
    tokenizer = build_byte_tokenizer()
    tokenizer.add_special_tokens({"additional_special_tokens": special}, replace_extra_special_tokens=False)
    tokenizer.eos_token = eos
    if bos:
        tokenizer.bos_token = bos
    tokenizer.chat_template = template
    return tokenizer


def _qwen(kind: str, folder: Path, dtype: torch.dtype) -> None:
    from transformers import Qwen2VLImageProcessorPil

    tokenizer = _tokenizer(QWEN_TOKENS, "<|im_end|>", QWEN2_5_VL_TEMPLATE if kind == "qwen2_5_vl" else
                           QWEN3_VL_TEMPLATE)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in QWEN_TOKENS}
    common = {"image_token_id": ids["<|image_pad|>"], "video_token_id": ids["<|video_pad|>"],
              "vision_start_token_id": ids["<|vision_start|>"], "vision_end_token_id": ids["<|vision_end|>"]}
    text = {**TEXT, "vocab_size": len(tokenizer), "max_position_embeddings": 512,
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]}}
    if kind == "qwen2_5_vl":
        from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

        patch = 14
        config = Qwen2_5_VLConfig(
            text_config=text, vision_config={**QWEN_VISION, "patch_size": patch, "window_size": 56,
                                             "fullatt_block_indexes": [1]}, **common)
        model = Qwen2_5_VLForConditionalGeneration(config)
        mean_std = {}
    else:
        from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

        patch = 16
        text["rope_parameters"]["mrope_interleaved"] = True
        text["head_dim"] = 16
        config = Qwen3VLConfig(
            text_config=text, vision_config={**QWEN_VISION, "patch_size": patch, "num_position_embeddings": 16,
                                             "deepstack_visual_indexes": [0]}, **common)
        model = Qwen3VLForConditionalGeneration(config)
        mean_std = {"image_mean": [0.5] * 3, "image_std": [0.5] * 3}
    image_processor = Qwen2VLImageProcessorPil(patch_size=patch, merge_size=2, temporal_patch_size=2, **mean_std)
    model.to(dtype).save_pretrained(folder)
    # the image processor and the tokenizer (its chat template inside), as the published folders hold them; the
    # processor class itself needs a video processor, which needs torchvision (not installable here)
    image_processor.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def _idefics3(folder: Path, dtype: torch.dtype, smolvlm: bool = False) -> None:
    """Idefics3 (SmolVLM-256M/500M/2.2B-Instruct) or, ``smolvlm``, SmolVLM2's ``smolvlm`` classes (the same
    architecture and image tokens; its template adds a video item, unused here). SmolVLM2's processor class needs a
    video processor (torchvision): the image processor and tokenizer are saved, as for Qwen."""
    from transformers import Idefics3Processor

    if smolvlm:
        from transformers import SmolVLMConfig as Config
        from transformers import SmolVLMForConditionalGeneration as Model
        from transformers import SmolVLMImageProcessorPil as ImageProcessor
    else:
        from transformers import Idefics3Config as Config
        from transformers import Idefics3ForConditionalGeneration as Model
        from transformers import Idefics3ImageProcessorPil as ImageProcessor

    tokenizer = _tokenizer(IDEFICS3_TOKENS, "<end_of_utterance>", IDEFICS3_TEMPLATE, bos="<|im_start|>")
    img, patch, scale = VLM_IMG["idefics3"], 16, 2
    config = Config(
        text_config={**TEXT, "vocab_size": len(tokenizer), "model_type": "llama", "max_position_embeddings": 512},
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
                       "image_size": img, "patch_size": patch},
        scale_factor=scale, image_token_id=tokenizer.convert_tokens_to_ids("<image>"))
    model = Model(config)
    image_processor = ImageProcessor(size={"longest_edge": 2 * img}, max_image_size={"longest_edge": img},
                                     do_image_splitting=True)
    model.to(dtype).save_pretrained(folder)
    if smolvlm:
        image_processor.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        return
    seq_len = (img // patch) ** 2 // scale**2
    processor = Idefics3Processor(image_processor=image_processor, tokenizer=tokenizer, image_seq_len=seq_len,
                                  chat_template=tokenizer.chat_template)
    processor.save_pretrained(folder)


def save_tiny_vlm(kind: str, folder: Path, *, dtype: torch.dtype = torch.float32, seed: int = 0) -> str:
    """Write a random tiny ``kind`` (one of ``VLM_KINDS``) checkpoint + processor to ``folder``; returns it."""
    torch.manual_seed(seed)
    folder = Path(folder)
    if kind in ("idefics3", "smolvlm"):
        _idefics3(folder, dtype, smolvlm=kind == "smolvlm")
    else:
        _qwen(kind, folder, dtype)
    return str(folder)
