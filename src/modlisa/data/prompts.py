"""LISA's question and answer templates and the conversation text of one query.

The first template of each list is the fixed evaluation prompt (docs/LISA.md §3, §5). Conversations are
rendered in LLaVA v1 (LISA's format) unless ``types.ConversationFormat.use_chat_template`` asks for the
tokenizer's own chat template.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

from modlisa.config import ConfigError
from modlisa.types import IMAGE_TOKEN, ConversationFormat

SHORT_QUESTIONS = [
    "What is {x} in this image? Please output segmentation mask.",
    "What is {x} in this image? Please respond with segmentation mask.",
    "Can you segment the {x} in this image?",
    "Please segment the {x} in this image.",
]
LONG_QUESTIONS = [
    "{x} Please output segmentation mask.",
    "{x} Please respond with segmentation mask.",
]
EXPLANATORY_QUESTIONS = [
    "{x} Please output segmentation mask and explain why.",
    "{x} Please output segmentation mask and explain the reason.",
    "{x} Please output segmentation mask and give some explanation.",
]
ANSWERS = [
    "It is [SEG].",
    "Sure, [SEG].",
    "Sure, it is [SEG].",
    "Sure, the segmentation result is [SEG].",
    "[SEG].",
]
EVAL_ANSWER = "[SEG]."

LLAVA_V1_SYSTEM = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)


EVAL_QUESTION_PREFIX = " "  # LISA's validation prompt: "<image>\n What is ..." (a space after the newline)


class ChatTemplateError(ConfigError):
    """The tokenizer's chat template cannot render a single-turn image conversation."""


def eval_question(query: str, is_sentence: bool) -> str:
    """The fixed evaluation prompt for one query (first template of its kind), with LISA's leading space."""
    template = LONG_QUESTIONS[0] if is_sentence else SHORT_QUESTIONS[0]
    return EVAL_QUESTION_PREFIX + template.format(x=query.strip())


def train_question(query: str, is_sentence: bool, rng: random.Random) -> str:
    """A training prompt for one query, template sampled with ``rng``."""
    templates = LONG_QUESTIONS if is_sentence else SHORT_QUESTIONS
    return rng.choice(templates).format(x=query.strip())


def train_answer(rng: random.Random) -> str:
    """A training answer with one [SEG], sampled with ``rng``."""
    return rng.choice(ANSWERS)


def explanatory_pair(query: str, explanation: str, rng: random.Random) -> tuple[str, str]:
    """(question, answer) asking for the mask AND an explanation, as LISA does: "{query} {explanatory
    question}" answered with a random answer template, a space and the explanation."""
    question = rng.choice(EXPLANATORY_QUESTIONS).format(x=query.strip())
    return question, f"{train_answer(rng)} {explanation.strip()}"


def _render(tokenizer: Any, user: Any, answer: str | None) -> tuple[str, str]:
    """(prompt, full) through the tokenizer's chat template with user content ``user`` (text or items)."""
    answer_content: Any = answer if isinstance(user, str) else [{"type": "text", "text": answer}]
    messages = [{"role": "user", "content": user}]
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    if answer is None:
        return prompt, prompt
    full = tokenizer.apply_chat_template([*messages, {"role": "assistant", "content": answer_content}],
                                         tokenize=False)
    eos = getattr(tokenizer, "eos_token", None) or ""
    if not full.startswith(prompt):  # the assistant turn renders unlike the generation prompt: concatenate
        full = prompt + answer
    if eos and not full.rstrip().endswith(eos):  # the answer must end its turn, or generation never stops
        full = full.rstrip() + eos
    return prompt, full


def _vlm_image_text(text: str, fmt: ConversationFormat) -> str:
    """``text`` with the template's image token (its one image item) replaced by the processor's ``image_text``."""
    return text.replace(fmt.template_image, fmt.image_text, 1)


def _vlm_conversation(question: str, answer: str | None, tokenizer: Any, fmt: ConversationFormat
                      ) -> tuple[str, str]:
    """A VLM's chat template on image + text content items, its image token replaced by ``fmt.image_text``."""
    prompt, full = _render(tokenizer, [{"type": "image"}, {"type": "text", "text": question}], answer)
    if prompt.count(fmt.template_image) != 1 or question.strip() not in prompt:
        raise ChatTemplateError(f"the chat template does not render one image ({fmt.template_image}) and the "
                                f"question ({prompt[:160]!r}); the vlm preset needs an image-text chat template")
    return _vlm_image_text(prompt, fmt), _vlm_image_text(full, fmt)


