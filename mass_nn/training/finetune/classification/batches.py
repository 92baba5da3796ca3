"""Training batches for classification: passes over the training cases in seeded random order.

Batch i of a run is a pure function of (seed, i, rank), as the base trainer's exact resume requires: the global
sample number j = (i * world_size + rank) * batch_size + k belongs to pass j // N, and pass p visits the N cases in
the order of permutation(seed, p). Every case is seen once per pass; ranks draw disjoint samples.
"""
from __future__ import annotations

from typing import Callable

import numpy as np


def batch_case_indices(batch: int, num_cases: int, batch_size: int, seed: int, rank: int = 0,
                       world_size: int = 1) -> np.ndarray:
    """The case indices [batch_size] of global batch `batch` on `rank`."""
    first = (batch * world_size + rank) * batch_size
    samples = np.arange(first, first + batch_size)
    passes, positions = samples // num_cases, samples % num_cases
    orders = {p: np.random.default_rng([seed, int(p)]).permutation(num_cases) for p in np.unique(passes)}
    return np.asarray([orders[p][q] for p, q in zip(passes, positions)], dtype=np.int64)


class ClassificationBatches:
    """Iterator of `fetch(case indices)` for the batches from `start_batch` on; fetch builds the batch (cached
    features or loaded volumes, and targets)."""

    def __init__(self, fetch: Callable[[np.ndarray], dict], num_cases: int, batch_size: int, seed: int,
                 start_batch: int = 0, rank: int = 0, world_size: int = 1):
        if num_cases < 1 or batch_size < 1:
            raise ValueError(f"need at least one case and a batch size of at least 1, got {num_cases}, {batch_size}")
        self.fetch = fetch
        self.num_cases, self.batch_size, self.seed = num_cases, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.next_batch = start_batch

    def __iter__(self) -> "ClassificationBatches":
        return self

    def __next__(self) -> dict:
        indices = batch_case_indices(self.next_batch, self.num_cases, self.batch_size, self.seed, self.rank,
                                     self.world_size)
        self.next_batch += 1
        return self.fetch(indices)

    def close(self) -> None:
        """Nothing to release (batches are built in the training process); present for the trainer's protocol."""
