"""Pretraining batches: a batchgenerators DataLoader of raw two-view crops plus the augmenter that runs it.

Determinism and resume: batch number i (a global counter) is a pure function of (seed, i). Before producing
it the loader seeds its own generator, the global `np.random` and `random` (batchgenerators' transforms draw
from those) from (seed, i); the augmentation runs right after in the same process, so worker count and start
point never change a batch. Rank r of a world of W produces the global batches s * W + r for its steps
s = start_batch, start_batch + 1, ...; with T workers, worker t produces the steps start_batch + t + n * T, so
MultiThreadedAugmenter's round-robin over the workers returns the steps in order.
"""
from __future__ import annotations

import logging
import os
import random
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from batchgenerators.dataloading.data_loader import DataLoader
from batchgenerators.dataloading.multi_threaded_augmenter import MultiThreadedAugmenter
from batchgenerators.dataloading.single_threaded_augmenter import SingleThreadedAugmenter

from mass_nn.errors import MassError
from mass_nn.masks.mask_bank import MaskBank
from mass_nn.preprocessing.blosc2_storage import open_array
from mass_nn.training.data.augmentation import TwoViewSettings, build_two_view_transform
from mass_nn.training.data.two_view_sampler import sample_two_views

logger = logging.getLogger(__name__)

OPEN_CASES_PER_WORKER = 32  # memory-mapped images and bank headers kept open per process (LRU)
BATCHES_CACHED_PER_WORKER = 2


@dataclass(frozen=True)
class PretrainingCase:
    """One preprocessed case: its `.b2nd` image (c, z, y, x) and its mask bank on the same grid."""

    case_id: str
    image_path: str | os.PathLike
    bank_path: str | os.PathLike


def validate_cases(cases: list[PretrainingCase]) -> None:
    """Raise MassError naming the file when an image is missing or a bank is missing or holds no masks."""
    if not cases:
        raise MassError("no cases to pretrain on: the case list is empty")
    for case in cases:
        if not Path(case.image_path).is_file():
            raise MassError(f"{case.image_path}: preprocessed image of case {case.case_id!r} not found; run "
                            "mass_plan_and_preprocess for this configuration")
        bank = MaskBank(case.bank_path)
        if len(bank) == 0:
            raise MassError(f"{bank.path}: the mask bank of case {case.case_id!r} holds no masks; run "
                            "mass_generate_masks for it (or leave the case out)")


def seed_everything_for_batch(seed: int, batch_index: int) -> np.random.Generator:
    """Seed `np.random` and `random` from (seed, batch_index) and return an independent generator for it."""
    sequence = np.random.SeedSequence([seed, batch_index])
    own, global_state = sequence.spawn(2)
    state = global_state.generate_state(4)
    np.random.seed(state)
    random.seed(int(state[0]))
    return np.random.default_rng(own)


class TwoViewDataLoader(DataLoader):
    """Infinite loader of raw (un-augmented) two-view batches; see the module docstring for the ordering.

    A batch is a dict: `reference_image`, `query_image` (B, C, *crop) float32, `reference_masks`,
    `query_masks` (B, K, *crop) uint8, `task_weights` (B, K) float32, `case_ids` list[str], `batch_index` int.
    The augmenter's transform (`build_two_view_transform`) turns the crops into patches.
    """

    def __init__(self, cases: list[PretrainingCase], settings: TwoViewSettings, batch_size: int, seed: int,
                 start_batch: int = 0, rank: int = 0, world_size: int = 1, case_weights=None,
                 num_threads_in_multithreaded: int = 1):
        if seed < 0 or start_batch < 0 or not 0 <= rank < world_size:
            raise ValueError(f"need seed >= 0, start_batch >= 0 and 0 <= rank < world_size, got seed={seed}, "
                             f"start_batch={start_batch}, rank={rank}, world_size={world_size}")
        super().__init__(list(cases), batch_size, max(1, num_threads_in_multithreaded), seed_for_shuffle=seed,
                         shuffle=False, infinite=True)
        self.indices = np.arange(len(self._data))
        self.settings = settings
        self.seed, self.start_batch, self.rank, self.world_size = seed, start_batch, rank, world_size
        self.case_probabilities = _normalised_weights(case_weights, len(self._data))
        self._steps_done = 0
        self._open_cases: OrderedDict[int, tuple] = OrderedDict()

    def global_batch_index(self, step: int) -> int:
        """The global batch number of this rank's `step`."""
        return step * self.world_size + self.rank

    def generate_train_batch(self) -> dict:
        step = self.start_batch + self.thread_id + self._steps_done * self.number_of_threads_in_multithreaded
        self._steps_done += 1
        return self.make_batch(self.global_batch_index(step))

    def make_batch(self, batch_index: int) -> dict:
        """Raw batch number `batch_index`; also seeds the global random state the augmentation then uses."""
        rng = seed_everything_for_batch(self.seed, batch_index)
        picks = rng.choice(len(self._data), size=self.batch_size, replace=True, p=self.case_probabilities)
        s = self.settings
        samples = [sample_two_views(*self._open_case(int(i)), crop_size=s.crop_size_zyx,
                                    patch_size=s.patch_size_zyx, num_tasks=s.num_tasks,
                                    overlap_ratio=s.overlap_ratio, everything_task=s.everything_task,
                                    prefer_in_view=s.prefer_masks_in_view, rng=rng) for i in picks]
        return stack_samples(samples, [self._data[int(i)].case_id for i in picks], batch_index)

    def _open_case(self, index: int) -> tuple:
        """(image, bank) of case `index`, opened lazily in the process that reads them (workers after fork)."""
        if index in self._open_cases:
            self._open_cases.move_to_end(index)
            return self._open_cases[index]
        case = self._data[index]
        opened = (open_array(case.image_path), MaskBank(case.bank_path))
        self._open_cases[index] = opened
        if len(self._open_cases) > OPEN_CASES_PER_WORKER:
            _, (_, bank) = self._open_cases.popitem(last=False)
            bank.close()
        return opened


