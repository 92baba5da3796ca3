"""The plans: typed, versioned, saved as JSON, validated on load.

A plans file is derived from the fingerprint by the planner (never hand-written). Loading checks the version and
every field (unknown, missing or ill-typed → PlansValidationError naming the key path).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from mass_nn.errors import PlansValidationError
from mass_nn.io.atomic import read_json, write_json_atomic
from mass_nn.planning.mask_slicing import SliceSchedule, plan_slicing
from mass_nn.planning.windows import IntensityWindow
from mass_nn.schema import from_dict, to_dict

PLANS_FORMAT_VERSION = 1
# bump when preprocessing code changes its output for the same plans: finished cases are then redone
PREPROCESSING_ALGORITHM_VERSION = 2


@dataclass
class ChannelPlan:
    """How one input channel is normalised and windowed.

    normalization "ct_clip_zscore": clip to [clip_lower, clip_upper] (foreground p0.5/p99.5 of the dataset),
    then (x - mean) / std with the dataset's foreground mean/std. "zscore_per_image": (x - mean) / std of each
    image's foreground; the per-image values are stored in each case's properties.
    """

    index: int
    name: str
    modality: Literal["CT", "MR", "PET", "OTHER"]
    normalization: Literal["ct_clip_zscore", "zscore_per_image"]
    foreground_definition: str
    windows: list[IntensityWindow]
    clip_lower: float | None = None
    clip_upper: float | None = None
    mean: float | None = None
    std: float | None = None


@dataclass
class NetworkPlan:
    """The ResUNet backbone of the in-context model (iris_mass_architecture.md): channels per stage (shallow →
    deep) and residual blocks per down stage (mirrored in the decoder)."""

    architecture: Literal["ResUNet"]
    channels: list[int]
    num_blocks: list[int]
    num_prior_stages: int = 3
    num_queries: int = 10


@dataclass
class ConfigurationPlan:
    """One configuration: a target grid, a patch, a network and a batch size."""

    name: str
    data_identifier: str  # folder of the preprocessed arrays
    target_spacing_zyx_mm: list[float]
    patch_size_zyx: list[int]
    batch_size: int
    network: NetworkPlan
    median_shape_after_resampling_zyx: list[int]
    image_interpolation: Literal["linear"] = "linear"
    label_interpolation: Literal["nearest"] = "nearest"
    seed_slice_interval: int = 1  # on this configuration's grid, along MaskGenerationPlan.axis
    derivation: str = ""  # how the numbers were derived, for people reading the JSON
    # the size of the baselines' own networks (ViT, MiM, MAE blocks) trained on this configuration: the paper's
    # or the CPU-sized ones; set by the planner, read by every baseline (never the configuration's name)
    baseline_size: Literal["paper", "cpu"] = "cpu"


@dataclass
class MaskGenerationPlan:
    """SAM2 slicing for the dataset as a whole (each case's own axis/interval is in its properties)."""

    axis: int  # numpy order (0 = z) of the dataset's median original spacing
    axis_spacing_mm: float
    seed_slice_distance_mm: float
    seed_slice_interval_native: int  # at the median original spacing
    isotropy_ratio: float
    channel: int = 0  # the input channel masks are made from (mass_generate_masks --channel overrides)

    def slicing(self, original_spacing_zyx_mm, grid_spacing_zyx_mm) -> SliceSchedule:
        """One volume's SAM2 slicing under these plans (mask_slicing.plan_slicing)."""
        return plan_slicing(original_spacing_zyx_mm, grid_spacing_zyx_mm, self.seed_slice_distance_mm,
                            self.isotropy_ratio)


@dataclass
class Plans:
    format_version: int
    plans_name: str
    dataset_name: str
    planner: str
    preset: str
    mass_nn_version: str
    median_spacing_zyx_mm: list[float]
    median_shape_after_crop_zyx: list[int]
    channels: list[ChannelPlan]
    configurations: dict[str, ConfigurationPlan]
    mask_generation: MaskGenerationPlan
    split_seed: int = 12345
    split_fractions: dict[str, float] = field(default_factory=lambda: {"train": 0.8, "val": 0.1, "test": 0.1})

    def to_dict(self) -> dict:
        return to_dict(self)

    @classmethod
    def from_dict(cls, d: dict, source: str = "plans") -> "Plans":
        if not isinstance(d, dict) or d.get("format_version") != PLANS_FORMAT_VERSION:
            raise PlansValidationError(f"{source}: format_version is {d.get('format_version') if isinstance(d, dict) else None!r}, "
                                       f"this mass_nn reads version {PLANS_FORMAT_VERSION}; re-run "
                                       f"mass_plan_and_preprocess to regenerate the plans")
        plans = from_dict(cls, _with_baseline_sizes(d), source)
        for key, config in plans.configurations.items():
            if key != config.name:
                raise PlansValidationError(f"{source}.configurations.{key}: name field is {config.name!r}; they must match")
        return plans

    def configuration(self, name: str) -> ConfigurationPlan:
        if name not in self.configurations:
            raise PlansValidationError(f"plans {self.plans_name!r} have no configuration {name!r}; "
                                       f"available: {sorted(self.configurations)}")
        return self.configurations[name]

    def preprocessing_hash(self, configuration: str) -> str:
        """Digest of everything that changes a preprocessed case of `configuration` (used to skip finished work)."""
        config = self.configuration(configuration)
        relevant = {"algorithm": PREPROCESSING_ALGORITHM_VERSION, "channels": to_dict(self.channels), "spacing": config.target_spacing_zyx_mm,
                    "patch": config.patch_size_zyx, "interp": [config.image_interpolation, config.label_interpolation],
                    "seed_slice_distance_mm": self.mask_generation.seed_slice_distance_mm,
                    "isotropy_ratio": self.mask_generation.isotropy_ratio}
        return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:16]


def _with_baseline_sizes(d: dict) -> dict:
    """Plans written before `baseline_size` existed: their paper configuration sized the baselines like the
    paper, every other configuration like the CPU networks (what the trainers then read off the name)."""
    configurations = d.get("configurations")
    if not isinstance(configurations, dict):
        return d
    upgraded = {key: ({**c, "baseline_size": "paper" if c.get("name") == "3d_paper" else "cpu"}
                      if isinstance(c, dict) and "baseline_size" not in c else c)
                for key, c in configurations.items()}
    return {**d, "configurations": upgraded}


def save_plans(plans: Plans, path: Path) -> None:
    write_json_atomic(plans.to_dict(), path)


def load_plans(path: Path) -> Plans:
    path = Path(path)
    if not path.is_file():
        raise PlansValidationError(f"{path}: plans file not found; run mass_plan_and_preprocess first")
    return Plans.from_dict(read_json(path), source=str(path))
