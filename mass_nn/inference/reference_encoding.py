"""In-context references: crop each labelled structure of a reference, encode it into a task embedding, and
average the embeddings of one label over k references (the k-shot context ensemble).

A reference crop has the network's patch size and is centred on the bounding box of the label, padded with 0
(the normalised intensity mean) where it runs past the volume, so labels touching the border still sit where
the network saw masks during training.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from mass_nn.errors import MassError
from mass_nn.networks.in_context.task_ops import TaskEmbedding, average_task_embeddings
from mass_nn.preprocessing.crop_pad import centered_start, crop_or_pad


def box_center(box_zyx) -> np.ndarray:
    """Centre (z, y, x) of a [[start, stop], ...] box (stop exclusive)."""
    box = np.asarray(box_zyx, dtype=np.float64)
    return (box[:, 0] + box[:, 1] - 1) / 2.0


def label_box(seg: np.ndarray, value: int) -> list[list[int]] | None:
    """Bounding box [[start, stop], ...] of `seg == value`; None when the label is absent."""
    coordinates = np.nonzero(np.asarray(seg) == value)
    if coordinates[0].size == 0:
        return None
    return [[int(c.min()), int(c.max()) + 1] for c in coordinates]


def crop_around_box(volume, box_zyx, patch_zyx) -> np.ndarray:
    """The (c, *patch) window of `volume` (c, z, y, x) centred on `box_zyx`, zero-padded outside."""
    return crop_or_pad(volume, centered_start(box_center(box_zyx), patch_zyx), patch_zyx)


def reference_crop(image: np.ndarray, seg: np.ndarray, value: int, patch_zyx) -> tuple[np.ndarray, np.ndarray]:
    """(image crop (c, *patch) float32, mask crop (*patch) float32) of label `value`; ValueError when absent."""
    box = label_box(seg, value)
    if box is None:
        raise ValueError(f"label {value} is not in the reference")
    image_crop = crop_around_box(np.asarray(image, dtype=np.float32), box, patch_zyx)
    mask_crop = crop_around_box((np.asarray(seg) == value)[None].astype(np.float32), box, patch_zyx)[0]
    return image_crop, mask_crop


@torch.no_grad()
def encode_reference_labels(network: nn.Module, references: list[tuple[np.ndarray, np.ndarray]],
                            label_values: list[int], patch_zyx, device: torch.device | str = "cpu",
                            names: list[str] | None = None) -> TaskEmbedding:
    """One task embedding with K = len(label_values) tasks (in that order), each averaged over the references
    (image (c, z, y, x), label map (z, y, x), both preprocessed) that contain the label.

    Raises MassError naming the labels that no reference contains (`names` labels them in the message).
    """
    names = names or [str(v) for v in label_values]
    per_label: list[TaskEmbedding] = []
    for value, name in zip(label_values, names):
        shots = []
        for image, seg in references:
            if label_box(seg, value) is None:
                continue
            image_crop, mask_crop = reference_crop(image, seg, value, patch_zyx)
            shots.append(network.encode_task(torch.from_numpy(image_crop)[None].to(device),
                                             torch.from_numpy(mask_crop)[None, None].to(device)))
        if not shots:
            raise MassError(f"label {name!r} (value {value}) is empty in every reference mask; give a reference "
                            f"that contains it, or leave the label out")
        per_label.append(average_task_embeddings(shots))
    return [torch.cat(stage, dim=1) for stage in zip(*per_label)]
