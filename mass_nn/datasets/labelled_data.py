"""The labelled dataset of a downstream run: classes, splits, the seeded few-shot selection, and the raw files
of each case (test predictions are made from the raw images and scored against the raw labels)."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mass_nn.datasets.preprocessed_sources import PreprocessedSource, resolve_source
from mass_nn.errors import MassError
from mass_nn.io.artifact_layout import CaseOutput
from mass_nn.io.dataset_json import CaseFiles, list_cases, load_dataset_json
from mass_nn.paths import MassPaths
from mass_nn.preprocessing.blosc2_storage import open_array


@dataclass(frozen=True)
class LabelledCase:
    """A preprocessed case with its label map: `<case>.b2nd` (c, z, y, x) and `<case>_seg.b2nd` (1, z, y, x)."""

    case_id: str
    image_path: str | os.PathLike
    seg_path: str | os.PathLike


@dataclass
class LabelledDataset:
    """A preprocessed dataset with labels: `classes` maps class name -> label value (background left out)."""

    source: PreprocessedSource
    raw_folder: Path
    classes: dict[str, int]

    def labelled_cases(self, split: str) -> list[str]:
        """Cases of `split` whose label map was preprocessed."""
        return [c for c in self.source.cases(split) if CaseOutput(self.source.data_folder, c).seg.is_file()]

    def patch_case(self, case_id: str) -> LabelledCase:
        files = CaseOutput(self.source.data_folder, case_id)
        return LabelledCase(case_id, files.data, files.seg)

    def preprocessed_pairs(self, case_ids: list[str]) -> list[tuple[np.ndarray, np.ndarray]]:
        """(image (c, z, y, x), label map (z, y, x)) of each case, read into memory (e.g. the shots as references)."""
        return [(np.asarray(open_array(c.image_path)), np.asarray(open_array(c.seg_path))[0])
                for c in map(self.patch_case, case_ids)]

    def classes_present(self, pairs: list[tuple[np.ndarray, np.ndarray]]) -> dict[str, int]:
        """The classes (name -> value) that occur in at least one of the label maps of `pairs`."""
        return {n: v for n, v in self.classes.items() if any((seg == v).any() for _, seg in pairs)}

    def raw_cases(self, case_ids: list[str]) -> list[CaseFiles]:
        """The raw image and label files of `case_ids` (imagesTr/labelsTr), in the given order."""
        by_id = {c.case_id: c for c in list_cases(self.raw_folder, load_dataset_json(self.raw_folder))}
        missing = [c for c in case_ids if c not in by_id or by_id[c].label is None]
        if missing:
            raise MassError(f"{self.raw_folder}: raw image or label of {missing[:5]} not found; the raw dataset "
                            f"changed since preprocessing - re-run mass_plan_and_preprocess")
        return [by_id[c] for c in case_ids]


def resolve_labelled_dataset(dataset: str, paths: MassPaths, plans_name: str, configuration: str) -> LabelledDataset:
    """The labelled dataset `dataset`; errors name what is missing (labels in dataset.json, labelled cases)."""
    source = resolve_source(dataset, paths, plans_name, configuration)
    raw_folder = paths.raw / source.dataset_name
    labels = load_dataset_json(paths.preprocessed / source.dataset_name).labels or {}
    classes = {name: int(value) for name, value in labels.items() if int(value) != 0}
    if not classes:
        raise MassError(f"{paths.preprocessed / source.dataset_name / 'dataset.json'}: no labels besides background; "
                        f"downstream segmentation needs a labelled dataset (labels in dataset.json and labelsTr/)")
    result = LabelledDataset(source, raw_folder, classes)
    if not result.labelled_cases("train"):
        raise MassError(f"{source.data_folder}: no labelled case in the train split; put label maps in "
                        f"{raw_folder / 'labelsTr'} and re-run mass_plan_and_preprocess")
    return result


def select_shots(case_ids: list[str], shots: int | None, seed: int) -> list[str]:
    """`shots` cases of `case_ids` chosen by `seed` (all when None), in selection order.

    The choice is the first `shots` of one seeded permutation of the sorted ids, so for one seed the k-shot set
    grows by adding cases (the 1-shot case is among the 5 shots): comparisons across k differ only in k.
    """
    ordered = sorted(case_ids)
    if shots is None:
        return ordered
    if shots < 1 or shots > len(ordered):
        raise MassError(f"-shots {shots}: the train split has {len(ordered)} labelled case(s); choose 1 to "
                        f"{len(ordered)}")
    permutation = np.random.default_rng([seed, 7919]).permutation(len(ordered))
    return [ordered[i] for i in permutation[:shots]]
