"""fp32 vs 8-bit vs 4-bit language model, side by side in one run: `modlisa bench` (step time, MFU, peak RSS,
the memory planner's estimate) and the loss after the same training steps, each setting in its own process
(peak RSS is per process).

    python benchmarks/quantization_table.py --config configs/smol.yaml --data_root /tmp/bench/demo \
        --steps 4 --train_steps 20 --out /tmp/quant_table.json

Prints a markdown table (the one in docs/BENCHMARKS.md) and writes every figure to --out.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

SETTINGS = {"fp32": [], "8-bit": ["--use_quantization", "true", "--quantization_bits", "8"],
            "4-bit": ["--use_quantization", "true", "--quantization_bits", "4"]}


def run(args: list[str]) -> None:
    subprocess.run([sys.executable, "-m", "modlisa.cli", *args], check=True, stdout=subprocess.DEVNULL)


def measure(name: str, flags: list[str], opts: argparse.Namespace, tmp: Path) -> dict:
    common = ["--config", opts.config, "--data_root", opts.data_root, *flags]
    bench = tmp / f"bench-{name}.json"
    run(["bench", *common, "--output_dir", str(tmp / f"bench-{name}"), "--steps", str(opts.steps), "--warmup", "2",
         "--eval_steps", "0", "--out", str(bench)])
    result = json.loads(bench.read_text())
    run_dir = tmp / f"train-{name}"
    run(["train", *common, "--output_dir", str(run_dir), "--stop_after_steps", str(opts.train_steps),
         "--log_every_steps", "1", "--num_epochs", "1", "--steps_per_epoch", str(opts.train_steps)])
    log = [json.loads(line) for line in (run_dir / "outputs" / "train_log.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in log if "loss" in r]
    train = result["train"]
    return {"setting": name, "step_time_s": train["step_time_s"]["median"], "mfu": train.get("mfu"),
            "peak_rss_gb": train["memory"]["peak_gb"], "planner_estimate_gb": result["memory_plan"]["estimate_gb"],
            "samples_per_s": train["samples_per_s"], "loss_first": losses[0], "loss_last": losses[-1],
            "steps": len(losses), "environment": result["environment"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/smol.yaml")
    parser.add_argument("--data_root", required=True)
    parser.add_argument("--steps", type=int, default=4, help="measured bench steps")
    parser.add_argument("--train_steps", type=int, default=20, help="training steps for the loss column")
    parser.add_argument("--out", default="quant_table.json")
    opts = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="modlisa-quant-table-") as tmp:
        rows = [measure(name, flags, opts, Path(tmp)) for name, flags in SETTINGS.items()]
    Path(opts.out).write_text(json.dumps(rows, indent=2))
    print("| LM | step time (median) | samples/s | MFU | peak RSS | planner estimate | loss step 1 -> "
          f"{opts.train_steps} |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        mfu = f"{100 * r['mfu']:.2f} %" if r["mfu"] is not None else "n/a"
        print(f"| {r['setting']} | {1000 * r['step_time_s']:.0f} ms | {r['samples_per_s']:.2f} | {mfu} | "
              f"{r['peak_rss_gb']:.2f} GB | {r['planner_estimate_gb']:.2f} GB | "
              f"{r['loss_first']:.3f} -> {r['loss_last']:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
