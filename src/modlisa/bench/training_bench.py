"""``run_bench``: warm-up, then measured training and evaluation steps of a config, as training runs them.

The run is built by the training loop's own ``build_run`` (same model, adapters, loaders, optimizer, SAM
cache, prompt teacher; its run folder goes to a temporary directory) and a training step IS
``Trainer.train_step``: ``gradient_accumulation_steps`` micro-batches (data wait, host-to-device copy, SAM
cache lookup, forward, loss, backward, metrics) + the optimizer step (gradient-norm clip, finiteness check,
AdamW, zero_grad, scheduler), timed through the trainer's ``timer`` regions. Evaluation batches, FLOPs and
saved activations run the same ``SegmentationTask`` step.

Each step is bracketed by device synchronisation; with ``breakdown`` every region boundary synchronises
too, and exclusive region times sum exactly to the step (``timing.ComponentTimer``). FLOPs are counted
afterwards on the same batches with ``FlopCounterMode`` (forward + backward, no optimizer update), the
SAM encoder's share added per image it actually encoded during the measured step. MFU =
flops_per_step / step_time_mean_s / peak_flops_per_s, the peak measured by a matmul in the same process.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from modlisa.bench import flops as flops_mod
from modlisa.bench.environment import current_rss_gb, environment, load_average
from modlisa.bench.timing import ComponentTimer, latency_summary, wrap_model
from modlisa.config import ConfigError, TrainingConfig
from modlisa.engine.meters import peak_memory, reset_peak_memory, synchronize
from modlisa.engine.task import SegmentationTask
from modlisa.engine.train import NullTimer
from modlisa.metrics import IoUAccumulator
from modlisa.model.packing import lm_tokens
from modlisa.types import Batch

logger = logging.getLogger(__name__)

SCHEMA = "modlisa-bench/1"
MFU_FORMULA = "flops_per_step / step_time_mean_s / peak_matmul.flops_per_s"


@dataclass
class BenchOptions:
    """What ``run_bench`` measures. ``attn_implementation`` / ``compile`` are speed levers to compare."""

    warmup_steps: int = 3
    steps: int = 10
    eval_steps: int = 5
    breakdown: bool = True
    count_flops: bool = True
    matmul_n: int | None = None
    attn_implementation: str | None = None  # "sdpa" | "eager": set on the LM and the vision tower
    compile: bool = False  # torch.compile each LM decoder layer (in place)
    saved_activations: bool = True  # measure the bytes saved for backward of one micro-batch
    loader_workers: tuple[int, ...] = ()  # DataLoader throughput with these worker counts (empty: skip)
    loader_batches: int = 20
    compare_packing: bool = False  # also measure the other pack_queries setting in this process (packing_comparison)


@dataclass
class MeasuredStep:
    """One measured step: the trainer's record (host micro-batches, images, queries) + SAM images encoded."""

    batches: list[Batch] = field(default_factory=list)
    images: int = 0
    queries: int = 0
    sam_encoded: int = 0
    loss: float = float("nan")  # mean training loss of the step's micro-batches


# ---------------------------------------------------------------------- levers
def run_dtype(cfg: TrainingConfig) -> torch.dtype:
    """The dtype the step's matmuls run in: the autocast dtype, else float32."""
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.precision, torch.float32)


def _decoder_layers(module: torch.nn.Module) -> list[torch.nn.Module]:
    return [m for m in module.modules() if type(m).__name__.endswith("DecoderLayer")]


def apply_levers(model: torch.nn.Module, opts: BenchOptions) -> dict[str, Any]:
    """Set the attention implementation / compile the LM layers of ``model`` (unwrapped); returns what was done."""
    from modlisa.model.adapters import unwrap_lm

    done: dict[str, Any] = {}
    if opts.attn_implementation:
        for part in (unwrap_lm(model.language_model), model.vision_tower):
            part.set_attn_implementation(opts.attn_implementation)
        done["attn_implementation"] = opts.attn_implementation
    if opts.compile:
        layers = _decoder_layers(model.language_model)
        for layer in layers:
            layer.compile()
        done["compiled_layers"] = len(layers)
    return done