def stack_samples(samples: list, case_ids: list[str], batch_index: int) -> dict:
    """The batch dict of `samples` (TwoViewSample); all cases must have the same number of image channels."""
    channels = {case_id: sample.reference_image.shape[0] for case_id, sample in zip(case_ids, samples)}
    if len(set(channels.values())) > 1:
        raise MassError(f"cases with different channel counts in one batch: {channels}; all cases of a "
                        "pretraining run must come from one preprocessed configuration")
    batch = {key: np.stack([getattr(sample, key) for sample in samples])
             for key in ("reference_image", "reference_masks", "query_image", "query_masks", "task_weights")}
    batch["case_ids"] = list(case_ids)
    batch["batch_index"] = int(batch_index)
    return batch


def _normalised_weights(case_weights, num_cases: int) -> np.ndarray | None:
    if case_weights is None:
        return None
    weights = np.asarray(case_weights, dtype=np.float64)
    if weights.shape != (num_cases,) or np.any(weights < 0) or weights.sum() <= 0:
        raise ValueError(f"case_weights must be {num_cases} non-negative numbers with a positive sum")
    return weights / weights.sum()


class PretrainingBatches:
    """Iterator of augmented batches (see TwoViewDataLoader for the keys); `close()` stops the workers."""

    def __init__(self, augmenter, loader: TwoViewDataLoader):
        self.augmenter = augmenter
        self.loader = loader

    def __iter__(self) -> "PretrainingBatches":
        return self

    def __next__(self) -> dict:
        return next(self.augmenter)

    def close(self) -> None:
        """Stop and join the worker processes (no-op without workers); safe to call twice."""
        if isinstance(self.augmenter, MultiThreadedAugmenter):
            self.augmenter._finish()

    def __enter__(self) -> "PretrainingBatches":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def make_pretraining_loader(cases: list[PretrainingCase], settings: TwoViewSettings, batch_size: int, seed: int,
                            num_workers: int, start_batch: int = 0, rank: int = 0, world_size: int = 1,
                            case_weights=None, validate: bool = True) -> PretrainingBatches:
    """Augmented two-view batches of `batch_size`, in the order start_batch, start_batch + 1, ... of this rank.

    Cases are drawn with replacement (proportionally to `case_weights` when given). `num_workers` > 0 uses
    batchgenerators' MultiThreadedAugmenter (one process per worker, no pinned memory), 0 runs in this process.
    `validate` checks every case's files up front so a missing or empty bank fails here with a clear message
    rather than inside a worker.
    """
    if validate:
        validate_cases(cases)
    workers = max(0, int(num_workers))
    loader = TwoViewDataLoader(cases, settings, batch_size, seed, start_batch=start_batch, rank=rank,
                               world_size=world_size, case_weights=case_weights,
                               num_threads_in_multithreaded=max(1, workers))
    transform = build_two_view_transform(settings)
    logger.debug("pretraining loader: %d cases, batch %d, %d workers, rank %d/%d, from step %d", len(cases),
                 batch_size, workers, rank, world_size, start_batch)
    if workers == 0:
        return PretrainingBatches(SingleThreadedAugmenter(loader, transform), loader)
    augmenter = MultiThreadedAugmenter(loader, transform, workers, num_cached_per_queue=BATCHES_CACHED_PER_WORKER,
                                       seeds=None, pin_memory=False)
    return PretrainingBatches(augmenter, loader)


def measure_loader_throughput(loader, num_batches: int) -> float:
    """Batches per second over `num_batches` calls to next(loader), after one untimed warm-up batch."""
    next(loader)
    started = time.perf_counter()
    for _ in range(num_batches):
        next(loader)
    return num_batches / (time.perf_counter() - started)
