"""Inverse of preprocessing: back from the preprocessed grid to the raw image's grid, geometry and units."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from mass_nn.io.image_io import write_image
from mass_nn.preprocessing.case_properties import CaseProperties
from mass_nn.preprocessing.normalization import denormalize_channel
from mass_nn.preprocessing.resampling import resample_images, resample_label


def raw_intensities(data: np.ndarray, props: CaseProperties) -> np.ndarray:
    """(c, z, y, x) normalised data -> the same grid in raw units (HU, MR units, SUV)."""
    return np.stack([denormalize_channel(channel, norm) for channel, norm in zip(data, props.normalization)])


def to_original_grid(array: np.ndarray, props: CaseProperties, is_label: bool, fill_value: float = 0) -> np.ndarray:
    """A (z, y, x) array on the preprocessed grid -> the raw (uncropped) grid; outside the crop box: fill_value."""
    if tuple(array.shape) != tuple(props.shape_after_resampling_zyx):
        raise ValueError(f"array shape {array.shape} is not the preprocessed shape {props.shape_after_resampling_zyx} "
                         f"of case {props.case_id}")
    if is_label:
        cropped = resample_label(array, props.shape_after_crop_zyx)
    else:
        cropped = resample_images(array[None].astype(np.float32), props.shape_after_crop_zyx,
                                  props.nearest_resampling_axis)[0]
    full = np.full(props.shape_before_crop_zyx, fill_value, dtype=cropped.dtype)
    full[tuple(slice(a, b) for a, b in props.crop_box_zyx)] = cropped
    return full


def export_to_raw_geometry(array: np.ndarray, props: CaseProperties, path: Path, is_label: bool,
                           fill_value: float = 0) -> None:
    """Write a preprocessed-grid (z, y, x) array as an image in the case's original geometry."""
    write_image(to_original_grid(array, props, is_label, fill_value), props.geometry, path)