# ---------------------------------------------------------------------- training steps
def train_batches(c: Any) -> Iterator[Batch]:
    """Training batches, epoch after epoch (sampler and dataset epochs advanced as in training)."""
    epoch = 0
    while True:
        c.train_sampler.set_epoch(epoch)
        c.train_set.set_epoch(epoch)
        empty = True
        for batch in c.train_loader:
            empty = False
            yield batch
        if empty:
            raise RuntimeError("the training DataLoader yielded no batch")
        epoch += 1


def _encoded(c: Any) -> int:
    return c.sam_cache.stats.misses if c.sam_cache is not None else 0


def train_step(trainer: Any, batches: Iterator[Batch], timer: ComponentTimer) -> MeasuredStep:
    """One ``Trainer.train_step``, its regions charged to ``timer`` (the step is opened and closed here)."""
    encoded = _encoded(trainer.parts)
    loss_sum, micro = trainer.stats.loss_sum, trainer.stats.micro_batches
    trainer.timer = timer
    timer.start_step()
    try:
        record = trainer.train_step(batches)
    finally:
        trainer.timer = NullTimer()
    timer.end_step()
    loss = (trainer.stats.loss_sum - loss_sum) / max(1, trainer.stats.micro_batches - micro)
    return MeasuredStep(record.batches, record.images, record.queries, _encoded(trainer.parts) - encoded, loss)


# ---------------------------------------------------------------------- evaluation steps
def _eval_task(c: Any) -> SegmentationTask:
    """The evaluation step of ``engine.evaluate``: the unwrapped model, the run's losses and SAM cache."""
    return SegmentationTask(c.unwrapped, c.unwrapped, c.loss_weights, sam_cache=c.sam_cache)


def eval_batches(c: Any) -> Iterator[Batch]:
    while True:
        empty = True
        for batch in c.val_loader:
            empty = False
            yield batch
        if empty:
            raise RuntimeError("the validation DataLoader yielded no batch")


def eval_step(c: Any, batches: Iterator[Batch], timer: ComponentTimer, acc: IoUAccumulator) -> MeasuredStep:
    """One evaluation batch (teacher-forced forward, loss, per-query IoU) under no_grad + autocast."""
    from modlisa.engine.evaluate import query_records

    task = _eval_task(c)
    record = MeasuredStep()
    encoded = _encoded(c)
    timer.start_step()
    with timer.region("data_wait"):
        host_batch = next(batches)
    with timer.region("host_to_device"):
        batch = host_batch.to(c.accelerator.device)
    with torch.no_grad(), c.accelerator.autocast():
        with timer.region("sam_cache"):
            emb = task.sam_embeddings(batch)
        with timer.region("forward_other"):
            out = task.forward(batch, emb)
        with timer.region("loss"):
            losses = task.losses(batch, out)
        with timer.region("metrics"):
            float(losses["loss"])
            query_records(batch, out.pred_masks, acc)
    timer.end_step()
    record.batches.append(host_batch)
    record.images, record.queries = batch.num_images, batch.num_queries
    record.sam_encoded = _encoded(c) - encoded
    return record


# ---------------------------------------------------------------------- FLOPs
def sam_encoder_flops(c: Any, batch: Batch) -> int:
    """FLOPs of the SAM image encoder on ONE image of ``batch`` (autocast as in training)."""
    image = batch.sam_images[:1].to(c.accelerator.device)
    with torch.no_grad(), c.accelerator.autocast():
        return flops_mod.count_flops(lambda: c.unwrapped.encode_sam(image))


def _count_train_flops(trainer: Any, record: MeasuredStep, encoder_flops: int) -> int:
    c, task = trainer.parts, trainer.task
    total = 0
    for host_batch in record.batches:
        batch = host_batch.to(c.accelerator.device)

        def run(batch: Batch = batch) -> None:
            task.step(batch, trainer.state.global_step).losses["loss"].backward()  # FLOPs only: gradients dropped

        total += flops_mod.count_flops(run)
    c.optimizer.zero_grad(set_to_none=True)
    return total + (record.sam_encoded * encoder_flops if c.sam_cache is not None else 0)


