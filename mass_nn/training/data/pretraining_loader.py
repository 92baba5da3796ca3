"""Pretraining batches: a batchgenerators DataLoader of raw two-view crops plus the augmenter that runs it.

Determinism and resume: batch number i (a global counter) is a pure function of (seed, i); see
indexed_loader.py for how ranks and workers share the order.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mass_nn.errors import MassError
from mass_nn.masks.mask_bank import MaskBank
from mass_nn.preprocessing.blosc2_storage import open_array
from mass_nn.training.data.augmentation import TwoViewSettings, build_two_view_transform
from mass_nn.training.data.indexed_loader import (AugmentedBatches, IndexedBatchLoader, augmented_batches,
                                                  measure_loader_throughput, seed_everything_for_batch)
from mass_nn.training.data.two_view_sampler import sample_two_views

logger = logging.getLogger(__name__)

__all__ = ["PretrainingCase", "TwoViewDataLoader", "case_weights_by_volume", "make_pretraining_loader",
           "measure_loader_throughput", "seed_everything_for_batch", "validate_cases"]

@dataclass(frozen=True)
class PretrainingCase:
    """One preprocessed case: its `.b2nd` image (c, z, y, x) and its mask bank on the same grid."""

    case_id: str
    image_path: str | os.PathLike
    bank_path: str | os.PathLike


def validate_cases(cases: list[PretrainingCase]) -> None:
    """Raise MassError naming the file when an image is missing or damaged, or a bank is missing, damaged or
    holds no masks: before the first step, not an epoch into training."""
    if not cases:
        raise MassError("no cases to pretrain on: the case list is empty")
    for case in cases:
        if not Path(case.image_path).is_file():
            raise MassError(f"{case.image_path}: preprocessed image of case {case.case_id!r} not found; run "
                            "mass_plan_and_preprocess for this configuration")
        open_array(case.image_path)
        bank = MaskBank(case.bank_path)
        bank.close()
        if len(bank) == 0:
            raise MassError(f"{bank.path}: the mask bank of case {case.case_id!r} holds no masks; run "
                            "mass_generate_masks for it (or leave the case out)")


class TwoViewDataLoader(IndexedBatchLoader):
    """Infinite loader of raw (un-augmented) two-view batches; see the module docstring for the ordering.

    A batch is a dict: `reference_image`, `query_image` (B, C, *crop) float32, `reference_masks`,
    `query_masks` (B, K, *crop) uint8, `task_weights` (B, K) float32, `case_ids` list[str], `batch_index` int.
    The augmenter's transform (`build_two_view_transform`) turns the crops into patches.
    """

    def __init__(self, cases: list[PretrainingCase], settings: TwoViewSettings, batch_size: int, seed: int,
                 start_batch: int = 0, rank: int = 0, world_size: int = 1, case_weights=None,
                 num_threads_in_multithreaded: int = 1):
        super().__init__(cases, batch_size, seed, start_batch, rank, world_size, num_threads_in_multithreaded)
        self.settings = settings
        self.case_probabilities = _normalised_weights(case_weights, len(self._data))

    def make_batch(self, batch_index: int) -> dict:
        """Raw batch number `batch_index`; also seeds the global random state the augmentation then uses."""
        rng = seed_everything_for_batch(self.seed, batch_index)
        picks = rng.choice(len(self._data), size=self.batch_size, replace=True, p=self.case_probabilities)
        s = self.settings
        samples = [sample_two_views(*self.case(int(i)), crop_size=s.crop_size_zyx,
                                    patch_size=s.patch_size_zyx, num_tasks=s.num_tasks,
                                    overlap_ratio=s.overlap_ratio, everything_task=s.everything_task,
                                    prefer_in_view=s.prefer_masks_in_view, rng=rng,
                                    min_mask_voxels=s.min_mask_voxels, absent_tasks=s.absent_tasks,
                                    distant_query=s.distant_query)
                   for i in picks]
        return stack_samples(samples, [self._data[int(i)].case_id for i in picks], batch_index)

    def open_case(self, index: int) -> tuple:
        """(memory-mapped image, mask bank) of case `index`."""
        case = self._data[index]
        return open_array(case.image_path), MaskBank(case.bank_path)

    def close_case(self, opened: tuple) -> None:
        opened[1].close()


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


def case_weights_by_volume(cases: list[PretrainingCase]) -> list[float]:
    """Each case's voxel count on its spatial grid (channels not counted; read from the array header), as case
    weights: drawn proportionally, every voxel of the pool is equally likely to lie in a sample, so a large abdominal
    volume is not drawn as rarely as a small tumour crop."""
    return [float(np.prod(open_array(case.image_path).shape[1:])) for case in cases]


def _normalised_weights(case_weights, num_cases: int) -> np.ndarray | None:
    if case_weights is None:
        return None
    weights = np.asarray(case_weights, dtype=np.float64)
    if weights.shape != (num_cases,) or np.any(weights < 0) or weights.sum() <= 0:
        raise ValueError(f"case_weights must be {num_cases} non-negative numbers with a positive sum")
    return weights / weights.sum()


def make_pretraining_loader(cases: list[PretrainingCase], settings: TwoViewSettings, batch_size: int, seed: int,
                            num_workers: int, start_batch: int = 0, rank: int = 0, world_size: int = 1,
                            case_weights=None, validate: bool = True) -> AugmentedBatches:
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
    return augmented_batches(loader, transform, workers)


def batch_to_device(batch: dict, device: torch.device) -> dict[str, torch.Tensor]:
    """The array entries of a loader batch as float32 tensors on `device`."""
    keys = ("reference_image", "reference_masks", "query_image", "query_masks", "task_weights")
    return {k: torch.as_tensor(batch[k]).to(device, dtype=torch.float32, non_blocking=True) for k in keys}
