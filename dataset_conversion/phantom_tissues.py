"""Vocabulary shared by the phantom's anatomy and appearance: tissue classes, labels, and the paint canvas.

Anatomy paints a *tissue* map (what a voxel is made of, which decides its intensity and texture) and a
*label* map (the segmentation target) side by side; structures painted later overwrite earlier ones.
"""
from __future__ import annotations

from enum import IntEnum

import numpy as np

from dataset_conversion.phantom_grid import Box

PHANTOM_LABELS: dict[str, int] = {
    "background": 0,
    "liver": 1,
    "spleen": 2,
    "kidney_left": 3,
    "kidney_right": 4,
    "stomach": 5,
    "bladder": 6,
    "aorta": 7,
    "hepatic_vessels": 8,
    "vertebrae": 9,
    "ribs": 10,
    "psoas": 11,
    "liver_lesion": 12,
}


class Tissue(IntEnum):
    """What a voxel is made of. Several tissues can share a label (kidney cortex, medulla and sinus are all
    "kidney_*") and one tissue can appear in several labels or none (muscle is "psoas" or unlabelled)."""

    AIR = 0
    FAT_SUBCUTANEOUS = 1
    MUSCLE = 2
    FAT_VISCERAL = 3
    BOWEL_WALL = 4
    BOWEL_CONTENT = 5
    BOWEL_GAS = 6
    LIVER = 7
    GALLBLADDER = 8
    VEIN = 9
    SPLEEN = 10
    KIDNEY_CORTEX = 11
    KIDNEY_MEDULLA = 12
    KIDNEY_SINUS = 13
    STOMACH_WALL = 14
    STOMACH_CONTENT = 15
    STOMACH_GAS = 16
    BLADDER_WALL = 17
    URINE = 18
    ARTERY = 19
    PORTAL_VESSEL = 20
    BONE_CORTEX = 21
    BONE_MARROW = 22
    DISC = 23
    CSF = 24
    LESION_0 = 25
    LESION_1 = 26
    LESION_2 = 27


MAX_LESIONS = 3


class Canvas:
    """The tissue and label maps of one case, painted structure by structure."""

    def __init__(self, shape_zyx: tuple[int, int, int]):
        self.tissue = np.zeros(shape_zyx, np.uint8)
        self.label = np.zeros(shape_zyx, np.uint8)

    def paint(self, box: Box, mask: np.ndarray, tissue: Tissue, label: int | None = None,
              within_labels: tuple[int, ...] | None = None) -> None:
        """Set `tissue` (and `label`, unless None) where `mask` holds inside `box`.

        `within_labels` restricts painting to voxels that currently carry one of those labels (vessels and
        lesions stay inside their organ).
        """
        tissue_view, label_view = self.tissue[box], self.label[box]
        if within_labels is not None:
            mask = mask & np.isin(label_view, within_labels)
        tissue_view[mask] = tissue
        if label is not None:
            label_view[mask] = label
