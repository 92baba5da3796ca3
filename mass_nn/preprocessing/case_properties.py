"""Per-case properties JSON: everything needed to map a preprocessed case back to its raw geometry and to
recover its raw intensities."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from mass_nn.errors import MassError
from mass_nn.io.atomic import read_json, write_json_atomic
from mass_nn.io.image_geometry import ImageGeometry
from mass_nn.preprocessing.normalization import ChannelNormalization
from mass_nn.schema import from_dict, to_dict

PROPERTIES_VERSION = 1


@dataclass
class CaseProperties:
    """Order of operations (inverted by preprocessing/restore.py): read → crop to `crop_box_zyx` → normalise
    per channel → resample to `shape_after_resampling_zyx` at `target_spacing_zyx_mm`."""

    case_id: str
    configuration: str
    preprocessing_hash: str
    source_images: list[str]
    source_label: str | None
    original_geometry: dict  # ImageGeometry.to_dict() of channel 0
    shape_before_crop_zyx: list[int]
    crop_box_zyx: list[list[int]]  # [[start, stop], ...] per axis
    shape_after_crop_zyx: list[int]
    original_spacing_zyx_mm: list[float]
    target_spacing_zyx_mm: list[float]
    shape_after_resampling_zyx: list[int]
    nearest_resampling_axis: int | None  # thick-slice axis resampled nearest-neighbour (images), see resampling.py
    normalization: list[ChannelNormalization]
    foreground_fraction: float  # of the cropped volume
    mask_axis: int  # SAM2 slice axis from this case's original spacing (numpy order)
    seed_slice_interval: int  # along mask_axis, on the preprocessed grid
    label_voxel_counts: dict[str, int] = field(default_factory=dict)  # label value -> voxels after resampling
    label_bboxes_zyx: dict[str, list[list[int]]] = field(default_factory=dict)
    version: int = PROPERTIES_VERSION

    @property
    def geometry(self) -> ImageGeometry:
        return ImageGeometry.from_dict(self.original_geometry)

    @property
    def has_label(self) -> bool:
        return self.source_label is not None


def save_properties(props: CaseProperties, path: Path) -> None:
    write_json_atomic(to_dict(props), path)


def load_properties(path: Path) -> CaseProperties:
    path = Path(path)
    if not path.is_file():
        raise MassError(f"{path}: case properties not found; run mass_plan_and_preprocess for this configuration")
    return from_dict(CaseProperties, read_json(path), str(path), error_cls=MassError)
