"""The plan's three intensity windows applied to raw intensities: uint8 images SAM2 (and the weight-free
generator) read as RGB.

Quantile windows are percentiles of the image's foreground, not of every voxel of the crop, where air or the
zero background outside a skull-stripped brain would set them (brain MR: Best 30.9 over all voxels vs 41.8 over
the brain, documentation/mask_generators_weight_free.md). The foreground is preprocessing's definition: the
body for CT; for other modalities the voxels off the background value (the median of the volume's faces: 0
around a skull-stripped brain, the constant a z-scored export puts there), which generalises preprocessing's
"nonzero".
"""
from __future__ import annotations

import numpy as np

from mass_nn.planning.foreground import ct_body_mask
from mass_nn.planning.modality import CT
from mass_nn.planning.plans import ChannelPlan
from mass_nn.planning.windows import IntensityWindow

# off-background: further from the background value than this share of the image's p0.5-p99.5 range; far above
# the error of the stored intensities (12 mantissa bits, about 2.4e-4 relative) and far below any tissue contrast
BACKGROUND_TOLERANCE = 1e-3
MIN_FOREGROUND_SHARE = 0.01  # below this the image has no usable foreground: quantiles over every voxel
QUANTILE_RULE = "percentiles of the foreground"  # recorded with the banks, so banks of the old rule are redone


def quantile_foreground(raw: np.ndarray, modality: str) -> np.ndarray:
    """The voxel values quantile windows are taken over (1D): the image's foreground, or every voxel when the
    foreground is under MIN_FOREGROUND_SHARE of the image."""
    if modality == CT:
        mask = ct_body_mask(raw)
    else:
        low, high = np.percentile(raw, [0.5, 99.5])
        mask = np.abs(raw - background_value(raw)) > BACKGROUND_TOLERANCE * max(float(high - low), 1e-12)
    return raw[mask] if mask.mean() >= MIN_FOREGROUND_SHARE else raw.ravel()


def background_value(raw: np.ndarray) -> float:
    """The median of the volume's six faces: 0 around a skull-stripped brain, the constant a z-scored export
    gives its background, the air level of an MR crop."""
    faces = [np.take(raw, index, axis=axis).ravel() for axis in range(raw.ndim) for index in (0, -1)]
    return float(np.median(np.concatenate(faces)))


def window_bounds(window: IntensityWindow, values: np.ndarray) -> tuple[float, float]:
    """[lower, upper] in raw units: fixed windows as planned, quantile windows as percentiles of `values` (the
    image's foreground voxels, see quantile_foreground)."""
    if window.kind == "fixed":
        return window.lower, window.upper
    lower, upper = np.percentile(values, [window.lower, window.upper])
    return float(lower), float(upper)


def apply_window(raw: np.ndarray, lower: float, upper: float) -> np.ndarray:
    """Linear map of [lower, upper] onto 0..255 (clipped), uint8."""
    scale = 255.0 / max(upper - lower, 1e-6)
    return np.clip((raw.astype(np.float32) - np.float32(lower)) * np.float32(scale), 0, 255).round().astype(np.uint8)


def windowed_channels(raw: np.ndarray, channel_plan: ChannelPlan) -> np.ndarray:
    """(3, *raw.shape) uint8: one image per window of `channel_plan`, in plan order."""
    if len(channel_plan.windows) != 3:
        raise ValueError(f"channel {channel_plan.name!r} has {len(channel_plan.windows)} windows; SAM2 needs 3")
    needs_quantiles = any(w.kind == "quantile" for w in channel_plan.windows)
    values = quantile_foreground(raw, channel_plan.modality) if needs_quantiles else raw
    return np.stack([apply_window(raw, *window_bounds(w, values)) for w in channel_plan.windows])
