"""Shared parts of the dataset converters.

`RawDatasetWriter` writes one raw dataset (nnU-Net v2 layout) case by case and `dataset.json` at the end.
Images already stored as 3D `.nii.gz` are copied byte for byte; anything else (NRRD, DICOM series, arrays
made in memory) is read and written through `mass_nn.io.image_io`. Labels are always read: they are checked
to be integer-valued, optionally remapped, put onto their image's grid (nearest neighbour, only when the
geometries differ) and stored as uint8 (uint16 when a value exceeds 255).
"""
from __future__ import annotations

import logging
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence, Union

import numpy as np
import SimpleITK as sitk

from mass_nn.errors import MassError
from mass_nn.io.atomic import atomic_path
from mass_nn.io.dataset_json import DatasetJson, dataset_folder_name, save_dataset_json
from mass_nn.io.image_io import (ImageGeometry, read_geometry, read_sitk_image, require_3d_scalar_image,
                                 write_image)

logger = logging.getLogger(__name__)

FILE_ENDING = ".nii.gz"
SPLITS = ("Tr", "Ts")
_CASE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
_DATASET_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_\-]*$")
# A label resampled onto its image grid must keep at least this share of its labelled physical volume;
# less means label and image do not cover the same region (wrong pairing or wrong header).
MIN_KEPT_LABEL_VOLUME = 0.5


@dataclass(frozen=True)
class Volume:
    """A 3D (z, y, x) array with its geometry: an image made in memory instead of read from a file."""

    array: np.ndarray
    geometry: ImageGeometry


ImageSource = Union[Path, Volume]


def require_folder(path: Path, fix: str) -> Path:
    """Return `path` if it is a folder, else raise MassError naming it and the `fix`."""
    path = Path(path)
    if not path.is_dir():
        raise MassError(f"{path}: folder not found; {fix}")
    return path


def require_file(path: Path, fix: str) -> Path:
    """Return `path` if it exists (file or DICOM folder), else raise MassError naming it and the `fix`."""
    path = Path(path)
    if not path.exists():
        raise MassError(f"{path}: not found; {fix}")
    return path


def visible_files(folder: Path, ending: str = FILE_ENDING) -> list[Path]:
    """Files in `folder` ending with `ending`, sorted; hidden ones (macOS `._*` resource forks) are skipped."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_file() and p.name.endswith(ending)
                  and not p.name.startswith("."))


def strip_ending(name: str, ending: str = FILE_ENDING) -> str:
    return name[: -len(ending)] if name.endswith(ending) else name


def labels_from_value_names(value_to_name: Mapping[str, str], source: str) -> dict[str, int]:
    """Turn an old-style map {"0": "background", "1": "liver"} into dataset.json's {"background": 0, ...}."""
    try:
        pairs = sorted((int(value), str(name)) for value, name in value_to_name.items())
    except (TypeError, ValueError) as err:
        raise MassError(f"{source}: label keys must be integer values like \"1\", got {list(value_to_name)}; "
                        f"fix the label list of the source") from err
    names = [name for _, name in pairs]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise MassError(f"{source}: label name(s) {duplicates} are used for more than one value; make them unique")
    if not pairs or pairs[0][0] != 0:
        raise MassError(f"{source}: the label list has no background value 0; add \"0\": \"background\"")
    return {name: value for value, name in pairs}


def labels_from_names(names: Sequence[str], background: str = "background") -> dict[str, int]:
    """{background: 0, names[0]: 1, names[1]: 2, ...}: a label map with values in the order given."""
    if len(set(names)) != len(names) or background in names:
        raise ValueError(f"class names must be unique and differ from {background!r}: {list(names)}")
    return {background: 0, **{name: i + 1 for i, name in enumerate(names)}}


def remap_label_values(labels: np.ndarray, mapping: Mapping[int, int], source: str) -> np.ndarray:
    """Replace every value v by mapping[v]; a value the mapping does not name is an error."""
    values = np.unique(labels)
    missing = sorted(int(v) for v in values if int(v) not in mapping)
    if missing:
        raise MassError(f"{source}: label value(s) {missing} have no target in the remapping "
                        f"{dict(mapping)}; extend the remapping")
    lookup = np.zeros(int(values.max()) + 1, dtype=np.int64)
    for old, new in mapping.items():
        if 0 <= old < lookup.size:
            lookup[old] = new
    return lookup[labels]


