"""Cropping a window out of a channels-first volume, padding wherever the window leaves the volume."""
from __future__ import annotations

import numpy as np


def centered_start(center_zyx, size_zyx) -> tuple[int, ...]:
    """Start corner of a window of `size_zyx` centred on `center_zyx` (may be negative or run past the end)."""
    return tuple(int(round(c)) - s // 2 for c, s in zip(center_zyx, size_zyx))


def crop_or_pad(volume, start_zyx, size_zyx, pad_value: float = 0) -> np.ndarray:
    """The (c, *size_zyx) window of `volume` (c, z, y, x) starting at `start_zyx`; outside voxels = pad_value.

    `volume` may be a numpy array or anything sliceable like one (a memory-mapped blosc2 array): only the
    inside part is read.
    """
    spatial = volume.shape[1:]
    out = np.full((volume.shape[0], *size_zyx), pad_value, dtype=volume.dtype)
    src, dst = [], []
    for start, size, extent in zip(start_zyx, size_zyx, spatial):
        lo, hi = max(start, 0), min(start + size, extent)
        if hi <= lo:
            return out
        src.append(slice(lo, hi))
        dst.append(slice(lo - start, hi - start))
    out[(slice(None), *dst)] = volume[(slice(None), *src)]
    return out
