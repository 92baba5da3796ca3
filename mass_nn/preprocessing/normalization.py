"""Per-channel intensity normalisation, stored as an invertible affine map so raw intensities (HU, MR units,
SUV) stay recoverable from the preprocessed arrays: raw = normalised * scale + offset, exact (up to the storage
precision of blosc2_storage) inside [clip_lower, clip_upper] (CT only; the windows of the plans lie inside that
range by construction)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mass_nn.planning.plans import ChannelPlan


@dataclass
class ChannelNormalization:
    """What was applied to one channel of one case."""

    scheme: str
    offset: float
    scale: float
    clip_lower: float | None = None
    clip_upper: float | None = None


def normalize_channel(volume: np.ndarray, foreground: np.ndarray, plan: ChannelPlan
                      ) -> tuple[np.ndarray, ChannelNormalization]:
    """Normalise one (z, y, x) channel as `plan` says; returns float32 data and the applied map."""
    if plan.normalization == "ct_clip_zscore":
        applied = ChannelNormalization(scheme=plan.normalization, offset=plan.mean, scale=plan.std,
                                       clip_lower=plan.clip_lower, clip_upper=plan.clip_upper)
        volume = np.clip(volume, plan.clip_lower, plan.clip_upper)
    else:
        values = volume[foreground]
        std = float(values.std()) if values.size else 1.0
        applied = ChannelNormalization(scheme=plan.normalization, offset=float(values.mean()) if values.size else 0.0,
                                       scale=std if std > 1e-8 else 1.0)
    normalized = (volume.astype(np.float32) - np.float32(applied.offset)) / np.float32(applied.scale)
    return normalized.astype(np.float32, copy=False), applied


def denormalize_channel(normalized: np.ndarray, applied: ChannelNormalization) -> np.ndarray:
    """Raw intensities (HU / MR units / SUV) from normalised data; float32."""
    return (np.asarray(normalized, dtype=np.float32) * np.float32(applied.scale)
            + np.float32(applied.offset)).astype(np.float32, copy=False)
