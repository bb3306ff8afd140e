"""``modlisa make-data``: write deterministic synthetic data: ReasonSeg format (``modlisa.synthetic``), or the real
layouts of refCOCO & co., ADE20K, COCO-Stuff, PASCAL-Part, PACO-LVIS and LLaVA-Instruct (``--format``)."""

from __future__ import annotations

import argparse
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

from modlisa.cli.common import parse_args
from modlisa.synthetic.dataset import MIN_IMAGE_SIZE, SPLITS, make_dataset
from modlisa.synthetic.options import SceneOptions
from modlisa.synthetic.queries import KEYS, QUERY_TYPES
from modlisa.synthetic.refer_format import REFER_SPLITS, make_refer_dataset
from modlisa.synthetic.semseg_format import SEMSEG_FORMATS, make_semseg_dataset
from modlisa.synthetic.vqa_format import make_llava_instruct

GENERATED_ENTRIES = (*SPLITS, "explanatory", "README.txt")
FORMATS = ("reasonseg", *REFER_SPLITS, *SEMSEG_FORMATS, "llava_instruct")
# the folder each training-only format owns under OUT (what --force replaces)
OWN_FOLDERS = {"ade20k": "ade20k", "cocostuff": "cocostuff", "pascal_part": "vlpart/pascal_part",
               "paco_lvis": "vlpart/paco", "llava_instruct": "llava_dataset"}


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _image_size(text: str) -> int:
    value = int(text)
    if value < MIN_IMAGE_SIZE:
        raise argparse.ArgumentTypeError(f"must be >= {MIN_IMAGE_SIZE}, got {value}")
    return value


def _object_range(text: str) -> tuple[int, int]:
    low, _, high = text.partition("-")
    try:
        return int(low), int(high or low)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected MIN-MAX such as 3-5, got {text!r}") from None


def _query_types(text: str) -> tuple[str, ...]:
    return tuple(t.strip() for t in text.split(",") if t.strip())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="modlisa make-data",
        description="Write a deterministic synthetic dataset in the ReasonSeg format (images + JSON + "
        "explanatory/train.json), or with --format refcoco / refcoco+ / refcocog / refclef in the refer layout "
        "(OUT/<dataset>/refs(<split_by>).p + instances.json, OUT/images/...), or with --format ade20k / cocostuff / "
        "pascal_part / paco_lvis / llava_instruct in the real layout of LISA's training sources (OUT = LISA's "
        "dataset folder; --num_train images, no val/test).",
    )
    parser.add_argument("out_dir", help="output folder (must be empty or absent unless --force)")
    parser.add_argument("--format", choices=FORMATS, default="reasonseg",
                        help="reasonseg (default), or a refer dataset: refcoco, refcoco+ (splits train, val, testA, "
                             "testB; --num_test images in each test split), refcocog (umd: train, val, test), "
                             "refclef; OUT may already hold other refer datasets; LISA's training sources ade20k, "
                             "cocostuff, pascal_part, paco_lvis (semantic / part segmentation) and llava_instruct "
                             "(VQA conversations): --num_train images each, OUT may hold several")
    parser.add_argument("--seed", type=_non_negative, default=0, help="random seed (default 0)")
    parser.add_argument("--num_train", type=_non_negative, default=64, help="train images (default 64)")
    parser.add_argument("--num_val", type=_non_negative, default=32, help="val images (default 32)")
    parser.add_argument("--num_test", type=_non_negative, default=32, help="test images (default 32)")
    parser.add_argument("--image_size", type=_image_size, default=256, help="longer image side (default 256)")
    parser.add_argument("--objects", type=_object_range, default=(2, 5), metavar="MIN-MAX",
                        help="shapes per image (default 2-5)")
    parser.add_argument("--lookalike_prob", type=float, default=0.35,
                        help="chance that a shape reuses a colour or kind already in the image (default 0.35)")
    parser.add_argument("--query_types", type=_query_types, default=(), metavar="T1,T2,...",
                        help=f"query kinds to draw (default all): {', '.join(QUERY_TYPES)}")
    parser.add_argument("--targets_per_scene", type=int, default=1, metavar="K",
                        help="train split: ask about up to K different shapes of each image, one file each "
                             "(default 1)")
    parser.add_argument("--select_by", choices=KEYS, default=None,
                        help="every query picks its target by this attribute: phrases name it, property "
                             "sentences are about it (default: any)")
    parser.add_argument(
        "--force", action="store_true", help="replace train/, val/, test/, explanatory/ and README.txt"
    )
    parser.add_argument("--no_progress", action="store_true", help="no progress bar")
    return parser


