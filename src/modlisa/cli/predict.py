"""``modlisa predict``: segment what a query asks for in an image (or each line of a JSONL batch)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from modlisa.atomic import atomic_write_text
from modlisa.cli.common import add_checkpoint_argument, parse_args
from modlisa.config import ConfigError
from modlisa.data.reasonseg import DataError, reserved_token_reason
from modlisa.predict import PREDICTIONS_FILE, PredictRequest, predict, read_requests, save_prediction
from modlisa.predictor import MODES


def parse_bool(text: str) -> bool:
    """argparse type for true/false flags."""
    value = text.strip().lower()
    if value in ("true", "yes", "1"):
        return True
    if value in ("false", "no", "0"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="modlisa predict",
                                     description="Segment what a query asks for in an image (or a JSONL batch).")
    add_checkpoint_argument(parser)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--image", help="image file (with --query)")
    source.add_argument("--jsonl", help='batch file: one {"image", "query"[, "is_sentence"]} object per line')
    parser.add_argument("--query", help="what to segment (with --image)")
    parser.add_argument("--is_sentence", type=parse_bool, default=None,
                        help="false: wrap a short phrase in LISA's fixed short question; true: a sentence query "
                             "(LISA's long question); absent: the query is the question itself. With --jsonl: "
                             "the default of lines without is_sentence")
    parser.add_argument("--mode", choices=MODES, default="generate",
                        help="generate: free answer, one mask per [SEG]; teacher: answer [SEG]. given "
                             "(eval protocol, always one mask)")
    parser.add_argument("--out", default="predictions", help="output folder (default: ./predictions)")
    parser.add_argument("--max_new_tokens", type=int, default=32)
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="auto: CUDA when available and the checkpoint's config does not say cpu")
    return parser


def _requests_from_args(args: argparse.Namespace, parser: argparse.ArgumentParser) -> list[PredictRequest]:
    if args.jsonl:
        if args.query is not None:
            parser.error("--query goes with --image; with --jsonl each line carries its query")
        requests = read_requests(args.jsonl)
        for request in requests:  # --is_sentence is the default of lines that do not say
            if request.is_sentence is None:
                request.is_sentence = args.is_sentence
        return requests
    if not args.query or not args.query.strip():
        parser.error("--image needs a non-empty --query")
    reason = reserved_token_reason("--query", args.query)
    if reason is not None:
        raise ConfigError(reason)
    image = Path(args.image).expanduser()
    if not image.is_file():
        raise DataError(image, "image file not found")
    return [PredictRequest(image=image, query=args.query, is_sentence=args.is_sentence, source=str(image))]


def pick_device(requested: str, cfg_cpu: bool) -> torch.device:
    """``requested`` cpu/cuda as given; auto = CUDA when available unless the config says cpu."""
    if requested == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA device is available")
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() and not cfg_cpu else "cpu")
    return torch.device(requested)


def check_output_options(parser: argparse.ArgumentParser, args: argparse.Namespace) -> tuple[Path, torch.device | None]:
    """The checks `predict` and `chat` make before loading a model: ``--max_new_tokens`` >= 1, ``--out`` a folder
    (or absent), ``--device`` available. Returns (out folder, device or None for auto)."""
    if args.max_new_tokens < 1:
        parser.error("--max_new_tokens must be >= 1")
    out_dir = Path(args.out)
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"--out {out_dir} exists and is not a folder")
    return out_dir, None if args.device == "auto" else pick_device(args.device, cfg_cpu=False)


def _summary_line(record: dict[str, Any], out_dir: Path) -> str:
    if not record["has_seg"]:
        return f"{record['image']}: answer {record['answer']!r} | no [SEG]: no mask -> {out_dir / record['json']}"
    files = ", ".join(str(out_dir / m["file"]) for m in record["masks"])
    return (f"{record['image']}: answer {record['answer']!r} | [SEG] x{record['seg_count']}, mask "
            f"{record['mask_area']} px ({100 * record['mask_fraction']:.1f}%) -> {files}, "
            f"{out_dir / record['overlay']}")


def main(argv: Sequence[str] | None = None) -> int:
    """`modlisa predict`; returns the exit code (user errors raise ConfigError / DataError)."""
    from modlisa.weights import load_checkpoint

    parser = build_parser()
    args = parse_args(parser, argv)
    out_dir, device = check_output_options(parser, args)  # fails early
    requests = _requests_from_args(args, parser)  # every input checked before the model loads
    model, tokenizer, processors, cfg = load_checkpoint(args.checkpoint)
    model.to(device or pick_device("auto", cfg.cpu))
    records = []
    for k, request in enumerate(requests):
        result = predict(model, tokenizer, processors, request.image, request.query,
                         is_sentence=request.is_sentence, mode=args.mode, max_new_tokens=args.max_new_tokens,
                         max_length=cfg.max_length)
        stem = f"{k:04d}_{request.image.stem}" if args.jsonl else request.image.stem
        record = save_prediction(result, out_dir, stem)
        records.append(record)
        print(_summary_line(record, out_dir))
    if args.jsonl:
        atomic_write_text(out_dir / PREDICTIONS_FILE, "".join(json.dumps(r) + "\n" for r in records))
        with_seg = sum(r["has_seg"] for r in records)
        print(f"{len(records)} predictions ({with_seg} with [SEG]) -> {out_dir / PREDICTIONS_FILE}")
    return 0
