"""``modlisa check-data ROOT``: validate a ReasonSeg-format folder; exit 0 when usable, 1 when any error."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from modlisa.cli.common import parse_args
from modlisa.data.check import DEFAULT_MAX_LENGTH, DEFAULT_SPLITS, check_dataset, format_report


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="modlisa check-data",
                                     description="Validate a ReasonSeg-format dataset folder.")
    parser.add_argument("root", help="dataset root: holds ReasonSeg/<split>/ or <split>/ folders")
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
    report = check_dataset(args.root, args.splits, progress=not args.no_progress, max_length=args.max_length)
    _print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0 if report["ok"] else 1
