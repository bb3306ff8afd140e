"""The Accelerator of a training run: one gradient-accumulation path for single process, DDP, FSDP and DeepSpeed.

Accumulation is Accelerate's: ``Accelerator(gradient_accumulation_plugin=...)`` with the run's
``gradient_accumulation_steps``, every micro-batch inside ``accelerator.accumulate(model)``, the loss given
to ``accelerator.backward`` unscaled, and an optimizer step only where ``accelerator.sync_gradients``. Under
each backend that one path does the right thing:

- single process / DDP: ``backward`` divides the loss by the steps, ``accumulate`` skips the all-reduce
  (``no_sync``) on all but the last micro-batch;
- FSDP: the same, with FSDP's own ``no_sync``; gradient clipping goes through the FSDP module (global norm);
- DeepSpeed: the engine scales the loss and steps ONLY at the boundary Accelerate marks
  (``set_gradient_accumulation_boundary``), with ``gradient_accumulation_steps`` and ``gradient_clipping``
  taken from the DeepSpeed config that ``deepspeed_config`` builds from the TrainingConfig. A config left at
  ``gradient_accumulation_steps: 1`` (as Accelerate's DeepSpeed defaults are) would make the engine step
  every micro-batch with a 10x too small loss scale: the bug class of LISA issue #210.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import DistributedDataParallelKwargs, GradientAccumulationPlugin, InitProcessGroupKwargs

from modlisa.config import ConfigError, TrainingConfig

logger = logging.getLogger(__name__)

# what the launcher (`accelerate launch --config_file configs/accelerate/deepspeed_zero2.yaml`) tells the process
DEEPSPEED_ENV = "ACCELERATE_USE_DEEPSPEED"
FSDP_ENV = "ACCELERATE_USE_FSDP"


def _env_true(name: str) -> bool:
    return os.environ.get(name, "false").lower() in ("1", "true", "yes")


def launched_backend() -> str:
    """``deepspeed``, ``fsdp`` or ``ddp`` (one or more plain processes), as the launcher's environment says."""
    if _env_true(DEEPSPEED_ENV):
        return "deepspeed"
    if _env_true(FSDP_ENV):
        return "fsdp"
    return "ddp"


def deepspeed_config(cfg: TrainingConfig, world_size: int, zero_stage: int = 2, offload_optimizer: str = "none",
                     base: dict[str, Any] | None = None) -> dict[str, Any]:
    """The DeepSpeed config of ``cfg`` on ``world_size`` processes: micro-batch, accumulation, clipping and
    precision from the TrainingConfig (they must agree with the training loop), ZeRO stage / offload from the
    launcher. ``base``: a user's DeepSpeed JSON; its other keys are kept, the keys above are replaced (logged).
    """
    owned: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": cfg.batch_size,
        "train_batch_size": cfg.batch_size * cfg.gradient_accumulation_steps * world_size,
        "gradient_accumulation_steps": cfg.gradient_accumulation_steps,
        "gradient_clipping": cfg.max_grad_norm if cfg.max_grad_norm > 0 else 0.0,
        "bf16": {"enabled": cfg.precision == "bf16"},
        "fp16": {"enabled": cfg.precision == "fp16", "loss_scale": 0, "initial_scale_power": 16},
    }
    config = dict(base or {})
    for key, value in owned.items():
        if key in config and config[key] != value and config[key] != "auto":
            logger.warning("DeepSpeed config: %s=%r replaced by %r from the TrainingConfig", key, config[key], value)
    config.update(owned)
    zero = dict(config.get("zero_optimization", {}))
    zero.setdefault("stage", zero_stage)
    zero.setdefault("contiguous_gradients", True)
    zero.setdefault("overlap_comm", False)
    if offload_optimizer != "none":
        zero.setdefault("offload_optimizer", {"device": offload_optimizer})
    config["zero_optimization"] = zero
    return config


