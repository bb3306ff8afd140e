"""Interactive use of a checkpoint: ``service`` (one loaded model, one ``Predictor``, a lock, example images;
no Gradio) behind ``modlisa chat`` (terminal) and ``app`` (the Gradio web app of ``modlisa serve``, imported only
when Gradio is installed: ``pip install 'modlisa[demo]'``)."""

from modlisa.serve.service import QUESTION_FORMS, ExampleImage, SegmentService, example_images

__all__ = ["QUESTION_FORMS", "ExampleImage", "SegmentService", "example_images"]