def _chat_template_conversation(question: str, answer: str | None, tokenizer: Any,
                                fmt: ConversationFormat) -> tuple[str, str]:
    """Render through the chat template: text content first, then llava-hf style content items."""
    if not getattr(tokenizer, "chat_template", None):
        raise ChatTemplateError("use_chat_template is true but the tokenizer has no chat template; set "
                                "use_chat_template: false (LLaVA v1, LISA's format)")
    if fmt.template_image:
        return _vlm_conversation(question, answer, tokenizer, fmt)
    prompt, full = _render(tokenizer, f"{fmt.image_placeholder}\n{question}", answer)
    if IMAGE_TOKEN not in prompt or question.strip() not in prompt:  # e.g. llava-hf: content must be items
        prompt, full = _render(tokenizer, [{"type": "image"}, {"type": "text", "text": question}], answer)
        if fmt.image_start_end:
            prompt = prompt.replace(IMAGE_TOKEN, fmt.image_placeholder, 1)
            full = full.replace(IMAGE_TOKEN, fmt.image_placeholder, 1)
    if prompt.count(IMAGE_TOKEN) != 1 or question.strip() not in prompt:
        raise ChatTemplateError(f"the tokenizer's chat template does not render the image and the question "
                                f"({prompt[:120]!r}); set use_chat_template: false (LLaVA v1, LISA's format)")
    return prompt, full


def format_conversation(question: str, answer: str | None, tokenizer: Any = None,
                        fmt: ConversationFormat | None = None) -> tuple[str, str]:
    """Render one single-turn conversation with the image placeholder before the question.

    Returns ``(prompt, full)``: ``prompt`` ends where the assistant answer starts (the text given
    when generating), ``full`` = ``prompt + answer + end-of-turn``. With ``answer=None`` both are
    the prompt. LLaVA v1 (LISA's format) unless ``fmt.use_chat_template``: a chat template the tokenizer
    happens to carry is NOT used by default (llava-hf's renders string content as "USER: ASSISTANT:").
    """
    fmt = fmt or ConversationFormat()
    if fmt.use_chat_template:
        return _chat_template_conversation(question, answer, tokenizer, fmt)
    prompt = f"{LLAVA_V1_SYSTEM} USER: {fmt.image_placeholder}\n{question} ASSISTANT:"
    if answer is None:
        return prompt, prompt
    eos = getattr(tokenizer, "eos_token", None) or "</s>"
    return prompt, f"{prompt} {answer}{eos}"


def _chat_template_turns(turns: Sequence[tuple[str, str]], tokenizer: Any, fmt: ConversationFormat
                         ) -> list[tuple[str, str]]:
    """``format_turns`` through the chat template: the first user turn as ``format_conversation`` renders it,
    the later ones in the same content style (text, or llava-hf style items)."""
    first_prompt, _ = _chat_template_conversation(turns[0][0], turns[0][1], tokenizer, fmt)
    items = f"{fmt.image_placeholder}\n{turns[0][0]}" not in first_prompt

    def content(text: str, first: bool = False) -> Any:
        if not items:
            return f"{fmt.image_placeholder}\n{text}" if first else text
        return ([{"type": "image"}] if first else []) + [{"type": "text", "text": text}]

    messages: list[dict[str, Any]] = []
    out = []
    for i, (question, answer) in enumerate(turns):
        messages.append({"role": "user", "content": content(question, first=i == 0)})
        prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        messages.append({"role": "assistant", "content": answer if not items else [{"type": "text", "text": answer}]})
        full = tokenizer.apply_chat_template(messages, tokenize=False)
        if items and fmt.image_start_end:
            prompt = prompt.replace(IMAGE_TOKEN, fmt.image_placeholder, 1)
            full = full.replace(IMAGE_TOKEN, fmt.image_placeholder, 1)
        if fmt.template_image:
            prompt, full = _vlm_image_text(prompt, fmt), _vlm_image_text(full, fmt)
        out.append((prompt, full))
    return out


def format_turns(turns: Sequence[tuple[str, str]], tokenizer: Any = None,
                 fmt: ConversationFormat | None = None) -> list[tuple[str, str]]:
    """A multi-turn conversation (LLaVA-Instruct, LISA's ``vqa``), the image before the first question.

    Returns one ``(prompt_i, full_i)`` per turn, each a prefix of the next: ``prompt_i`` ends where answer i
    starts, ``full_i`` after its end-of-turn. LLaVA v1 (LISA's ``conv_llava_v1``: separators " " and "</s>"):
    ``SYSTEM USER: <image>\nq1 ASSISTANT: a1</s>USER: q2 ASSISTANT: a2</s>``; a chat template renders the
    message list. Every answer is learned; the user turns are not (LISA's VQA labels)."""
    fmt = fmt or ConversationFormat()
    if not turns:
        raise ValueError("format_turns: no turn")
    if fmt.use_chat_template and len(turns) > 1:
        return _chat_template_turns(turns, tokenizer, fmt)
    prompt, full = format_conversation(turns[0][0], turns[0][1], tokenizer, fmt)
    out = [(prompt, full)]
    if len(turns) > 1:
        eos = getattr(tokenizer, "eos_token", None) or "</s>"
        for question, answer in turns[1:]:
            prompt = f"{full}USER: {question} ASSISTANT:"
            full = f"{prompt} {answer}{eos}"
            out.append((prompt, full))
    return out
