"""The `labels` generator: masks from existing label maps (expert or TotalSegmentator-style), so they can be
used alone or mixed with automatic masks (the MASS paper's Table 4b comparison)."""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from mass_nn.errors import MassError
from mass_nn.masks.generators.base import MaskGenerator
from mass_nn.masks.proposal import CaseInput, MaskProposal


class LabelsGenerator(MaskGenerator):
    """One mask per label class present, plus one per connected component of classes that have several
    (components below `min_component_voxels` are skipped)."""

    name = "labels"
    needs_label = True

    def __init__(self, include_components: bool = True, min_component_voxels: int = 8):
        self.include_components = include_components
        self.min_component_voxels = int(min_component_voxels)

    def parameters(self) -> dict:
        return {"include_components": self.include_components, "min_component_voxels": self.min_component_voxels}

    def generate(self, case: CaseInput) -> list[MaskProposal]:
        if case.label is None:
            raise MassError(f"case {case.case_id} has no label map; the 'labels' generator needs labelsTr "
                            f"(use -g supervoxel or -g sam2 for unlabelled data)")
        label = np.asarray(case.label)
        proposals = []
        for value, region in enumerate(ndimage.find_objects(label.astype(np.int32)), start=1):
            if region is None:
                continue
            offset = [s.start for s in region]
            class_mask = label[region] == value
            whole = MaskProposal(box=tuple((s.start, s.stop) for s in region), crop=class_mask,
                                 generator=self.name, extra={"class": value, "component": None})
            proposals.append(whole)
            if self.include_components:
                proposals += self._components(class_mask, offset, value)
        return proposals

    def _components(self, class_mask: np.ndarray, offset, value: int) -> list[MaskProposal]:
        components, count = ndimage.label(class_mask, structure=np.ones((3, 3, 3), dtype=bool))
        if count < 2:
            return []
        out = []
        for index, region in enumerate(ndimage.find_objects(components), start=1):
            crop = components[region] == index
            if crop.sum() < self.min_component_voxels:
                continue
            box = tuple((s.start + o, s.stop + o) for s, o in zip(region, offset))
            out.append(MaskProposal(box=box, crop=crop, generator=self.name,
                                    extra={"class": value, "component": index}))
        return out
