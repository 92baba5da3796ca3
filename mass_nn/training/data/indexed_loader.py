"""Batch order shared by every training loader: batch i of a run is a pure function of (seed, i).

Before producing batch i a loader seeds its own generator, the global `np.random` and `random`
(batchgenerators' transforms draw from those) from (seed, i); the augmentation runs right after in the same
process, so worker count and start point never change a batch. Rank r of a world of W produces the global
batches s * W + r for its steps s = start_batch, start_batch + 1, ...; with T workers, worker t produces the
steps start_batch + t + n * T, so MultiThreadedAugmenter's round-robin over the workers returns the steps in order.
"""
from __future__ import annotations

import logging
import random
import time
from collections import OrderedDict

import numpy as np
from batchgenerators.dataloading.data_loader import DataLoader
from batchgenerators.dataloading.multi_threaded_augmenter import MultiThreadedAugmenter
from batchgenerators.dataloading.single_threaded_augmenter import SingleThreadedAugmenter

logger = logging.getLogger(__name__)

BATCHES_CACHED_PER_WORKER = 2


def seed_everything_for_batch(seed: int, batch_index: int) -> np.random.Generator:
    """Seed `np.random` and `random` from (seed, batch_index) and return an independent generator for it."""
    sequence = np.random.SeedSequence([seed, batch_index])
    own, global_state = sequence.spawn(2)
    state = global_state.generate_state(4)
    np.random.seed(state)
    random.seed(int(state[0]))
    return np.random.default_rng(own)


class IndexedBatchLoader(DataLoader):
    """Infinite batchgenerators DataLoader whose batch for each step is `make_batch(global index)`; subclasses
    implement make_batch and may seed from `seed_everything_for_batch(self.seed, index)`.

    `case(index)` gives what `open_case(index)` opened for item `index`, kept in a per-process LRU of
    `open_cases_per_worker` entries (opened lazily, so worker processes open their own after the fork);
    `close_case` releases an entry the LRU drops.
    """

    open_cases_per_worker = 32

    def __init__(self, items: list, batch_size: int, seed: int, start_batch: int = 0, rank: int = 0,
                 world_size: int = 1, num_threads_in_multithreaded: int = 1):
        if seed < 0 or start_batch < 0 or not 0 <= rank < world_size:
            raise ValueError(f"need seed >= 0, start_batch >= 0 and 0 <= rank < world_size, got seed={seed}, "
                             f"start_batch={start_batch}, rank={rank}, world_size={world_size}")
        super().__init__(list(items), batch_size, max(1, num_threads_in_multithreaded), seed_for_shuffle=seed,
                         shuffle=False, infinite=True)
        self.indices = np.arange(len(self._data))
        self.seed, self.start_batch, self.rank, self.world_size = seed, start_batch, rank, world_size
        self._steps_done = 0
        self._open_cases: OrderedDict[int, object] = OrderedDict()

    def global_batch_index(self, step: int) -> int:
        """The global batch number of this rank's `step`."""
        return step * self.world_size + self.rank

    def generate_train_batch(self) -> dict:
        step = self.start_batch + self.thread_id + self._steps_done * self.number_of_threads_in_multithreaded
        self._steps_done += 1
        return self.make_batch(self.global_batch_index(step))

    def make_batch(self, batch_index: int) -> dict:
        raise NotImplementedError

    def open_case(self, index: int):
        """Subclass: open item `index` (e.g. memory-map its arrays)."""
        raise NotImplementedError

    def close_case(self, opened) -> None:
        """Release what open_case returned when the LRU drops it (nothing to release by default)."""

    def case(self, index: int):
        """open_case(index), from the LRU when it is there."""
        if index in self._open_cases:
            self._open_cases.move_to_end(index)
            return self._open_cases[index]
        opened = self._open_cases[index] = self.open_case(index)
        if len(self._open_cases) > self.open_cases_per_worker:
            self.close_case(self._open_cases.popitem(last=False)[1])
        return opened


class AugmentedBatches:
    """Iterator of augmented batches from an IndexedBatchLoader; `close()` stops the workers."""

    def __init__(self, augmenter, loader: IndexedBatchLoader):
        self.augmenter = augmenter
        self.loader = loader

    def __iter__(self) -> "AugmentedBatches":
        return self

    def __next__(self) -> dict:
        return next(self.augmenter)

    def close(self) -> None:
        """Stop and join the worker processes (no-op without workers); safe to call twice."""
        if isinstance(self.augmenter, MultiThreadedAugmenter):
            self.augmenter._finish()

    def __enter__(self) -> "AugmentedBatches":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def augmented_batches(loader: IndexedBatchLoader, transform, num_workers: int) -> AugmentedBatches:
    """Run `transform` on the loader's batches in this process (0 workers) or in `num_workers` processes
    (batchgenerators' MultiThreadedAugmenter, no pinned memory); the loader must have been built with
    num_threads_in_multithreaded = max(1, num_workers)."""
    if num_workers <= 0:
        return AugmentedBatches(SingleThreadedAugmenter(loader, transform), loader)
    augmenter = MultiThreadedAugmenter(loader, transform, num_workers, num_cached_per_queue=BATCHES_CACHED_PER_WORKER,
                                       seeds=None, pin_memory=False)
    return AugmentedBatches(augmenter, loader)


def measure_loader_throughput(loader, num_batches: int) -> float:
    """Batches per second over `num_batches` calls to next(loader), after one untimed warm-up batch."""
    next(loader)
    started = time.perf_counter()
    for _ in range(num_batches):
        next(loader)
    return num_batches / (time.perf_counter() - started)
