"""Tokenizers: the offline byte-level tokenizer of the tiny preset, and the [SEG]/<image> special tokens."""

from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

from modlisa.data.prompts import IMAGE_TOKEN, SEG_TOKEN

PAD, BOS, EOS, UNK = "<pad>", "<s>", "</s>", "<unk>"


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
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token=PAD, bos_token=BOS, eos_token=EOS, unk_token=UNK
    )
    tokenizer.padding_side = "right"
    add_special_tokens(tokenizer)
    return tokenizer


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
    ids = []
    for token in (IMAGE_TOKEN, SEG_TOKEN):
        encoded = tokenizer(f"a {token} b", add_special_tokens=False)["input_ids"]
        token_id = tokenizer.convert_tokens_to_ids(token)
        if encoded.count(token_id) != 1:
            raise ValueError(f"tokenizer {type(tokenizer).__name__} does not encode {token} as one token: {encoded}")
        ids.append(int(token_id))
    return ids[0], ids[1]
