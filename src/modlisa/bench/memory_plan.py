"""Analytic estimate of the peak training memory of a run, a verdict for a GPU size, and the cheapest flags
that make the run fit.

Terms (bytes), from the meta-device skeleton (exact parameter counts and trainable set) and the configs:

- weights: every trainable parameter in fp32 (master weights, ``model/precision.py``: an fp16 checkpoint's
  trained embedding + LM head count 4 bytes a value), frozen ones at the checkpoint's dtype (random presets
  fp32; with ``use_quantization`` the LM's decoder-layer linear weights at 4.25 bits (nf4 + block scales)
  or 8.1 bits).
- gradients (= trainable weights, fp32) and AdamW states (2 x trainable weights, fp32).
- activations saved for backward in one micro-batch: LM decoder layers (per token: the norms' inputs, the
  attention q/k/v/out, the MLP's gate/up products, LoRA inputs; the layer inputs only with gradient
  checkpointing, plus one layer being recomputed), the logits (Q x L' x V) and their gradient, trainable
  vision tower / SAM encoder, the SAM decoder per query and the mask logits + loss terms at the ORIGINAL
  image size per query.
- transient: the frozen SAM encoder's global-attention bias + probabilities when embeddings are not cached.
- on CPU (compared with peak RSS): the Python/torch runtime, the batch tensors, the SAM cache entries, and
  the allocator's retention (glibc keeps freed forward intermediates mapped: x1.6 on activations).

Sizes of the workload: batch size, queries per image, text tokens per query (tokenizer-dependent
default), the largest original image of ``data_root``'s train split (header reads) or 1500 x 2000.
The activation coefficients are calibrated against ``torch.autograd.graph.saved_tensors_hooks`` counts of
the tiny and smol presets (docs/BENCHMARKS.md); treat the estimate as +-25 %.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from modlisa.bench.architectures import (
    Architecture,
    architecture_for,
    build_skeleton,
    sam2_input_size,
    vision_layers,
)
from modlisa.config import ConfigError, TrainingConfig
from modlisa.model.sam2_decoder import is_sam2_config
from modlisa.model.sam_hq_decoder import is_sam_hq_config

logger = logging.getLogger(__name__)

GB = 1024**3
DEFAULT_IMAGE_HW = (1500, 2000)  # ReasonSeg photos are often this size or larger
TEXT_TOKENS = {"byte": 230, "bpe": 80}  # prompt + answer tokens per query (LLaVA v1 template)
CPU_RUNTIME_GB = 0.45  # Python + torch + transformers + accelerate + peft after import, measured (RSS)
CUDA_CONTEXT_GB = 0.6  # CUDA context + kernels: outside max_memory_allocated, inside the GPU's capacity
FRAGMENTATION = 1.10  # caching-allocator slack on top of the live tensors
# glibc keeps the forward's freed intermediates mapped: peak RSS grows ~1.6x the activations (smol, measured)
CPU_ALLOCATOR_RETENTION = 1.6
DECODER_FLOATS = 22  # SAM two-way decoder: saved floats per image token and channel, per query
UPSCALE_FLOATS = 1800  # SAM output upscaling: saved floats per image token, per query
ORIGINAL_FLOATS = 14  # mask logits + upsampling + loss terms at the original size, fp32 per pixel, per query
QUANT_BYTES = {4: 4.25 / 8, 8: 8.1 / 8}
MAX_SCANNED_IMAGES = 500


def dtype_bytes(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


@dataclass
class Workload:
    """What one micro-batch holds: B images x queries, text tokens per query, original image size."""

    batch_size: int
    queries_per_image: int
    text_tokens: int
    image_hw: tuple[int, int]
    cache_images: int
    source: str

    @property
    def sequences(self) -> int:
        return self.batch_size * self.queries_per_image


def _scan_images(data_root: str) -> tuple[tuple[int, int] | None, int]:
    """(largest (H, W) among the train images, number of train + val images) of a ReasonSeg folder."""
    from modlisa.data.reasonseg import DataError, read_image_size, resolve_split_dir

    largest, count = None, 0
    for split in ("train", "val"):
        try:
            folder = resolve_split_dir(data_root, split)
        except (DataError, FileNotFoundError):
            continue
        images = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
        count += len(images)
        if split != "train":
            continue
        for path in images[:MAX_SCANNED_IMAGES]:
            try:
                hw = read_image_size(path)
            except DataError:
                continue
            if largest is None or hw[0] * hw[1] > largest[0] * largest[1]:
                largest = hw
    return largest, count


def workload_for(cfg: TrainingConfig, arch: Architecture, image_hw: tuple[int, int] | None = None,
                 text_tokens: int | None = None) -> Workload:
    """The planner's workload: given sizes, else what ``data_root`` holds, else ReasonSeg-like defaults."""
    scanned, count = _scan_images(cfg.data_root) if Path(cfg.data_root).is_dir() else (None, 0)
    source = f"data_root {cfg.data_root}" if scanned else "defaults (no data_root)"
    hw = image_hw or scanned or DEFAULT_IMAGE_HW
    return Workload(cfg.batch_size, cfg.queries_per_image, text_tokens or TEXT_TOKENS[arch.tokenizer],
                    (int(hw[0]), int(hw[1])), count or 439, source)


