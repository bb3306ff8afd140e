"""``modlisa analyze RUN_DIR [RUN_DIR ...] [--out DIR]``: the analysis report of one or more runs."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from modlisa.cli.common import parse_args
from modlisa.report.analyze import build_report


def build_parser(prog: str = "modlisa analyze") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Write report.md, report.html (self-contained), report.json and PNG plots for one or more "
                    "run folders: training progression, best epoch, benchmark, evaluation and the comparison "
                    "with LISA's published results.",
    )
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR",
                        help="run folder(s) written by `modlisa train` (and `modlisa eval`); several are compared")
    parser.add_argument("--out", default=None, metavar="DIR",
                        help="output folder (default: <first RUN_DIR>/outputs/report)")
    parser.add_argument("--title", default=None, help="report title (default: names the runs)")
    return parser


def main(argv: Sequence[str] | None = None, prog: str = "modlisa analyze") -> int:
    """Parse ``argv``, build the report, print where it went. User errors raise FileNotFoundError /
    NotADirectoryError (``runs.NotARunError`` for a folder that is not a run)."""
    args = parse_args(build_parser(prog), argv)
    files = build_report(args.run_dirs, args.out, args.title)
    print(f"wrote {files.markdown}")
    print(f"wrote {files.html}")
    print(f"wrote {files.json}")
    print(f"wrote {len(files.plots)} plot(s) in {files.out_dir}")
    return 0
