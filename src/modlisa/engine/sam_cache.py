"""Frozen-SAM embedding cache: compute each image's SAM image embedding once and reuse it.

When the SAM image encoder is frozen and SAM's input is not augmented, the encoder output of an image is
the same every epoch, and the encoder is most of a step at ``sam_image_size`` 1024. The cache keeps each
image's ``ImageFeatures`` (``model/mask_decoder.py``: SAM's (D, S/16, S/16) embedding, or the tuple of SAM-HQ
(embedding, early ViT block) or of SAM 2 (multi-scale features)) in memory (and optionally on disk), keyed by

- the SHA-256 of the image FILE content (a changed image never hits a stale entry),
- the SAM preprocessing (transform class, ``sam_image_size``, its mean/std, a format version),
- a fingerprint of the encoder weights (``model.sam_image_encoder``; another SAM checkpoint never hits),
- the decoder kind (``model.seg_decoder.kind``: SAM-HQ's ViT is SAM's, same weights and names, but SAM-HQ's entries
  also hold the early ViT feature),
- how the encoder runs (device type, weight dtype, autocast dtype).

It lives in the main process of each rank (DataLoader workers never see it): the key is computed from
``batch.image_paths``; the file digest is memoised per (path, size, mtime, inode) so later epochs do not
re-read files. Misses of a batch are encoded together in ONE ``encode_sam`` call, so the first epoch runs
exactly what the uncached model runs.

Disabled (``build_sam_cache`` returns None, with the reason logged) when ``freeze_sam`` is false, when
augmentation is on (flips move pixels; colour jitter also changes SAM's input, so ANY augmentation
disables it), or when the encoder has active dropout.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import tempfile
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from modlisa.model.mask_decoder import ImageFeatures, features_nbytes, map_features, stack_features
from modlisa.types import SAM_MEAN, SAM_STD, Batch

logger = logging.getLogger(__name__)

CACHE_FORMAT_VERSION = 1  # bump when the preprocessing or the file layout changes
_SAMPLE_ELEMENTS = 4096  # elements per tensor read into the encoder fingerprint


def file_digest(path: str | Path) -> str:
    """SHA-256 hex digest of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def encoder_fingerprint(encoder: nn.Module) -> str:
    """A digest of the encoder's weights: names, shapes, dtypes, float64 sums and a strided sample.

    Cheap (one reduction per tensor on its own device) and different for any other checkpoint or seed.
    """
    h = hashlib.sha256()
    with torch.no_grad():
        for name, tensor in encoder.state_dict().items():
            flat = tensor.detach().flatten()
            step = max(1, flat.numel() // _SAMPLE_ELEMENTS)
            sample = flat[::step][:_SAMPLE_ELEMENTS].double().cpu().numpy().tobytes()
            h.update(f"{name}|{tuple(tensor.shape)}|{tensor.dtype}|{float(flat.double().sum())!r}|".encode())
            h.update(sample)
    return h.hexdigest()


def preprocessing_signature(sam_transform: Any) -> str:
    """What determines SAM's input besides the file: transform class, size, mean/std, format version."""
    size = getattr(sam_transform, "image_size", None)
    if size is None:
        raise ValueError(f"SAM transform {type(sam_transform).__name__} has no image_size attribute")
    mean, std = getattr(sam_transform, "mean", SAM_MEAN), getattr(sam_transform, "std", SAM_STD)
    return (f"v{CACHE_FORMAT_VERSION}|{type(sam_transform).__module__}.{type(sam_transform).__qualname__}|"
            f"size={int(size)}|mean={tuple(mean)}|std={tuple(std)}")


def active_dropout(module: nn.Module) -> bool:
    """True when ``module`` holds a Dropout layer or an attention ``dropout`` probability above 0."""
    for sub in module.modules():
        if isinstance(sub, nn.Dropout) and sub.p > 0:
            return True
        p = getattr(sub, "dropout", None)
        if isinstance(p, float) and p > 0:
            return True
    return False


@dataclass
class CacheStats:
    """Counters of one cache: lookups served from memory / disk, images encoded, disk writes."""

    memory_hits: int = 0
    disk_hits: int = 0
    misses: int = 0
    disk_writes: int = 0

    @property
    def hit_rate(self) -> float:
        total = self.memory_hits + self.disk_hits + self.misses
        return (self.memory_hits + self.disk_hits) / total if total else 0.0


class SamEmbeddingCache:
    """Memory (+ optional disk) cache of SAM image features, one entry per image key: a (D, h, w) tensor (SAM)
    or a tuple of tensors (SAM-HQ, SAM 2), the batch dimension dropped.

    Args:
        model: the (unwrapped) ModifiedLISA; its ``sam_image_encoder`` must be frozen.
        sam_transform: the SAM-branch transform (``SamTransform``) that made ``batch.sam_images``.
        disk_dir: folder of the on-disk cache (``<key[:2]>/<key>.safetensors``, written atomically), or None.
        store_device: where memory entries live ("cpu" keeps accelerator memory free).
    """

    def __init__(self, model: nn.Module, sam_transform: Any, *, disk_dir: str | Path | None = None,
                 store_device: str | torch.device = "cpu") -> None:
        encoder = model.sam_image_encoder
        if any(p.requires_grad for p in encoder.parameters()):
            raise ValueError("SamEmbeddingCache needs a frozen SAM image encoder (freeze_sam: true)")
        self._static = (f"{preprocessing_signature(sam_transform)}|enc={encoder_fingerprint(encoder)}|"
                        f"kind={model.seg_decoder.kind}")
        self.disk_dir = Path(disk_dir) if disk_dir else None
        self.store_device = torch.device(store_device)
        self.stats = CacheStats()
        self._memory: dict[str, ImageFeatures] = {}
        self._digests: dict[str, tuple[tuple[int, int, int], str]] = {}
        if self.disk_dir is not None:
            self.disk_dir.mkdir(parents=True, exist_ok=True)

    # ------------------------------------------------------------------ keys
    def _content_digest(self, path: str) -> str:
        st = os.stat(path)
        stamp = (st.st_size, st.st_mtime_ns, st.st_ino)
        known = self._digests.get(path)
        if known is not None and known[0] == stamp:
            return known[1]
        digest = file_digest(path)
        self._digests[path] = (stamp, digest)
        return digest

    def _runtime_signature(self, model: nn.Module, device: torch.device) -> str:
        dtype = next(model.sam_image_encoder.parameters()).dtype
        autocast = (str(torch.get_autocast_dtype(device.type)) if torch.is_autocast_enabled(device.type)
                    else "off")
        return f"dev={device.type}|w={dtype}|autocast={autocast}"

    def key(self, image_path: str, runtime: str) -> str:
        """The cache key (hex SHA-256) of an image file under this cache's preprocessing and encoder."""
        text = f"{self._content_digest(image_path)}|{self._static}|{runtime}"
        return hashlib.sha256(text.encode()).hexdigest()

    # ------------------------------------------------------------------ disk
    def _disk_path(self, key: str) -> Path:
        assert self.disk_dir is not None
        return self.disk_dir / key[:2] / f"{key}.safetensors"

    def _read_disk(self, key: str) -> ImageFeatures | None:
        """The entry of ``key`` on disk: ``embedding`` (one tensor) or ``embedding.0``, ``embedding.1``, ... (a
        tuple); None when absent or unreadable."""
        if self.disk_dir is None:
            return None
        path = self._disk_path(key)
        if not path.is_file():
            return None
        try:
            tensors = load_file(str(path))
            if "embedding" in tensors:
                return tensors["embedding"]
            return tuple(tensors[f"embedding.{i}"] for i in range(len(tensors)))
        except (SafetensorError, OSError, KeyError) as err:
            logger.warning("SAM cache: unreadable entry %s (%s); recomputing it", path, err)
            return None

    def _write_disk(self, key: str, embedding: ImageFeatures, image_path: str) -> None:
        path = self._disk_path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{key[:16]}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        try:
            if isinstance(embedding, tuple):
                tensors = {f"embedding.{i}": t.contiguous().cpu() for i, t in enumerate(embedding)}
            else:
                tensors = {"embedding": embedding.contiguous().cpu()}
            save_file(tensors, tmp, metadata={"image": str(image_path)})
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        self.stats.disk_writes += 1

    # ------------------------------------------------------------------ lookup
    def _store(self, key: str, embedding: ImageFeatures) -> None:
        self._memory[key] = map_features(lambda t: t.detach().to(self.store_device).clone(), embedding)

    @torch.no_grad()
    def _fill(self, model: nn.Module, batch: Batch, keys: list[str]) -> None:
        """Load or encode the entries of ``keys`` not in memory; the images to encode go in ONE call."""
        first: dict[str, int] = {}
        for b, key in enumerate(keys):
            if key in self._memory or key in first:
                self.stats.memory_hits += 1
                continue
            on_disk = self._read_disk(key)
            if on_disk is not None:
                self._store(key, on_disk)
                self.stats.disk_hits += 1
            else:
                first[key] = b
        if not first:
            return
        rows = list(first.values())
        features = model.encode_sam(batch.sam_images[rows])  # SAM: (m, D, h, w); SAM-HQ, SAM 2: a tuple of (m, ...)
        for j, (key, b) in enumerate(first.items()):
            embedding = map_features(lambda t, j=j: t[j], features)
            self._store(key, embedding)
            if self.disk_dir is not None:
                self._write_disk(key, embedding, batch.image_paths[b])
        self.stats.misses += len(rows)

    def lookup(self, model: nn.Module, batch: Batch,
               autocast: Callable[[], AbstractContextManager[Any]] | None = None) -> ImageFeatures:
        """``ImageFeatures`` of the batch's images (SAM: (B, D, S/16, S/16)), on ``batch.sam_images``' device.

        ``model`` is the unwrapped ModifiedLISA; ``autocast`` (e.g. ``accelerator.autocast``) is entered
        around the encoder call so it runs exactly as inside the model's forward.
        """
        device = batch.sam_images.device
        with (autocast() if autocast is not None else contextlib.nullcontext()):
            runtime = self._runtime_signature(model, device)
            keys = [self.key(path, runtime) for path in batch.image_paths]
            self._fill(model, batch, keys)
        return map_features(lambda t: t.to(device), stack_features([self._memory[k] for k in keys]))

    # ------------------------------------------------------------------ info
    def __len__(self) -> int:
        return len(self._memory)

    @property
    def memory_bytes(self) -> int:
        """Bytes held by the in-memory entries."""
        return sum(features_nbytes(t) for t in self._memory.values())

    def summary(self) -> dict[str, Any]:
        """Entries, bytes, hit counters: for logs and bench.json."""
        return {"entries": len(self), "memory_bytes": self.memory_bytes, "memory_hits": self.stats.memory_hits,
                "disk_hits": self.stats.disk_hits, "misses": self.stats.misses,
                "disk_writes": self.stats.disk_writes, "hit_rate": self.stats.hit_rate,
                "disk_dir": str(self.disk_dir) if self.disk_dir else None}


def cache_disabled_reason(cfg: Any, model: nn.Module, processors: Any) -> str | None:
    """Why the SAM cache cannot be used with this run (None when it can)."""
    if not cfg.freeze_sam:
        return "freeze_sam is false (the SAM image encoder trains, its embeddings change every step)"
    if cfg.augment or getattr(processors, "augmenter", None) is not None:
        return ("augment is on (flips move pixels and colour jitter changes SAM's input, so an image's "
                "embedding differs between epochs)")
    if active_dropout(model.sam_image_encoder):
        return "the SAM image encoder has active dropout (its output is random in training)"
    return None


def build_sam_cache(cfg: Any, model: nn.Module, processors: Any) -> SamEmbeddingCache | None:
    """The run's cache when ``cfg.sam_cache`` is on and allowed; None otherwise (the reason is logged).

    ``cfg.sam_cache_dir`` (when the config has it and it is set) adds the on-disk cache.
    """
    if not cfg.sam_cache:
        return None
    reason = cache_disabled_reason(cfg, model, processors)
    if reason is not None:
        logger.warning("sam_cache disabled: %s", reason)
        return None
    disk_dir = getattr(cfg, "sam_cache_dir", None)
    cache = SamEmbeddingCache(model, processors.sam, disk_dir=disk_dir)
    logger.info("sam_cache on: frozen-SAM embeddings computed once per image%s",
                f" (disk cache {disk_dir})" if disk_dir else " (memory)")
    return cache
