"""SimCLR training batches: pairs of overlapping crops of one region, every crop augmented on its own.

Per sample (reference: nnssl's SimCLR): a region (`region_size_zyx`) is placed in a case, and `crops_per_sample`
reference crops are cut from it, each with a partner crop whose start differs by at most (1 - min_overlap) of the
crop size per axis (so the two overlap by at least `min_overlap` per axis; `plan_view_starts` draws both around a
shared anchor voxel). The crops are placed in the part of the region that lies inside the volume, so padding only
appears where the volume is smaller than a crop. Then every crop gets its own appearance augmentation (noise,
blur, brightness, contrast, low resolution, gamma and inverted gamma, each with the reference's probability),
mirroring along each axis and a rot90 in the (y, x) plane when that plane is square.

A batch of B samples holds 2N = 2 * B * crops_per_sample crops: `image` rows 0..N-1 are the reference crops
(sample b, crop k at row b * crops_per_sample + k) and row i + N is the partner of row i - the pairing NT-Xent
expects. `crop_starts` (B, crops_per_sample, 2, 3) gives the volume coordinates of each (reference, partner)
start corner. Batch i is a pure function of (seed, i) (indexed_loader.py).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
from batchgenerators.transforms.abstract_transforms import AbstractTransform, Compose
from batchgenerators.transforms.color_transforms import (BrightnessMultiplicativeTransform,
                                                         ContrastAugmentationTransform, GammaTransform)
from batchgenerators.transforms.noise_transforms import GaussianBlurTransform, GaussianNoiseTransform
from batchgenerators.transforms.resample_transforms import SimulateLowResolutionTransform
from batchgenerators.transforms.spatial_transforms import MirrorTransform, Rot90Transform

from mass_nn import schema
from mass_nn.errors import MassError
from mass_nn.networks.in_context.config import MIN_SIZE, SIZE_DIVISOR
from mass_nn.preprocessing.blosc2_storage import open_array
from mass_nn.preprocessing.crop_pad import crop_or_pad
from mass_nn.training.data.image_crop_loader import ImageCase
from mass_nn.training.data.indexed_loader import (AugmentedBatches, IndexedBatchLoader, augmented_batches,
                                                  seed_everything_for_batch)
from mass_nn.training.data.two_view_sampler import plan_view_starts

IMAGE_KEY = "image"
REGION_CROPS_IN_PLANE = 3  # the reference region is 3 x 3 crops in-plane, 1 crop deep


@dataclass
class ContrastiveAugmentation:
    """Per-crop augmentation; probabilities are per crop (reference values, nnU-Net's ranges)."""

    noise_probability: float = 0.1
    noise_std_range: tuple[float, float] = (0.0, 0.1)
    blur_probability: float = 0.2
    blur_sigma_range: tuple[float, float] = (0.5, 1.0)
    brightness_probability: float = 0.15
    brightness_range: tuple[float, float] = (0.75, 1.25)
    contrast_probability: float = 0.15
    contrast_range: tuple[float, float] = (0.75, 1.25)
    low_resolution_probability: float = 0.1
    low_resolution_zoom_range: tuple[float, float] = (0.5, 1.0)
    inverted_gamma_probability: float = 0.1
    gamma_probability: float = 0.3
    gamma_range: tuple[float, float] = (0.7, 1.5)
    mirror: bool = True  # each axis flipped with probability 0.5
    rot90_probability: float = 0.5  # our choice; the reference names the rotation but not its probability

    @classmethod
    def none(cls) -> "ContrastiveAugmentation":
        """No augmentation: crops as cut (tests)."""
        return cls(noise_probability=0.0, blur_probability=0.0, brightness_probability=0.0,
                   contrast_probability=0.0, low_resolution_probability=0.0, inverted_gamma_probability=0.0,
                   gamma_probability=0.0, mirror=False, rot90_probability=0.0)

    def to_dict(self) -> dict:
        return schema.to_dict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "ContrastiveAugmentation":
        return schema.from_dict(cls, data)


@dataclass
class ContrastiveCropSettings:
    """Crop and region sizes (z, y, x), crops per sample, the least overlap per axis of a pair, augmentation."""

    crop_size_zyx: tuple[int, int, int]
    region_size_zyx: tuple[int, int, int]
    crops_per_sample: int = 2
    min_overlap: float = 0.5
    augmentation: ContrastiveAugmentation = field(default_factory=ContrastiveAugmentation)

    def __post_init__(self) -> None:
        self.crop_size_zyx = tuple(int(s) for s in self.crop_size_zyx)
        self.region_size_zyx = tuple(int(s) for s in self.region_size_zyx)

    @classmethod
    def paper(cls) -> "ContrastiveCropSettings":
        """The reference: a 64 x 192 x 192 region (z, y, x), 64^3 crops, two pairs per region."""
        return cls(crop_size_zyx=(64, 64, 64), region_size_zyx=(64, 192, 192))

    def check(self, source: str) -> None:
        """Raise MassError (naming `source`, e.g. the trainer's settings) for sizes the encoder or the sampler
        cannot use."""
        crop, region = self.crop_size_zyx, self.region_size_zyx
        if len(crop) != 3 or any(s % SIZE_DIVISOR or s < MIN_SIZE for s in crop):
            raise MassError(f"{source}: crop size {list(crop)} must be three sides, each divisible by "
                            f"{SIZE_DIVISOR} and at least {MIN_SIZE} (the encoder's input rule), e.g. [32,32,32]")
        if len(region) != 3 or any(r < c for r, c in zip(region, crop)):
            raise MassError(f"{source}: region size {list(region)} must be three sides, each at least the crop "
                            f"size {list(crop)}")
        if self.crops_per_sample < 1 or not 0.0 < self.min_overlap <= 1.0:
            raise MassError(f"{source}: need crops_per_sample >= 1 (got {self.crops_per_sample}) and min_overlap "
                            f"in (0, 1] (got {self.min_overlap})")

    def to_dict(self) -> dict:
        return schema.to_dict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "ContrastiveCropSettings":
        return schema.from_dict(cls, data)


def derived_crop_size(patch_size_zyx) -> tuple[int, int, int]:
    """Crops for a plans patch: half the patch per axis, rounded down to a multiple of 16, at least 32 (64^3 for
    the paper's 128^3 patch, as in the reference; 32^3 for the phantom's CPU patch)."""
    return tuple(max(MIN_SIZE, SIZE_DIVISOR * (int(p) // (2 * SIZE_DIVISOR))) for p in patch_size_zyx)


def derived_region_size(crop_size_zyx) -> tuple[int, int, int]:
    """The reference's region for a crop: as deep as the crop, three crops wide in-plane (64 x 192 x 192 for 64^3
    crops). Two reference crops of one region then overlap less on average than a crop and its partner, so the
    negatives from the same region stay harder to confuse with the positive than the partner is to find."""
    depth, height, width = (int(s) for s in crop_size_zyx)
    return depth, REGION_CROPS_IN_PLANE * height, REGION_CROPS_IN_PLANE * width


def plan_crop_pairs(volume_shape, settings: ContrastiveCropSettings,
                    rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(region_low, region_high, starts): the part [low, high) of a random region that lies inside the volume, and
    the volume-coordinate start corners (crops_per_sample, 2, 3) of each (reference, partner) pair inside it."""
    shape = np.asarray(volume_shape, dtype=np.int64)
    region_start = plan_view_starts(shape, settings.region_size_zyx, 1.0, rng)[0]
    low = np.maximum(region_start, 0)
    high = np.minimum(region_start + np.asarray(settings.region_size_zyx), shape)
    pairs = [plan_view_starts(high - low, settings.crop_size_zyx, settings.min_overlap, rng)
             for _ in range(settings.crops_per_sample)]
    return low, high, np.asarray(pairs, dtype=np.int64) + low


class ContrastiveCropLoader(IndexedBatchLoader):
    """Raw crop pairs (see the module docstring for the layout); `case_ids` and `batch_index` as well."""

    def __init__(self, cases: list[ImageCase], settings: ContrastiveCropSettings, batch_size: int, seed: int,
                 start_batch: int = 0, rank: int = 0, world_size: int = 1, num_threads_in_multithreaded: int = 1):
        super().__init__(cases, batch_size, seed, start_batch, rank, world_size, num_threads_in_multithreaded)
        self.settings = settings

    def open_case(self, index: int):
        return open_array(self._data[index].image_path)

    def _sample(self, image, rng: np.random.Generator) -> tuple[list, list, np.ndarray]:
        """Reference crops, partner crops and their starts for one case."""
        low, high, starts = plan_crop_pairs(image.shape[1:], self.settings, rng)
        region = crop_or_pad(image, low, high - low).astype(np.float32, copy=False)  # read once, cut many
        crop = self.settings.crop_size_zyx
        references = [crop_or_pad(region, pair[0] - low, crop) for pair in starts]
        partners = [crop_or_pad(region, pair[1] - low, crop) for pair in starts]
        return references, partners, starts

    def make_batch(self, batch_index: int) -> dict:
        rng = seed_everything_for_batch(self.seed, batch_index)
        picks = rng.integers(0, len(self._data), size=self.batch_size)
        references, partners, starts = [], [], []
        for index in picks:
            sample = self._sample(self.case(int(index)), rng)
            references += sample[0]
            partners += sample[1]
            starts.append(sample[2])
        return {IMAGE_KEY: np.stack(references + partners), "crop_starts": np.stack(starts),
                "case_ids": [self._data[int(i)].case_id for i in picks], "batch_index": int(batch_index)}


class ContiguousFloat32(AbstractTransform):
    """Last step: the crops as C-contiguous float32 (some transforms return float64 or views)."""

    def __call__(self, **data_dict):
        data_dict[IMAGE_KEY] = np.ascontiguousarray(data_dict[IMAGE_KEY], dtype=np.float32)
        return data_dict


def contrastive_transform(augmentation: ContrastiveAugmentation, crop_size_zyx) -> Compose:
    """The per-crop augmentation as a batchgenerators transform (drawing from the global np.random state, which
    the loader seeds per batch); each crop of the batch is augmented independently."""
    a, key = augmentation, IMAGE_KEY
    transforms: list[AbstractTransform] = [
        # batchgenerators calls the noise "variance" but draws it as a standard deviation
        GaussianNoiseTransform(a.noise_std_range, p_per_sample=a.noise_probability, data_key=key),
        GaussianBlurTransform(a.blur_sigma_range, different_sigma_per_channel=True, p_per_channel=0.5,
                              p_per_sample=a.blur_probability, data_key=key),
        BrightnessMultiplicativeTransform(a.brightness_range, p_per_sample=a.brightness_probability, data_key=key),
        ContrastAugmentationTransform(a.contrast_range, p_per_sample=a.contrast_probability, data_key=key),
        SimulateLowResolutionTransform(a.low_resolution_zoom_range, per_channel=True, p_per_channel=0.5,
                                       order_downsample=0, order_upsample=3, data_key=key,
                                       p_per_sample=a.low_resolution_probability),
        GammaTransform(a.gamma_range, invert_image=True, retain_stats=True, data_key=key,
                       p_per_sample=a.inverted_gamma_probability),
        GammaTransform(a.gamma_range, invert_image=False, retain_stats=True, data_key=key,
                       p_per_sample=a.gamma_probability),
    ]
    if a.mirror:
        transforms.append(MirrorTransform((0, 1, 2), data_key=key, label_key=None))
    if a.rot90_probability > 0 and crop_size_zyx[1] == crop_size_zyx[2]:
        # axes index the spatial dimensions: (1, 2) is the (y, x) plane, square so the shape is kept
        transforms.append(Rot90Transform((1, 2, 3), axes=(1, 2), data_key=key, label_key=None,
                                         p_per_sample=a.rot90_probability))
    return Compose([*transforms, ContiguousFloat32()])


def make_contrastive_loader(cases: list[ImageCase], settings: ContrastiveCropSettings, batch_size: int, seed: int,
                            num_workers: int, start_batch: int = 0, rank: int = 0,
                            world_size: int = 1) -> AugmentedBatches:
    """Augmented crop pairs, batch i = f(seed, i), in `num_workers` processes (0: in this one)."""
    missing = [c.image_path for c in cases if not os.path.isfile(c.image_path)]
    if not cases or missing:
        raise MassError(f"no cases to train on, or preprocessed images missing: {missing[:3]}; run "
                        f"mass_plan_and_preprocess for this configuration")
    workers = max(0, int(num_workers))
    loader = ContrastiveCropLoader(cases, settings, batch_size, seed, start_batch=start_batch, rank=rank,
                                   world_size=world_size, num_threads_in_multithreaded=max(1, workers))
    return augmented_batches(loader, contrastive_transform(settings.augmentation, settings.crop_size_zyx), workers)
