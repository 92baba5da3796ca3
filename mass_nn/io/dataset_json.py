"""`dataset.json` of a raw dataset (nnU-Net v2 format) and discovery of its cases.

Layout: `DatasetNNN_Name/dataset.json`, `imagesTr/<case>_<XXXX><file_ending>` (XXXX = 4-digit channel
index), optional `labelsTr/<case><file_ending>` and `imagesTs/`. A DICOM series folder named `<case>_<XXXX>`
(no ending) may stand in for any image file. `labels` is optional: pretraining needs none.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from mass_nn.errors import DatasetNotFoundError, MassError
from mass_nn.io.atomic import read_json, write_json_atomic

CHANNEL_SUFFIX = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")
DATASET_FOLDER_NAME = re.compile(r"^Dataset\d{3,}_[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass
class DatasetJson:
    """The typed content of dataset.json. Unknown keys are kept in `extra` and written back unchanged."""

    channel_names: dict[str, str]
    num_training: int
    file_ending: str
    labels: dict[str, int] | None = None
    name: str | None = None
    description: str | None = None
    extra: dict = field(default_factory=dict)

    @property
    def num_channels(self) -> int:
        return len(self.channel_names)

    def to_dict(self) -> dict:
        d = {"channel_names": dict(self.channel_names), "numTraining": self.num_training,
             "file_ending": self.file_ending}
        if self.labels is not None:
            d["labels"] = dict(self.labels)
        if self.name is not None:
            d["name"] = self.name
        if self.description is not None:
            d["description"] = self.description
        d.update(self.extra)
        return d

    @classmethod
    def from_dict(cls, d: dict, source: str = "dataset.json") -> "DatasetJson":
        problems = []
        channel_names = d.get("channel_names", d.get("modality"))
        if not isinstance(channel_names, dict) or not channel_names:
            problems.append('"channel_names" is missing or empty: add e.g. {"0": "CT"}')
        elif sorted(int(k) for k in channel_names) != list(range(len(channel_names))):
            problems.append(f'"channel_names" keys must be "0".."{len(channel_names) - 1}", got '
                            f"{sorted(channel_names)}")
        if not isinstance(d.get("numTraining"), int):
            problems.append('"numTraining" is missing or not an integer: set it to the number of training cases')
        ending = d.get("file_ending")
        if not isinstance(ending, str) or not ending.startswith("."):
            problems.append('"file_ending" is missing or does not start with ".": e.g. ".nii.gz"')
        labels = d.get("labels")
        if labels is not None:
            if not isinstance(labels, dict) or not all(isinstance(v, int) for v in labels.values()):
                problems.append('"labels" must map names to integer values, e.g. {"background": 0, "tumour": 1}')
            elif 0 not in labels.values():
                problems.append('"labels" must contain the background value 0')
        if problems:
            raise MassError(f"{source}: " + "; ".join(problems))
        known = {"channel_names", "modality", "numTraining", "file_ending", "labels", "name", "description"}
        return cls(channel_names={str(k): str(v) for k, v in channel_names.items()},
                   num_training=d["numTraining"], file_ending=ending,
                   labels=dict(labels) if labels is not None else None,
                   name=d.get("name"), description=d.get("description"),
                   extra={k: v for k, v in d.items() if k not in known})


def load_dataset_json(dataset_dir: Path) -> DatasetJson:
    path = Path(dataset_dir) / "dataset.json"
    if not path.is_file():
        raise MassError(f"{path}: not found; every raw dataset needs a dataset.json (see "
                        f"documentation/dataset_format.md)")
    return DatasetJson.from_dict(read_json(path), source=str(path))


def save_dataset_json(dataset_json: DatasetJson, dataset_dir: Path) -> None:
    write_json_atomic(dataset_json.to_dict(), Path(dataset_dir) / "dataset.json")


@dataclass(frozen=True)
class CaseFiles:
    """The files of one case: one image path per channel (index order) and an optional label path."""

    case_id: str
    images: tuple[Path, ...]
    label: Path | None = None


def _strip_ending(name: str, file_ending: str) -> str | None:
    return name[: -len(file_ending)] if name.endswith(file_ending) else None


def scan_image_folder(folder: Path, file_ending: str) -> dict[str, dict[int, Path]]:
    """Map case id -> {channel index: path} for every `<case>_<XXXX>` entry in `folder`.

    Files must carry `file_ending`; folders without an ending are taken as DICOM series.
    """
    found: dict[str, dict[int, Path]] = {}
    if not folder.is_dir():
        return found
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith("."):
            continue
        stem = entry.name if entry.is_dir() else _strip_ending(entry.name, file_ending)
        match = CHANNEL_SUFFIX.match(stem) if stem else None
        if match:
            found.setdefault(match["case"], {})[int(match["channel"])] = entry
    return found


def list_cases(dataset_dir: Path, dataset_json: DatasetJson, split: str = "Tr") -> list[CaseFiles]:
    """All cases of `imagesTr` (split "Tr") or `imagesTs` ("Ts"), sorted by id, with channels in order.

    Missing channels are left out of `images` (the integrity check reports them); labels are attached
    when `labels<split>/<case><ending>` exists.
    """
    dataset_dir = Path(dataset_dir)
    channels = scan_image_folder(dataset_dir / f"images{split}", dataset_json.file_ending)
    label_dir = dataset_dir / f"labels{split}"
    cases = []
    for case_id in sorted(channels):
        images = tuple(channels[case_id][c] for c in range(dataset_json.num_channels) if c in channels[case_id])
        label = label_dir / f"{case_id}{dataset_json.file_ending}"
        cases.append(CaseFiles(case_id, images, label if label.is_file() else None))
    return cases


def dataset_folder_name(dataset_id: int, name: str) -> str:
    return f"Dataset{dataset_id:03d}_{name}"


def find_dataset_name(id_or_name: str | int, search_roots: list[Path]) -> str:
    """Resolve `501` or `Dataset501_Name` to the folder name found under any of `search_roots`."""
    text = str(id_or_name)
    if not text.isdigit() and not DATASET_FOLDER_NAME.match(text):
        # a name is one folder below the roots, never a path: "../raw/Dataset841_X" would write outside them
        raise DatasetNotFoundError(f"{text!r} is neither a dataset id (e.g. 501) nor a dataset folder name "
                                   f"(e.g. Dataset501_Liver); give the id or the bare folder name, not a path")
    if text.isdigit():
        prefix = f"Dataset{int(text):03d}_"
        names = {p.name for root in search_roots if root.is_dir() for p in root.iterdir()
                 if p.is_dir() and p.name.startswith(prefix)}
    else:
        names = {text} if any((root / text).is_dir() for root in search_roots) else set()
    if len(names) == 1:
        return names.pop()
    where = ", ".join(str(r) for r in search_roots)
    expected = f"Dataset{int(text):03d}_<Name>" if text.isdigit() else text
    if not names:
        raise DatasetNotFoundError(f"no dataset {text!r} in {where}; check the id, or set MASS_raw (or --raw) to "
                                   f"the folder that holds {expected}")
    raise DatasetNotFoundError(f"dataset id {text} is ambiguous: {sorted(names)} in {where}; rename one of them")
