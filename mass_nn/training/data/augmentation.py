"""Augmentation settings of the two views and the batchgenerators pipeline that applies them.

Each view gets, in this order: one affine warp (per-axis scale, rotation, shear) that also centre-crops the
margin away, then appearance transforms on the image only (multiplicative and additive brightness, gamma,
contrast, blur, noise), each drawn independently per sample. The reference view is weakly and the query view
strongly augmented (MASS release values, see the architecture note, section 3). With `reference_region_shift` the
reference's task regions are also shifted in intensity between its warp and its appearance transforms
(region_intensity.py).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from batchgenerators.transforms.abstract_transforms import AbstractTransform, Compose
from batchgenerators.transforms.color_transforms import (BrightnessMultiplicativeTransform, BrightnessTransform,
                                                         ContrastAugmentationTransform, GammaTransform)
from batchgenerators.transforms.noise_transforms import GaussianBlurTransform, GaussianNoiseTransform

from mass_nn import schema
from mass_nn.training.data.affine_transform import ViewAffineTransform
from mass_nn.training.data.region_intensity import ReferenceRegionShift

# the release cuts (128 + 40)^3 crops for a 128^3 patch: 20 voxels of context per side, scaled with the patch
MARGIN_PER_SIDE_FRACTION = 20 / 128

VIEW_KEYS = {"reference": ("reference_image", "reference_masks"), "query": ("query_image", "query_masks")}


@dataclass
class ViewAugmentation:
    """Augmentation of one view. Probabilities are per sample; ranges are (low, high)."""

    affine_probability: float = 0.5
    scale_range: tuple[float, float] = (0.7, 1 / 0.7)  # per axis, independently
    rotation_degrees: float = 30.0  # each axis rotated by U(-r, r)
    shear: float = 0.0  # each off-diagonal shear factor U(-s, s)
    appearance_probability: float = 0.2  # each appearance transform separately
    brightness_multiplier_range: tuple[float, float] = (0.9, 1.1)
    brightness_additive_std: float = 0.1
    gamma_range: tuple[float, float] = (0.8, 1.2)  # mean and std are kept
    contrast_range: tuple[float, float] = (0.8, 1.2)  # clamped to the original intensity range
    blur_sigma_range: tuple[float, float] = (0.8, 1.2)
    noise_std: float = 0.02

    @classmethod
    def weak(cls) -> "ViewAugmentation":
        """The release's reference-view augmentation."""
        return cls()

    @classmethod
    def strong(cls) -> "ViewAugmentation":
        """The release's query-view augmentation."""
        return cls(affine_probability=0.8, shear=0.1, brightness_multiplier_range=(0.8, 1.3),
                   brightness_additive_std=0.15, gamma_range=(0.8, 1.3), contrast_range=(0.8, 1.3),
                   blur_sigma_range=(0.7, 1.5), noise_std=0.04)

    @classmethod
    def wide_appearance(cls) -> "ViewAugmentation":
        """The strong view's warp with appearance changes that reach across patients: each transform at
        probability 0.5 and wider ranges, so that relative tissue intensities differ between the views about as
        much as they differ between patients of one MR sequence (ablation run 20, in_context_ablations.md)."""
        return cls(affine_probability=0.8, shear=0.1, appearance_probability=0.5,
                   brightness_multiplier_range=(0.6, 1.5), brightness_additive_std=0.3, gamma_range=(0.6, 1.6),
                   contrast_range=(0.6, 1.5), blur_sigma_range=(0.7, 1.5), noise_std=0.04)

    @classmethod
    def none(cls) -> "ViewAugmentation":
        """No augmentation at all: the view is the centre of its crop (tests, debugging)."""
        return cls(affine_probability=0.0, appearance_probability=0.0)

    def to_dict(self) -> dict:
        return schema.to_dict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "ViewAugmentation":
        return schema.from_dict(cls, data)


@dataclass
class TwoViewSettings:
    """How one pretraining sample is cut: patch, number of tasks, overlap of the views, and their augmentation."""

    patch_size_zyx: tuple[int, int, int]
    num_tasks: int = 13
    everything_task: bool = True  # one channel is an all-ones "segment everything in view" task
    overlap_ratio: float = 0.67  # crop starts differ by at most (1 - overlap) * crop size per axis
    margin_voxels: tuple[int, int, int] | None = None  # context per side cut before the affine; None: 20/128 patch
    prefer_masks_in_view: bool = True  # deviation: the release samples masks from the whole volume
    min_mask_fraction: float = 0.0  # masks smaller than this share of the patch volume are never drawn
    absent_tasks: int = 0  # channels first given masks in the reference view only ("not here" tasks)
    distant_query: float = 0.0  # share of samples whose query view is placed anywhere in the volume
    reference_region_shift: float = 0.0  # share of the reference's task regions shifted in intensity
    reference: ViewAugmentation = field(default_factory=ViewAugmentation.weak)
    query: ViewAugmentation = field(default_factory=ViewAugmentation.strong)

    def __post_init__(self) -> None:
        self.patch_size_zyx = tuple(int(p) for p in self.patch_size_zyx)
        if len(self.patch_size_zyx) != 3 or min(self.patch_size_zyx) < 1:
            raise ValueError(f"patch_size_zyx must be three positive sizes, got {self.patch_size_zyx}")
        if self.num_tasks < 1 or not 0.0 <= self.overlap_ratio <= 1.0:
            raise ValueError(f"need num_tasks >= 1 and overlap_ratio in [0, 1], got {self.num_tasks}, "
                             f"{self.overlap_ratio}")
        if not 0.0 <= self.min_mask_fraction < 1.0:
            raise ValueError(f"min_mask_fraction must lie in [0, 1), got {self.min_mask_fraction}")
        if not 0 <= self.absent_tasks <= self.num_tasks:
            raise ValueError(f"absent_tasks must lie in [0, num_tasks], got {self.absent_tasks}")
        if not 0.0 <= self.distant_query <= 1.0:
            raise ValueError(f"distant_query must be a share in [0, 1], got {self.distant_query}")
        if not 0.0 <= self.reference_region_shift <= 1.0:
            raise ValueError(f"reference_region_shift must be a share in [0, 1], got {self.reference_region_shift}")

    @property
    def min_mask_voxels(self) -> int:
        """The smallest mask drawn as a task, in voxels of the case grid."""
        return int(np.ceil(self.min_mask_fraction * np.prod(self.patch_size_zyx)))

    @property
    def margin_zyx(self) -> tuple[int, int, int]:
        """Context voxels per side and axis (the release's 20 at a 128 patch, scaled, unless set)."""
        if self.margin_voxels is not None:
            return tuple(int(m) for m in self.margin_voxels)
        return margin_for_patch(self.patch_size_zyx)

    @property
    def crop_size_zyx(self) -> tuple[int, int, int]:
        """Size of the crop read from the case: patch plus margin on both sides."""
        return tuple(p + 2 * m for p, m in zip(self.patch_size_zyx, self.margin_zyx))

    def to_dict(self) -> dict:
        return schema.to_dict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "TwoViewSettings":
        return schema.from_dict(cls, data)


