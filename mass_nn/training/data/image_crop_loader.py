"""Image-only training crops for the baseline pretrainers (MAE, S3D, Models Genesis, Hi-End-MAE, MiM): random
crops of preprocessed cases, spatially augmented, with a `valid` mask of the voxels that lie inside the volume
(padding and what an affine warp brings in from outside are 0), so losses can leave them out. No mask bank is
needed. Batch order and resume follow indexed_loader.py.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from mass_nn.errors import MassError
from mass_nn.preprocessing.blosc2_storage import open_array
from mass_nn.preprocessing.crop_pad import crop_or_pad
from mass_nn.training.data.augmentation import ViewAugmentation, build_single_view_transform, margin_for_patch
from mass_nn.training.data.indexed_loader import (AugmentedBatches, IndexedBatchLoader, augmented_batches,
                                                  seed_everything_for_batch)
from mass_nn.training.data.two_view_sampler import plan_view_starts

@dataclass(frozen=True)
class ImageCase:
    """A preprocessed case: `<case>.b2nd` (c, z, y, x)."""

    case_id: str
    image_path: str | os.PathLike


class ImageCropLoader(IndexedBatchLoader):
    """Raw crops (patch plus margin): `image` (B, C, *crop) float32, `valid` (B, 1, *crop) uint8, `case_ids`,
    `batch_index`. Each crop lies inside its volume along every axis the volume is large enough for."""

    def __init__(self, cases: list[ImageCase], patch_size_zyx, batch_size: int, seed: int, start_batch: int = 0,
                 rank: int = 0, world_size: int = 1, num_threads_in_multithreaded: int = 1):
        super().__init__(cases, batch_size, seed, start_batch, rank, world_size, num_threads_in_multithreaded)
        self.patch_size_zyx = tuple(int(p) for p in patch_size_zyx)
        self.crop_size_zyx = tuple(p + 2 * m for p, m in zip(self.patch_size_zyx, margin_for_patch(patch_size_zyx)))

    def open_case(self, index: int):
        return open_array(self._data[index].image_path)

    def make_batch(self, batch_index: int) -> dict:
        rng = seed_everything_for_batch(self.seed, batch_index)
        picks = rng.integers(0, len(self._data), size=self.batch_size)
        images, valid = [], []
        for index in picks:
            image = self.case(int(index))
            start = plan_view_starts(image.shape[1:], self.crop_size_zyx, 1.0, rng)[0]
            images.append(crop_or_pad(image, start, self.crop_size_zyx).astype(np.float32))
            inside = np.ones((1, *image.shape[1:]), dtype=np.uint8)
            valid.append(crop_or_pad(inside, start, self.crop_size_zyx))
        return {"image": np.stack(images), "valid": np.stack(valid),
                "case_ids": [self._data[int(i)].case_id for i in picks], "batch_index": int(batch_index)}


def make_image_crop_loader(cases: list[ImageCase], patch_size_zyx, batch_size: int, seed: int, num_workers: int,
                           augmentation: ViewAugmentation | None = None, start_batch: int = 0, rank: int = 0,
                           world_size: int = 1) -> AugmentedBatches:
    """Augmented image patches (`image`, `valid`), batch i = f(seed, i); default augmentation: the weak view's."""
    missing = [c.image_path for c in cases if not os.path.isfile(c.image_path)]
    if not cases or missing:
        raise MassError(f"no cases to train on, or preprocessed images missing: {missing[:3]}; run "
                        f"mass_plan_and_preprocess for this configuration")
    workers = max(0, int(num_workers))
    loader = ImageCropLoader(cases, patch_size_zyx, batch_size, seed, start_batch=start_batch, rank=rank,
                             world_size=world_size, num_threads_in_multithreaded=max(1, workers))
    transform = build_single_view_transform(augmentation or ViewAugmentation.weak(), patch_size_zyx,
                                            image_key="image", masks_key="valid")
    return augmented_batches(loader, transform, workers)
