"""Backends check: the same tiny run under every backend this machine can launch, compared with one process.

Each run trains the tiny preset (everything trainable, no LoRA so no dropout, fp32) on the same synthetic data with
batch 1 per process. The single process accumulates 4 micro-batches; the 2-process runs accumulate 2 each:
the same 4 images form every optimizer step (TrainSampler deals the epoch order round-robin), so a right
accumulation path gives the same optimizer steps, learning rates, epoch losses and final weights.

    python benchmarks/backends_check.py [--out runs/backends_check] [--only single,ddp,...]

Backends: ``single`` (python -m modlisa.cli), ``ddp`` (torchrun, gloo), ``ddp-accelerate``
(ACCELERATE_USE_CPU=true accelerate launch --multi_gpu), ``deepspeed`` (accelerate launch with
configs/accelerate/deepspeed_zero2.yaml, DeepSpeed's CPU accelerator, cpu: false; ``deepspeed-bf16`` the same in
bf16, LISA's setting: its losses differ from the fp32 reference by rounding), ``fsdp`` (accelerate launch
with configs/accelerate/fsdp.yaml). A backend that cannot run records the error it stopped with. Writes
``<out>/backends_check.json`` and prints a Markdown table (docs/TRAINING_GUIDE.md holds the measured one).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
BACKENDS = ("single", "ddp", "ddp-accelerate", "deepspeed", "deepspeed-bf16", "fsdp")
STEPS_PER_EPOCH, EPOCHS = 3, 2


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def write_config(root: Path) -> Path:
    """Synthetic data + the tiny config every backend runs (accumulation set per backend on the command line)."""
    from modlisa.config import TrainingConfig
    from modlisa.synthetic import make_dataset

    make_dataset(root / "data", seed=0, num_train=8, num_val=3, num_test=1, image_size=64, progress=False)
    cfg = TrainingConfig(
        data_root=str(root / "data"), output_dir=str(root / "run"), model="tiny", img_size=64, sam_image_size=64,
        batch_size=1, steps_per_epoch=STEPS_PER_EPOCH, num_epochs=EPOCHS, learning_rate=1e-3, warmup_steps=2,
        use_mixed_precision=False, freeze_image_encoder=False, freeze_sam=False, freeze_text_encoder=False,
        use_lora=False, log_every_steps=1, seed=7, queries_per_image=2, overwrite_output_dir=True,
    )
    path = root / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg.to_dict()), encoding="utf-8")
    return path


def command(backend: str, config: Path, out: Path) -> tuple[list[str], dict[str, str]]:
    """(argv, extra environment) of one backend's run."""
    bin_dir = Path(sys.executable).parent
    train = ["-m", "modlisa.cli", "train", "--config", str(config), "--output_dir", str(out)]
    port = str(_free_port())
    accelerate = [str(bin_dir / "accelerate"), "launch", "--num_processes", "2", "--mixed_precision", "no",
                  "--main_process_port", port]
    if backend == "single":
        return [sys.executable, *train, "--gradient_accumulation_steps", "4", "--cpu", "true"], {}
    if backend == "ddp":
        return [str(bin_dir / "torchrun"), "--nproc_per_node", "2", "--master_port", port, *train,
                "--gradient_accumulation_steps", "2", "--cpu", "true"], {}
    if backend == "ddp-accelerate":
        return [*accelerate, "--multi_gpu", *train, "--gradient_accumulation_steps", "2", "--cpu", "true"], \
            {"ACCELERATE_USE_CPU": "true"}
    if backend.startswith("deepspeed"):
        bf16 = ["--use_mixed_precision", "true", "--mixed_precision", "bf16"] if backend.endswith("bf16") else []
        return [*accelerate[:2], "--config_file", str(REPO / "configs" / "accelerate" / "deepspeed_zero2.yaml"),
                *accelerate[2:], *train, "--gradient_accumulation_steps", "2", "--cpu", "false", *bf16], {}
    if backend == "fsdp":
        return [*accelerate[:2], "--config_file", str(REPO / "configs" / "accelerate" / "fsdp.yaml"),
                *accelerate[2:], *train, "--gradient_accumulation_steps", "2", "--cpu", "true"], {}
    raise ValueError(f"unknown backend {backend!r}")


def _error_line(text: str) -> str:
    """The line that says why a run stopped: modlisa's own error, else the last exception line."""
    lines = [line.strip() for line in text.splitlines()]
    for wanted in ("modlisa train: error:", "Error:"):
        found = [line for line in lines if wanted in line and "ChildFailedError" not in line]
        if found:
            return found[-1][:300]
    return lines[-1][:300] if lines else "no output"