class FinaliseViews(AbstractTransform):
    """Last step: images float32 and masks uint8, both C-contiguous (some appearance transforms return float64)."""

    def __init__(self, key_pairs=tuple(VIEW_KEYS.values())):
        self.key_pairs = tuple(key_pairs)  # (image key, masks key) per view

    def __call__(self, **data_dict):
        for image_key, masks_key in self.key_pairs:
            data_dict[image_key] = np.ascontiguousarray(data_dict[image_key], dtype=np.float32)
            data_dict[masks_key] = np.ascontiguousarray(data_dict[masks_key], dtype=np.uint8)
        return data_dict


def appearance_transforms(view: ViewAugmentation, image_key: str) -> list[AbstractTransform]:
    """The image-only transforms of one view, in the release's order; masks are untouched."""
    p = view.appearance_probability
    if p <= 0:
        return []
    return [
        BrightnessMultiplicativeTransform(view.brightness_multiplier_range, per_channel=True, data_key=image_key,
                                          p_per_sample=p),
        BrightnessTransform(0.0, view.brightness_additive_std, per_channel=True, data_key=image_key,
                            p_per_sample=p),
        GammaTransform(view.gamma_range, invert_image=False, per_channel=True, data_key=image_key,
                       retain_stats=True, p_per_sample=p),
        ContrastAugmentationTransform(view.contrast_range, preserve_range=True, per_channel=True,
                                      data_key=image_key, p_per_sample=p),
        GaussianBlurTransform(view.blur_sigma_range, different_sigma_per_channel=True, p_per_channel=1.0,
                              p_per_sample=p, data_key=image_key),
        # batchgenerators calls the noise "variance" but draws it as a standard deviation
        GaussianNoiseTransform(noise_variance=(view.noise_std, view.noise_std), p_per_sample=p,
                               data_key=image_key),
    ]


def view_transforms(view: ViewAugmentation, patch_size_zyx, image_key: str, masks_key: str,
                    region_transforms: tuple[AbstractTransform, ...] = ()) -> list[AbstractTransform]:
    """Affine warp (image linear, masks nearest) to the patch, then `region_transforms` (which read the warped
    masks), then the appearance transforms of one view."""
    affine = ViewAffineTransform(patch_size_zyx, probability=view.affine_probability,
                                 scale_range=view.scale_range, rotation_degrees=view.rotation_degrees,
                                 shear=view.shear, image_key=image_key, masks_key=masks_key)
    return [affine, *region_transforms, *appearance_transforms(view, image_key)]


def margin_for_patch(patch_size_zyx) -> tuple[int, int, int]:
    """Context voxels per side cut around a patch before the affine warp (the release's 20 at 128, scaled)."""
    return tuple(int(round(MARGIN_PER_SIDE_FRACTION * p)) for p in patch_size_zyx)


def build_single_view_transform(view: ViewAugmentation, patch_size_zyx, image_key: str = "image",
                                masks_key: str = "masks") -> Compose:
    """The transform of one augmented view (labelled finetuning patches): crops with margin -> patches."""
    return Compose([*view_transforms(view, patch_size_zyx, image_key, masks_key),
                    FinaliseViews([(image_key, masks_key)])])


def build_two_view_transform(settings: TwoViewSettings) -> Compose:
    """The transform a batchgenerators augmenter applies to a raw two-view batch (crops with margin).

    It turns `reference_*` and `query_*` crops of `settings.crop_size_zyx` into augmented patches of
    `settings.patch_size_zyx`; all randomness comes from the global `np.random` (and `random`) state, which the
    loader seeds per batch.
    """
    image_key, masks_key = VIEW_KEYS["reference"]
    shifts = (ReferenceRegionShift(settings.reference_region_shift, image_key=image_key, masks_key=masks_key),) \
        if settings.reference_region_shift > 0 else ()
    transforms = [*view_transforms(settings.reference, settings.patch_size_zyx, image_key, masks_key, shifts),
                  *view_transforms(settings.query, settings.patch_size_zyx, *VIEW_KEYS["query"]),
                  FinaliseViews()]
    return Compose(transforms)
