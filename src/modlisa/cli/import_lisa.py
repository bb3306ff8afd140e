"""``modlisa import-lisa SRC OUT``: a LISA checkpoint folder -> a modlisa export folder (``modlisa.convert.lisa``).

OUT works with ``modlisa eval --checkpoint OUT``, ``modlisa predict --checkpoint OUT`` and
``modlisa train --init_from OUT``.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from modlisa.cli.common import parse_args


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="modlisa import-lisa",
        description="Convert a LISA checkpoint folder (config.json, tokenizer, pytorch_model-*.bin or safetensors "
                    "shards, e.g. xinlai/LISA-7B-v1) into a modlisa export folder.")
    parser.add_argument("src", metavar="SRC", help="the LISA checkpoint folder")
    parser.add_argument("out", metavar="OUT", help="the folder to write (must be absent or empty)")
    parser.add_argument("--vision_model", default=None,
                        help="CLIP vision tower (folder or Hugging Face id) when SRC holds none, as LISA's released "
                             "folders do (default: the config's mm_vision_tower, e.g. openai/clip-vit-large-patch14, "
                             "from the local cache)")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty OUT folder")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """`modlisa import-lisa`; returns the exit code (user errors raise ConfigError / WeightsError)."""
    args = parse_args(build_parser(), argv)
    from modlisa.convert.lisa import import_lisa

    result = import_lisa(args.src, args.out, vision_model=args.vision_model, overwrite=args.overwrite)
    print(f"imported {args.src} -> {result.out_dir}: {result.num_tensors} tensors "
          f"({len(result.dropped)} derived buffers recomputed on load)")
    print(f"  [SEG] id {result.seg_token_id} (LISA's); <image> id {result.image_token_id}"
          + (f" (vocabulary rows added: {result.added_rows})" if result.added_rows else ""))
    print(f"  vision tower: {result.vision_tower} ({result.img_size} px); projector: {result.projector}; "
          f"SAM {result.sam_variant} ({result.sam_image_size} px)")
    print(f"use it with: modlisa eval --checkpoint {result.out_dir} --data_root <ReasonSeg folder> --split val")
    return 0