def run_backend(backend: str, config: Path, root: Path, timeout: int) -> dict[str, Any]:
    """Run one backend; its summary, per-step lr and per-epoch train loss (all ranks), or the error."""
    out = root / backend
    shutil.rmtree(out, ignore_errors=True)
    argv, extra = command(backend, config, out)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", **extra}
    start = time.time()
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=REPO, timeout=timeout)
    record: dict[str, Any] = {"backend": backend, "command": " ".join(argv), "returncode": proc.returncode,
                              "wall_s": round(time.time() - start, 1)}
    summary_path = out / "outputs" / "train_summary.json"
    if proc.returncode != 0 or not summary_path.is_file():
        record["error"] = _error_line(proc.stderr + proc.stdout)
        return record
    summary = json.loads(summary_path.read_text())
    log = [json.loads(line) for line in (out / "outputs" / "train_log.jsonl").read_text().splitlines()]
    steps = [r for r in log if "lr" in r]
    epochs = [json.loads((out / "outputs" / f"metrics_epoch_{e}.json").read_text()) for e in range(1, EPOCHS + 1)]
    record.update({
        "distributed_type": summary["backend"], "num_processes": summary["num_processes"],
        "gradient_accumulation_steps": summary["gradient_accumulation_steps"],
        "optimizer_steps": summary["global_step"], "optimizer_updates": summary["optimizer_updates"],
        "skipped_steps": summary["skipped_nonfinite_steps"],
        "lr": [r["lr"] for r in steps], "grad_norm": [r["grad_norm"] for r in steps],
        "epoch_train_loss": [e["train"]["loss"] for e in epochs],
        "checksums": summary["rank_param_checksums"],
    })
    return record


def compare(records: list[dict[str, Any]]) -> None:
    """Add to each record its differences from the single-process run."""
    reference = next((r for r in records if r["backend"] == "single" and "error" not in r), None)
    for r in records:
        if reference is None or "error" in r:
            continue
        r["same_lr"] = r["lr"] == reference["lr"]
        r["max_grad_norm_rel_diff"] = max(abs(a - b) / b for a, b in zip(r["grad_norm"], reference["grad_norm"]))
        r["max_epoch_loss_diff"] = max(abs(a - b) for a, b in zip(r["epoch_train_loss"], reference["epoch_train_loss"]))
        r["checksum_rel_diff"] = abs(r["checksums"][0] - reference["checksums"][0]) / abs(reference["checksums"][0])


def markdown(records: list[dict[str, Any]]) -> str:
    rows = ["| backend | ran as | processes x batch x accumulation | optimizer steps / updates applied | "
            "lr after each step | gradient norm steps 1-3 | train loss epoch 1 / 2 (all ranks) | "
            "final weights vs single |",
            "|---|---|---|---|---|---|---|---|"]
    for r in records:
        if "error" in r:
            rows.append(f"| {r['backend']} | did not run | | | | | | {r['error']} |")
            continue
        lr = ", ".join(f"{v:g}" for v in r["lr"])
        norms = ", ".join(f"{v:.4f}" for v in r["grad_norm"][:3])
        loss = " / ".join(f"{v:.4f}" for v in r["epoch_train_loss"])
        diff = "reference" if r["backend"] == "single" else f"rel. diff {r.get('checksum_rel_diff', float('nan')):.1e}"
        rows.append(f"| {r['backend']} | {r['distributed_type']} | {r['num_processes']} x 1 x "
                    f"{r['gradient_accumulation_steps']} | {r['optimizer_steps']} / {r['optimizer_updates']} | {lr} | "
                    f"{norms} | {loss} | {diff} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/backends_check")
    parser.add_argument("--only", default=",".join(BACKENDS), help="comma-separated subset of " + ", ".join(BACKENDS))
    parser.add_argument("--timeout", type=int, default=900, help="seconds per backend")
    args = parser.parse_args(argv)
    root = Path(args.out).resolve()
    root.mkdir(parents=True, exist_ok=True)
    config = write_config(root)
    records = []
    for backend in [b.strip() for b in args.only.split(",") if b.strip()]:
        print(f"running {backend} ...", flush=True)
        records.append(run_backend(backend, config, root, args.timeout))
    compare(records)
    (root / "backends_check.json").write_text(json.dumps(records, indent=2), encoding="utf-8")
    print(markdown(records))
    return 0


if __name__ == "__main__":
    sys.exit(main())
