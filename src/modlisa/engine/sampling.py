"""Samplers: deterministic, shardable, resumable training order and exact-once evaluation shards.

Written by hand rather than with DistributedSampler because training needs (a) epochs of a fixed
number of optimizer steps independent of the dataset size (LISA's 500-step "epochs"), and
(b) resuming in the middle of an epoch without loading the skipped samples.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler


class TrainSampler(Sampler[int]):
    """Yields ``samples_per_rank`` dataset indices for this rank in epoch ``epoch``.

    The global order of an epoch is a concatenation of permutations of ``range(dataset_len)`` drawn
    from a generator seeded by (seed, epoch); rank r takes positions r, r + world, r + 2·world, ...
    ``set_epoch(epoch, skip)`` starts the epoch after ``skip`` of this rank's samples (resume).
    """

    def __init__(self, dataset_len: int, samples_per_rank: int, *, seed: int, rank: int = 0,
                 world_size: int = 1, shuffle: bool = True) -> None:
        if dataset_len <= 0:
            raise ValueError("the training dataset is empty")
        self.dataset_len = dataset_len
        self.samples_per_rank = samples_per_rank
        self.seed, self.rank, self.world_size, self.shuffle = seed, rank, world_size, shuffle
        self.epoch = 0
        self.skip = 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.epoch, self.skip = epoch, skip

    def global_order(self) -> list[int]:
        """The whole epoch's order across all ranks (length samples_per_rank · world_size)."""
        needed = self.samples_per_rank * self.world_size
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order: list[int] = []
        while len(order) < needed:
            perm = torch.randperm(self.dataset_len, generator=gen) if self.shuffle else torch.arange(self.dataset_len)
            order.extend(perm.tolist())
        return order[:needed]

    def __iter__(self) -> Iterator[int]:
        mine = self.global_order()[self.rank :: self.world_size]
        return iter(mine[self.skip :])

    def __len__(self) -> int:
        return self.samples_per_rank - self.skip


class EvalShardSampler(Sampler[int]):
    """Rank r gets indices r, r + world, ...: every sample exactly once across ranks, no padding."""

    def __init__(self, dataset_len: int, *, rank: int = 0, world_size: int = 1) -> None:
        self.indices = list(range(rank, dataset_len, world_size))

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)
