"""Epoch time with vs without the frozen-SAM embedding cache, side by side in one process, repeated.

The demo config (tiny preset) with ``freeze_sam: true`` at ``sam_image_size`` 1024 trains ``--epochs`` epochs
with ``sam_cache`` off and on, alternating which goes first in each repeat. The cached run encodes every
image in its first epoch and none afterwards, so the ratio compares uncached epochs with the cached run's
later ("warm") epochs; the first ("cold") epoch is reported too. Both runs must give identical training
losses and validation metrics.

    python benchmarks/sam_cache_ratio.py [--sam-image-size 1024] [--epochs 3] [--repeats 2] [--out ratio.json]
"""

from __future__ import annotations

import argparse
import contextlib
import io
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

from modlisa.config import TrainingConfig, config_from_dict, load_yaml
from modlisa.synthetic import make_dataset

REPO = Path(__file__).resolve().parents[1]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(REPO / "configs" / "demo.yaml"))
    parser.add_argument("--sam-image-size", type=int, default=1024)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--num-train", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=256, help="size of the synthetic images")
    parser.add_argument("--out", default=None)
    return parser.parse_args(argv)


def one_run(cfg: TrainingConfig) -> dict[str, Any]:
    from modlisa.engine.train import train

    with contextlib.redirect_stdout(io.StringIO()):  # the per-epoch tables of `modlisa train`
        summary = train(cfg)
    epochs = summary["epochs"]
    return {"epoch_times": [e["train"]["epoch_time"] for e in epochs],
            "train_loss": [e["train"]["loss"] for e in epochs],
            "val": [{k: e["val"][k] for k in ("giou", "ciou", "loss")} for e in epochs]}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    start, load_start = time.perf_counter(), os.getloadavg()
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="sam-cache-ratio-") as tmp:
        data = Path(tmp) / "data"
        make_dataset(data, seed=0, num_train=args.num_train, num_val=2, num_test=1, image_size=args.image_size,
                     progress=False)
        base = replace(config_from_dict(load_yaml(args.config)), data_root=str(data), num_epochs=args.epochs,
                       sam_image_size=args.sam_image_size, freeze_sam=True, log_every_steps=10_000)
        for repeat in range(args.repeats):
            for cache in ((False, True) if repeat % 2 == 0 else (True, False)):
                cfg = replace(base, sam_cache=cache, output_dir=str(Path(tmp) / f"r{repeat}-{int(cache)}")).validate()
                result = one_run(cfg)
                runs.append({"repeat": repeat, "sam_cache": cache, **result})
                print(json.dumps({"repeat": repeat, "sam_cache": cache, "epoch_times": result["epoch_times"]}),
                      flush=True)
    plain = [t for r in runs if not r["sam_cache"] for t in r["epoch_times"]]
    warm = [t for r in runs if r["sam_cache"] for t in r["epoch_times"][1:]]
    cold = [r["epoch_times"][0] for r in runs if r["sam_cache"]]
    identical = all(a["train_loss"] == b["train_loss"] and a["val"] == b["val"]
                    for a in runs if not a["sam_cache"] for b in runs if b["sam_cache"] and b["repeat"] == a["repeat"])
    result = {
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
        "settings": {"config": args.config, "sam_image_size": args.sam_image_size, "epochs": args.epochs,
                     "repeats": args.repeats, "num_train": args.num_train, "image_size": args.image_size},
        "ratio_warm": statistics.median(plain) / statistics.median(warm) if warm else None,
        "ratio_cold_epoch": statistics.median(plain) / statistics.median(cold) if cold else None,
        "median_epoch_s": {"no_cache": statistics.median(plain), "cache_warm": statistics.median(warm) if warm else None,
                           "cache_cold": statistics.median(cold) if cold else None},
        "identical_results": identical, "runs": runs,
        "loadavg": {"start": list(load_start), "end": list(os.getloadavg())},
        "seconds": time.perf_counter() - start,
    }
    print(f"epoch time without cache / with warm cache: {result['ratio_warm']:.2f}x "
          f"(cold first epoch: {result['ratio_cold_epoch']:.2f}x); identical results: {identical}")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())
