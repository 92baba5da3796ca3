"""Sliding-window prediction over a whole preprocessed volume with Gaussian (or uniform) blending.

Windows of the training patch size step by (1 - overlap) * window per axis, the last window of each axis
flush with the volume's end, so every voxel is covered and the volume's border gets as many windows as its
inside. A volume smaller than the window along an axis is padded with zeros (the network's input must be
divisible by 16) and the padding is cut off again.
"""
from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache

import numpy as np
import torch
from torch import Tensor

GAUSSIAN_SIGMA_FRACTION = 0.125  # sigma = this x window size per axis (as the release's inference.py)


@lru_cache(maxsize=8)
def _gaussian_weights_cached(window: tuple[int, int, int]) -> Tensor:
    axes = []
    for size in window:
        centre, sigma = (size - 1) / 2.0, max(GAUSSIAN_SIGMA_FRACTION * size, 1e-3)
        axes.append(torch.exp(-0.5 * ((torch.arange(size, dtype=torch.float64) - centre) / sigma) ** 2))
    weights = axes[0][:, None, None] * axes[1][None, :, None] * axes[2][None, None, :]
    weights = weights / weights.max()
    # the corners would otherwise weigh ~1e-7 and a voxel seen only there would be decided by rounding noise
    return weights.clamp(min=1e-3).float()


def gaussian_weights(window) -> Tensor:
    """Blending weights [D, H, W] of one window: a Gaussian peaking at 1 in the centre, at least 1e-3."""
    return _gaussian_weights_cached(tuple(int(w) for w in window))


def window_starts(size: int, window: int, overlap: float) -> list[int]:
    """Start offsets along one axis: step round((1 - overlap) * window) (at least 1), last window flush."""
    if size <= window:
        return [0]
    step = max(1, int(round((1.0 - overlap) * window)))
    count = int(np.ceil((size - window) / step)) + 1
    return sorted({int(round(i * (size - window) / (count - 1))) for i in range(count)})


def sliding_window_probabilities(predict_logits: Callable[[Tensor], Tensor], image: np.ndarray | Tensor,
                                 window, num_outputs: int, overlap: float = 0.5, blend: str = "gaussian",
                                 device: torch.device | str = "cpu", windows_per_batch: int = 1,
                                 progress=None) -> Tensor:
    """Sigmoid probabilities [num_outputs, D, H, W] (float32, CPU) of an image [C, D, H, W].

    `predict_logits` maps a batch of windows [n, C, *window] (on `device`) to logits [n, num_outputs, *window].
    Blending averages overlapping windows' probabilities with `blend` = "gaussian" or "mean" weights.
    `progress`, when given, is called with (windows done, windows total).
    """
    if not 0.0 <= overlap < 1.0 or blend not in ("gaussian", "mean"):
        raise ValueError(f"overlap must be in [0, 1) and blend 'gaussian' or 'mean', got {overlap}, {blend!r}")
    image = torch.as_tensor(np.asarray(image) if not isinstance(image, Tensor) else image, dtype=torch.float32)
    window = [int(w) for w in window]
    shape = list(image.shape[1:])
    padded_shape = [max(s, w) for s, w in zip(shape, window)]
    if padded_shape != shape:
        padding = [p for s, ps in zip(reversed(shape), reversed(padded_shape)) for p in (0, ps - s)]
        image = torch.nn.functional.pad(image, padding)
    weights = gaussian_weights(window) if blend == "gaussian" else torch.ones(window)
    summed = torch.zeros(num_outputs, *padded_shape)
    normaliser = torch.zeros(padded_shape)
    corners = [(z, y, x) for z in window_starts(padded_shape[0], window[0], overlap)
               for y in window_starts(padded_shape[1], window[1], overlap)
               for x in window_starts(padded_shape[2], window[2], overlap)]
    for first in range(0, len(corners), windows_per_batch):
        batch_corners = corners[first:first + windows_per_batch]
        slices = [tuple(slice(c, c + w) for c, w in zip(corner, window)) for corner in batch_corners]
        batch = torch.stack([image[(slice(None), *s)] for s in slices]).to(device)
        with torch.no_grad():
            probabilities = torch.sigmoid(predict_logits(batch).float()).cpu()
        for s, p in zip(slices, probabilities):
            summed[(slice(None), *s)] += p * weights
            normaliser[s] += weights
        if progress is not None:
            progress(min(first + windows_per_batch, len(corners)), len(corners))
    result = summed / normaliser
    return result[(slice(None), *(slice(0, s) for s in shape))].contiguous()