def _count_eval_flops(c: Any, record: MeasuredStep, encoder_flops: int) -> int:
    task = _eval_task(c)
    batch = record.batches[0].to(c.accelerator.device)
    with torch.no_grad(), c.accelerator.autocast():
        emb = task.sam_embeddings(batch)

        def run() -> None:
            task.losses(batch, task.forward(batch, emb))

        total = flops_mod.count_flops(run)
    return total + (record.sam_encoded * encoder_flops if c.sam_cache is not None else 0)


# ---------------------------------------------------------------------- saved activations
def saved_activation_bytes(trainer: Any, batch: Batch) -> int:
    """Bytes of the distinct non-parameter tensors autograd saves for one micro-batch's backward."""
    c, task = trainer.parts, trainer.task
    params = {p.untyped_storage().data_ptr() for p in c.unwrapped.parameters()}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr not in params and ptr not in seen:
            seen[ptr] = storage.nbytes()
        return t

    batch = batch.to(c.accelerator.device)
    emb = task.sam_embeddings(batch)
    teacher = task.teacher_prompts(batch, trainer.state.global_step)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        losses = task.losses(batch, task.forward(batch, emb, teacher), teacher)
    losses["loss"].backward()
    c.optimizer.zero_grad(set_to_none=True)
    return sum(seen.values())


# ---------------------------------------------------------------------- summaries
def _section(timer: ComponentTimer, records: list[MeasuredStep], flops_per_step: list[int] | None,
             peak: dict[str, Any] | None) -> dict[str, Any]:
    times = timer.step_times
    total_time = sum(times)
    images = sum(r.images for r in records)
    components = timer.mean_components()
    mean_step = total_time / max(1, len(times))
    section: dict[str, Any] = {
        "steps": len(times),
        "step_time_s": {**latency_summary(times), "all": times},
        "step_time_mean_s": mean_step,
        "images_per_step": images / max(1, len(records)),
        "queries_per_step": sum(r.queries for r in records) / max(1, len(records)),
        "samples_per_s": images / total_time if total_time else 0.0,
        "queries_per_s": sum(r.queries for r in records) / total_time if total_time else 0.0,
        "components_s": components,
        "components_fraction": {k: v / mean_step for k, v in components.items()} if mean_step else {},
        "component_sum_s": sum(components.values()),
        "sam_images_encoded_per_step": [r.sam_encoded for r in records],
    }
    data_wait = components.get("data_wait", 0.0)
    compute = mean_step - data_wait
    section["samples_per_s_without_data_wait"] = section["images_per_step"] / compute if compute > 0 else 0.0
    if flops_per_step:
        mean_flops = sum(flops_per_step) / len(flops_per_step)
        section.update(flops_per_step=mean_flops, flops_all=flops_per_step,
                       achieved_flops_per_s=mean_flops / mean_step if mean_step else 0.0)
        if peak:
            section["mfu"] = flops_mod.mfu(mean_flops, mean_step, peak["flops_per_s"])
    return section


def lm_tokens_per_image(model: Any, records: list[MeasuredStep], pack: bool) -> float:
    """LM tokens (padding included) per training image of the measured steps, from the batch shapes."""
    n_img = int(model.num_image_tokens)
    tokens = sum(lm_tokens(b.input_ids, b.attention_mask, b.offsets.tolist(), model.image_token_id, n_img, pack)
                 for r in records for b in r.batches)
    images = sum(b.num_images for r in records for b in r.batches)
    return tokens / images if images else 0.0


def _memory(device: torch.device) -> dict[str, Any]:
    value, kind = peak_memory(device)
    out: dict[str, Any] = {"peak_gb": value, "kind": kind, "rss_now_gb": current_rss_gb()}
    if device.type == "cuda":
        out["max_reserved_gb"] = torch.cuda.max_memory_reserved(device) / 1024**3
    return out


