"""The web app of ``modlisa serve`` (LISA's app.py idea): an image and a query in, the answer, the mask overlay
and the mask PNG out.

``build_app(service, examples)`` returns a ``gr.Blocks`` (testable without launching it); ``launch`` serves it.
One ``SegmentService`` answers every browser tab, one query at a time (its lock, and a concurrency limit of one
on the event). User mistakes (no image, an empty query, a query holding [SEG]...) are shown in the page as an
error message, never as a traceback; an unexpected failure shows a one-line message and is logged with its
traceback on the server. The same function is the API endpoint ``/segment`` (``gradio_client``):
``Client(url).predict(image, query, question_form, mode, api_name="/segment")`` returns (answer, overlay PNG
path, mask PNG path, info text).

Gradio is an optional dependency (``pip install 'modlisa[demo]'``): only this module imports it.
"""

from __future__ import annotations

import atexit
import itertools
import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home from a local demo

import gradio as gr  # noqa: E402
import numpy as np  # noqa: E402

from modlisa.config import ConfigError  # noqa: E402
from modlisa.data.reasonseg import DataError  # noqa: E402
from modlisa.overlay import overlay_masks, write_png  # noqa: E402
from modlisa.predictor import MODES  # noqa: E402
from modlisa.serve.service import QUESTION_FORMS, ExampleImage, SegmentService, form_of  # noqa: E402

logger = logging.getLogger(__name__)

API_NAME = "segment"
FORM_LABELS = {
    "as typed": "the query is the question",
    "phrase": 'short phrase: "What is <query> in this image? ..."',
    "sentence": 'sentence: "<query> Please output segmentation mask."',
}


def _info(result: Any) -> str:
    height, width = result.image_hw
    question = result.question.strip().replace("`", "'")
    if not result.has_seg:
        return f"No [SEG] in the answer: no mask. Question: `{question}`"
    area = int(result.mask_union().sum())
    masks = "1 mask" if result.seg_count == 1 else f"{result.seg_count} masks (the PNG is their union)"
    return (f"{masks}: {area} px, {100 * area / float(height * width):.1f} % of the {width}x{height} image. "
            f"Question: `{question}`")


def make_handler(service: SegmentService, out_dir: str | Path
                 ) -> Callable[[Any, str, str, str], tuple[str, np.ndarray | None, str | None, str]]:
    """The event function of the app: (image, query, question form, mode) -> (answer, overlay, mask PNG path,
    info).

    Mask PNGs (0/255, the image's size) are written into ``out_dir`` as ``NNNN_mask.png``. Raises ``gr.Error``
    with a readable message for every failure."""
    out_dir = Path(out_dir)
    counter = itertools.count(1)
    count_lock = threading.Lock()

    def segment(image: Any, query: str, question_form: str, mode: str
                ) -> tuple[str, np.ndarray | None, str | None, str]:
        try:
            if question_form not in QUESTION_FORMS:
                raise ConfigError(f"question form must be one of {', '.join(QUESTION_FORMS)}; got {question_form!r}")
            result = service.ask(image, query, is_sentence=QUESTION_FORMS[question_form], mode=mode)
            if not result.has_seg:
                return result.answer, None, None, _info(result)
            with count_lock:
                number = next(counter)
            out_dir.mkdir(parents=True, exist_ok=True)
            mask_path = write_png(result.mask_union(), out_dir / f"{number:04d}_mask.png")
            overlay = overlay_masks(result.image, list(result.masks))
            return result.answer, overlay, str(mask_path), _info(result)
        except (ConfigError, DataError) as err:
            raise gr.Error(str(err), title="Cannot answer", print_exception=False) from err
        except Exception as err:
            logger.exception("query %r failed", query)
            raise gr.Error(f"internal error ({type(err).__name__}: {err}); the server log has the details",
                           title="Internal error", print_exception=False) from err

    return segment


def build_app(service: SegmentService, examples: Sequence[ExampleImage] = (), *, title: str = "modlisa",
              description: str = "", out_dir: str | Path | None = None) -> gr.Blocks:
    """The Gradio app of ``service``: inputs image / query / question form / mode, outputs answer / overlay /
    mask PNG / info. ``out_dir``: where mask PNGs go (default: a new temporary folder)."""
    if out_dir is None:  # Gradio serves copies from its own cache: ours go when the process ends
        out_dir = tempfile.mkdtemp(prefix="modlisa-serve-")
        atexit.register(shutil.rmtree, out_dir, ignore_errors=True)
    segment = make_handler(service, out_dir)
    with gr.Blocks(title=title, analytics_enabled=False, delete_cache=(3600, 3600)) as demo:
        gr.Markdown(f"# {title}\n{description}".strip())
        with gr.Row():
            with gr.Column():
                image = gr.Image(type="numpy", image_mode="RGB", sources=["upload"], label="Image",
                                 elem_id="input-image")
                query = gr.Textbox(label="Query", placeholder="e.g. the red circle, or: Which shape would roll?",
                                   elem_id="query", lines=1)
                form = gr.Radio(choices=[(FORM_LABELS[k], k) for k in QUESTION_FORMS], value="as typed",
                                label="Question", elem_id="question-form")
                mode = gr.Radio(choices=list(MODES), value=service.mode, label="Mode", elem_id="mode",
                                info="generate: free answer, one mask per [SEG]; teacher: answer [SEG]. given "
                                     "(evaluation protocol, always one mask)")
                button = gr.Button("Segment", variant="primary", elem_id="submit")
                if examples:
                    gr.Examples([[str(e.path), e.query, form_of(e.is_sentence)] for e in examples],
                                inputs=[image, query, form], label="Examples", elem_id="examples")
            with gr.Column():
                answer = gr.Textbox(label="Answer", elem_id="answer", interactive=False)
                info = gr.Markdown(elem_id="info")
                overlay = gr.Image(type="numpy", format="png", label="Mask overlay", elem_id="overlay",
                                   interactive=False, buttons=["download", "fullscreen"])
                mask = gr.File(label="Mask PNG", elem_id="mask-file", interactive=False)
        inputs, outputs = [image, query, form, mode], [answer, overlay, mask, info]
        button.click(segment, inputs, outputs, api_name=API_NAME, concurrency_limit=1)
        query.submit(segment, inputs, outputs, api_visibility="private", concurrency_limit=1)
    return demo


def launch(demo: gr.Blocks, *, host: str, port: int | None, allowed_paths: Sequence[str | Path] = ()) -> str:
    """Start serving ``demo`` on ``host``:``port`` (None: Gradio's choice from 7860 up) in a background thread;
    returns the local URL. ``demo.block_thread()`` then waits until Ctrl-C, ``demo.close()`` stops it."""
    demo.queue(default_concurrency_limit=1)
    demo.launch(server_name=host, server_port=port, share=False, inbrowser=False, ssr_mode=False,
                prevent_thread_lock=True, quiet=True, show_error=False,
                allowed_paths=[str(p) for p in allowed_paths])
    return str(demo.local_url)
