"""``modlisa eval``: LISA-protocol evaluation of a checkpoint on a split; prints the summary lines."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from modlisa.cli.common import add_checkpoint_argument, parse_args
from modlisa.engine.run_eval import MODES, PRECISIONS, run_eval


def add_eval_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The options of `modlisa eval`."""
    add_checkpoint_argument(parser)
    parser.add_argument("--data_root", default=None,
                        help="default: the data_root of the checkpoint's config (refer datasets: its dataset_dir)")
    parser.add_argument("--dataset", default="reason_seg",
                        choices=["reason_seg", "refcoco", "refcoco+", "refcocog", "refclef"],
                        help="reason_seg (a ReasonSeg-format folder) or a referring benchmark in the refer layout: "
                             "every sentence is one query, cIoU the headline (docs/EVALUATION.md)")
    parser.add_argument("--split", default="val",
                        help="reason_seg: train | val | test; refcoco / refcoco+ / refclef: val | testA | testB; "
                             "refcocog (umd): val | test")
    parser.add_argument("--mode", default="teacher", choices=list(MODES),
                        help="teacher: LISA's protocol ([SEG] given, nothing generated; LISA's numbers); "
                             "generate: the model answers freely, seg_rate = share of answers with [SEG] "
                             "(written to eval_{split}_generate.json)")
    parser.add_argument("--out", default=None, help="output folder (default: the run's outputs/)")
    parser.add_argument("--batch_size", type=int, default=1, help="images per forward pass (teacher mode)")
    parser.add_argument("--max_samples", type=int, default=None)
    parser.add_argument("--save_masks", type=int, default=4, metavar="K",
                        help="write masks + overlays of the K best and K worst queries by IoU, and their "
                             "index.json, to <out>/eval_{split}[_generate]_masks/ (default 4; `modlisa analyze` "
                             "shows them; 0: none)")
    parser.add_argument("--max_new_tokens", type=int, default=32, help="answer length limit (generate mode)")
    parser.add_argument("--precision", default="run", choices=list(PRECISIONS),
                        help="run (default): the run's mixed precision, as its in-training validation; "
                             "fp32 / bf16 / fp16: autocast as given (recorded in the eval JSON)")
    return parser


def _print_summary(split: str, result: dict[str, Any]) -> None:
    m = result["metrics"]
    line = f"{split}: gIoU {100 * m['giou']:.2f}  cIoU {100 * m['ciou']:.2f}  ({m['num_queries']} queries)"
    if "seg_rate" in m:
        line += f"  [SEG] rate {100 * m['seg_rate']:.1f}%"
    if "precision" in result:
        origin = "the run's precision" if result["precision_source"] == "run" else "--precision"
        line += f"  [{result['precision']}: {origin}]"
    print(line)
    for name, sub in m.get("subsets", {}).items():
        if sub["num_queries"]:
            print(f"  {name}: gIoU {100 * sub['giou']:.2f}  cIoU {100 * sub['ciou']:.2f}  ({sub['num_queries']})")
    print(f"  empty-mask baseline: gIoU {100 * m['empty_baseline']['giou']:.2f}  cIoU 0.00")
    wrong = m.get("wrong_query_baseline")
    if wrong:
        print(f"  wrong-query baseline (another image's query): gIoU {100 * wrong['giou']:.2f}  "
              f"cIoU {100 * wrong['ciou']:.2f}  -> query effect {100 * (m['giou'] - wrong['giou']):+.2f} gIoU points")
    if m.get("grounding"):
        g = m["grounding"]
        print(f"  grounding accuracy (mask overlaps the target more than any other shape): "
              f"{100 * g['accuracy']:.1f}% of {g['num_queries']}")
    for warning in result["warnings"]:
        print(f"WARNING: {warning}")
    print(f"wrote {result['eval_json']} and {result['predictions']}")
    if result["masks_dir"]:
        print(f"mask pictures in {result['masks_dir']}")


def main(argv: Sequence[str] | None = None) -> int:
    """`modlisa eval`; returns the exit code (user errors raise ConfigError / DataError)."""
    parser = add_eval_arguments(argparse.ArgumentParser(prog="modlisa eval",
                                                        description="Evaluate with LISA's protocol."))
    args = parse_args(parser, argv)
    for name in ("batch_size", "max_new_tokens"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1")
    if args.save_masks < 0:
        parser.error("--save_masks must be >= 0")
    if args.max_samples is not None and args.max_samples < 1:
        parser.error("--max_samples must be >= 1")
    if args.dataset == "reason_seg" and args.split not in ("train", "val", "test"):
        parser.error(f"--split {args.split!r}: a ReasonSeg split is train, val or test")
    result = run_eval(args.checkpoint, args.data_root, args.split, args.out, args.batch_size, args.max_samples,
                      mode=args.mode, save_masks=args.save_masks, max_new_tokens=args.max_new_tokens,
                      precision=args.precision, dataset_name=args.dataset)
    if result["eval_json"] is not None:  # rank 0 of a multi-process run, or the single process
        _print_summary(args.split if args.dataset == "reason_seg" else f"{args.dataset} {args.split}", result)
    return 0
