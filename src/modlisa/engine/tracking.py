"""Experiment trackers of a run (``TrainingConfig.report_to``): TensorBoard and / or MLflow, main process only.

What is logged (docs/TRAINING_GUIDE.md, "Watching a run"):

- every logged optimizer step (``log_every_steps``): ``train/loss`` and each loss term (``train/ce``,
  ``train/mask_bce``, ``train/mask_dice``, ``train/mask_focal``), the epoch's running ``train/giou`` and
  ``train/ciou``, ``train/lr``, ``train/grad_norm``, ``train/samples_per_s``, ``train/peak_memory_gb``;
- every validation: ``val/loss``, ``val/giou``, ``val/ciou`` (and the short / long subsets), plus a few
  predicted masks drawn over their images (``val/masks/<k>``: magenta = prediction, green outline = ground
  truth).

Both backends are the libraries themselves, not Accelerate's tracker wrappers: those log no images to MLflow.
TensorBoard writes event files to ``outputs/tensorboard/`` (``tensorboard --logdir RUN/outputs/tensorboard``).
MLflow writes to ``MLFLOW_TRACKING_URI`` when it is set, else to a local file store ``outputs/mlruns/``
(``MLFLOW_ALLOW_FILE_STORE=true mlflow ui --backend-store-uri RUN/outputs/mlruns``); a resumed run continues
its MLflow run (its id is kept in ``outputs/mlflow_run_id.txt``).
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from modlisa.data.reasonseg import load_image_rgb
from modlisa.overlay import overlay_masks

logger = logging.getLogger(__name__)

TRACKERS = ("tensorboard", "mlflow")
TRACKED_MASKS = 4  # predicted masks sent to the trackers per validation
PACKAGES = {"tensorboard": ("tensorboard", "pip install tensorboard"),
            "mlflow": ("mlflow", "pip install mlflow-skinny (or mlflow, for its web UI)")}
EXPERIMENT = "modlisa"


def tracker_names(report_to: str | None) -> tuple[str, ...]:
    """``"tensorboard,mlflow"`` -> ("tensorboard", "mlflow"); None, "" or "none" -> (). ValueError for an unknown
    name."""
    if report_to is None:
        return ()
    names = tuple(dict.fromkeys(n.strip().lower() for n in str(report_to).split(",") if n.strip()))
    if names in ((), ("none",)):
        return ()
    unknown = [n for n in names if n not in TRACKERS]
    if unknown:
        raise ValueError(f"report_to: unknown tracker {', '.join(map(repr, unknown))}; use tensorboard, mlflow, "
                         "both comma-separated, or none")
    return names


def missing_package(name: str) -> str | None:
    """The install hint when the package of tracker ``name`` is not importable, else None."""
    import importlib.util

    module, hint = PACKAGES[name]
    return None if importlib.util.find_spec(module) is not None else hint


class _TensorBoard:
    def __init__(self, outputs: Path, config: dict[str, Any]) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(outputs / "tensorboard"))
        self.writer.add_text("config", "\n".join(f"    {k}: {v}" for k, v in sorted(config.items())), 0)

    def scalars(self, values: dict[str, float], step: int) -> None:
        for key, value in values.items():
            self.writer.add_scalar(key, value, step)

    def images(self, images: dict[str, np.ndarray], step: int) -> None:
        for key, image in images.items():
            self.writer.add_image(key, image, step, dataformats="HWC")

    def close(self) -> None:
        self.writer.close()


class _MLflow:
    def __init__(self, outputs: Path, config: dict[str, Any], run_name: str) -> None:
        from mlflow.tracking import MlflowClient

        uri = os.environ.get("MLFLOW_TRACKING_URI")
        if not uri:  # MLflow 3 keeps the file store behind this switch ("maintenance mode"); it is what we want
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
            uri = (outputs / "mlruns").resolve().as_uri()
        self.client = MlflowClient(uri)
        id_file = outputs / "mlflow_run_id.txt"
        run_id = id_file.read_text().strip() if id_file.is_file() else ""
        if run_id:
            self.client.update_run(run_id, status="RUNNING")
        else:
            experiment = self.client.get_experiment_by_name(EXPERIMENT)
            experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(EXPERIMENT)
            run_id = self.client.create_run(experiment_id, run_name=run_name).info.run_id
            id_file.write_text(run_id + "\n")
            for key, value in sorted(config.items()):
                self.client.log_param(run_id, key, str(value)[:500])
        self.run_id, self.uri = run_id, uri

    def scalars(self, values: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(key, float(value), now, step) for key, value in values.items()]
        self.client.log_batch(self.run_id, metrics=metrics)

    def images(self, images: dict[str, np.ndarray], step: int) -> None:
        for key, image in images.items():
            self.client.log_image(self.run_id, image, key=key.replace("/", "_"), step=step)

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


def mask_picture(example: dict[str, Any], max_side: int = 256) -> np.ndarray:
    """(h, w, 3) uint8: the example's image (``evaluate.mask_examples``) with its predicted mask tinted and the
    ground truth outlined (``overlay.overlay_masks``), shrunk to ``max_side``."""
    gt = example["gt"]
    image = load_image_rgb(example["file"])
    if image.shape[:2] != gt.shape:  # an image that does not match its masks is reported elsewhere; skip drawing
        image = np.zeros((*gt.shape, 3), dtype=np.uint8)
    picture = overlay_masks(image, [example["pred"]], gt=(gt == 1))
    scale = max_side / max(picture.shape[:2])
    if scale < 1:
        size = (max(1, round(picture.shape[1] * scale)), max(1, round(picture.shape[0] * scale)))
        picture = np.asarray(Image.fromarray(picture).resize(size, Image.BILINEAR))
    return picture


class Trackers:
    """The run's trackers (none when ``report_to`` is empty); every call is a no-op without trackers.

    ``outputs``: the run's outputs/ folder; ``config``: flat {field: value} logged once (hyper-parameters).
    """

    def __init__(self, report_to: str | None, outputs: Path, config: dict[str, Any], run_name: str = "") -> None:
        self.backends: list[Any] = []
        for name in tracker_names(report_to):
            if name == "tensorboard":
                self.backends.append(_TensorBoard(outputs, config))
            else:
                self.backends.append(_MLflow(outputs, config, run_name or outputs.parent.name))

    def __bool__(self) -> bool:
        return bool(self.backends)

    def log_scalars(self, values: dict[str, float | None], step: int) -> None:
        """Scalars at optimizer step ``step``; None and non-numbers are left out."""
        clean = {k: float(v) for k, v in values.items()
                 if isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v)}
        for backend in self.backends:
            backend.scalars(clean, step)

    def log_images(self, images: dict[str, np.ndarray], step: int) -> None:
        """(H, W, 3) uint8 pictures at optimizer step ``step``."""
        for backend in self.backends:
            backend.images(images, step)

    def close(self) -> None:
        for backend in self.backends:
            try:
                backend.close()
            except Exception as err:  # a tracker failing to close must not fail a finished run
                logger.warning("closing the %s tracker failed: %s", type(backend).__name__.strip("_"), err)