def to_integer_labels(labels: np.ndarray, source: str) -> np.ndarray:
    """The label map as uint8 (uint16 above 255) after checking it holds only non-negative whole numbers."""
    values = np.unique(labels)
    if not np.all(np.isfinite(values)) or not np.all(values == np.round(values)):
        raise MassError(f"{source}: label values are not all whole numbers (e.g. {values[:5].tolist()}); a label "
                        f"must be an integer class map, not a probability or an interpolated mask")
    if values.size and values.min() < 0:
        raise MassError(f"{source}: negative label value {values.min()}; labels must be 0 (background) or positive")
    if values.size and values.max() > np.iinfo(np.uint16).max:
        raise MassError(f"{source}: label value {values.max()} exceeds 65535; renumber the classes")
    dtype = np.uint8 if not values.size or values.max() <= np.iinfo(np.uint8).max else np.uint16
    return labels.astype(dtype)


def _sitk_image(source: Path | Volume | sitk.Image) -> sitk.Image:
    if isinstance(source, sitk.Image):
        return source
    if isinstance(source, Volume):
        return source.geometry.apply_to(sitk.GetImageFromArray(np.ascontiguousarray(source.array)))
    return read_sitk_image(source)


def _physical_labelled_volume(image: sitk.Image) -> float:
    return float(np.count_nonzero(sitk.GetArrayViewFromImage(image))) * float(np.prod(image.GetSpacing()))


def _resample_onto(label: sitk.Image, geometry: ImageGeometry, source: str) -> sitk.Image:
    """Nearest-neighbour resampling of `label` onto `geometry` by physical position (identity transform)."""
    reference = geometry.apply_to(sitk.Image([int(s) for s in geometry.size_xyz], label.GetPixelID()))
    resampled = sitk.Resample(label, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0.0,
                              label.GetPixelID())
    before, after = _physical_labelled_volume(label), _physical_labelled_volume(resampled)
    if before > 0 and after < MIN_KEPT_LABEL_VOLUME * before:
        raise MassError(f"{source}: only {100 * after / before:.0f}% of the labelled volume lies on its image's "
                        f"grid; label and image do not cover the same region: check that they belong together "
                        f"and that both headers (origin, direction) are right")
    return resampled


def label_array_on_grid(source: Path | Volume | sitk.Image, geometry: ImageGeometry, name: str,
                        mapping: Mapping[int, int] | None = None) -> np.ndarray:
    """The label map of `source` on the grid `geometry`, as an integer array (z, y, x).

    A label on a different grid (e.g. the same voxels stored with a flipped axis) is resampled onto
    `geometry` with nearest neighbour by physical position; `mapping` (old value -> new value) is applied last.
    """
    label = _sitk_image(source)
    require_3d_scalar_image(label, name)
    differences = ImageGeometry.from_sitk(label).differences(geometry)
    if differences:
        logger.info("%s: label grid differs from its image (%s); resampling it onto the image grid", name,
                    "; ".join(differences))
        label = _resample_onto(label, geometry, name)
    labels = to_integer_labels(sitk.GetArrayFromImage(label), name)
    if mapping is not None:
        labels = to_integer_labels(remap_label_values(labels, mapping, name), name)
    return labels


def _is_copyable_nifti(path: Path) -> bool:
    """True for a `.nii.gz` file whose header says: one 3D scalar volume (so its bytes can be kept as they are)."""
    if not (path.is_file() and path.name.endswith(FILE_ENDING)):
        return False
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        return False
    return reader.GetDimension() == 3 and reader.GetNumberOfComponents() == 1


def copy_file_atomic(source: Path, target: Path) -> None:
    with atomic_path(target) as tmp:
        shutil.copyfile(source, tmp)


def write_image_channel(source: ImageSource, target: Path) -> ImageGeometry:
    """Store one channel at `target` (byte copy when possible, else read + write); return its geometry."""
    if isinstance(source, Volume):
        write_image(source.array, source.geometry, target)
        return source.geometry
    source = Path(source)
    if _is_copyable_nifti(source):
        copy_file_atomic(source, target)
        return read_geometry(source)
    image = read_sitk_image(source)
    require_3d_scalar_image(image, source)
    geometry = ImageGeometry.from_sitk(image)
    write_image(sitk.GetArrayFromImage(image), geometry, target)
    return geometry


