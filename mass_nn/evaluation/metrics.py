"""Per-label segmentation metrics on (z, y, x) label maps: Dice and HD95 (in mm, spacing-aware).

Conventions (the same everywhere in mass_nn):
  * both prediction and reference empty for a label -> Dice NaN and HD95 NaN (the label is not counted in means);
  * exactly one of them empty                       -> Dice 0 and HD95 NaN (a distance to nothing is undefined);
  * label value 0 is background and never evaluated.

HD95 is the 95th percentile (numpy's linear interpolation) of the pooled symmetric surface distances: the distance
from every surface voxel of the prediction to the nearest surface voxel of the reference, and vice versa. A surface
voxel is a foreground voxel with at least one of its 6 face neighbours outside the mask (the volume edge counts as
outside). Distances are Euclidean between voxel centres, in mm.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from mass_nn.boxes import padded_box

_FACE_NEIGHBOURS = ndimage.generate_binary_structure(3, 1)


def dice_score(prediction_mask: np.ndarray, reference_mask: np.ndarray) -> float:
    """Dice 2|P∩R| / (|P|+|R|) of two boolean masks; NaN when both are empty, 0 when exactly one is."""
    prediction_mask, reference_mask = np.asarray(prediction_mask, bool), np.asarray(reference_mask, bool)
    return _dice_from_counts(int(prediction_mask.sum()), int(reference_mask.sum()),
                             int(np.count_nonzero(prediction_mask & reference_mask)))


def _dice_from_counts(predicted: int, reference: int, overlap: int) -> float:
    if predicted + reference == 0:
        return float("nan")
    return 2.0 * overlap / (predicted + reference)


def _surface(mask: np.ndarray) -> np.ndarray:
    # border_value=0: voxels on the array edge count as surface, as if the volume were padded with background
    return mask & ~ndimage.binary_erosion(mask, structure=_FACE_NEIGHBOURS, border_value=0)


def _union_box(first: tuple[slice, ...] | None, second: tuple[slice, ...] | None, shape, pad: int = 1):
    """Smallest box holding both boxes (either may be None), widened by `pad` and clipped to `shape`."""
    boxes = [b for b in (first, second) if b is not None]
    return tuple(slice(max(0, min(b[a].start for b in boxes) - pad), min(shape[a], max(b[a].stop for b in boxes) + pad))
                 for a in range(len(shape)))


def _check_spacing(spacing_zyx_mm) -> np.ndarray:
    spacing = np.asarray(spacing_zyx_mm, dtype=np.float64).ravel()
    if spacing.shape != (3,) or not np.all(spacing > 0):
        raise ValueError(f"spacing {tuple(spacing_zyx_mm)} must be three positive values (z, y, x) in mm")
    return spacing


def _hd95_in_box(prediction_mask: np.ndarray, reference_mask: np.ndarray, spacing: np.ndarray) -> float:
    """HD95 of two non-empty masks already cropped so that neither touches a crop edge that is not a volume edge."""
    prediction_surface, reference_surface = _surface(prediction_mask), _surface(reference_mask)
    # the nearest surface voxel of the other mask always lies inside the crop, so the distances are exact
    to_reference = ndimage.distance_transform_edt(~reference_surface, sampling=spacing)
    to_prediction = ndimage.distance_transform_edt(~prediction_surface, sampling=spacing)
    distances = np.concatenate([to_reference[prediction_surface], to_prediction[reference_surface]])
    return float(np.percentile(distances, 95))


def hd95(prediction_mask: np.ndarray, reference_mask: np.ndarray, spacing_zyx_mm) -> float:
    """HD95 in mm of two boolean (z, y, x) masks (module docstring); NaN when either mask is empty.

    Only the bounding box of prediction ∪ reference padded by one voxel is processed, so the cost follows the
    structure's size rather than the volume's.
    """
    spacing = _check_spacing(spacing_zyx_mm)
    prediction_mask, reference_mask = np.asarray(prediction_mask, bool), np.asarray(reference_mask, bool)
    if prediction_mask.shape != reference_mask.shape:
        raise ValueError(f"prediction {prediction_mask.shape} and reference {reference_mask.shape} differ in shape")
    if not prediction_mask.any() or not reference_mask.any():
        return float("nan")
    box = padded_box(prediction_mask | reference_mask, 1)
    return _hd95_in_box(prediction_mask[box], reference_mask[box], spacing)


def as_label_map(array: np.ndarray) -> np.ndarray:
    """`array` as an unsigned integer label map; ValueError unless it holds non-negative whole numbers."""
    array = np.asarray(array)
    if array.dtype == np.bool_:
        return array.view(np.uint8)
    if not np.issubdtype(array.dtype, np.integer):
        if not np.all(np.isfinite(array)) or np.any(array != np.round(array)):
            raise ValueError("holds values that are not whole numbers; a label map needs integer label values "
                             "(argmax probabilities, or resample labels with nearest neighbour)")
    if array.size and array.min() < 0:
        raise ValueError(f"holds the negative value {array.min()}; label values must be 0 (background) or positive")
    top = int(array.max()) if array.size else 0
    if top > np.iinfo(np.uint32).max:
        raise ValueError(f"holds the label value {top}; label values above {np.iinfo(np.uint32).max} are not "
                         f"supported, renumber the labels")
    dtype = next(t for t in (np.uint8, np.uint16, np.uint32) if top <= np.iinfo(t).max)
    return array.astype(dtype, copy=False)


def _foreground_counts(label_map: np.ndarray, minlength: int) -> np.ndarray:
    """Voxel count of every label value (index = value; index 0 is left at 0) in one pass for all labels."""
    # bincount casts to 64-bit ints; doing so only for the (usually few) foreground voxels is several times faster
    return np.bincount(label_map[label_map != 0], minlength=minlength)


def present_labels(label_map: np.ndarray) -> list[int]:
    """The non-zero values that occur in an integer label map (as_label_map's output), ascending."""
    return [int(v) for v in np.flatnonzero(_foreground_counts(label_map, 1))]


def _label_boxes(label_map: np.ndarray, max_label: int) -> list[tuple[slice, ...] | None]:
    """Bounding box of every label value 1..max_label (None where absent); index i holds value i + 1."""
    return ndimage.find_objects(label_map, max_label=max_label)


def label_map_metrics(prediction: np.ndarray, reference: np.ndarray, labels: dict[str, int], spacing_zyx_mm,
                      hd95: bool = True) -> dict[str, dict[str, float]]:
    """Metrics of every label of `labels` (name -> value; value 0, background, is skipped) between two (z, y, x)
    label maps: {name: {"dice", "hd95", "reference_voxels", "predicted_voxels"}}.

    Dice and HD95 follow the module's conventions (NaN for undefined values); HD95 is NaN for all labels when
    `hd95` is False. Raises ValueError for maps of different shapes, non-integer or negative values, or a bad
    spacing.
    """
    spacing = _check_spacing(spacing_zyx_mm)
    prediction, reference = as_label_map(prediction), as_label_map(reference)
    if prediction.shape != reference.shape:
        raise ValueError(f"prediction {prediction.shape} and reference {reference.shape} differ in shape")
    wanted = {name: int(value) for name, value in labels.items() if int(value) != 0}
    if any(value < 0 for value in wanted.values()):
        raise ValueError(f"label values {wanted} must be positive integers")
    top = max(wanted.values(), default=0) + 1
    predicted_counts = _foreground_counts(prediction, top)
    reference_counts = _foreground_counts(reference, top)
    agree = prediction == reference
    agree &= reference != 0
    overlap_counts = np.bincount(reference[agree], minlength=top)
    find_boxes = hd95 and wanted
    prediction_boxes = _label_boxes(prediction, top - 1) if find_boxes else []
    reference_boxes = _label_boxes(reference, top - 1) if find_boxes else []
    results = {}
    for name, value in wanted.items():
        n_pred, n_ref = int(predicted_counts[value]), int(reference_counts[value])
        distance = float("nan")
        if hd95 and n_pred and n_ref:
            box = _union_box(prediction_boxes[value - 1], reference_boxes[value - 1], prediction.shape)
            distance = _hd95_in_box(prediction[box] == value, reference[box] == value, spacing)
        results[name] = {"dice": _dice_from_counts(n_pred, n_ref, int(overlap_counts[value])), "hd95": distance,
                         "reference_voxels": n_ref, "predicted_voxels": n_pred}
    return results
