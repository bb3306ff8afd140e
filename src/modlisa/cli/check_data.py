"""``modlisa check-data ROOT``: validate a ReasonSeg-format folder; ``--config RUN.yaml``: also every dataset of
the run's training mixture. Exit 0 when usable, 1 when any error."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from modlisa.cli.common import parse_args
from modlisa.data.check import DEFAULT_MAX_LENGTH, DEFAULT_SPLITS, check_dataset, format_report
from modlisa.data.check_mixture import check_mixture, format_mixture_report
from modlisa.data.sources import REASON_SEG, mixture_kinds


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="modlisa check-data",
                                     description="Validate a ReasonSeg-format dataset folder.")
    parser.add_argument("root", nargs="?", default=None,
                        help="dataset root: holds ReasonSeg/<split>/ or <split>/ folders (default: the config's "
                             "data_root)")
    parser.add_argument("--config", default=None, metavar="RUN.yaml",
                        help="a training config: check its data_root AND every dataset of its mixture (`dataset`)")
    parser.add_argument("--max_items", type=int, default=None, metavar="N",
                        help="with --config: check only the first N items of each mixture dataset")
    parser.add_argument("--splits", nargs="+", default=list(DEFAULT_SPLITS), help="splits to check")
    parser.add_argument("--json", action="store_true", help="print the full report as JSON on stdout")
    parser.add_argument("--no_progress", action="store_true", help="no progress bar on stderr")
    parser.add_argument("--max_length", type=int, default=DEFAULT_MAX_LENGTH,
                        help="the run's max_length: longer queries are reported (long_query warnings)")
    return parser


def _print(text: str) -> None:
    """Print even where stdout cannot encode a file name (non-UTF-8 bytes are shown as escapes)."""
    try:
        print(text)
    except UnicodeEncodeError:
        encoding = getattr(sys.stdout, "encoding", None) or "utf-8"
        print(text.encode(encoding, errors="backslashreplace").decode(encoding, errors="replace"))


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``modlisa check-data``: 0 when the data is usable, 1 when any error was found."""
    parser = build_parser()
    args = parse_args(parser, argv)
    if args.max_length < 1:
        parser.error("--max_length must be >= 1")
    cfg = _load_config(parser, args.config) if args.config else None
    root = args.root or (cfg.data_root if cfg is not None else None)
    if root is None:
        parser.error("give the dataset ROOT or --config")
    report = check_dataset(root, args.splits, progress=not args.no_progress, max_length=args.max_length)
    ok = report["ok"]
    if cfg is not None and set(mixture_kinds(cfg.dataset)) - {REASON_SEG}:
        mixture = check_mixture(cfg, max_items=args.max_items, progress=not args.no_progress)
        ok = ok and mixture["ok"]
        if args.json:
            report = {**report, "mixture": mixture}
        else:
            _print(format_mixture_report(mixture) + "\n")
    _print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0 if ok else 1


def _load_config(parser: argparse.ArgumentParser, path: str) -> Any:
    """The training config of ``path`` (defaults for what it does not set); a usage error when it is invalid."""
    from modlisa.config import ConfigError, config_from_dict, load_yaml

    try:
        return config_from_dict(load_yaml(path), source=path)
    except (ConfigError, OSError) as err:
        parser.error(f"--config {path}: {err}")
