"""``modlisa chat``: a terminal loop (LISA's chat.py): an image path, then queries about it; each answer's mask
and overlay PNGs are written into ``--out`` with numbered names.

Reads standard input line by line, so it also runs with piped input. At the image prompt: a path (quotes and
``~`` allowed); an empty line asks again; ``quit`` or end of input ends. At the query prompt: a query; an empty
line goes back to the image prompt (a new image); ``quit`` or end of input ends. A bad path or a bad query prints
one ``error:`` line and the loop goes on. Files per query (``NNNN`` counts the queries of the session, ``<stem>``
is the image's file name without suffix): ``NNNN_<stem>_mask.png`` (``_mask_<k>.png`` for several [SEG]),
``NNNN_<stem>_overlay.png`` and ``NNNN_<stem>.json`` (``predict.save_prediction``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from modlisa.cli.common import add_checkpoint_argument, parse_args
from modlisa.cli.predict import check_output_options, parse_bool, pick_device
from modlisa.config import ConfigError
from modlisa.data.reasonseg import DataError, load_image_rgb
from modlisa.predictor import MODES

QUIT = "quit"
IMAGE_PROMPT = "Image path (quit: end): "
QUERY_PROMPT = "Query (empty line: new image, quit: end): "


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="modlisa chat",
        description="Ask queries about images in the terminal: an image path, then queries; each answer's mask "
                    "and overlay PNGs are written into --out. Reads standard input (piped input works).")
    add_checkpoint_argument(parser)
    parser.add_argument("--out", default="chat", help="output folder (default: ./chat)")
    parser.add_argument("--mode", choices=MODES, default="generate",
                        help="generate: free answer, one mask per [SEG]; teacher: answer [SEG]. given "
                             "(eval protocol, always one mask)")
    parser.add_argument("--is_sentence", type=parse_bool, default=None,
                        help="false: wrap each query in LISA's short question; true: the long (sentence) question; "
                             "absent: the query is the question itself")
    parser.add_argument("--max_new_tokens", type=int, default=32)
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="auto: CUDA when available and the checkpoint's config does not say cpu")
    return parser


def _read(prompt: str, stdin: TextIO) -> str | None:
    """One line of input without its newline, None at end of input or ``quit``; piped input is echoed after the
    prompt, so that the transcript reads as a terminal session."""
    print(prompt, end="", flush=True)
    line = stdin.readline()
    text = line.rstrip("\r\n").strip()
    if not line or not stdin.isatty():  # a terminal echoes what was typed; end of input needs the newline
        print(text, flush=True)
    if not line:
        return None
    return None if text.lower() == QUIT else text


def _image_path(text: str) -> Path:
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        text = text[1:-1]
    return Path(text).expanduser()


def main(argv: Sequence[str] | None = None, stdin: TextIO | None = None) -> int:
    """`modlisa chat`; returns 0 at ``quit`` or end of input (user errors in the loop print one line)."""
    from modlisa.predict import save_prediction
    from modlisa.serve import SegmentService
    from modlisa.weights import load_checkpoint

    stdin = stdin or sys.stdin
    parser = build_parser()
    args = parse_args(parser, argv)
    out_dir, device = check_output_options(parser, args)
    model, tokenizer, processors, cfg = load_checkpoint(args.checkpoint)
    model.to(device or pick_device("auto", cfg.cpu))
    service = SegmentService(model, tokenizer, processors, max_length=cfg.max_length, mode=args.mode,
                             max_new_tokens=args.max_new_tokens)
    print(f"modlisa chat: {args.checkpoint} ({args.mode} mode); files go to {out_dir}", flush=True)
    count = 0
    while True:
        text = _read(IMAGE_PROMPT, stdin)
        if text is None:
            break
        if not text:
            continue
        path = _image_path(text)
        try:
            image = load_image_rgb(path)
        except DataError as err:
            print(f"error: {err}", flush=True)
            continue
        print(f"image {path} ({image.shape[1]}x{image.shape[0]})", flush=True)
        while True:
            query = _read(QUERY_PROMPT, stdin)
            if query is None:
                print(f"{count} answer(s) written to {out_dir}")
                return 0
            if not query:
                break
            try:
                result = service.ask(image, query, is_sentence=args.is_sentence, image_path=str(path))
            except ConfigError as err:
                print(f"error: {err}", flush=True)
                continue
            count += 1
            record = save_prediction(result, out_dir, f"{count:04d}_{path.stem}")
            print(f"answer: {record['answer']}", flush=True)
            if not record["has_seg"]:
                print(f"no [SEG] in the answer: no mask ({out_dir / record['json']})", flush=True)
                continue
            for mask in record["masks"]:
                print(f"mask: {out_dir / mask['file']} ({mask['area']} px)")
            print(f"overlay: {out_dir / record['overlay']}", flush=True)
    print(f"{count} answer(s) written to {out_dir}")
    return 0
