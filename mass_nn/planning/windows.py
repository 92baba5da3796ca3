"""The three intensity windows per channel that turn a volume into SAM2's three-channel slices.

CT: fixed windows in HU given as (center, width): soft tissue 60/350, contrast 15/250, bone 150/1200.
Adaptation rule (documented in documentation/planning.md): each window is intersected with the dataset's
foreground intensity range [p0.5, p99.5] from the fingerprint, so no window spends its grey levels on values
the dataset does not contain and every window lies inside the CT clipping range (which keeps it exactly
recoverable from the preprocessed data). If an intersection keeps less than MIN_KEPT_FRACTION of a window's
width, the data are not in HU as expected (e.g. stored with an offset) and the channel falls back to the
quantile windows of MR/PET.
MR, PET and other modalities: per-image quantile windows (5-95 %, 15-85 %, 1-99 % of the foreground).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

from mass_nn.planning.fingerprint_records import ChannelIntensityStats
from mass_nn.planning.modality import CT

logger = logging.getLogger(__name__)

DEFAULT_CT_WINDOWS_HU = {"soft_tissue": (60.0, 350.0), "contrast": (15.0, 250.0), "bone": (150.0, 1200.0)}
DEFAULT_QUANTILE_WINDOWS = {"q05_95": (5.0, 95.0), "q15_85": (15.0, 85.0), "q01_99": (1.0, 99.0)}
MIN_KEPT_FRACTION = 0.25


@dataclass
class IntensityWindow:
    """One window. kind "fixed": [lower, upper] in raw units (HU). kind "quantile": [lower, upper] are
    percentiles of each image's foreground, resolved per image at mask-generation time."""

    name: str
    kind: Literal["fixed", "quantile"]
    lower: float
    upper: float


def ct_windows(stats: ChannelIntensityStats, windows_center_width: dict[str, tuple[float, float]]
               ) -> list[IntensityWindow] | None:
    """Adapted fixed CT windows, or None when the data do not look like HU (caller falls back to quantiles)."""
    low, high = stats.percentile(0.5), stats.percentile(99.5)
    out = []
    for name, (center, width) in windows_center_width.items():
        lower, upper = max(center - width / 2, low), min(center + width / 2, high)
        if upper - lower < MIN_KEPT_FRACTION * width:
            logger.warning("channel %r: window %s (%g/%g HU) barely overlaps the foreground range [%.0f, %.0f]; "
                           "the data do not look like HU, using quantile windows instead", stats.name, name,
                           center, width, low, high)
            return None
        out.append(IntensityWindow(name=name, kind="fixed", lower=float(lower), upper=float(upper)))
    return out


def quantile_windows(quantiles: dict[str, tuple[float, float]]) -> list[IntensityWindow]:
    return [IntensityWindow(name=n, kind="quantile", lower=float(a), upper=float(b)) for n, (a, b) in quantiles.items()]


def derive_windows(stats: ChannelIntensityStats, ct_center_width=None, quantiles=None) -> list[IntensityWindow]:
    """The windows of one channel, following the rule in the module docstring."""
    ct_center_width = ct_center_width or DEFAULT_CT_WINDOWS_HU
    quantiles = quantiles or DEFAULT_QUANTILE_WINDOWS
    if stats.modality == CT:
        fixed = ct_windows(stats, ct_center_width)
        if fixed is not None:
            return fixed
    return quantile_windows(quantiles)
