"""Labelled training patches for downstream finetuning: image patches with one binary mask per class.

Each sample is a crop (patch plus margin) of a labelled case centred, with probability `foreground_probability`
(nnU-Net's 1/3), on a random voxel of a random class present in the case, otherwise on a uniformly random voxel;
the query view's (strong) augmentation then warps it to the patch, masks nearest. Batch order and resume
follow indexed_loader.py.
"""
from __future__ import annotations

import logging

import numpy as np

from mass_nn.datasets.labelled_data import LabelledCase
from mass_nn.preprocessing.blosc2_storage import open_array
from mass_nn.preprocessing.crop_pad import centered_start, crop_or_pad
from mass_nn.training.data.augmentation import ViewAugmentation, build_single_view_transform, margin_for_patch
from mass_nn.training.data.indexed_loader import (AugmentedBatches, IndexedBatchLoader, augmented_batches,
                                                  seed_everything_for_batch)

logger = logging.getLogger(__name__)

MAX_FOREGROUND_SAMPLES = 10_000  # voxel coordinates kept per class and case to draw centres from


def class_voxels(seg: np.ndarray, label_values: list[int], rng: np.random.Generator) -> list[np.ndarray]:
    """Per label: up to MAX_FOREGROUND_SAMPLES (z, y, x) coordinates of its voxels (a random subset)."""
    out = []
    for value in label_values:
        coordinates = np.argwhere(seg == value)
        if len(coordinates) > MAX_FOREGROUND_SAMPLES:
            coordinates = coordinates[rng.choice(len(coordinates), MAX_FOREGROUND_SAMPLES, replace=False)]
        out.append(coordinates)
    return out


class LabelledPatchLoader(IndexedBatchLoader):
    """Raw labelled crops: `image` (B, C, *crop) float32, `masks` (B, K, *crop) uint8 (K = len(label_values)),
    `case_ids`, `batch_index`."""

    open_cases_per_worker = 16  # label maps are read whole into memory, so fewer cases stay open

    def __init__(self, cases: list[LabelledCase], label_values: list[int], patch_size_zyx, batch_size: int,
                 seed: int, foreground_probability: float = 1 / 3, start_batch: int = 0, rank: int = 0,
                 world_size: int = 1, num_threads_in_multithreaded: int = 1):
        super().__init__(cases, batch_size, seed, start_batch, rank, world_size, num_threads_in_multithreaded)
        self.label_values = [int(v) for v in label_values]
        self.patch_size_zyx = tuple(int(p) for p in patch_size_zyx)
        self.crop_size_zyx = tuple(p + 2 * m for p, m in zip(self.patch_size_zyx, margin_for_patch(patch_size_zyx)))
        self.foreground_probability = foreground_probability

    def open_case(self, index: int) -> tuple:
        """(image array, seg (z, y, x), per-class coordinates) of case `index`."""
        case = self._data[index]
        seg = np.asarray(open_array(case.seg_path)[0])
        coordinates = class_voxels(seg, self.label_values, np.random.default_rng([self.seed, index]))
        return open_array(case.image_path), seg, coordinates

    def _centre(self, shape, coordinates: list[np.ndarray], rng: np.random.Generator) -> np.ndarray:
        present = [c for c in coordinates if len(c)]
        if present and rng.random() < self.foreground_probability:
            chosen = present[rng.integers(len(present))]
            return chosen[rng.integers(len(chosen))]
        return rng.integers(0, np.asarray(shape))

    def make_batch(self, batch_index: int) -> dict:
        rng = seed_everything_for_batch(self.seed, batch_index)
        picks = rng.integers(0, len(self._data), size=self.batch_size)
        images, masks = [], []
        values = np.asarray(self.label_values, dtype=np.int16)[:, None, None, None]
        for index in picks:
            image, seg, coordinates = self.case(int(index))
            start = centered_start(self._centre(seg.shape, coordinates, rng), self.crop_size_zyx)
            images.append(crop_or_pad(image, start, self.crop_size_zyx).astype(np.float32))
            seg_crop = crop_or_pad(seg[None], start, self.crop_size_zyx)
            masks.append((seg_crop == values).astype(np.uint8))
        return {"image": np.stack(images), "masks": np.stack(masks),
                "case_ids": [self._data[int(i)].case_id for i in picks], "batch_index": int(batch_index)}


def make_labelled_loader(cases: list[LabelledCase], label_values: list[int], patch_size_zyx, batch_size: int,
                         seed: int, num_workers: int, augmentation: ViewAugmentation | None = None,
                         foreground_probability: float = 1 / 3, start_batch: int = 0, rank: int = 0,
                         world_size: int = 1) -> AugmentedBatches:
    """Augmented labelled patches (default: the query view's strong augmentation), batch i = f(seed, i)."""
    workers = max(0, int(num_workers))
    loader = LabelledPatchLoader(cases, label_values, patch_size_zyx, batch_size, seed,
                                 foreground_probability=foreground_probability, start_batch=start_batch,
                                 rank=rank, world_size=world_size, num_threads_in_multithreaded=max(1, workers))
    transform = build_single_view_transform(augmentation or ViewAugmentation.strong(), patch_size_zyx)
    return augmented_batches(loader, transform, workers)
