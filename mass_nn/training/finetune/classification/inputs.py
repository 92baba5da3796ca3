"""The fixed-size input of a case for classification: a window centred on the preprocessed volume.

Preprocessing already cropped each case to its non-zero (body) region, so the array centre is the centre of the
body. The window is cropped out of it (or zero-padded around it) at the preprocessed voxel spacing, never resized:
the pretrained encoder learned its features at exactly that spacing, and resizing every case to one shape would
show the same organ at a different scale in each case. The price is that anything outside the window is not seen;
`window_coverage` measures how much that is so a run can warn and the user can raise `-s input_size`.
"""
from __future__ import annotations

import logging
from contextlib import nullcontext
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from mass_nn.io.artifact_layout import CaseOutput
from mass_nn.preprocessing.blosc2_storage import open_array
from mass_nn.preprocessing.crop_pad import centered_start, crop_or_pad

logger = logging.getLogger(__name__)

COVERAGE_WARNING = 0.95  # warn when a window keeps less than this share of some case's voxels


def case_path(data_folder: Path, case_id: str) -> Path:
    return CaseOutput(Path(data_folder), case_id).data


def window_start(shape_zyx, input_size) -> tuple[int, ...]:
    """Start corner of the `input_size` window centred on a volume of `shape_zyx` (negative where it pads)."""
    return centered_start([s / 2 for s in shape_zyx], input_size)


def load_case_input(data_folder: Path, case_id: str, input_size) -> np.ndarray:
    """The (c, *input_size) float32 window of a preprocessed case (zeros, the normalised mean, outside it)."""
    array = open_array(case_path(data_folder, case_id))
    window = crop_or_pad(array, window_start(array.shape[1:], input_size), list(input_size))
    return window.astype(np.float32, copy=False)


def window_coverage(shape_zyx, input_size) -> float:
    """The share of a volume's voxels that lie inside its centred `input_size` window."""
    kept = 1.0
    for extent, start, size in zip(shape_zyx, window_start(shape_zyx, input_size), input_size):
        kept *= (min(start + size, extent) - max(start, 0)) / extent
    return kept


def warn_about_coverage(data_folder: Path, case_ids: list[str], input_size) -> float:
    """Log a warning when the window cuts away part of some cases; returns the smallest coverage."""
    coverage = {case: window_coverage(open_array(case_path(data_folder, case)).shape[1:], input_size)
                for case in case_ids}
    worst = min(coverage, key=coverage.get)
    cut = [case for case, value in coverage.items() if value < COVERAGE_WARNING]
    if cut:
        logger.warning("input_size %s keeps less than %.0f %% of %d case(s) (least: %s, %.0f %%); what lies outside "
                       "the centred window is not seen - pass -s input_size=[z,y,x] (multiples of 16) to cover more",
                       list(input_size), 100 * COVERAGE_WARNING, len(cut), worst, 100 * coverage[worst])
    return coverage[worst]


@torch.no_grad()
def map_cases(function: Callable[[torch.Tensor], torch.Tensor], data_folder: Path, case_ids: list[str],
              input_size, device: torch.device, autocast: Callable = nullcontext) -> torch.Tensor:
    """function(window of each case as a [1, c, *input_size] tensor on `device`), stacked over the cases on the
    CPU as float32. One case at a time, so memory stays that of a single forward pass."""
    outputs = []
    for case_id in case_ids:
        volume = torch.from_numpy(load_case_input(data_folder, case_id, input_size))[None].to(device)
        with autocast():
            outputs.append(function(volume).float().cpu())
    return torch.cat(outputs) if outputs else torch.empty(0)
