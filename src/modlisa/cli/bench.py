"""``modlisa bench``: measure training / evaluation steps of a config (bench.json), or plan its memory.

    modlisa bench --config configs/demo.yaml [--out bench.json] [--steps 10] [--data_loader 0,2]
    modlisa bench --config configs/smol.yaml --pack_queries true --compare_packing   # both settings, their ratios
    modlisa bench --plan_memory --config configs/single_gpu_24gb.yaml [--gpu_gb 24]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from modlisa.cli.common import parse_args
from modlisa.cli.config_args import add_config_arguments, config_from_args
from modlisa.config import ConfigError, TrainingConfig
from modlisa.engine.run_folder import RunFolder


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="modlisa bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=None, help="bench.json path (default: <output_dir>/outputs/bench.json; "
                                                    "with --plan_memory: printed only unless given)")
    parser.add_argument("--warmup", type=int, default=3, help="training steps run before timing")
    parser.add_argument("--steps", type=int, default=10, help="measured training (optimizer) steps")
    parser.add_argument("--eval_steps", type=int, default=5, help="measured evaluation batches (0: skip)")
    parser.add_argument("--no_breakdown", action="store_true",
                        help="no device synchronisation inside the step (component times then approximate)")
    parser.add_argument("--no_flops", action="store_true", help="skip FLOP counting (and MFU)")
    parser.add_argument("--matmul_n", type=int, default=None, help="size of the peak-FLOP/s matmul")
    parser.add_argument("--attn", choices=["sdpa", "eager"], default=None,
                        help="attention implementation of the LM and vision tower (default: the model's)")
    parser.add_argument("--compile", action="store_true", help="torch.compile each LM decoder layer")
    parser.add_argument("--data_loader", default=None, metavar="W1,W2",
                        help="also measure the training DataLoader with these worker counts, e.g. 0,2")
    parser.add_argument("--loader_batches", type=int, default=20)
    parser.add_argument("--compare_packing", action="store_true",
                        help="also measure training with the other pack_queries setting, in this process; "
                             "bench.json's packing_comparison holds both and their ratios")
    parser.add_argument("--large_image", action="store_true",
                        help="also time the stages of one 4000x3000 item (decode, masks, transforms)")
    parser.add_argument("--plan_memory", action="store_true", help="estimate peak training memory; no run")
    parser.add_argument("--gpu_gb", type=float, default=24.0, help="GPU memory for --plan_memory's verdict")
    parser.add_argument("--image_hw", type=int, nargs=2, default=None, metavar=("H", "W"),
                        help="original image size for --plan_memory (default: largest in data_root)")
    parser.add_argument("--text_tokens", type=int, default=None, help="text tokens per query for --plan_memory")
    add_config_arguments(parser)
    return parser


def _workers(text: str | None) -> tuple[int, ...]:
    if not text:
        return ()
    try:
        values = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise ConfigError(f"--data_loader expects worker counts like 0,2; got {text!r}") from None
    if any(v < 0 for v in values):
        raise ConfigError(f"--data_loader worker counts must be >= 0, got {text!r}")
    return values


def _write(path: Path, data: dict[str, Any]) -> None:
    from modlisa.atomic import atomic_write_text

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(data, indent=2, default=str))


def _print_plan(result: dict[str, Any]) -> None:
    e = result["estimate"]
    print(f"memory plan ({e['architecture']['source']}; {e['params_total'] / 1e9:.3f} B parameters, "
          f"{e['trainable_params'] / 1e6:.2f} M trainable)")
    for name, value in e["terms_gb"].items():
        print(f"  {name:<18} {value:8.2f} GB")
    for name, value in e["activations_gb"].items():
        print(f"    activations.{name:<14} {value:8.2f} GB")
    print(f"  {'tensors':<18} {e['estimate_gb']:8.2f} GB   (x{1.10:.2f} allocator slack + CUDA context = "
          f"{e['required_gb']:.2f} GB)")
    for lever in result["levers"]:
        print(f"  lever {lever['lever']:<40} saves {lever['saves_gb']:6.2f} GB  ({lever['cost']})")
    print(result["verdict"])


def _print_bench(result: dict[str, Any], out: Path) -> None:
    t = result["train"]
    print(f"train: {t['step_time_s']['median'] * 1000:.1f} ms/step median (p90 "
          f"{t['step_time_s']['p90'] * 1000:.1f}), {t['samples_per_s']:.2f} samples/s, peak "
          f"{t['memory']['peak_gb']:.2f} GB ({t['memory']['kind']}), MFU {t.get('mfu', float('nan')):.4f}")
    for name, value in sorted(t["components_s"].items(), key=lambda kv: -kv[1]):
        print(f"  {name:<24} {value * 1000:9.2f} ms  {100 * t['components_fraction'][name]:5.1f} %")
    if result.get("eval"):
        e = result["eval"]
        print(f"eval: {e['step_time_s']['median'] * 1000:.1f} ms/batch median, {e['samples_per_s']:.2f} samples/s")
    if result.get("data_loader"):
        for run in result["data_loader"]["runs"]:
            ratio = result["data_loader"]["ratio_to_training"][str(run["workers"])]
            print(f"data loader, {run['workers']} workers: {run['samples_per_s']:.1f} samples/s "
                  f"({ratio:.1f}x what training consumes)")
    if result.get("packing_comparison"):
        _print_packing(result["packing_comparison"])
    print(f"wrote {out}")


def _print_packing(comparison: dict[str, Any]) -> None:
    print("pack_queries  samples/s  step time (median)  LM tokens/image  peak memory")
    for name in ("packed", "unpacked"):
        f = comparison[name]
        print(f"  {name:<11} {f['samples_per_s']:9.3f}  {f['step_time_median_s']:9.3f} s         "
              f"{f['lm_tokens_per_image']:9.1f}      {f['peak_memory_gb']:6.2f} GB")
    r = comparison["ratio_packed_to_unpacked"]
    print(f"  packed / unpacked: samples/s x{r['samples_per_s']:.2f}, LM tokens x{r['lm_tokens_per_image']:.2f}, "
          f"peak memory x{r['peak_memory_gb']:.2f}; largest loss difference "
          f"{comparison['max_abs_loss_difference']:.2e}")


def run_plan(cfg: TrainingConfig, args: argparse.Namespace) -> int:
    from modlisa.bench.memory_plan import plan

    if args.gpu_gb <= 0:
        raise ConfigError(f"--gpu_gb must be > 0, got {args.gpu_gb}")
    result = plan(cfg, args.gpu_gb, image_hw=tuple(args.image_hw) if args.image_hw else None,
                  text_tokens=args.text_tokens)
    _print_plan(result)
    if args.out:
        _write(Path(args.out), result)
        print(f"wrote {args.out}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``modlisa bench``; returns the exit code."""
    args = parse_args(build_parser(), argv)
    if args.plan_memory:
        return run_plan(config_from_args(args).validate(check_paths=False, cuda_available=True), args)
    cfg = config_from_args(args).validate()
    if args.steps < 1 or args.warmup < 0 or args.eval_steps < 0:
        raise ConfigError("--steps must be >= 1, --warmup and --eval_steps >= 0")
    from modlisa.bench.training_bench import BenchOptions, run_bench

    opts = BenchOptions(warmup_steps=args.warmup, steps=args.steps, eval_steps=args.eval_steps,
                        breakdown=not args.no_breakdown, count_flops=not args.no_flops, matmul_n=args.matmul_n,
                        attn_implementation=args.attn, compile=args.compile,
                        loader_workers=_workers(args.data_loader), loader_batches=args.loader_batches,
                        compare_packing=args.compare_packing)
    result = run_bench(cfg, opts)
    if args.large_image:
        from modlisa.bench.data_bench import large_image_stages

        with tempfile.TemporaryDirectory(prefix="modlisa-large-") as tmp:
            result["large_image"] = large_image_stages(tmp, cfg.sam_image_size, cfg.img_size, cfg.queries_per_image)
    out = Path(args.out) if args.out else RunFolder(Path(cfg.output_dir)).bench
    _write(out, result)
    _print_bench(result, out)
    return 0

