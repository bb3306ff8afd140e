"""Run ``modlisa`` with every loaded checkpoint's mask logits centred (``inference_helpers.centre_mask_logits``):
``python tests/centred_cli.py COMMAND ARGS...``. A barely trained tiny model predicts empty masks (all its
logits are negative); centred, it gives partial masks, about half of the image: real masks to draw and compare
in the subprocess tests of ``modlisa serve`` / ``modlisa chat``."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import modlisa.weights  # noqa: E402
from inference_helpers import centre_mask_logits  # noqa: E402
from modlisa.cli import main  # noqa: E402


def load_centred(*args, _load=modlisa.weights.load_checkpoint, **kwargs):
    model, tokenizer, processors, cfg = _load(*args, **kwargs)
    centre_mask_logits(model)
    return model, tokenizer, processors, cfg


if __name__ == "__main__":
    modlisa.weights.load_checkpoint = load_centred
    sys.exit(main(sys.argv[1:]))
