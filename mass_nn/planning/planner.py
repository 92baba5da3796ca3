"""Experiment planner: fingerprint + settings -> Plans.

Configurations (numbers in documentation/planning.md):
- 3d_paper: the paper's setup, fixed by the paper: isotropic paper_target_spacing_mm (1.5), patch
  paper_patch_edge³ (128³), ResUNet channels 32…512 with 2 blocks per stage, batch 4 per GPU.
- 3d_cpu: the same physical field of view at cpu_resolution_factor (2) times coarser spacing: 3 mm and a 64³
  patch (192 mm, as 128 × 1.5 mm), i.e. 8× fewer voxels per patch; channels 8…128 with 1 block per stage
  (the reference's small preset), batch 2. Each patch edge is then shrunk to the dataset's median extent at that
  spacing, rounded up to a multiple of 16 (four 2× poolings) and at least cpu_min_patch_edge, so small
  datasets do not train on mostly padding.
"""
from __future__ import annotations

import math

import numpy as np

from mass_nn import __version__
from mass_nn.errors import PlansValidationError
from mass_nn.io.artifact_layout import data_identifier
from mass_nn.planning.fingerprint_records import DatasetFingerprint
from mass_nn.planning.mask_slicing import plan_slicing
from mass_nn.planning.modality import CT
from mass_nn.planning.planner_settings import PlannerSettings
from mass_nn.planning.plans import (PLANS_FORMAT_VERSION, ChannelPlan, ConfigurationPlan, MaskGenerationPlan,
                                    NetworkPlan, Plans)
from mass_nn.planning.windows import derive_windows
from mass_nn.registry import CONFIGURATION_PLANNERS

POOLING_DIVISOR = 16  # four 2x poolings in the ResUNet encoder


def median_shape_at_spacing(fingerprint: DatasetFingerprint, spacing_zyx_mm) -> list[int]:
    """Median over cases of the cropped shape after resampling to `spacing_zyx_mm`."""
    shapes = [np.round(np.array(c.shape_after_crop_zyx) * np.array(c.spacing_zyx_mm) / np.array(spacing_zyx_mm))
              for c in fingerprint.cases]
    return [int(v) for v in np.median(shapes, axis=0)]


def plan_channels(fingerprint: DatasetFingerprint, settings: PlannerSettings) -> list[ChannelPlan]:
    channels = []
    for index, stats in enumerate(fingerprint.channels):
        windows = derive_windows(stats, settings.ct_windows_center_width_hu, settings.quantile_windows_percent)
        common = dict(index=index, name=stats.name, modality=stats.modality,
                      foreground_definition=stats.foreground_definition, windows=windows)
        if stats.modality == CT:
            channels.append(ChannelPlan(normalization="ct_clip_zscore", clip_lower=stats.percentile(0.5),
                                        clip_upper=stats.percentile(99.5), mean=stats.mean,
                                        std=max(stats.std, 1e-8), **common))
        else:
            channels.append(ChannelPlan(normalization="zscore_per_image", **common))
    return channels


def _interval_on_grid(fingerprint, spacing_zyx_mm, settings: PlannerSettings) -> int:
    """The seed interval on a configuration's grid, along the dataset's slicing axis."""
    return plan_slicing(fingerprint.median_spacing_zyx_mm, spacing_zyx_mm, settings.seed_slice_distance_mm,
                        settings.isotropy_ratio).interval


def plan_paper_configuration(fingerprint, settings: PlannerSettings, plans_name: str) -> ConfigurationPlan:
    spacing = [settings.paper_target_spacing_mm] * 3
    return ConfigurationPlan(
        name="3d_paper", data_identifier=data_identifier(plans_name, "3d_paper"), target_spacing_zyx_mm=spacing,
        patch_size_zyx=[settings.paper_patch_edge] * 3, batch_size=settings.paper_batch_size,
        network=NetworkPlan(architecture="ResUNet", channels=list(settings.paper_channels),
                            num_blocks=list(settings.paper_num_blocks)),
        median_shape_after_resampling_zyx=median_shape_at_spacing(fingerprint, spacing),
        seed_slice_interval=_interval_on_grid(fingerprint, spacing, settings), baseline_size="paper",
        derivation="paper: isotropic paper spacing, fixed patch, ResUNet channels and batch size of the paper")


