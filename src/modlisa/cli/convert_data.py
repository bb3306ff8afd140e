"""``modlisa convert masks|coco``: turn a user's segmentation data into ReasonSeg-format files (docs/DATA.md).

``masks IMAGES_DIR MASKS_DIR OUT --queries FILE``: images + mask PNGs of the same stems + a queries file.
``coco ANNOTATIONS.json IMAGES_DIR OUT``: a COCO instances JSON (polygons, RLE, crowd as ignore).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from modlisa.cli.common import parse_args
from modlisa.config import ConfigError
from modlisa.data.convert import DEFAULT_MIN_IOU, ConvertReport, convert_coco, convert_masks, summary_lines

SOURCES = {"masks": "a folder of images + a folder of mask PNGs + a queries file (JSONL or CSV)",
           "coco": "a COCO instances JSON (polygon and RLE segmentations; crowd as ignore)"}


def _iou(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {value}")
    return value


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out", help="output dataset root: items are written to OUT/<split>/")
    parser.add_argument("--split", default="train", help="split folder to write (default train)")
    parser.add_argument("--min_iou", type=_iou, default=DEFAULT_MIN_IOU,
                        help=f"an item whose polygons rasterise back (LISA's rasteriser) to an IoU under this with "
                             f"its source mask is a bad item (default {DEFAULT_MIN_IOU})")
    parser.add_argument("--link", action="store_true",
                        help="hard-link images instead of copying them (copies where links are impossible)")
    parser.add_argument("--skip_bad", action="store_true",
                        help="skip and count bad items (missing/unreadable files, size mismatch, empty mask, ...) "
                             "instead of stopping at the first")
    parser.add_argument("--force", action="store_true",
                        help="write into a non-empty OUT/<split> (files of the same name are replaced)")


def build_parser(source: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"modlisa convert {source}",
                                     description=f"Convert {SOURCES[source]} into ReasonSeg-format files.")
    if source == "masks":
        parser.add_argument("images_dir", help="folder of .jpg/.jpeg/.png images")
        parser.add_argument("masks_dir", help="folder of <image stem>.png masks: non-zero = target")
        _common(parser)
        parser.add_argument("--queries", required=True,
                            help="JSONL ({\"image\", \"text\", \"is_sentence\"} a line) or CSV (image,text,"
                                 "is_sentence) giving each image's queries")
        parser.add_argument("--ignore_value", type=int, default=None,
                            help="mask value meaning ignore (e.g. 255); default: none, every non-zero is target")
    else:
        parser.add_argument("annotations", help="COCO instances JSON")
        parser.add_argument("images_dir", help="folder the images' file_name are relative to")
        _common(parser)
    return parser


def _usage() -> str:
    lines = ["usage: modlisa convert SOURCE [options]", "", "sources:"]
    lines += [f"  {name:<6} {help_}" for name, help_ in SOURCES.items()]
    lines += ["", "`modlisa convert SOURCE --help` shows its options."]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``modlisa convert``: 0 when written, 2 (one line) on bad input or options."""
    argv = list(argv or [])
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    source, rest = argv[0], argv[1:]
    if source not in SOURCES:
        raise ConfigError(f"unknown source {source!r}: expected one of {', '.join(SOURCES)}")
    args = parse_args(build_parser(source), rest)
    if not args.split or args.split in (".", "..") or "/" in args.split or "\\" in args.split:
        raise ConfigError(f"--split must be a folder name such as train or val, got {args.split!r}")
    options = dict(min_iou=args.min_iou, link=args.link, skip_bad=args.skip_bad, force=args.force)
    report: ConvertReport
    if source == "masks":
        report = convert_masks(args.images_dir, args.masks_dir, args.queries, args.out, args.split,
                               ignore_value=args.ignore_value, **options)
    else:
        report = convert_coco(args.annotations, args.images_dir, args.out, args.split, **options)
    for line in summary_lines(report):
        print(line)
    print(f"check it with: modlisa check-data {args.out} --splits {args.split}")
    return 0