# ---------------------------------------------------------------------- the benchmark
def _measure_training(trainer: Any, opts: BenchOptions) -> tuple[ComponentTimer, list[MeasuredStep], dict[str, Any]]:
    c = trainer.parts
    device = c.accelerator.device
    batches = train_batches(c)
    c.model.train()
    warm = ComponentTimer(device, sync=False)
    warmup = [train_step(trainer, batches, warm) for _ in range(opts.warmup_steps)]
    synchronize(device)
    reset_peak_memory(device)
    timer = ComponentTimer(device, sync=opts.breakdown)
    detach = wrap_model(c.unwrapped, timer)
    try:
        records = [train_step(trainer, batches, timer) for _ in range(opts.steps)]
    finally:
        detach()
    return timer, records, _memory(device) | {"warmup_losses": [r.loss for r in warmup]}


def _measure_eval(c: Any, opts: BenchOptions) -> tuple[ComponentTimer, list[MeasuredStep]]:
    device = c.accelerator.device
    batches = eval_batches(c)
    acc = IoUAccumulator(subsets=("short", "long"))
    for _ in range(min(opts.warmup_steps, 2)):
        eval_step(c, batches, ComponentTimer(device, sync=False), acc)
    timer = ComponentTimer(device, sync=opts.breakdown)
    detach = wrap_model(c.unwrapped, timer)
    try:
        records = [eval_step(c, batches, timer, acc) for _ in range(opts.eval_steps)]
    finally:
        detach()
        c.unwrapped.train()
    return timer, records


def run_bench(cfg: TrainingConfig, opts: BenchOptions | None = None, arch: Any = None) -> dict[str, Any]:
    """Benchmark training (and evaluation when there is a val split) of ``cfg``; returns bench.json's dict.

    ``arch`` (a ``bench.architectures.Architecture``) tells the memory planner the backbones of a model built
    by a builder registered outside the presets (``benchmarks/gpu_check.py``); None: from ``cfg``.
    """
    from modlisa.engine.train import Trainer, build_run

    opts = opts or BenchOptions()
    if opts.steps < 1:
        raise ValueError(f"steps must be >= 1, got {opts.steps}")
    rss_start, load_start = current_rss_gb(), load_average()
    with tempfile.TemporaryDirectory(prefix="modlisa-bench-") as tmp:
        bench_cfg = replace(cfg, output_dir=tmp)
        trainer = Trainer(bench_cfg, build_run(bench_cfg))
        c = trainer.parts
        device = c.accelerator.device
        levers = apply_levers(c.unwrapped, opts)
        rss_built = current_rss_gb()
        timer, records, memory = _measure_training(trainer, opts)
        eval_timer, eval_records = (_measure_eval(c, opts) if c.val_loader is not None and opts.eval_steps
                                    else (None, []))
        peak = flops_mod.measure_peak_matmul(device, run_dtype(cfg), opts.matmul_n)
        train_flops = eval_flops = None
        if opts.count_flops:
            encoder = sam_encoder_flops(c, records[0].batches[0])
            train_flops = [_count_train_flops(trainer, r, encoder) for r in records]
            eval_flops = [_count_eval_flops(c, r, encoder) for r in eval_records]
        saved = saved_activation_bytes(trainer, records[0].batches[0]) if opts.saved_activations else None
        cache = c.sam_cache.summary() if c.sam_cache is not None else None
        loaders = [_loader_run(c, cfg, w, opts.loader_batches) for w in opts.loader_workers]
    train = _section(timer, records, train_flops, peak)
    warmup_losses = memory.pop("warmup_losses")
    train.update(warmup_steps=opts.warmup_steps, memory=memory, sam_cache=cache, pack_queries=cfg.pack_queries,
                 lm_tokens_per_image=lm_tokens_per_image(c.unwrapped, records, cfg.pack_queries),
                 losses=[r.loss for r in records], warmup_losses=warmup_losses)
    if saved is not None:
        train["saved_activations_gb_one_micro_batch"] = saved / 1024**3
    result: dict[str, Any] = {
        "schema": SCHEMA,
        "environment": environment(device, run_dtype(cfg)) | {"loadavg_start": load_start,
                                                                "loadavg_end": load_average()},
        "config": cfg.to_dict(),
        "batch_size": cfg.batch_size, "gradient_accumulation_steps": cfg.gradient_accumulation_steps,
        "levers": levers, "breakdown_synchronised": opts.breakdown,
        "peak_matmul": peak, "mfu_formula": MFU_FORMULA,
        "train": train,
        "eval": _section(eval_timer, eval_records, eval_flops, peak) if eval_timer is not None else None,
        "process_rss_gb": {"start": rss_start, "after_build": rss_built},
    }
    result["memory_plan"] = _plan_beside(cfg, device, memory, arch)
    if loaders:
        consumed = train["samples_per_s_without_data_wait"]
        result["data_loader"] = {
            "training_consumes_samples_per_s": consumed,
            "runs": loaders,
            "ratio_to_training": {str(r["workers"]): r["samples_per_s"] / consumed if consumed else None
                                  for r in loaders},
        }
    if opts.compare_packing:
        other_opts = replace(opts, compare_packing=False, eval_steps=0, loader_workers=())
        other = run_bench(replace(cfg, pack_queries=not cfg.pack_queries), other_opts, arch)["train"]
        result["packing_comparison"] = packing_comparison(train, other) if cfg.pack_queries else \
            packing_comparison(other, train)
    return result