# ---------------------------------------------------------------------- parameters
def _param_dtype_bytes(name: str, param: torch.nn.Parameter, arch: Architecture, cfg: TrainingConfig) -> float:
    """Bytes per value: trainable = fp32 master weights (model/precision.py), whatever the checkpoint's dtype;
    frozen = the checkpoint's dtype (a 16-bit one converted to the other 16-bit autocast dtype keeps its size)."""
    part = name.split(".", 1)[0]
    if param.requires_grad:
        return 4.0
    if part == "text_hidden_fcs":
        return 4.0
    if part == "language_model":
        if (cfg.use_quantization and not param.requires_grad and ".layers." in name and param.dim() == 2):
            return QUANT_BYTES[cfg.quantization_bits]
        return dtype_bytes(arch.dtypes["lm"])
    if part in ("vision_tower", "projector"):
        return dtype_bytes(arch.dtypes["vision"]) if arch.dtypes["vision"] != torch.float32 else 4.0
    return dtype_bytes(arch.dtypes["sam"])


def parameter_terms(model: torch.nn.Module, arch: Architecture, cfg: TrainingConfig) -> dict[str, Any]:
    """Counts and bytes of weights (per part), gradients and AdamW states."""
    counts: dict[str, int] = {}
    weights: dict[str, float] = {}
    trainable_count, trainable_bytes = 0, 0.0
    for name, param in model.named_parameters():
        part = name.split(".", 1)[0]
        size = _param_dtype_bytes(name, param, arch, cfg) * param.numel()
        counts[part] = counts.get(part, 0) + param.numel()
        weights[part] = weights.get(part, 0.0) + size
        if param.requires_grad:
            trainable_count += param.numel()
            trainable_bytes += size
    return {"params": counts, "params_total": sum(counts.values()), "trainable_params": trainable_count,
            "weights": weights, "gradients": trainable_bytes, "optimizer_states": 2 * trainable_bytes}


# ---------------------------------------------------------------------- activations
def _needs_graph(model: torch.nn.Module, prefixes: tuple[str, ...]) -> bool:
    return any(p.requires_grad for n, p in model.named_parameters() if n.startswith(prefixes))


def _lora_per_layer(model: torch.nn.Module) -> int:
    return sum(1 for n, _ in model.named_modules() if ".layers.0." in n and n.endswith("lora_A"))


def lm_activations(model: torch.nn.Module, arch: Architecture, cfg: TrainingConfig, w: Workload,
                   act: int, res: int) -> dict[str, float]:
    """Saved LM activations (bytes) of one micro-batch: decoder layers and logits."""
    lm = arch.lm
    h, layers, inter = lm.hidden_size, lm.num_hidden_layers, lm.intermediate_size
    heads = lm.num_attention_heads
    head_dim = getattr(lm, "head_dim", None) or h // heads
    kv = getattr(lm, "num_key_value_heads", None) or heads
    q_dim, kv_dim = heads * head_dim, kv * head_dim
    tokens = w.sequences * (w.text_tokens + arch.num_image_tokens - 1)
    graph = _needs_graph(model, ("language_model", "vision_tower", "projector"))
    if not graph:
        return {"lm_layers": 0.0, "logits": float(tokens * lm.vocab_size * act)}
    per_token = 2 * h * res + (2 * q_dim + 2 * kv_dim) * act + heads * 4 + 3 * inter * act
    per_token += _lora_per_layer(model) * (h * act + (h if cfg.lora_dropout > 0 else 0) + cfg.lora_r * 4)
    if not cfg.freeze_text_encoder:
        per_token += (h + q_dim + h + inter) * act
    edges = tokens * (h * act + 2 * h * res)
    if cfg.gradient_checkpointing:
        layer_bytes = tokens * ((layers + 1) * h * res + per_token)
    else:
        layer_bytes = tokens * layers * per_token
    logits = tokens * lm.vocab_size * act * 2  # the logits + their (dense) gradient in backward
    return {"lm_layers": float(layer_bytes + edges), "logits": float(logits)}


