"""Tokenizers of the tiny preset (built offline in milliseconds), and the [SEG]/<image> special tokens.

- ``build_word_tokenizer`` (the tiny preset's): byte-level BPE whose merges make every word of a fixed
  vocabulary (LISA's prompts, shapes, colours, sizes, positions and common English words) ONE token, so a
  random 2-layer LM reads "the small red circle" as 4 tokens instead of 20 bytes; any other text falls back
  to byte tokens, so nothing is ever unknown.
- ``build_byte_tokenizer``: 256 byte tokens, no merges.
"""

from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

from modlisa.data import prompts
from modlisa.types import IM_END_TOKEN, IM_START_TOKEN, IMAGE_TOKEN, SEG_TOKEN

PAD, BOS, EOS, UNK = "<pad>", "<s>", "</s>", "<unk>"

# Whole-word tokens of the tiny preset. Changing this list changes the tiny tokenizer (and so the shape of
# tiny checkpoints' embeddings): append only, and expect earlier tiny checkpoints to stop loading.
TINY_WORDS = ["a", "about", "above", "across", "after", "again", "against", "all", "along", "also", "among", "an", "and", "another", "answer", "answers", "any", "are", "around", "as", "at", "away", "back", "be", "because", "before", "behind", "below", "beside", "besides", "between", "big", "bigger", "biggest", "both", "bottom", "but", "by", "can", "centre", "center", "circle", "circles", "circular", "clear", "clearly", "close", "closer", "closest", "color", "colour", "colours", "corner", "corners", "could", "curious", "deep", "detailed", "different", "direction", "disc", "discs", "distance", "do", "does", "down", "each", "edge", "either", "ellipse", "ellipses", "engine", "even", "every", "exactly", "explain", "explanation", "far", "farther", "figure", "find", "fire", "first", "five", "flat", "flower", "for", "four", "fresh", "from", "front", "furthest", "give", "gives", "grass", "green", "has", "have", "helpful", "here", "hexagon", "hexagonal", "hexagons", "high", "higher", "highest", "his", "honeycomb", "how", "human", "human's", "if", "image", "in", "inside", "intelligence", "into", "is", "it", "its", "large", "larger", "largest", "last", "leaf", "least", "left", "leftmost", "lemon", "less", "lies", "like", "line", "little", "located", "long", "longer", "look", "looks", "low", "lower", "lowest", "made", "make", "many", "mask", "me", "middle", "more", "most", "much", "my", "near", "nearest", "next", "night", "no", "not", "nothing", "now", "object", "objects", "odd", "of", "off", "on", "one", "only", "or", "orange", "other", "out", "outline", "output", "outside", "oval", "oval-shaped", "ovals", "over", "painted", "part", "person", "picture", "please", "plum", "point", "pointed", "polite", "pumpkin", "purple", "pushed", "question", "questions", "rather", "reason", "rectangle", "rectangles", "rectangular", "red", "respond", "result", "right", "rightmost", "ripe", "roll", "round", "same", "sea", "second", "see", "segment", "segmentation", "shape", "shaped", "shapes", "short", "shortest", "show", "side", "sides", "six", "size", "sky", "small", "smaller", "smallest", "smooth", "so", "some", "someone", "something", "space", "square", "squares", "star", "star-shaped", "stars", "straight", "stretched", "summer", "sure", "takes", "than", "that", "the", "their", "them", "then", "there", "these", "they", "thing", "third", "this", "those", "three", "tiniest", "tips", "to", "tomato", "top", "triangle", "triangles", "triangular", "two", "under", "underneath", "up", "upper", "very", "violet", "warm", "was", "way", "what", "where", "which", "white", "who", "why", "wide", "with", "would", "yellow", "you", "your", "black", "brown", "grey", "gray", "pink"]
WORD_VOCAB_LIMIT = 8192  # large enough for every word to become one token


