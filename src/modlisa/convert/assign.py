"""Put a converted state dict into a transformers model without a second copy in memory: the model is built
on the meta device and its tensors ARE the state dict's (``load_state_dict(assign=True)``), after a strict check
of names and shapes that names what is missing, left over or mis-shaped."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import torch
from torch import Tensor, nn

from modlisa.weights.files import WeightsError

M = TypeVar("M", bound=nn.Module)


def _listing(names: list[str], limit: int = 8) -> str:
    shown = ", ".join(names[:limit])
    return f"{shown} (+{len(names) - limit} more)" if len(names) > limit else shown


def tied_aliases(model: nn.Module) -> dict[str, str]:
    """``{alias: canonical}`` for state-dict entries that are the same tensor (tied weights), canonical = first."""
    first: dict[int, str] = {}
    aliases: dict[str, str] = {}
    for name, tensor in model.state_dict(keep_vars=True).items():
        if id(tensor) in first:
            aliases[name] = first[id(tensor)]
        else:
            first[id(tensor)] = name
    return aliases


def check_state(model: nn.Module, state: dict[str, Tensor], what: str) -> None:
    """WeightsError naming ``what`` unless ``state`` holds exactly the canonical entries of ``model``'s state
    dict (tied aliases may be left out) with the same shapes."""
    aliases = tied_aliases(model)
    expected = {n: t.shape for n, t in model.state_dict().items() if n not in aliases}
    given = {n for n in state if n not in aliases}
    missing = sorted(set(expected) - given)
    unexpected = sorted(given - set(expected))
    bad = [f"{n} {tuple(state[n].shape)} vs {tuple(expected[n])}" for n in sorted(given & set(expected))
           if tuple(state[n].shape) != tuple(expected[n])]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing ({_listing(missing)})")
    if unexpected:
        problems.append(f"{len(unexpected)} not in the model ({_listing(unexpected)})")
    if bad:
        problems.append(f"{len(bad)} with another shape ({_listing(bad, 4)})")
    if problems:
        raise WeightsError(f"{what}: the weights do not fit {type(model).__name__}: " + "; ".join(problems))


def assign_state(build: Callable[[], M], state: dict[str, Tensor], what: str, *, allow_meta_buffers: bool = False) -> M:
    """``build()`` on the meta device, then ``state`` (checked by ``check_state``) assigned as its tensors.

    Tied aliases absent from ``state`` are filled with their canonical tensor. Non-persistent buffers stay on
    the meta device: allowed with ``allow_meta_buffers`` (a model that is only saved, never run), else a
    RuntimeError says which.
    """
    with torch.device("meta"):
        model = build()
    check_state(model, state, what)
    full = dict(state)
    for alias, canonical in tied_aliases(model).items():
        full.setdefault(alias, state[canonical])
    model.load_state_dict(full, strict=True, assign=True)
    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left and not allow_meta_buffers:
        raise RuntimeError(f"{what}: {type(model).__name__} kept tensors without values after loading: {left[:5]}")
    return model
