"""The dataset fingerprint's records (what planning reads; extraction lives in planning/fingerprint.py).

Kept apart from the extraction so that plans and windows, which only read these records, do not import the
image readers.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from mass_nn.schema import from_dict, to_dict

PERCENTILES = (0.5, 1.0, 5.0, 15.0, 50.0, 85.0, 95.0, 99.0, 99.5)
FINGERPRINT_VERSION = 1


def percentile_key(q: float) -> str:
    """JSON key of a percentile, e.g. 0.5 -> 'p00_5', 99.5 -> 'p99_5', 50 -> 'p50_0'."""
    whole, frac = f"{q:04.1f}".split(".")
    return f"p{int(whole):02d}_{frac}"


@dataclass
class ChannelIntensityStats:
    """Foreground intensity statistics of one channel, pooled over the dataset."""

    name: str
    modality: str
    foreground_definition: str
    mean: float
    std: float
    min: float
    max: float
    percentiles: dict[str, float]

    def percentile(self, q: float) -> float:
        return self.percentiles[percentile_key(q)]


@dataclass
class CaseFingerprint:
    case_id: str
    spacing_zyx_mm: list[float]
    shape_before_crop_zyx: list[int]
    shape_after_crop_zyx: list[int]
    anisotropy: float  # max/min spacing

    @property
    def relative_size_after_crop(self) -> float:
        return float(np.prod(self.shape_after_crop_zyx) / np.prod(self.shape_before_crop_zyx))


@dataclass
class DatasetFingerprint:
    dataset_name: str
    cases: list[CaseFingerprint]
    channels: list[ChannelIntensityStats]
    median_spacing_zyx_mm: list[float]
    median_shape_after_crop_zyx: list[int]
    median_anisotropy: float
    fraction_anisotropic_cases: float
    source_signature: dict[str, int] = field(default_factory=dict)  # case file -> size, detects changed raw data
    version: int = FINGERPRINT_VERSION

    def to_dict(self) -> dict:
        return to_dict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "DatasetFingerprint":
        return from_dict(cls, d, "dataset_fingerprint")
