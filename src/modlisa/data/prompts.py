"""LISA's question and answer templates and the conversation text of one query.

The first template of each list is the fixed evaluation prompt (SPEC-LISA.md §3, §5).
"""

from __future__ import annotations

import random
from typing import Any

IMAGE_TOKEN = "<image>"
SEG_TOKEN = "[SEG]"

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
EXPLANATION_ANSWER = "Sure, [SEG]. {explanation}"

LLAVA_V1_SYSTEM = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)


def eval_question(query: str, is_sentence: bool) -> str:
    """The fixed evaluation prompt for one query (first template of its kind)."""
    return (LONG_QUESTIONS[0] if is_sentence else SHORT_QUESTIONS[0]).format(x=query.strip())


def train_question(query: str, is_sentence: bool, rng: random.Random) -> str:
    """A training prompt for one query, template sampled with ``rng``."""
    templates = LONG_QUESTIONS if is_sentence else SHORT_QUESTIONS
    return rng.choice(templates).format(x=query.strip())


def train_answer(rng: random.Random) -> str:
    """A training answer with one [SEG], sampled with ``rng``."""
    return rng.choice(ANSWERS)


def explanatory_pair(query: str, explanation: str, rng: random.Random) -> tuple[str, str]:
    """(question, answer) asking for the mask AND an explanation: "Sure, [SEG]. {explanation}"."""
    question = rng.choice(EXPLANATORY_QUESTIONS).format(x=query.strip())
    return question, EXPLANATION_ANSWER.format(explanation=explanation.strip())


def _has_chat_template(tokenizer: Any) -> bool:
    return tokenizer is not None and bool(getattr(tokenizer, "chat_template", None))


def format_conversation(question: str, answer: str | None, tokenizer: Any = None) -> tuple[str, str]:
    """Render one single-turn conversation with the image placeholder before the question.

    Returns ``(prompt, full)``: ``prompt`` ends where the assistant answer starts (the text given
    when generating), ``full`` = ``prompt + answer + end-of-turn``. With ``answer=None`` both are
    the prompt. Uses the tokenizer's chat template when it has one, else LLaVA v1 (LISA's format).
    """
    user = f"{IMAGE_TOKEN}\n{question}"
    if _has_chat_template(tokenizer):
        messages = [{"role": "user", "content": user}]
        prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        if answer is None:
            return prompt, prompt
        full = tokenizer.apply_chat_template(
            [*messages, {"role": "assistant", "content": answer}], tokenize=False
        )
        if full.startswith(prompt):
            return prompt, full
        # Some templates render the assistant turn differently from the generation prompt;
        # fall back to concatenation so that the prompt is always an exact prefix.
        eos = getattr(tokenizer, "eos_token", None) or ""
        return prompt, prompt + answer + eos
    prompt = f"{LLAVA_V1_SYSTEM} USER: {user} ASSISTANT:"
    if answer is None:
        return prompt, prompt
    eos = getattr(tokenizer, "eos_token", None) or "</s>"
    return prompt, f"{prompt} {answer}{eos}"
