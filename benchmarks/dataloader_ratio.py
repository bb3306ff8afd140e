"""Data pipeline vs training: samples/s of the training DataLoader with 0 and 2 workers against the samples/s
the demo training consumes (its step time without the data wait), measured side by side in one process and
repeated; then the stages of one 4000 x 3000 ReasonSeg item at LISA's sizes (SAM 1024, CLIP 224).

    python benchmarks/dataloader_ratio.py [--repeats 3] [--workers 0,2] [--out dataloader.json]
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

from modlisa.bench.data_bench import large_image_loader, large_image_stages
from modlisa.bench.training_bench import BenchOptions, run_bench
from modlisa.config import config_from_dict, load_yaml
from modlisa.synthetic import make_dataset

REPO = Path(__file__).resolve().parents[1]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(REPO / "configs" / "demo.yaml"))
    parser.add_argument("--data-root", default=None, help="default: synthetic data as `modlisa make-data` makes it")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=6, help="measured training steps per repeat")
    parser.add_argument("--workers", default="0,2")
    parser.add_argument("--loader-batches", type=int, default=20)
    parser.add_argument("--no-large-image", action="store_true")
    parser.add_argument("--out", default=None)
    return parser.parse_args(argv)


def measure(cfg: Any, workers: tuple[int, ...], steps: int, batches: int) -> dict[str, Any]:
    opts = BenchOptions(warmup_steps=2, steps=steps, eval_steps=0, count_flops=False, saved_activations=False,
                        loader_workers=workers, loader_batches=batches, matmul_n=256)
    r = run_bench(cfg, opts)
    return {"training_samples_per_s": r["train"]["samples_per_s_without_data_wait"],
            "training_samples_per_s_with_data_wait": r["train"]["samples_per_s"],
            "loader": {str(x["workers"]): x["samples_per_s"] for x in r["data_loader"]["runs"]},
            "ratio": r["data_loader"]["ratio_to_training"], "loadavg": r["environment"]["loadavg_end"]}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    workers = tuple(int(w) for w in args.workers.split(","))
    start, load_start = time.perf_counter(), os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="dataloader-ratio-") as tmp:
        data = args.data_root
        if data is None:
            data = str(Path(tmp) / "data")
            make_dataset(data, seed=0, num_train=32, num_val=2, num_test=1, image_size=256, progress=False)
        cfg = replace(config_from_dict(load_yaml(args.config)), data_root=data, output_dir=str(Path(tmp) / "run"))
        repeats = []
        for repeat in range(args.repeats):
            repeats.append(measure(cfg, workers, args.steps, args.loader_batches))
            print(json.dumps({"repeat": repeat, **repeats[-1]}), flush=True)
        large = None
        if not args.no_large_image:
            large = large_image_stages(Path(tmp) / "large", 1024, 224, 3)
            large["loader"] = {str(w): large_image_loader(Path(tmp) / "large", w) for w in workers}
    ratios = {str(w): statistics.median(r["ratio"][str(w)] for r in repeats) for w in workers}
    result = {
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
        "config": args.config, "median_ratio": ratios,
        "median_training_samples_per_s": statistics.median(r["training_samples_per_s"] for r in repeats),
        "median_loader_samples_per_s": {str(w): statistics.median(r["loader"][str(w)] for r in repeats)
                                        for w in workers},
        "repeats": repeats, "large_image": large,
        "loadavg": {"start": list(load_start), "end": list(os.getloadavg())}, "seconds": time.perf_counter() - start,
    }
    for w in workers:
        print(f"{w} workers: {result['median_loader_samples_per_s'][str(w)]:.1f} samples/s = {ratios[str(w)]:.1f}x "
              f"the {result['median_training_samples_per_s']:.1f} samples/s training consumes")
    if large:
        stages = ", ".join(f"{k} {1000 * v:.0f} ms" for k, v in large["stages_s"].items())
        print(f"4000x3000 item: {stages}; whole item {1000 * large['getitem_s']:.0f} ms; "
              f"bottleneck {large['bottleneck']}")
        for w, run in large["loader"].items():
            print(f"4000x3000 items through the DataLoader, {w} workers: {run['samples_per_s']:.2f} samples/s")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
