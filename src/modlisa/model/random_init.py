"""Frozen weights that no pretrained source holds: saved with checkpoints so that a model reloads exactly.

Checkpoints keep only the trainable tensors (a 7B LM would otherwise be rewritten every save). That is
enough where every frozen weight comes from a pretrained checkpoint, but a preset may hold frozen parts that
are random-initialised: the whole tiny preset, the tiny vision tower / SAM of ``smol``, the new projector of
``composite``, the tiny SAM of any preset without ``sam_model``. Those are written beside the trainable
weights (``frozen_random_state``) and loaded back (``load_frozen_random``); ``build_model`` also seeds the
build with ``cfg.seed``, so what is not saved (e.g. embedding rows added for ``[SEG]``) is rebuilt the same.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from modlisa.config import ConfigError, TrainingConfig

logger = logging.getLogger(__name__)

FROZEN_RANDOM_FILE = "frozen_random.safetensors"  # beside model.safetensors in checkpoints/last
FROZEN_RANDOM_KEY = "frozen_random"  # key of best_model_epoch_N.pt


def random_init_prefixes(cfg: TrainingConfig) -> tuple[str, ...]:
    """Top-level parts of preset ``cfg.model`` that are random-initialised instead of loaded (none with
    ``init_from``: the export folder holds every part)."""
    if cfg.init_from:
        return ()
    sam = () if cfg.sam_model else ("sam.",)
    if cfg.model == "tiny":
        return ("vision_tower.", "projector.", "language_model.", "sam.")
    if cfg.model == "smol":
        return ("vision_tower.", "projector.", *sam)
    if cfg.model == "composite":
        return ("projector.", *sam)
    return sam  # llava / lisa-7b: vision tower, projector and LM come from the LLaVA checkpoint


def frozen_random_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """``{name: tensor}`` (CPU copies) of the frozen parameters and buffers under ``model.random_init_prefixes``."""
    prefixes = tuple(getattr(model, "random_init_prefixes", ()))
    if not prefixes:
        return {}
    from modlisa.model.quantization import quantized_module_prefixes

    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    quantised = quantized_module_prefixes(model)  # packed weights: rebuilt from the random seed, not saved
    return {name: t.detach().to("cpu", copy=True).contiguous() for name, t in model.state_dict().items()
            if name.startswith(prefixes) and name not in trainable and t.is_floating_point()
            and not name.startswith(quantised)}


def load_frozen_random(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> int:
    """Copy ``state`` (from ``frozen_random_state``) into ``model`` in place; returns the tensor count.

    Raises ConfigError naming ``source`` when its names or shapes differ from the model's frozen random set.
    """
    expected = frozen_random_state(model) if state else {}
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    bad = [n for n in set(expected) & set(state) if expected[n].shape != state[n].shape]
    if missing or unexpected or bad:
        raise ConfigError(f"{source}: frozen random weights do not match the model (missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}, shape mismatch {bad[:5]}); rebuild it with the config it "
                         "was saved with")
    targets = model.state_dict(keep_vars=True)
    with torch.no_grad():
        for name, value in state.items():
            targets[name].copy_(value.to(targets[name].device, targets[name].dtype))
    if state:
        logger.info("%s: restored %d frozen random-initialised tensors", source, len(state))
    return len(state)


def save_frozen_random_file(model: nn.Module, folder: str | Path) -> Path | None:
    """Write ``folder/frozen_random.safetensors`` when the model has frozen random weights; returns its path."""
    from safetensors.torch import save_file

    state = frozen_random_state(model)
    if not state:
        return None
    path = Path(folder) / FROZEN_RANDOM_FILE
    save_file(state, str(path), metadata={"format": "pt", "kind": "frozen_random"})
    return path


def load_frozen_random_file(model: nn.Module, folder: str | Path) -> int:
    """Load ``folder/frozen_random.safetensors`` into ``model`` when the file exists; returns the tensor count."""
    from modlisa.weights.files import read_safetensors  # one reader: its errors name the file

    path = Path(folder) / FROZEN_RANDOM_FILE
    if not path.is_file():
        return 0
    return load_frozen_random(model, read_safetensors(path), str(path))


def torch_default_init(parts: list[nn.Module]) -> None:
    """PyTorch's default init for every Linear / Conv2d / ConvTranspose2d under ``parts`` (in place).

    Hugging Face's init leaves the SAM image encoder's linear/conv weights at ~1e-10 for the tiny configs, so
    its embeddings come out ~1e-20 and masks could not depend on the image; it draws the mask decoder's at
    std 0.02, which makes the decoder deaf to its sparse prompt: trained from there it learns "segment every
    shape" and never reads the [SEG] prompt, even an oracle one (docs/TRAINING_GUIDE.md, "Does it follow the
    query?"). Used for the image encoder and mask decoder of the tiny SAM and SAM 2.
    """
    with torch.no_grad():
        for part in parts:
            for module in part.modules():
                if isinstance(module, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)):
                    module.reset_parameters()
