"""Where every artifact of the pipeline lives, owned in one place.

Inside `MASS_preprocessed/<dataset>/`: the plans `<plans_name>.json`, and per configuration a folder
`<data_identifier>/` holding each case's `<case>.b2nd` (image), `<case>_seg.b2nd` (label map, labelled cases only)
and `<case>.json` (properties), plus one folder `masks_<generator>/` per mask generator with a bank
`<case>.masks` per case and the index `masks.json`. Inside a run folder: `checkpoint_{latest,best,final}.pt`.
Run folders themselves are named by `mass_nn/training/run_folder.py`. Beside `mass_predict`'s label maps
`<output>/<case><ending>`, `--structure-masks` writes `<output>/structures/<case>/label_<value><ending>`.

Every stage builds these paths with the functions here, never by hand.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

BANK_FOLDER_PREFIX = "masks_"
BANK_SUFFIX = ".masks"
BANK_INDEX = "masks.json"
CHECKPOINT_KINDS = ("latest", "best", "final")
STRUCTURES_FOLDER = "structures"


@dataclass(frozen=True)
class CaseOutput:
    """The three files of one preprocessed case."""

    folder: Path
    case_id: str

    @property
    def data(self) -> Path:
        return Path(self.folder) / f"{self.case_id}.b2nd"

    @property
    def seg(self) -> Path:
        return Path(self.folder) / f"{self.case_id}_seg.b2nd"

    @property
    def properties(self) -> Path:
        return Path(self.folder) / f"{self.case_id}.json"


def data_identifier(plans_name: str, configuration: str) -> str:
    """The name of a configuration's case folder inside the dataset's preprocessed folder."""
    return f"{plans_name}_{configuration}"


def plans_file(dataset_folder: Path, plans_name: str) -> Path:
    return Path(dataset_folder) / f"{plans_name}.json"


def bank_folder(configuration_folder: Path, generator: str) -> Path:
    """The folder of one generator's mask banks inside a configuration's case folder."""
    return Path(configuration_folder) / f"{BANK_FOLDER_PREFIX}{generator}"


def bank_folders(configuration_folder: Path) -> list[Path]:
    """Every finished bank folder (one with an index) of a configuration's case folder, sorted."""
    return sorted(f for f in Path(configuration_folder).glob(f"{BANK_FOLDER_PREFIX}*") if (f / BANK_INDEX).is_file())


def generator_of(bank_folder_path: Path) -> str:
    return Path(bank_folder_path).name.removeprefix(BANK_FOLDER_PREFIX)


def bank_file(bank_folder_path: Path, case_id: str) -> Path:
    return Path(bank_folder_path) / f"{case_id}{BANK_SUFFIX}"


def bank_files(bank_folder_path: Path) -> list[Path]:
    return sorted(Path(bank_folder_path).glob(f"*{BANK_SUFFIX}"))


def case_of_bank_file(path: Path) -> str:
    return Path(path).name[: -len(BANK_SUFFIX)]


def bank_index(bank_folder_path: Path) -> Path:
    return Path(bank_folder_path) / BANK_INDEX


def checkpoint_path(run_folder: Path, kind: str) -> Path:
    if kind not in CHECKPOINT_KINDS:
        raise ValueError(f"checkpoint kind {kind!r}; known: {CHECKPOINT_KINDS}")
    return Path(run_folder) / f"checkpoint_{kind}.pt"


def structure_mask_path(output_folder: Path, case_id: str, label_value: int, ending: str) -> Path:
    """`mass_predict --structure-masks`: one label's own claim of one case (0/1, the case's geometry)."""
    return Path(output_folder) / STRUCTURES_FOLDER / case_id / f"label_{int(label_value)}{ending}"
