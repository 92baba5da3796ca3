"""Bounding boxes of 3D masks (mass_nn/boxes.py)."""
from __future__ import annotations

import numpy as np

from mass_nn.boxes import padded_box, tight_box


def test_tight_and_padded_boxes_clip_to_the_array_and_are_none_when_empty():
    mask = np.zeros((10, 12, 14), bool)
    assert tight_box(mask) is None and padded_box(mask, 2) is None
    mask[1, 5:7, 10:14] = True
    assert tight_box(mask) == ((1, 2), (5, 7), (10, 14))
    assert padded_box(mask, 2) == (slice(0, 4), slice(3, 9), slice(8, 14))
    assert padded_box(mask, 0) == tuple(slice(a, b) for a, b in tight_box(mask))