COMPARED = ("samples_per_s", "step_time_mean_s", "lm_tokens_per_image", "flops_per_step",
            "saved_activations_gb_one_micro_batch")


def _compared_figures(train: dict[str, Any]) -> dict[str, Any]:
    figures = {key: train.get(key) for key in COMPARED}
    figures.update(step_time_median_s=train["step_time_s"]["median"], peak_memory_gb=train["memory"]["peak_gb"],
                   peak_memory_kind=train["memory"]["kind"], losses=train["warmup_losses"] + train["losses"])
    return figures


def packing_comparison(packed: dict[str, Any], unpacked: dict[str, Any]) -> dict[str, Any]:
    """bench.json's ``packing_comparison``: both ``train`` sections' figures, measured one after the other in
    one process on the same batches from the same initial weights, and their ratios packed / unpacked.

    ``max_abs_loss_difference`` compares the training losses step by step (warm-up included): packing computes
    the same losses, so the difference is float round-off (grown by the optimizer steps in between).
    """
    a, b = _compared_figures(packed), _compared_figures(unpacked)
    ratios = {}
    for key in (*COMPARED, "step_time_median_s", "peak_memory_gb"):
        ratios[key] = a[key] / b[key] if a.get(key) is not None and b.get(key) else None
    diffs = [abs(x - y) for x, y in zip(a["losses"], b["losses"])]
    return {"packed": a, "unpacked": b, "ratio_packed_to_unpacked": ratios,
            "max_abs_loss_difference": max(diffs) if diffs else None,
            "note": "both settings measured one after the other in this process, same batches and initial weights"}


def _loader_run(c: Any, cfg: TrainingConfig, workers: int, batches: int) -> dict[str, Any]:
    from modlisa.bench.data_bench import loader_throughput
    from modlisa.data.collate import make_collate_fn

    return loader_throughput(c.train_set, make_collate_fn(c.tokenizer, cfg.max_length, c.unwrapped.conversation), cfg.batch_size, workers,
                             batches, seed=cfg.seed)


def _plan_beside(cfg: TrainingConfig, device: torch.device, memory: dict[str, Any], arch: Any) -> dict[str, Any]:
    """The planner's estimate for this run beside the measured peak (RSS on CPU, max allocated on CUDA);
    ``{"unavailable": reason}`` for a model the planner does not model (a SAM 2 decoder)."""
    from modlisa.bench.memory_plan import estimate

    try:
        plan = estimate(cfg, arch, device="cpu" if device.type == "cpu" else "cuda")
    except ConfigError as err:
        return {"unavailable": str(err), "measured_peak_gb": memory["peak_gb"], "measured_kind": memory["kind"]}
    return {"estimate_gb": plan["estimate_gb"], "measured_peak_gb": memory["peak_gb"],
            "measured_kind": memory["kind"], "ratio_estimate_to_measured":
            plan["estimate_gb"] / memory["peak_gb"] if memory["peak_gb"] else None,
            "terms_gb": plan["terms_gb"], "activations_gb": plan["activations_gb"]}