def deepspeed_plugin(cfg: TrainingConfig) -> Any:
    """The DeepSpeedPlugin of ``cfg`` when launched with DeepSpeed, else None (``deepspeed_config``)."""
    if launched_backend() != "deepspeed":
        return None
    from accelerate.utils import DeepSpeedPlugin

    base = None
    path = os.environ.get("ACCELERATE_DEEPSPEED_CONFIG_FILE", "none")
    if path != "none":
        base = json.loads(Path(path).read_text(encoding="utf-8"))
    stage = int(os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE", 2))
    offload = os.environ.get("ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE", "none")
    world_size = int(os.environ.get("WORLD_SIZE", 1))  # set by accelerate launch / torchrun
    config = deepspeed_config(cfg, world_size, zero_stage=stage, offload_optimizer=offload, base=base)
    # The launcher lists the DeepSpeed fields its YAML set; Accelerate refuses a config dict beside them. They
    # are read above (stage, offload) and the rest is the TrainingConfig's, so the list is dropped here.
    os.environ.pop("ACCELERATE_CONFIG_DS_FIELDS", None)
    return DeepSpeedPlugin(hf_ds_config=config, gradient_accumulation_steps=cfg.gradient_accumulation_steps,
                           gradient_clipping=config["gradient_clipping"], zero_stage=config["zero_optimization"]["stage"])


def make_accelerator(cfg: TrainingConfig) -> Accelerator:
    """The run's Accelerator: mixed precision, accumulation (``accumulate()``), DDP kwargs, DeepSpeed plugin."""
    ddp = DistributedDataParallelKwargs(find_unused_parameters=True)  # SAM's multimask heads get no gradient
    kwargs: dict[str, Any] = {}  # trackers are the run's own (engine/tracking.py), not Accelerate's
    handlers: list[Any] = [ddp]
    plugin = deepspeed_plugin(cfg)
    if plugin is not None:
        kwargs["deepspeed_plugin"] = plugin
        if not torch.cuda.is_available():  # DeepSpeed's CPU accelerator: Accelerate needs the gloo backend named
            handlers.append(InitProcessGroupKwargs(backend="gloo"))
    # an explicit plugin: ACCELERATE_GRADIENT_ACCUMULATION_STEPS from a launcher config cannot override it
    accumulation = GradientAccumulationPlugin(num_steps=cfg.gradient_accumulation_steps, sync_with_dataloader=False)
    # One process may run several trainings (a notebook, the test suite): Accelerate keeps one global state and
    # refuses a second Accelerator with another mixed precision. Each run starts from a fresh AcceleratorState
    # (the process group, PartialState, is kept).
    AcceleratorState._reset_state()
    accelerator = Accelerator(mixed_precision=cfg.precision, cpu=cfg.cpu, kwargs_handlers=handlers,
                              gradient_accumulation_plugin=accumulation, **kwargs)
    check_backend(accelerator)
    return accelerator


def check_backend(accelerator: Accelerator) -> None:
    """The backend the launcher asked for is the one Accelerate set up, and every launched process takes part.

    Accelerate silently falls back otherwise: FSDP or DeepSpeed with ``cpu: true`` become multi-CPU DDP, FSDP
    without a GPU (and DeepSpeed on CPU without the gloo backend) leave each rank training ALONE.
    """
    from accelerate.utils import DistributedType

    launched = int(os.environ.get("WORLD_SIZE", "1"))
    actual = str(accelerator.distributed_type).replace("DistributedType.", "")
    if launched > 1 and accelerator.num_processes != launched:
        raise ConfigError(f"{launched} processes were launched but Accelerate set up {accelerator.num_processes} "
                          f"({actual}): each rank would train alone; check the launcher config and `cpu`")
    expected = {"deepspeed": DistributedType.DEEPSPEED, "fsdp": DistributedType.FSDP}.get(launched_backend())
    if expected is not None and accelerator.distributed_type != expected:
        hint = ("Accelerate enables FSDP only on GPUs (and similar devices), not on CPU processes"
                if expected == DistributedType.FSDP else "set cpu: false (DeepSpeed uses its CPU accelerator)")
        raise ConfigError(f"launched with {launched_backend()} but Accelerate set up {actual}: {hint}")


def check_accumulation(accelerator: Accelerator, cfg: TrainingConfig) -> None:
    """After ``prepare``: the accelerator (and a DeepSpeed engine) accumulate exactly ``cfg``'s steps."""
    steps = accelerator.gradient_accumulation_steps
    engine = getattr(accelerator, "deepspeed_engine_wrapped", None)
    if engine is not None:
        steps_ds = engine.engine.gradient_accumulation_steps()
        if steps_ds != cfg.gradient_accumulation_steps:
            raise ConfigError(f"the DeepSpeed engine accumulates {steps_ds} micro-batches but "
                              f"gradient_accumulation_steps={cfg.gradient_accumulation_steps}; remove it from the "
                              "DeepSpeed config (modlisa sets it from the TrainingConfig)")
    if steps != cfg.gradient_accumulation_steps:
        raise ConfigError(f"Accelerate accumulates {steps} micro-batches but gradient_accumulation_steps="
                          f"{cfg.gradient_accumulation_steps}; do not set gradient_accumulation_steps in the "
                          "accelerate launch config")
    logger.info("backend %s (%s), %d process(es), accumulation %d", launched_backend(),
                accelerator.distributed_type, accelerator.num_processes, steps)


def clip_parameters(accelerator: Accelerator, prepared: Any, unwrapped: Any) -> list:
    """The parameters to clip: FSDP needs the prepared module's full list (its global norm); elsewhere the
    trainable parameters of the model."""
    from accelerate.utils import DistributedType

    if accelerator.distributed_type == DistributedType.FSDP:
        return list(prepared.parameters())
    return [p for p in unwrapped.parameters() if p.requires_grad]


def needs_every_gradient(accelerator: Accelerator) -> bool:
    """True where every rank must produce a gradient for every trainable parameter in every micro-batch.

    DeepSpeed ZeRO reduces gradients in buckets filled as they become ready: when one rank skips the SAM mask
    decoder (a text-only explanation item has no [SEG]) and another does not, their buckets differ and the
    collective fails ("Received data size doesn't match expected size"). DDP finds unused parameters itself.
    """
    from accelerate.utils import DistributedType

    return accelerator.num_processes > 1 and accelerator.distributed_type == DistributedType.DEEPSPEED


def zero_touch(params: list) -> Any:
    """0 x (one value of every parameter): added to the loss it changes nothing, yet gives every parameter a
    (zero) gradient, so all ranks reduce the same set (``needs_every_gradient``). A scalar tensor."""
    return 0.0 * sum(p.reshape(-1)[:1].sum() for p in params)
