"""Weights I/O, in one place: files and checksums, strict trainable state, the best model, export, loading.

- ``files``: safetensors read/write, SHA-256 manifests (``SHA256SUMS``) verified on load, safe legacy reads.
- ``trainable``: strict save/load of the trainable parameters.
- ``best``: ``best_model_epoch_N.safetensors`` + ``.json`` (no pickle); legacy ``.pt`` via ``weights_only=True``.
- ``export``: the merged Hugging Face-style export folder and its offline reload (``export_layout``: its file
  names and readers, also used for ``TrainingConfig.init_from``).
- ``load``: ``load_checkpoint(path)`` for a run folder, a best model, ``checkpoints/last`` or an export.
- ``card``: the export's model card (``README.md``: Hugging Face front matter, model-index of the run's evals).
- ``hub``: ``from_pretrained`` / ``save_pretrained`` on the export folder (a Hub repo id through
  ``snapshot_download``), behind ``ModifiedLISA.from_pretrained`` / ``.save_pretrained`` and
  ``Predictor.from_pretrained``.

The resumable ``checkpoints/last`` folder (optimizer, RNG, trainer state) is written by
``modlisa.engine.checkpoint`` with these helpers.
"""

from modlisa.weights.best import convert_legacy_best, find_best, read_best, save_best
from modlisa.weights.export import export_merged, load_exported
from modlisa.weights.files import (
    MANIFEST,
    CheckpointError,
    WeightsError,
    read_safetensors,
    read_torch_safely,
    sha256_file,
    verify_manifest,
    write_manifest,
    write_safetensors,
)
from modlisa.weights.load import export_checkpoint, load_checkpoint, resolve_checkpoint
from modlisa.weights.trainable import (
    load_state_into,
    load_trainable,
    save_trainable,
    trainable_state,
    trainable_state_dict,
)

__all__ = [
    "MANIFEST", "CheckpointError", "WeightsError", "convert_legacy_best", "export_checkpoint", "export_merged", "find_best",
    "load_checkpoint", "load_exported", "load_state_into", "load_trainable", "read_best", "read_safetensors",
    "read_torch_safely", "resolve_checkpoint", "save_best", "save_trainable", "sha256_file", "trainable_state",
    "trainable_state_dict", "verify_manifest", "write_manifest", "write_safetensors",
]
