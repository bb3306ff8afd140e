"""``modlisa serve``: a checkpoint as a local Gradio web app (image + query -> answer, overlay, mask PNG)."""

from __future__ import annotations

import argparse
import atexit
import importlib
import shutil
import socket
import tempfile
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

from modlisa.cli.common import add_checkpoint_argument, parse_args
from modlisa.cli.predict import pick_device
from modlisa.config import ConfigError
from modlisa.predictor import MODES

INSTALL_HINT = "pip install 'modlisa[demo]'"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="modlisa serve",
        description="Serve a checkpoint as a local web app (Gradio): upload an image or pick an example, type a "
                    "query, get the answer, the mask overlay and the mask PNG. Needs " + INSTALL_HINT + ".")
    add_checkpoint_argument(parser)
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0: every "
                             "interface, anyone who can reach it can use the model)")
    parser.add_argument("--port", type=int, default=7860, help="port (default 7860; 0: any free port)")
    parser.add_argument("--mode", choices=MODES, default="generate",
                        help="the page's default mode: generate (free answer, one mask per [SEG]) or teacher "
                             "(answer [SEG]. given, eval protocol, always one mask)")
    parser.add_argument("--max_new_tokens", type=int, default=32)
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="auto: CUDA when available and the checkpoint's config does not say cpu")
    parser.add_argument("--examples", type=int, default=2,
                        help="example images offered on the page (the checkpoint's data_root test split, else "
                             "synthetic scenes); 0: none")
    return parser


def import_app() -> ModuleType:
    """``modlisa.serve.app``; a one-line ConfigError with the install command when Gradio is missing."""
    try:
        app = importlib.import_module("modlisa.serve.app")
    except ModuleNotFoundError as err:
        if (err.name or "").split(".")[0] in ("gradio", "gradio_client"):
            raise ConfigError(f"modlisa serve needs Gradio, an optional extra: {INSTALL_HINT}") from err
        raise
    return app


def free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def main(argv: Sequence[str] | None = None) -> int:
    """`modlisa serve`; serves until Ctrl-C and returns 0 (user errors raise ConfigError / DataError)."""
    from modlisa.serve import SegmentService, example_images
    from modlisa.weights import load_checkpoint

    parser = build_parser()
    args = parse_args(parser, argv)
    if not 0 <= args.port <= 65535:
        parser.error("--port must be in 0..65535")
    if args.max_new_tokens < 1:
        parser.error("--max_new_tokens must be >= 1")
    if args.examples < 0:
        parser.error("--examples must be >= 0")
    app = import_app()  # before the model loads: a missing extra fails at once
    device = None if args.device == "auto" else pick_device(args.device, cfg_cpu=False)
    model, tokenizer, processors, cfg = load_checkpoint(args.checkpoint)
    device = device or pick_device("auto", cfg.cpu)
    model.to(device)
    service = SegmentService(model, tokenizer, processors, max_length=cfg.max_length, mode=args.mode,
                             max_new_tokens=args.max_new_tokens)
    examples_dir = tempfile.mkdtemp(prefix="modlisa-serve-examples-")  # synthetic examples, when written
    atexit.register(shutil.rmtree, examples_dir, ignore_errors=True)
    examples = example_images(cfg.data_root, examples_dir, args.examples) if args.examples else []
    demo = app.build_app(service, examples, title="modlisa",
                         description=f"Checkpoint `{args.checkpoint}` on {device}. Upload an image or pick an "
                                     "example, type a query, press Segment.")
    port = args.port or free_port(args.host)
    url = app.launch(demo, host=args.host, port=port, allowed_paths=sorted({str(Path(e.path).parent)
                                                                              for e in examples}))
    print(f"modlisa serve: {args.checkpoint} ({args.mode} mode, {device}) at {url}  (Ctrl-C stops)", flush=True)
    demo.block_thread()
    return 0
