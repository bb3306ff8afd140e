"""``modlisa export``: a checkpoint -> a self-contained Hugging Face-style folder with LoRA merged.

The folder (layout in ``modlisa.weights.export``) reloads offline through ``load_checkpoint`` and therefore
works with ``modlisa predict --checkpoint DIR`` and ``modlisa eval --checkpoint DIR``.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from modlisa.cli.common import add_checkpoint_argument, parse_args


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="modlisa export",
                                     description="Export a checkpoint as a merged Hugging Face-style folder.")
    add_checkpoint_argument(parser)
    parser.add_argument("--out", required=True, help="the folder to write (must be absent or empty)")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --out folder")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """`modlisa export`; returns the exit code (user errors raise ConfigError / FileNotFoundError)."""
    args = parse_args(build_parser(), argv)
    from modlisa.weights import export_checkpoint

    folder = export_checkpoint(args.checkpoint, args.out, overwrite=args.overwrite)
    print(f"exported {args.checkpoint} -> {folder}")
    print(f"use it with: modlisa predict --checkpoint {folder} --image IMG --query TEXT")
    return 0