class RawDatasetWriter:
    """Writes `Dataset{id:03d}_{name}` under `raw_root` one case at a time; `finish()` writes dataset.json.

    Re-running a converter replaces its files; files of cases that the new run did not write are removed
    in `finish()` so that the folder always matches its dataset.json.
    """

    def __init__(self, raw_root: Path, dataset_id: int, name: str, channel_names: Sequence[str],
                 labels: Mapping[str, int] | None = None, description: str | None = None):
        if not 1 <= int(dataset_id) <= 999:
            raise MassError(f"dataset id {dataset_id} is outside 1..999; pick a three-digit dataset id")
        if not _DATASET_NAME.match(name):
            raise MassError(f"dataset name {name!r} may only hold letters, digits, '_' and '-'")
        self.raw_root = Path(raw_root)
        self.dataset_dir = self.raw_root / dataset_folder_name(int(dataset_id), name)
        self._refuse_id_in_use(int(dataset_id))
        self.name, self.description = name, description
        self.channel_names = list(channel_names)
        self.labels = dict(labels) if labels is not None else None
        self._allowed_values = set(self.labels.values()) if self.labels is not None else set()
        self._cases: dict[str, str] = {}  # case id -> split
        self._patient_of_case: dict[str, str] = {}
        self._written: set[Path] = set()

    def _refuse_id_in_use(self, dataset_id: int) -> None:
        prefix = f"Dataset{dataset_id:03d}_"
        if not self.raw_root.is_dir():
            return
        for other in sorted(self.raw_root.iterdir()):
            if other.is_dir() and other.name.startswith(prefix) and other != self.dataset_dir:
                raise MassError(f"{other}: already uses dataset id {dataset_id}; pick another id (--dataset-id) "
                                f"or remove that folder")

    def add_case(self, case_id: str, images: Sequence[ImageSource], label: Path | Volume | None = None,
                 split: str = "Tr", patient_id: str | None = None,
                 label_mapping: Mapping[int, int] | None = None) -> None:
        """Write the channels of one case (and its label, put onto the grid of channel 0) into split Tr or Ts."""
        self._check_new_case(case_id, images, split)
        geometries = []
        for channel, source in enumerate(images):
            target = self.dataset_dir / f"images{split}" / f"{case_id}_{channel:04d}{FILE_ENDING}"
            geometries.append(write_image_channel(source, target))
            self._written.add(target)
        for channel, geometry in enumerate(geometries[1:], start=1):
            differences = geometries[0].differences(geometry)
            if differences:
                raise MassError(f"{images[channel]}: channel {channel} of case {case_id} is not on the grid of "
                                f"channel 0 {images[0]} ({'; '.join(differences)}); register the channels first")
        if label is not None:
            self._write_label(case_id, label, split, geometries[0], label_mapping)
        self._cases[case_id] = split
        if patient_id is not None:
            self._patient_of_case[case_id] = str(patient_id)
        logger.debug("%s: case %s written (%s)", self.dataset_dir.name, case_id, split)

    def _check_new_case(self, case_id: str, images: Sequence[ImageSource], split: str) -> None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        if not _CASE_ID.match(case_id):
            raise MassError(f"case id {case_id!r} may only hold letters, digits, '_', '.' and '-'")
        if case_id in self._cases:
            raise MassError(f"case id {case_id!r} occurs twice in {self.dataset_dir.name}; the source holds two "
                            f"cases of the same name")
        if len(images) != len(self.channel_names):
            raise MassError(f"case {case_id}: {len(images)} image channel(s) given, dataset "
                            f"{self.dataset_dir.name} has {len(self.channel_names)} ({self.channel_names})")

    def _write_label(self, case_id: str, label: Path | Volume, split: str, geometry: ImageGeometry,
                     mapping: Mapping[int, int] | None) -> None:
        if self.labels is None:
            raise ValueError(f"case {case_id} has a label but the dataset was created without a label map")
        name = str(label) if isinstance(label, Path) else f"label of case {case_id}"
        labels = label_array_on_grid(label, geometry, name, mapping)
        unknown = sorted(int(v) for v in np.unique(labels) if int(v) not in self._allowed_values)
        if unknown:
            raise MassError(f"{name}: label value(s) {unknown} are not in the label map {self.labels}; the source "
                            f"does not match the label map this converter expects")
        target = self.dataset_dir / f"labels{split}" / f"{case_id}{FILE_ENDING}"
        write_image(labels, geometry, target)
        self._written.add(target)

    @property
    def num_training(self) -> int:
        return sum(split == "Tr" for split in self._cases.values())

    def _remove_stale_files(self) -> None:
        for folder in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
            for path in visible_files(self.dataset_dir / folder):
                if path not in self._written:
                    logger.warning("%s: removed; no case of this conversion run wrote it", path)
                    path.unlink()

    def finish(self, extra: Mapping | None = None) -> Path:
        """Write dataset.json (numTraining = cases in imagesTr) and return the dataset folder."""
        if self.num_training == 0:
            raise MassError(f"{self.dataset_dir.name}: the source held no training case; check the source folder")
        self._remove_stale_files()
        more = dict(extra or {})
        if self._patient_of_case:
            more["patient_of_case"] = dict(sorted(self._patient_of_case.items()))
        dataset_json = DatasetJson(channel_names={str(i): n for i, n in enumerate(self.channel_names)},
                                   num_training=self.num_training, file_ending=FILE_ENDING, labels=self.labels,
                                   name=self.name, description=self.description, extra=more)
        save_dataset_json(dataset_json, self.dataset_dir)
        logger.info("%s: %d training and %d test case(s) written", self.dataset_dir, self.num_training,
                    len(self._cases) - self.num_training)
        return self.dataset_dir
