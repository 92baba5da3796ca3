"""Case-level labels of a dataset for classification: `labels.csv` next to `dataset.json` in the raw dataset.

Format (header required, comma-separated, one row per labelled case; cases without a row are unlabelled):

    case_id,<target>                    one target column -> multi-class (any class names, e.g. 0/1 or "low"/"high")
    case_id,<name_1>,<name_2>,...       several columns of 0/1 -> multi-label (each column its own yes/no)

Classes of a multi-class target are sorted (numerically when all are integers), so class index i is stable.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mass_nn.errors import MassError
from mass_nn.io.atomic import atomic_path

CASE_LABELS_FILE = "labels.csv"


@dataclass
class CaseLabels:
    """Targets per case. multi-class: `targets[case]` is a class index into `class_names`; multi-label:
    `targets[case]` is a 0/1 list with one entry per name in `class_names`."""

    kind: str  # "multiclass" or "multilabel"
    class_names: list[str]
    targets: dict[str, int | list[int]]
    target_name: str = ""  # the column of a multi-class target

    def target_array(self, case_ids: list[str]) -> np.ndarray:
        """Targets of `case_ids` in order: int64 [N] (multi-class) or float32 [N, C] (multi-label)."""
        missing = [c for c in case_ids if c not in self.targets]
        if missing:
            raise MassError(f"no case-level label for {missing[:5]}; add them to {CASE_LABELS_FILE}")
        if self.kind == "multiclass":
            return np.asarray([self.targets[c] for c in case_ids], dtype=np.int64)
        return np.asarray([self.targets[c] for c in case_ids], dtype=np.float32).reshape(len(case_ids), -1)


def _sorted_classes(values: set[str]) -> list[str]:
    try:
        return sorted(values, key=int)
    except ValueError:
        return sorted(values)


def read_case_labels(path: str | Path) -> CaseLabels:
    """Parse a labels.csv (see the module docstring); every problem names the file, the row and the fix."""
    path = Path(path)
    if not path.is_file():
        raise MassError(f"{path}: no case-level labels; write a {CASE_LABELS_FILE} with a header 'case_id,<target>' "
                        f"and one row per case (documentation/classification.md)")
    with open(path, newline="") as handle:
        rows = [row for row in csv.reader(handle) if any(cell.strip() for cell in row)]
    if len(rows) < 2 or not rows[0] or rows[0][0].strip() != "case_id" or len(rows[0]) < 2:
        raise MassError(f"{path}: needs a header row starting with 'case_id' followed by at least one target "
                        f"column, and at least one case row")
    header = [cell.strip() for cell in rows[0]]
    values: dict[str, list[str]] = {}
    for number, row in enumerate(rows[1:], start=2):
        cells = [cell.strip() for cell in row]
        if len(cells) != len(header) or not cells[0] or any(c == "" for c in cells[1:]):
            raise MassError(f"{path}, line {number}: expected {len(header)} non-empty values ({', '.join(header)}), "
                            f"got {row}")
        if cells[0] in values:
            raise MassError(f"{path}, line {number}: case {cells[0]!r} appears twice")
        values[cells[0]] = cells[1:]
    if len(header) == 2:
        classes = _sorted_classes({v[0] for v in values.values()})
        if len(classes) < 2:
            raise MassError(f"{path}: target {header[1]!r} has a single class {classes}; classification needs two")
        index = {name: i for i, name in enumerate(classes)}
        return CaseLabels("multiclass", classes, {c: index[v[0]] for c, v in values.items()}, header[1])
    bad = [(c, v) for c, v in values.items() if any(x not in ("0", "1") for x in v)]
    if bad:
        raise MassError(f"{path}: with several target columns every value must be 0 or 1 (multi-label); case "
                        f"{bad[0][0]!r} has {bad[0][1]}")
    return CaseLabels("multilabel", header[1:], {c: [int(x) for x in v] for c, v in values.items()})


def write_case_labels(labels: CaseLabels, path: str | Path) -> None:
    """Write `labels` in the format read_case_labels reads (atomically)."""
    columns = [labels.target_name or "target"] if labels.kind == "multiclass" else labels.class_names
    with atomic_path(Path(path)) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["case_id", *columns])
        for case_id, target in sorted(labels.targets.items()):
            cells = [labels.class_names[target]] if labels.kind == "multiclass" else list(target)
            writer.writerow([case_id, *cells])