def plan_cpu_configuration(fingerprint, settings: PlannerSettings, plans_name: str) -> ConfigurationPlan:
    factor = settings.cpu_resolution_factor
    spacing = [settings.paper_target_spacing_mm * factor] * 3
    full_edge = int(round(settings.paper_patch_edge / factor))
    if settings.cpu_max_patch_edge:
        full_edge = min(full_edge, settings.cpu_max_patch_edge)
    median_shape = median_shape_at_spacing(fingerprint, spacing)
    patch = [max(settings.cpu_min_patch_edge, min(full_edge, POOLING_DIVISOR * math.ceil(m / POOLING_DIVISOR)))
             for m in median_shape]
    return ConfigurationPlan(
        name="3d_cpu", data_identifier=data_identifier(plans_name, "3d_cpu"), target_spacing_zyx_mm=spacing,
        patch_size_zyx=patch, batch_size=settings.cpu_batch_size,
        network=NetworkPlan(architecture="ResUNet", channels=list(settings.cpu_channels),
                            num_blocks=list(settings.cpu_num_blocks)),
        median_shape_after_resampling_zyx=median_shape,
        seed_slice_interval=_interval_on_grid(fingerprint, spacing, settings), baseline_size="cpu",
        derivation=(f"cpu: spacing = paper spacing x {factor:g}; patch edge = paper edge / {factor:g} = {full_edge} "
                    f"(same field of view), shrunk per axis to the median shape rounded up to a multiple of "
                    f"{POOLING_DIVISOR}, at least {settings.cpu_min_patch_edge}"
                    + (f", at most {settings.cpu_max_patch_edge}" if settings.cpu_max_patch_edge else "")))



def plan_experiment(fingerprint: DatasetFingerprint, settings: PlannerSettings, plans_name: str = "MassPlans",
                    preset: str = "default") -> Plans:
    """Derive the plans of a dataset from its fingerprint."""
    if not 0 <= settings.mask_channel < len(fingerprint.channels):
        raise PlansValidationError(f"preset setting mask_channel = {settings.mask_channel}: dataset "
                                   f"{fingerprint.dataset_name} has {len(fingerprint.channels)} channel(s) "
                                   f"(0..{len(fingerprint.channels) - 1}); choose one of them")
    median_spacing = fingerprint.median_spacing_zyx_mm
    native = plan_slicing(median_spacing, median_spacing, settings.seed_slice_distance_mm, settings.isotropy_ratio)
    configurations = {name: CONFIGURATION_PLANNERS.get(name)(fingerprint, settings, plans_name)
                      for name in settings.configurations}
    return Plans(
        format_version=PLANS_FORMAT_VERSION, plans_name=plans_name, dataset_name=fingerprint.dataset_name,
        planner="MassPlanner", preset=preset, mass_nn_version=__version__,
        median_spacing_zyx_mm=list(median_spacing),
        median_shape_after_crop_zyx=list(fingerprint.median_shape_after_crop_zyx),
        channels=plan_channels(fingerprint, settings), configurations=configurations,
        mask_generation=MaskGenerationPlan(
            axis=native.axis, axis_spacing_mm=float(median_spacing[native.axis]),
            seed_slice_distance_mm=settings.seed_slice_distance_mm, seed_slice_interval_native=native.interval,
            isotropy_ratio=settings.isotropy_ratio, channel=settings.mask_channel),
        split_seed=settings.split_seed, split_fractions=dict(settings.split_fractions))
