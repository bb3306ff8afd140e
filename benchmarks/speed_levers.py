"""Measured effect of the speed levers, each side by side with its baseline in one process, repeated:

- bf16 autocast        (use_mixed_precision: true, mixed_precision: bf16)  vs fp32
- gradient checkpointing (LM decoder layers)                               vs off (time AND saved activations)
- SDPA attention       (LM + vision tower)                                  vs eager
- torch.compile        (each LM decoder layer, in place)                    vs eager mode
- batched SAM decoding (the n queries of an image in ONE mask-decoder call) vs one call per query

A ratio > 1 means the lever makes the training step faster (baseline time / lever time); for gradient
checkpointing the memory ratio (saved activations without / with) is reported too.

    python benchmarks/speed_levers.py [--config configs/smol.yaml] [--repeats 2] [--only bf16,sdpa] [--out levers.json]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from modlisa.bench.training_bench import BenchOptions, run_bench
from modlisa.config import TrainingConfig, config_from_dict, load_yaml
from modlisa.synthetic import make_dataset

REPO = Path(__file__).resolve().parents[1]
LEVERS = ("bf16", "checkpointing", "sdpa", "compile", "batched_decoding")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(REPO / "configs" / "demo.yaml"))
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--only", default=",".join(LEVERS))
    parser.add_argument("--out", default=None)
    return parser.parse_args(argv)


def _bench(cfg: TrainingConfig, steps: int, **opts: Any) -> dict[str, Any]:
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)  # mixed precision differs between the variants
    warmup = 3 if opts.get("compile") else 2
    r = run_bench(cfg, BenchOptions(warmup_steps=warmup, steps=steps, eval_steps=0, count_flops=False,
                                    matmul_n=256, breakdown=False, **opts))
    return {"step_median_s": r["train"]["step_time_s"]["median"],
            "saved_activations_gb": r["train"].get("saved_activations_gb_one_micro_batch"),
            "peak_memory_gb": r["train"]["memory"]["peak_gb"]}


def pair(cfg: TrainingConfig, lever: str, steps: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """(baseline, lever) measurements of one lever."""
    if lever == "bf16":
        return (_bench(replace(cfg, use_mixed_precision=False), steps),
                _bench(replace(cfg, use_mixed_precision=True, mixed_precision="bf16"), steps))
    if lever == "checkpointing":
        return (_bench(replace(cfg, gradient_checkpointing=False), steps),
                _bench(replace(cfg, gradient_checkpointing=True), steps))
    if lever == "sdpa":
        return _bench(cfg, steps, attn_implementation="eager"), _bench(cfg, steps, attn_implementation="sdpa")
    if lever == "compile":
        return _bench(cfg, steps), _bench(cfg, steps, compile=True)
    raise ValueError(f"unknown lever {lever!r}")


def decoding_pair(cfg: TrainingConfig, queries: int = 3, repeats: int = 5) -> tuple[dict[str, Any], dict[str, Any]]:
    """Forward + backward of one image's mask decoding: n calls of 1 query vs 1 call of n queries."""
    from modlisa.model.factory import build_model
    from modlisa.model.seg import decode_masks

    model, _, _ = build_model(cfg)
    side = cfg.sam_image_size // 16
    embedding = torch.randn(256, side, side)
    prompts = torch.randn(queries, 256, requires_grad=True)
    size = (cfg.sam_image_size, cfg.sam_image_size)

    def one_call() -> None:
        decode_masks(model.sam, prompts, embedding, size, size, cfg.sam_image_size).sum().backward()

    def per_query() -> None:
        sum(decode_masks(model.sam, prompts[i:i + 1], embedding, size, size, cfg.sam_image_size).sum()
            for i in range(queries)).backward()

    def timed(fn: Any) -> float:
        fn()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return statistics.median(times)

    return {"step_median_s": timed(per_query)}, {"step_median_s": timed(one_call)}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    levers = [x for x in args.only.split(",") if x]
    unknown = sorted(set(levers) - set(LEVERS))
    if unknown:
        raise SystemExit(f"unknown lever(s) {unknown}; choose from {', '.join(LEVERS)}")
    start, load_start = time.perf_counter(), os.getloadavg()
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="speed-levers-") as tmp:
        data = Path(tmp) / "data"
        make_dataset(data, seed=0, num_train=16, num_val=2, num_test=1, image_size=256, progress=False)
        cfg = replace(config_from_dict(load_yaml(args.config)), data_root=str(data),
                      output_dir=str(Path(tmp) / "run"))
        for lever in levers:
            pairs = [decoding_pair(cfg) if lever == "batched_decoding" else pair(cfg, lever, args.steps)
                     for _ in range(args.repeats)]
            ratios = [base["step_median_s"] / lever_run["step_median_s"] for base, lever_run in pairs]
            entry: dict[str, Any] = {"speedup": statistics.median(ratios), "speedups": ratios, "pairs": pairs}
            if lever == "checkpointing":
                entry["saved_activation_ratio"] = statistics.median(
                    p[0]["saved_activations_gb"] / p[1]["saved_activations_gb"] for p in pairs)
            results[lever] = entry
            extra = (f", saved activations / {entry['saved_activation_ratio']:.2f}"
                     if "saved_activation_ratio" in entry else "")
            print(f"{lever}: {entry['speedup']:.2f}x faster ({', '.join(f'{r:.2f}' for r in ratios)}){extra}",
                  flush=True)
    output = {"command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
              "config": args.config, "device": "cpu", "torch_threads": torch.get_num_threads(), "levers": results,
              "loadavg": {"start": list(load_start), "end": list(os.getloadavg())},
              "seconds": time.perf_counter() - start}
    if args.out:
        Path(args.out).write_text(json.dumps(output, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