def _vit_per_token(hidden: int, mlp: int, act: int) -> int:
    return 2 * hidden * 4 + (7 * hidden + 2 * mlp) * act


def vision_activations(model: torch.nn.Module, arch: Architecture, w: Workload, act: int) -> float:
    if not _needs_graph(model, ("vision_tower", "projector")):
        return 0.0
    v = arch.vision
    tokens = w.batch_size * arch.vision_tokens
    return float(tokens * vision_layers(v) * _vit_per_token(v.hidden_size, v.intermediate_size, act))


@dataclass(frozen=True)
class SamGeometry:
    """The sizes the planner reads off a SAM or SAM 2 config: input S, the decoder's (S/16)^2 image tokens and
    width, the largest global-attention block (heads, tokens), and the floats one cached image holds."""

    image_size: int
    decoder_tokens: int
    decoder_dim: int
    global_heads: int
    global_tokens: int
    cache_floats: int


def sam_geometry(config: Any) -> SamGeometry:
    """SAM: ViT at S / patch, global attention over every patch. SAM-HQ: the same ViT; its cache also keeps the
    first global block's output (ViT width x (S/16)^2 floats). SAM 2: Hiera, whose global-attention blocks run
    at their stage's resolution (S / 4 / 2^stage); its cache keeps the three FPN levels the decoder reads
    (256 x (S/16)^2, 64 x (S/8)^2, 32 x (S/4)^2 floats)."""
    if is_sam2_config(config):
        size = sam2_input_size(config)
        hiera = config.vision_config.backbone_config
        ends = list(itertools.accumulate(hiera.blocks_per_stage))
        stages = [next(i for i, end in enumerate(ends) if block < end) for block in hiera.global_attention_blocks]
        stage = max(stages, key=lambda k: hiera.num_attention_heads_per_stage[k] * (size // 4 // 2**k) ** 4)
        decoder = config.mask_decoder_config.hidden_size
        return SamGeometry(size, (size // 16) ** 2, decoder, hiera.num_attention_heads_per_stage[stage],
                           (size // 4 // 2**stage) ** 2,
                           decoder * (size // 16) ** 2 + 64 * (size // 8) ** 2 + 32 * (size // 4) ** 2)
    s = config.vision_config
    tokens = (s.image_size // s.patch_size) ** 2
    cached = s.output_channels + (s.hidden_size if is_sam_hq_config(config) else 0)
    return SamGeometry(s.image_size, tokens, config.mask_decoder_config.hidden_size, s.num_attention_heads, tokens,
                       cached * tokens)


def sam_encoder_terms(model: torch.nn.Module, arch: Architecture, cfg: TrainingConfig, w: Workload,
                      act: int) -> dict[str, float]:
    """Saved activations of a trainable SAM encoder, or the transient peak of a frozen, uncached one."""
    g = sam_geometry(arch.sam)
    attention_global = w.batch_size * g.global_heads * g.global_tokens * g.global_tokens * (act + 4)
    trainable = _needs_graph(model, ("sam.vision_encoder",))
    if trainable and is_sam2_config(arch.sam):
        raise ConfigError("memory planner: a trainable SAM 2 image encoder (freeze_sam: false) is not modelled; "
                          "measure it with `modlisa bench`")
    if trainable:
        s = arch.sam.vision_config
        tokens = g.decoder_tokens
        n_global = len(s.global_attn_indexes)
        window = s.window_size * s.window_size
        per_image = tokens * (s.num_hidden_layers * _vit_per_token(s.hidden_size, s.mlp_dim, act)
                              + (s.num_hidden_layers - n_global) * s.num_attention_heads * window * (act + 4))
        return {"sam_encoder": float(w.batch_size * per_image + n_global * attention_global), "transient": 0.0}
    cached = cfg.sam_cache and cfg.freeze_sam and not cfg.augment
    return {"sam_encoder": 0.0, "transient": 0.0 if cached else float(attention_global)}


def mask_activations(arch: Architecture, w: Workload, act: int) -> float:
    """SAM decoder, upscaling, and the original-size logits + loss terms of every query of a micro-batch (SAM 2's
    decoder is SAM's two-way transformer and upscaling, plus the high-resolution skips; SAM-HQ's adds an HQ token
    and its fused (D/8, S/4, S/4) mask features per query: both counted as SAM's)."""
    g = sam_geometry(arch.sam)
    tokens, dim = g.decoder_tokens, g.decoder_dim
    per_query = (tokens * dim * DECODER_FLOATS * act + tokens * UPSCALE_FLOATS * act
                 + 2 * g.image_size**2 * 4 + ORIGINAL_FLOATS * 4 * w.image_hw[0] * w.image_hw[1])
    masks_uint8 = w.image_hw[0] * w.image_hw[1]
    return float(w.sequences * (per_query + masks_uint8))


# ---------------------------------------------------------------------- the plan
def _precision_bytes(cfg: TrainingConfig, arch: Architecture) -> tuple[int, int]:
    """(bytes of autocast activations, bytes of the LM residual stream)."""
    act = 2 if cfg.precision in ("bf16", "fp16") else 4
    res = dtype_bytes(arch.dtypes["lm"]) if arch.dtypes["lm"] != torch.float32 else 4
    return act, res


def host_terms(cfg: TrainingConfig, arch: Architecture, w: Workload, act: int) -> dict[str, float]:
    """Host-memory terms: runtime, batch tensors (+ prefetch), SAM cache entries."""
    g = sam_geometry(arch.sam)
    s = g.image_size
    v = arch.vision.image_size
    h, wd = w.image_hw
    batch = w.batch_size * (3 * s * s * 4 + 3 * v * v * 4 + 3 * h * wd + w.queries_per_image * h * wd)
    cache = 0.0
    if cfg.sam_cache and cfg.freeze_sam and not cfg.augment:
        cache = float(w.cache_images * g.cache_floats * act)
    return {"runtime": CPU_RUNTIME_GB * GB, "batches": float(batch * (2 if cfg.num_workers else 1)),
            "sam_cache": cache}


def estimate(cfg: TrainingConfig, arch: Architecture | None = None, *, device: str = "cuda",
             image_hw: tuple[int, int] | None = None, text_tokens: int | None = None) -> dict[str, Any]:
    """The memory estimate of ``cfg`` on ``device`` ("cuda": device tensors; "cpu": the whole process)."""
    arch = arch or architecture_for(cfg)
    model = build_skeleton(arch, cfg)
    w = workload_for(cfg, arch, image_hw, text_tokens)
    act, res = _precision_bytes(cfg, arch)
    params = parameter_terms(model, arch, cfg)
    activations = {**lm_activations(model, arch, cfg, w, act, res),
                   "vision_tower": vision_activations(model, arch, w, act),
                   "mask_path": mask_activations(arch, w, act)}
    sam = sam_encoder_terms(model, arch, cfg, w, act)
    activations["sam_encoder"] = sam["sam_encoder"]
    terms = {"weights": sum(params["weights"].values()), "gradients": params["gradients"],
             "optimizer_states": params["optimizer_states"], "activations": sum(activations.values()),
             "transient": sam["transient"]}
    host = host_terms(cfg, arch, w, act)
    if device == "cpu":
        terms["cpu_allocator_retention"] = (CPU_ALLOCATOR_RETENTION - 1) * (terms["activations"]
                                                                            + terms["transient"])
        terms.update({f"host_{k}": v for k, v in host.items()})
    total = sum(terms.values())
    required = total if device == "cpu" else total * FRAGMENTATION + CUDA_CONTEXT_GB * GB
    return {
        "device": device,
        "estimate_gb": total / GB,
        "required_gb": required / GB,
        "terms_gb": {k: v / GB for k, v in terms.items()},
        "activations_gb": {k: v / GB for k, v in activations.items()},
        "weights_gb": {k: v / GB for k, v in params["weights"].items()},
        "host_gb": {k: v / GB for k, v in host.items()},
        "params": params["params"], "params_total": params["params_total"],
        "trainable_params": params["trainable_params"],
        "workload": dataclasses.asdict(w), "architecture": arch.describe(),
        "flags": {k: getattr(cfg, k) for k in ("batch_size", "gradient_checkpointing", "sam_cache",
                                                "train_embeddings", "use_quantization", "quantization_bits",
                                                "precision")},
    }


# ---------------------------------------------------------------------- levers
@dataclass(frozen=True)
class Lever:
    """A config change that saves memory, with its cost rank (lower = cheaper) and what it costs."""

    name: str
    cost: int
    note: str


LEVERS = (
    Lever("sam_cache", 0, "none (faster: the frozen SAM encoder runs once per image)"),
    Lever("train_embeddings=seg_row", 1, "trains only the [SEG] rows instead of the whole embedding + head"),
    Lever("gradient_checkpointing", 2, "~25-35 % slower steps (LM layers recomputed in backward)"),
    Lever("halve batch_size (double accumulation)", 3, "same effective batch, less parallel work per step"),
    Lever("use_quantization 8-bit", 5, "LM.int8 weights: slower matmuls, tiny quality change"),
    Lever("use_quantization 4-bit", 6, "nf4 weights (QLoRA): slower matmuls, small quality change"),
)


def _apply(cfg: TrainingConfig, levers: tuple[Lever, ...]) -> TrainingConfig | None:
    changes: dict[str, Any] = {}
    names = {lever.name for lever in levers}
    if "use_quantization 8-bit" in names and "use_quantization 4-bit" in names:
        return None
    for name in names:
        if name == "sam_cache":
            if cfg.sam_cache or not cfg.freeze_sam or cfg.augment:
                return None
            changes["sam_cache"] = True
        elif name == "train_embeddings=seg_row":
            if cfg.train_embeddings != "full" or not cfg.freeze_text_encoder:
                return None
            changes["train_embeddings"] = "seg_row"
        elif name == "gradient_checkpointing":
            if cfg.gradient_checkpointing:
                return None
            changes["gradient_checkpointing"] = True
        elif name.startswith("halve"):
            if cfg.batch_size < 2:
                return None
            changes["batch_size"] = cfg.batch_size // 2
            changes["gradient_accumulation_steps"] = cfg.gradient_accumulation_steps * 2
        elif name.startswith("use_quantization"):
            if cfg.use_quantization:
                return None
            changes.update(use_quantization=True, quantization_bits=4 if "4-bit" in name else 8)
    return dataclasses.replace(cfg, **changes)


def plan(cfg: TrainingConfig, gpu_gb: float, *, image_hw: tuple[int, int] | None = None,
         text_tokens: int | None = None) -> dict[str, Any]:
    """Estimate ``cfg`` on a GPU of ``gpu_gb``; when it does not fit, the cheapest lever set that fits.

    Lever sets are tried in order of (highest cost rank, sum of ranks); the first that fits is proposed.
    """
    arch = architecture_for(cfg)
    base = estimate(cfg, arch, device="cuda", image_hw=image_hw, text_tokens=text_tokens)
    result: dict[str, Any] = {"gpu_gb": gpu_gb, "estimate": base, "fits": base["required_gb"] <= gpu_gb,
                              "levers": [], "suggestion": None}
    for lever in LEVERS:
        changed = _apply(cfg, (lever,))
        if changed is not None:
            e = estimate(changed, arch, device="cuda", image_hw=image_hw, text_tokens=text_tokens)
            result["levers"].append({"lever": lever.name, "cost": lever.note, "required_gb": e["required_gb"],
                                     "saves_gb": base["required_gb"] - e["required_gb"]})
    if result["fits"]:
        result["verdict"] = f"fits: needs ~{base['required_gb']:.1f} GB of {gpu_gb:g} GB"
        return result
    combos = [c for r in range(1, len(LEVERS) + 1) for c in itertools.combinations(LEVERS, r)]
    combos.sort(key=lambda c: (max(lv.cost for lv in c), sum(lv.cost for lv in c)))
    for combo in combos:
        changed = _apply(cfg, combo)
        if changed is None:
            continue
        e = estimate(changed, arch, device="cuda", image_hw=image_hw, text_tokens=text_tokens)
        if e["required_gb"] <= gpu_gb:
            result["suggestion"] = {"levers": [lv.name for lv in combo], "costs": [lv.note for lv in combo],
                                    "flags": _flag_diff(cfg, changed), "required_gb": e["required_gb"]}
            break
    need = f"needs ~{base['required_gb']:.1f} GB of {gpu_gb:g} GB"
    if result["suggestion"]:
        flags = " ".join(f"--{k} {v}" for k, v in result["suggestion"]["flags"].items())
        result["verdict"] = f"does not fit: {need}; cheapest fix: {flags}"
    else:
        result["verdict"] = f"does not fit: {need}, even with every lever; use a bigger GPU or several GPUs"
    return result


def _flag_diff(before: TrainingConfig, after: TrainingConfig) -> dict[str, Any]:
    a, b = before.to_dict(), after.to_dict()
    return {k: b[k] for k in b if a[k] != b[k]}