def _remove_generated(root: Path) -> None:
    """Delete what a previous run wrote (split folders, explanatory/, README.txt); nothing else."""
    for entry in GENERATED_ENTRIES:
        path = root / entry
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def main(argv: Sequence[str] | None = None) -> int:
    """``modlisa make-data OUT_DIR [--seed S] [--num_train N] ... [--force]``; returns the exit code."""
    args = parse_args(build_parser(), argv)
    root = Path(args.out_dir)
    if root.exists() and not root.is_dir():
        print(f"modlisa make-data: {root} exists and is not a folder", file=sys.stderr)
        return 2
    if args.format in REFER_SPLITS:
        return _main_refer(args, root)
    if args.format != "reasonseg":
        return _main_training_source(args, root)
    if root.is_dir() and any(root.iterdir()):
        if not args.force:
            print(
                f"modlisa make-data: {root} is not empty; choose an empty folder or pass --force to "
                "replace its train/, val/, test/, explanatory/ and README.txt",
                file=sys.stderr,
            )
            return 2
        _remove_generated(root)
    try:
        options = SceneOptions(min_objects=args.objects[0], max_objects=args.objects[1],
                               lookalike_prob=args.lookalike_prob, query_types=args.query_types,
                               targets_per_scene=args.targets_per_scene, select_by=args.select_by)
        summary = make_dataset(
            root,
            options=options,
            seed=args.seed,
            num_train=args.num_train,
            num_val=args.num_val,
            num_test=args.num_test,
            image_size=args.image_size,
            progress=not args.no_progress,
        )
    except ValueError as err:
        print(f"modlisa make-data: {err}", file=sys.stderr)
        return 2
    for split, info in summary["splits"].items():
        counts = f"{info['images']} images ({info['short']} short, {info['long']} long)"
        print(f"{split}: {counts} in {info['path']}")
    print(f"explanatory: {summary['explanatory']['entries']} entries in {summary['explanatory']['path']}")
    return 0


def _refuse(args: argparse.Namespace, folder: Path, why: str) -> int:
    """2 (with a message) when a ReasonSeg-only flag is set or ``folder`` exists without --force; else 0,
    after removing ``folder`` when --force asks for it."""
    ignored = [flag for flag, used in (("--query_types", bool(args.query_types)),
                                       ("--targets_per_scene", args.targets_per_scene != 1),
                                       ("--select_by", args.select_by is not None)) if used]
    if ignored:
        print(f"modlisa make-data: {', '.join(ignored)} apply to --format reasonseg only ({why})", file=sys.stderr)
        return 2
    if folder.exists():
        if not args.force:
            print(f"modlisa make-data: {folder} exists; pass --force to replace it", file=sys.stderr)
            return 2
        shutil.rmtree(folder) if folder.is_dir() else folder.unlink()
    return 0


def _main_refer(args: argparse.Namespace, root: Path) -> int:
    """``--format refcoco|refcoco+|refcocog|refclef``: refuses an existing OUT/<dataset> unless --force
    (which replaces that folder only; images of the same seed are rewritten byte for byte)."""
    refused = _refuse(args, root / args.format, "refer sentences are short phrases, one ref per uniquely "
                                                 "described shape")
    if refused:
        return refused
    try:
        options = SceneOptions(min_objects=args.objects[0], max_objects=args.objects[1],
                               lookalike_prob=args.lookalike_prob)
        summary = make_refer_dataset(root, dataset=args.format, seed=args.seed, num_train=args.num_train,
                                     num_val=args.num_val, num_test=args.num_test, image_size=args.image_size,
                                     options=options)
    except ValueError as err:
        print(f"modlisa make-data: {err}", file=sys.stderr)
        return 2
    splits = ", ".join(f"{split} {n}" for split, n in summary["splits"].items())
    print(f"{args.format}: {summary['images']} images, {summary['annotations']} annotations; refs per split: {splits}")
    print(f"refs: {summary['refs']}\ninstances: {summary['instances']}\nimages: {summary['image_dir']}")
    return 0


def _main_training_source(args: argparse.Namespace, root: Path) -> int:
    """``--format ade20k|cocostuff|pascal_part|paco_lvis|llava_instruct``: --num_train images in the real layout;
    refuses an existing folder of that format (``OWN_FOLDERS``) unless --force, which replaces that folder only
    (shared COCO images of the same seed are rewritten byte for byte)."""
    refused = _refuse(args, root / OWN_FOLDERS[args.format], "the targets are classes, parts or conversations")
    if refused:
        return refused
    try:
        options = SceneOptions(min_objects=args.objects[0], max_objects=args.objects[1],
                               lookalike_prob=args.lookalike_prob)
        common = {"seed": args.seed, "num_images": args.num_train, "image_size": args.image_size, "options": options}
        if args.format == "llava_instruct":
            summary = make_llava_instruct(root, **common)
            print(f"llava_instruct: {summary['conversations']} conversations in {summary['json']}")
        else:
            summary = make_semseg_dataset(root, dataset=args.format, **common)
            print(f"{args.format}: {summary['images']} images; annotations: {summary['annotation']}")
    except ValueError as err:
        print(f"modlisa make-data: {err}", file=sys.stderr)
        return 2
    print(f"images: {summary['image_dir']}")
    return 0
