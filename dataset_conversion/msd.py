"""Medical Segmentation Decathlon (MSD) task folder -> raw dataset.

Expected layout (one extracted task, e.g. `Task01_BrainTumour/`):

    dataset.json   {"modality": {"0": "FLAIR", ...}, "labels": {"0": "background", "1": "edema", ...},
                    "training": [{"image": "./imagesTr/x.nii.gz", "label": "./labelsTr/x.nii.gz"}, ...],
                    "test": ["./imagesTs/y.nii.gz", ...]}
    imagesTr/x.nii.gz   labelsTr/x.nii.gz   imagesTs/y.nii.gz

Multi-channel tasks (BrainTumour, Prostate) store all channels of a case in one 4D file; it is split into
one file per channel. macOS resource forks (`._x.nii.gz`) shipped in the archives are ignored.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from dataset_conversion.common import ImageSource, RawDatasetWriter, Volume, labels_from_value_names, \
    require_file, strip_ending
from mass_nn.errors import MassError
from mass_nn.io.atomic import read_json
from mass_nn.io.image_io import ImageGeometry, read_sitk_image

_TASK_FOLDER = re.compile(r"^Task(?P<number>\d+)_(?P<name>.+)$")


def msd_task_number(task_dir: Path) -> int | None:
    """The task number of a folder named `TaskNN_Name` (None for other names)."""
    match = _TASK_FOLDER.match(Path(task_dir).name)
    return int(match["number"]) if match else None


def _dataset_name(task_dir: Path) -> str:
    match = _TASK_FOLDER.match(task_dir.name)
    return re.sub(r"[^A-Za-z0-9_\-]", "", match["name"] if match else task_dir.name) or "MSDTask"


def _read_task_json(task_dir: Path) -> dict:
    path = task_dir / "dataset.json"
    if not path.is_file():
        tasks = sorted(p.name for p in task_dir.glob("Task*") if p.is_dir()) if task_dir.is_dir() else []
        hint = f" (it holds {', '.join(tasks)}: pass one of those)" if tasks else ""
        raise MassError(f"{path}: not found; point to one extracted MSD task folder TaskNN_Name that holds "
                        f"dataset.json, imagesTr and labelsTr{hint}")
    meta = read_json(path)
    missing = [key for key in ("modality", "labels", "training") if key not in meta]
    if missing:
        raise MassError(f"{path}: keys {missing} missing; this is not an MSD dataset.json (expected 'modality', "
                        f"'labels' and 'training')")
    return meta


def _entry_path(task_dir: Path, entry, key: str) -> Path:
    """The file an MSD list entry points to ('./imagesTr/x.nii.gz', or {key: that})."""
    relative = entry[key] if isinstance(entry, dict) else entry
    return task_dir / Path(relative)


def _is_resource_fork(path: Path) -> bool:
    return path.name.startswith("._")


def _geometry_3d(image: sitk.Image) -> ImageGeometry:
    """Geometry of the first three axes of a 4D image (the fourth axis indexes channels)."""
    direction = np.asarray(image.GetDirection()).reshape(4, 4)[:3, :3]
    return ImageGeometry(spacing_xyz=tuple(image.GetSpacing()[:3]), origin_xyz=tuple(image.GetOrigin()[:3]),
                         direction=tuple(float(v) for v in direction.ravel()), size_xyz=tuple(image.GetSize()[:3]))


def split_channels(path: Path, num_channels: int) -> list[ImageSource]:
    """The channels of one MSD image: the file itself when 3D, one in-memory volume per channel when 4D."""
    image = read_sitk_image(path) if num_channels > 1 else None
    if image is None or image.GetDimension() == 3:
        if num_channels > 1:
            raise MassError(f"{path}: is 3D but dataset.json lists {num_channels} modalities; expected a 4D "
                            f"image with the channels along the 4th axis")
        return [path]
    if image.GetDimension() != 4:
        raise MassError(f"{path}: is {image.GetDimension()}D; MSD images are 3D or 4D (channels last)")
    array = sitk.GetArrayFromImage(image)  # (channel, z, y, x)
    if array.shape[0] != num_channels:
        raise MassError(f"{path}: holds {array.shape[0]} channel(s) but dataset.json lists {num_channels} "
                        f"modalities; fix the modality list or the image")
    geometry = _geometry_3d(image)
    return [Volume(array[c], geometry) for c in range(num_channels)]


def convert_msd(source_dir: Path, raw_root: Path, dataset_id: int) -> Path:
    """Convert one MSD task folder into `Dataset{dataset_id}_{TaskName}`; return the dataset folder.

    Training cases (with labels) go to imagesTr/labelsTr, the unlabelled test list to imagesTs. Channel
    names come from 'modality', the label map from 'labels' (value -> name, inverted here).
    """
    task_dir = Path(source_dir)
    meta = _read_task_json(task_dir)
    source = str(task_dir / "dataset.json")
    channel_names = [str(meta["modality"][key]) for key in sorted(meta["modality"], key=int)]
    writer = RawDatasetWriter(raw_root, dataset_id, _dataset_name(task_dir), channel_names,
                              labels_from_value_names(meta["labels"], source),
                              description=f"MSD {task_dir.name}: {meta.get('description', '')}".strip())
    fix = "the MSD task folder is incomplete; extract the task archive again"
    for entry in meta["training"]:
        image = _entry_path(task_dir, entry, "image")
        if _is_resource_fork(image):
            continue
        label = require_file(_entry_path(task_dir, entry, "label"), fix)
        writer.add_case(strip_ending(image.name), split_channels(require_file(image, fix), len(channel_names)),
                        label)
    for entry in meta.get("test", []):
        image = _entry_path(task_dir, entry, "image")
        if not _is_resource_fork(image):
            writer.add_case(strip_ending(image.name), split_channels(require_file(image, fix), len(channel_names)),
                            split="Ts")
    extra = {"source": "Medical Segmentation Decathlon", "licence": meta.get("licence", "CC-BY-SA 4.0"),
             "reference": meta.get("reference", "")}
    return writer.finish(extra)


__all__ = ["convert_msd", "msd_task_number", "split_channels"]
