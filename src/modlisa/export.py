"""`modlisa export`: a checkpoint -> a self-contained Hugging Face-style folder with LoRA merged.

The folder (layout in ``modlisa.weights.export``) reloads offline through ``load_checkpoint`` and therefore
works with ``modlisa predict --checkpoint DIR`` and ``modlisa eval --checkpoint DIR``.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path

from modlisa.config import ConfigError

logger = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="modlisa export",
                                     description="Export a checkpoint as a merged Hugging Face-style folder.")
    parser.add_argument("--checkpoint", required=True,
                        help="a run folder, best_model_epoch_N.json (or a legacy .pt), checkpoints/last or an "
                             "exported folder")
    parser.add_argument("--out", required=True, help="the folder to write (must be absent or empty)")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --out folder")
    return parser


def export_checkpoint(checkpoint: str | Path, out: str | Path, *, overwrite: bool = False) -> Path:
    """Load ``checkpoint`` and write its merged export to ``out``; returns ``out``."""
    from modlisa.weights import export_merged, load_checkpoint

    source, target = Path(checkpoint), Path(out)
    if target.exists() and source.exists() and target.resolve() == source.resolve():
        raise ConfigError(f"--out {target} is the checkpoint itself; choose another folder")
    if target.exists() and not target.is_dir():
        raise ConfigError(f"--out {target} exists and is not a folder")
    if target.is_dir() and any(target.iterdir()) and not overwrite:
        raise ConfigError(f"--out {target} exists and is not empty; pass --overwrite or choose another folder")
    model, tokenizer, processors, cfg = load_checkpoint(source)
    return export_merged(model, tokenizer, cfg, target, processors=processors, in_place=True, overwrite=overwrite)


def main_export(argv: Sequence[str] | None = None) -> int:
    """`modlisa export`; returns the exit code (user errors raise ConfigError / FileNotFoundError)."""
    args = build_parser().parse_args(argv)
    folder = export_checkpoint(args.checkpoint, args.out, overwrite=args.overwrite)
    print(f"exported {args.checkpoint} -> {folder}")
    print(f"use it with: modlisa predict --checkpoint {folder} --image IMG --query TEXT")
    return 0
