"""The plan's three intensity windows applied to raw intensities: uint8 images SAM2 (and the weight-free
generator) read as RGB."""
from __future__ import annotations

import numpy as np

from mass_nn.planning.plans import ChannelPlan
from mass_nn.planning.windows import IntensityWindow


def window_bounds(window: IntensityWindow, raw: np.ndarray) -> tuple[float, float]:
    """[lower, upper] in raw units: fixed windows as planned, quantile windows from this image's voxels."""
    if window.kind == "fixed":
        return window.lower, window.upper
    lower, upper = np.percentile(raw, [window.lower, window.upper])
    return float(lower), float(upper)


def apply_window(raw: np.ndarray, lower: float, upper: float) -> np.ndarray:
    """Linear map of [lower, upper] onto 0..255 (clipped), uint8."""
    scale = 255.0 / max(upper - lower, 1e-6)
    return np.clip((raw.astype(np.float32) - np.float32(lower)) * np.float32(scale), 0, 255).round().astype(np.uint8)


def windowed_channels(raw: np.ndarray, channel_plan: ChannelPlan) -> np.ndarray:
    """(3, *raw.shape) uint8: one image per window of `channel_plan`, in plan order."""
    if len(channel_plan.windows) != 3:
        raise ValueError(f"channel {channel_plan.name!r} has {len(channel_plan.windows)} windows; SAM2 needs 3")
    return np.stack([apply_window(raw, *window_bounds(w, raw)) for w in channel_plan.windows])
