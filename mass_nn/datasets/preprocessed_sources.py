"""Finding what a pretraining run trains on: datasets, their plans and configuration, cases and mask banks.

Pretraining uses each dataset's `train` split; its `val` split is held out for validation and its `test` split
is never touched, so cases kept for downstream evaluation never leak into pretraining.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mass_nn.errors import MassError
from mass_nn.io import artifact_layout as layout
from mass_nn.io.atomic import read_json
from mass_nn.io.dataset_json import find_dataset_name
from mass_nn.paths import MassPaths
from mass_nn.planning.plans import ConfigurationPlan, Plans, load_plans
from mass_nn.planning.plans_compatibility import pretraining_pool_differences


@dataclass
class PreprocessedSource:
    """One preprocessed dataset in one configuration."""

    dataset_name: str
    plans: Plans
    configuration: ConfigurationPlan
    data_folder: Path  # the configuration's folder of <case>.b2nd arrays
    splits: dict

    def cases(self, split: str) -> list[str]:
        return list(self.splits.get(split, []))


def resolve_source(dataset: str, paths: MassPaths, plans_name: str, configuration: str) -> PreprocessedSource:
    """Load plans and splits of one preprocessed dataset; clear errors when a stage is missing."""
    name = find_dataset_name(dataset, [paths.preprocessed, paths.raw])
    folder = paths.preprocessed / name
    plans = load_plans(layout.plans_file(folder, plans_name))
    config = plans.configuration(configuration)
    data_folder = folder / config.data_identifier
    if not data_folder.is_dir() or not any(data_folder.glob("*.b2nd")):
        raise MassError(f"{data_folder}: no preprocessed cases; run mass_plan_and_preprocess -d {dataset} "
                        f"-c {configuration}")
    splits_path = folder / "splits.json"
    if not splits_path.is_file():
        raise MassError(f"{splits_path}: not found; re-run mass_plan_and_preprocess -d {dataset}")
    return PreprocessedSource(dataset_name=name, plans=plans, configuration=config, data_folder=data_folder,
                              splits=read_json(splits_path))


def resolve_sources(datasets: list[str], paths: MassPaths, plans_name: str,
                    configuration: str) -> list[PreprocessedSource]:
    """All datasets of a run; they must share target spacing, channel count, patch and network, and may differ
    in channel names, modality and normalisation (each is normalised by its own plans when preprocessed)."""
    sources = [resolve_source(d, paths, plans_name, configuration) for d in datasets]
    first = sources[0]
    for other in sources[1:]:
        differences = pretraining_pool_differences(first.plans, other.plans, configuration)
        if differences:
            raise MassError(f"{first.dataset_name} and {other.dataset_name} cannot be pretrained on together "
                            f"({plans_name}/{configuration}):\n  " + "\n  ".join(differences))
    return sources


def mask_bank_folder(source: PreprocessedSource, generator: str | None) -> Path:
    """The folder of the mask banks to train on (the only one present when `generator` is None)."""
    hint = f"mass_generate_masks -d {source.dataset_name} -c {source.configuration.name}"
    if generator is not None:
        folder = layout.bank_folder(source.data_folder, generator)
        if not layout.bank_index(folder).is_file():
            raise MassError(f"{folder}: no masks from generator {generator!r}; run {hint} -g {generator}")
        return folder
    folders = layout.bank_folders(source.data_folder)
    if not folders:
        raise MassError(f"{source.data_folder}: no masks generated yet; run {hint} first")
    if len(folders) > 1:
        names = ", ".join(layout.generator_of(f) for f in folders)
        raise MassError(f"{source.data_folder}: masks from several generators ({names}); choose one with --masks")
    return folders[0]


def cases_with_banks(source: PreprocessedSource, bank_folder: Path, split: str) -> list[tuple[str, Path, Path]]:
    """(case id, image path, bank path) for every case of `split`; a missing bank is an error naming the fix."""
    found, missing = [], []
    for case_id in source.cases(split):
        image, bank = layout.CaseOutput(source.data_folder, case_id).data, layout.bank_file(bank_folder, case_id)
        (found if bank.is_file() and image.is_file() else missing).append((case_id, image, bank))
    if missing:
        listed = ", ".join(c for c, _, _ in missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise MassError(f"{bank_folder}: {len(missing)} {split} case(s) have no mask bank ({listed}); mask "
                        f"generation is incomplete - re-run mass_generate_masks -d {source.dataset_name} "
                        f"-c {source.configuration.name}")
    return found