def _word_corpus() -> list[str]:
    """Training text of the word tokenizer: LISA's prompt templates and every word with and without a
    leading space, lower-case and capitalised."""
    templates = [prompts.LLAVA_V1_SYSTEM, *prompts.SHORT_QUESTIONS, *prompts.LONG_QUESTIONS,
                 *prompts.EXPLANATORY_QUESTIONS, *prompts.ANSWERS, "USER: ASSISTANT:"]
    forms = [w for word in TINY_WORDS for w in (word, word.capitalize())]
    return templates + [" ".join(forms), "".join(f"{w}\n" for w in forms)]


def build_word_tokenizer() -> PreTrainedTokenizerFast:
    """Byte-level BPE with one token per word of ``TINY_WORDS`` (deterministic; ~1,000 ids); see the module
    docstring. Special tokens as ``build_byte_tokenizer``. No chat template: prompts use LLaVA v1."""
    core = Tokenizer(models.BPE(unk_token=UNK))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=WORD_VOCAB_LIMIT, min_frequency=1, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=[PAD, BOS, EOS, UNK])
    core.train_from_iterator(_word_corpus(), trainer=trainer)
    return _wrap(core)


def _wrap(core: Tokenizer) -> PreTrainedTokenizerFast:
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token=PAD, bos_token=BOS, eos_token=EOS, unk_token=UNK
    )
    tokenizer.padding_side = "right"
    add_special_tokens(tokenizer)
    return tokenizer


def build_byte_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level tokenizer (256 byte tokens, no merges) that encodes ANY text without unknown tokens.

    Built offline in milliseconds; used by the tiny preset. Special tokens: <pad>, <s>, </s>, <unk>,
    then <image> and [SEG] (added by ``add_special_tokens``). No chat template: prompts use LLaVA v1.
    """
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {tok: i for i, tok in enumerate([PAD, BOS, EOS, UNK, *sorted(alphabet)])}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=UNK))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    core.decoder = decoders.ByteLevel()
    return _wrap(core)


def add_special_tokens(tokenizer: PreTrainedTokenizerBase) -> tuple[int, int]:
    """Add ``<image>`` and ``[SEG]`` as single special tokens (idempotent); set a pad token if missing.

    Returns ``(image_token_id, seg_token_id)``. Raises ValueError when either token does not encode
    to exactly one id (some tokenizers split added tokens).
    """
    tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN, SEG_TOKEN]},
                                 replace_extra_special_tokens=False)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token
    tokenizer.padding_side = "right"
    return _single_token_ids(tokenizer, IMAGE_TOKEN, SEG_TOKEN)


def add_image_span_tokens(tokenizer: PreTrainedTokenizerBase) -> tuple[int, int]:
    """Add ``<im_start>`` / ``<im_end>`` (LISA-7B-v1's image span) as single special tokens (idempotent).

    Returns their ids; ValueError when either does not encode to exactly one id.
    """
    tokenizer.add_special_tokens({"additional_special_tokens": [IM_START_TOKEN, IM_END_TOKEN]},
                                 replace_extra_special_tokens=False)
    return _single_token_ids(tokenizer, IM_START_TOKEN, IM_END_TOKEN)


def single_token_id(tokenizer: PreTrainedTokenizerBase, token: str) -> int:
    """The id of ``token``, which must encode to exactly one id; ValueError otherwise."""
    return _single_token_ids(tokenizer, token, token)[0]


def _single_token_ids(tokenizer: PreTrainedTokenizerBase, first: str, second: str) -> tuple[int, int]:
    """The ids of two added tokens; ValueError naming the one the tokenizer splits."""
    ids = []
    for token in (first, second):
        encoded = tokenizer(f"a {token} b", add_special_tokens=False)["input_ids"]
        token_id = tokenizer.convert_tokens_to_ids(token)
        if encoded.count(token_id) != 1:
            raise ValueError(f"tokenizer {type(tokenizer).__name__} does not encode {token} as one token: {encoded}")
        ids.append(int(token_id))
    return ids[0], ids[1]
