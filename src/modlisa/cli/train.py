"""``modlisa train``: resolve the config (defaults < preset < YAML < command line), train, print the outcome."""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from typing import Any

from modlisa.cli.common import parse_args
from modlisa.cli.config_args import USAGE, add_config_arguments, config_and_sources_from_args

SIGTERM_EXIT = 143  # 128 + SIGTERM, as a killed job would


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="modlisa train", usage=USAGE, description="Train ModifiedLISA (Accelerate).")
    add_config_arguments(parser)
    return parser


def _print_outcome(summary: dict[str, Any]) -> None:
    if summary.get("stopped_early"):
        print(f"\nTraining stopped ({summary.get('stop_reason')}) at step {summary['global_step']}; "
              "checkpoints/last saved: continue with --resume_from_checkpoint latest")
    elif not summary.get("has_validation", True):
        print("\nTraining finished (no val split: no validation, no best model); the final weights are in "
              "checkpoints/last")
    else:
        print(f"\nTraining finished: best val gIoU {summary['best_val_giou']:.4f} at epoch {summary['best_epoch']}")
    print(f"Run folder: {summary['output_dir']} (metrics in outputs/, checkpoints in checkpoints/)")


def main(argv: Sequence[str] | None = None) -> int:
    cfg, sources = config_and_sources_from_args(parse_args(build_parser(), argv))
    cfg.validate()
    from modlisa.engine.train import train

    summary = train(cfg, sources)
    if summary.get("num_processes", 1) == 1 or os.environ.get("RANK", "0") == "0":
        _print_outcome(summary)
    return SIGTERM_EXIT if summary.get("stop_reason") == "sigterm" else 0
