"""LISA-exact segmentation metrics: per-query IoU, gIoU and cIoU (docs/LISA.md §5).

Per query q, after removing the pixels where the ground truth is 255 (ignore) from both the
prediction and the ground truth:

- ``I_q`` = foreground pixels in both, ``U_q`` = foreground pixels in either;
- ``IoU_q = I_q / (U_q + 1e-5)``, and ``IoU_q = 1.0`` when ``U_q == 0``;
- gIoU = mean of ``IoU_q`` over the queries; cIoU = ``sum I_q / (sum U_q + 1e-10)``.

Masks may be numpy arrays or torch tensors on any device; torch masks are reduced on their own
device and only three scalars come back to the host per query.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

logger = logging.getLogger(__name__)

IGNORE_VALUE = 255
QUERY_EPS = 1e-5  # IoU_q = I / (U + QUERY_EPS)
CIOU_EPS = 1e-10  # cIoU = sum I / (sum U + CIOU_EPS)
_STATE_COLUMNS = 4  # intersection sum, union sum, IoU sum, query count

MaskLike = np.ndarray | torch.Tensor


def _as_common_type(pred: MaskLike, gt: MaskLike) -> tuple[MaskLike, MaskLike]:
    """Return both masks as torch tensors on the device of the torch one, or both as numpy arrays."""
    if isinstance(pred, torch.Tensor) or isinstance(gt, torch.Tensor):
        device = pred.device if isinstance(pred, torch.Tensor) else gt.device
        return torch.as_tensor(pred, device=device), torch.as_tensor(gt, device=device)
    return np.asarray(pred), np.asarray(gt)


def _foreground(pred: MaskLike) -> MaskLike:
    """Boolean foreground of a prediction: bool as is, otherwise ``pred > 0``.

    ``> 0`` keeps 0/1 masks unchanged and turns raw logits into LISA's prediction (logit > 0).
    """
    is_bool = pred.dtype == torch.bool if isinstance(pred, torch.Tensor) else pred.dtype == np.bool_
    return pred if is_bool else pred > 0


def intersection_union(pred: MaskLike, gt: MaskLike) -> tuple[int, int]:
    """Foreground intersection and union of one query, ignore pixels removed (LISA-exact).

    pred: (H, W) bool or 0/1 mask (raw logits also work: foreground = value > 0).
    gt:   (H, W) integer mask with values in {0, 1, 255}; 255 = ignore.
    Returns (I, U) as Python ints.
    """
    pred, gt = _as_common_type(pred, gt)
    if tuple(pred.shape) != tuple(gt.shape) or len(gt.shape) != 2:
        raise ValueError(
            f"intersection_union: pred and gt must both be (H, W) masks of the same size, "
            f"got pred {tuple(pred.shape)} and gt {tuple(gt.shape)}"
        )
    valid = gt != IGNORE_VALUE
    p = _foreground(pred) & valid
    g = (gt == 1) & valid
    bad = (gt != 0) & (gt != 1) & valid
    if isinstance(gt, torch.Tensor):
        stats = torch.stack([(p & g).sum(), (p | g).sum(), bad.sum()]).tolist()
    else:
        stats = [int((p & g).sum()), int((p | g).sum()), int(bad.sum())]
    inter, union, n_bad = (int(v) for v in stats)
    if n_bad:
        raise ValueError(f"intersection_union: gt has {n_bad} pixels outside {{0, 1, 255}}")
    return inter, union


def query_iou(i: int, u: int) -> float:
    """IoU of one query as LISA computes it: ``I / (U + 1e-5)``, and 1.0 when ``U == 0``."""
    if u == 0:
        return 1.0
    return float(i) / (float(u) + QUERY_EPS)


def _summary(inter: float, union: float, iou_sum: float, count: float) -> dict[str, Any]:
    """gIoU, cIoU and totals of one group of queries (gIoU is 0.0 for an empty group)."""
    n = int(round(count))
    return {
        "giou": float(iou_sum) / n if n else 0.0,
        "ciou": float(inter) / (float(union) + CIOU_EPS),
        "num_queries": n,
        "intersection": int(round(inter)),
        "union": int(round(union)),
    }


class IoUAccumulator:
    """Accumulates per-query I, U and IoU into gIoU / cIoU, overall and per subset.

    ``subsets`` fixes the names (and their order in ``state_tensor``) a query may be tagged with,
    e.g. ``IoUAccumulator(subsets=("short", "long"))``. Every query counts in the overall figures;
    a query tagged with a subset also counts in that subset.

    Multi-process use: each rank updates its own accumulator, then ``all_reduce(fn)`` sums the
    state of all ranks. Each query must be evaluated on exactly one rank.
    """

    def __init__(self, subsets: Sequence[str] = ()) -> None:
        names = tuple(subsets)
        if len(set(names)) != len(names):
            raise ValueError(f"IoUAccumulator: subset names must be unique, got {names}")
        self.subsets: tuple[str, ...] = names
        self._rows = {name: k + 1 for k, name in enumerate(names)}  # row 0 = overall
        self._state = np.zeros((len(names) + 1, _STATE_COLUMNS), dtype=np.float64)

    def _row(self, subset: str | None) -> int | None:
        if subset is None:
            return None
        if subset not in self._rows:
            raise ValueError(f"IoUAccumulator: unknown subset {subset!r}; declared subsets are {self.subsets}")
        return self._rows[subset]

    def add(self, i: int, u: int, subset: str | None = None) -> float:
        """Record one query from precomputed I and U; returns its IoU."""
        if i < 0 or u < 0 or i > u:
            raise ValueError(f"IoUAccumulator.add: need 0 <= I <= U, got I={i}, U={u}")
        row = self._row(subset)
        iou = query_iou(i, u)
        values = np.array([i, u, iou, 1.0], dtype=np.float64)
        self._state[0] += values
        if row is not None:
            self._state[row] += values
        return iou

    def update(self, pred: MaskLike, gt: MaskLike, subset: str | None = None) -> tuple[int, int, float]:
        """Record one query from its (H, W) prediction and ground truth; returns (I, U, IoU)."""
        self._row(subset)  # fail on an unknown subset before any work
        i, u = intersection_union(pred, gt)
        return i, u, self.add(i, u, subset)

    def compute(self) -> dict[str, Any]:
        """Overall ``giou``, ``ciou``, ``num_queries``, ``intersection``, ``union`` and ``subsets``.

        Values are fractions (multiply by 100 for LISA's tables).
        """
        result = _summary(*self._state[0])
        result["subsets"] = {name: _summary(*self._state[row]) for name, row in self._rows.items()}
        return result

    def state_tensor(self, device: torch.device | str | None = None) -> torch.Tensor:
        """The sums as a (1 + n_subsets, 4) float64 tensor: rows overall then subsets in declared
        order; columns I, U, IoU sum, query count."""
        return torch.tensor(self._state, dtype=torch.float64, device=device)

    def load_state_tensor(self, state: torch.Tensor) -> None:
        """Replace the sums with ``state`` (the layout of ``state_tensor``)."""
        expected = self._state.shape
        if tuple(state.shape) != expected:
            raise ValueError(
                f"IoUAccumulator.load_state_tensor: expected shape {expected} for subsets {self.subsets}, "
                f"got {tuple(state.shape)}"
            )
        self._state = state.detach().to(device="cpu", dtype=torch.float64).numpy().copy()

    def merge(self, other: IoUAccumulator) -> IoUAccumulator:
        """Add the queries of ``other`` (same subsets) into this accumulator; returns self."""
        if other.subsets != self.subsets:
            raise ValueError(f"IoUAccumulator.merge: subsets differ: {self.subsets} vs {other.subsets}")
        self._state += other._state
        return self

    def all_reduce(
        self,
        reduce_fn: Callable[[torch.Tensor], torch.Tensor | None],
        device: torch.device | str | None = None,
    ) -> IoUAccumulator:
        """Sum the state over processes; afterwards this accumulator holds the global figures.

        ``reduce_fn`` takes the state tensor and returns the sum over processes, e.g.
        ``lambda t: accelerator.reduce(t, reduction="sum")``; an in-place reducer returning None
        (``torch.distributed.all_reduce``) also works. ``device``: where the state tensor is built
        (NCCL needs the rank's GPU). Call it once: a second call would add the totals again.
        """
        state = self.state_tensor(device)
        reduced = reduce_fn(state)
        self.load_state_tensor(state if reduced is None else reduced)
        logger.debug("IoUAccumulator all-reduced: %d queries", self.compute()["num_queries"])
        return self
