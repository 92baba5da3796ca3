"""The whole first stage for one dataset: integrity check → fingerprint → plans → splits → preprocessing.

Artifacts in `<MASS_preprocessed>/<Dataset>/`: dataset.json (copy), dataset_fingerprint.json,
integrity_warnings.json (legal but suspicious inputs, documentation/bad_inputs.md), <plans_name>.json,
splits.json, and one folder of preprocessed cases per configuration.
"""
from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from mass_nn.io.atomic import read_json, write_json_atomic
from mass_nn.io.dataset_json import find_dataset_name, list_cases, load_dataset_json
from mass_nn.io.integrity import verify_dataset_integrity
from mass_nn.parallel import default_num_processes, worker_pool
from mass_nn.paths import MassPaths
from mass_nn.planning.fingerprint import extract_fingerprint, source_signature
from mass_nn.planning.fingerprint_records import DatasetFingerprint
from mass_nn.planning.planner import plan_experiment
from mass_nn.planning.planner_settings import DEFAULT_PRESET, load_preset
from mass_nn.planning.plans import Plans, save_plans
from mass_nn.planning.splits import ensure_splits
from mass_nn.preprocessing.preprocessor import preprocess_cases

logger = logging.getLogger(__name__)

FINGERPRINT_FILE = "dataset_fingerprint.json"
INTEGRITY_FILE = "integrity_warnings.json"
SPLITS_FILE = "splits.json"


@dataclass
class PlanAndPreprocessOptions:
    preset: str = DEFAULT_PRESET
    configurations: list[str] | None = None  # None: every configuration of the plans
    num_processes: int = field(default_factory=default_num_processes)
    clean: bool = False
    verify_integrity: bool = True
    preprocess: bool = True
    progress: bool = True


def load_or_extract_fingerprint(raw_dir: Path, out_dir: Path, options: PlanAndPreprocessOptions,
                                pool=None) -> DatasetFingerprint:
    """Reuse the saved fingerprint when the raw images are unchanged (same files and sizes), unless clean."""
    path = out_dir / FINGERPRINT_FILE
    if path.is_file() and not options.clean:
        saved = DatasetFingerprint.from_dict(read_json(path))
        dataset_json = load_dataset_json(raw_dir)
        if saved.source_signature == source_signature(list_cases(raw_dir, dataset_json)):
            logger.info("reusing %s", path)
            return saved
    fingerprint = extract_fingerprint(raw_dir, options.num_processes, progress=options.progress, pool=pool)
    write_json_atomic(fingerprint.to_dict(), path)
    return fingerprint


def plan_and_preprocess(dataset: str | int, paths: MassPaths, options: PlanAndPreprocessOptions) -> dict:
    """Run the stage for one dataset id or name; returns a summary dict (also the basis of the CLI's line)."""
    with worker_pool(options.num_processes) as pool:
        return _plan_and_preprocess(dataset, paths, options, pool)


def _plan_and_preprocess(dataset: str | int, paths: MassPaths, options: PlanAndPreprocessOptions, pool) -> dict:
    start = time.time()
    name = find_dataset_name(dataset, [paths.raw])
    raw_dir, out_dir = paths.raw / name, paths.preprocessed / name
    warnings = verify_dataset_integrity(raw_dir, options.num_processes, pool=pool) if options.verify_integrity \
        else None
    out_dir.mkdir(parents=True, exist_ok=True)
    if warnings is not None:
        write_json_atomic({"dataset": name, "warnings": warnings}, out_dir / INTEGRITY_FILE)
    fingerprint = load_or_extract_fingerprint(raw_dir, out_dir, options, pool)
    preset_name, plans_name, settings = load_preset(options.preset)
    plans: Plans = plan_experiment(fingerprint, settings, plans_name=plans_name, preset=preset_name)
    save_plans(plans, out_dir / f"{plans_name}.json")
    shutil.copyfile(raw_dir / "dataset.json", out_dir / "dataset.json")
    dataset_json = load_dataset_json(raw_dir)
    cases = list_cases(raw_dir, dataset_json)
    splits = ensure_splits(out_dir / SPLITS_FILE, [c.case_id for c in cases], plans.split_seed,
                           plans.split_fractions, dataset_json.extra.get("patient_of_case"))
    configurations = options.configurations or list(plans.configurations)
    for config in configurations:
        plans.configuration(config)
    results = []
    if options.preprocess:
        folders = {c: out_dir / plans.configuration(c).data_identifier for c in configurations}
        results = preprocess_cases(cases, plans, folders, options.num_processes, options.clean, options.progress,
                                   pool=pool)
    return {"dataset": name, "cases": len(cases), "plans": str(out_dir / f"{plans_name}.json"),
            "configurations": results, "warnings": warnings or [],
            "splits": {k: len(splits[k]) for k in ("train", "val", "test")},
            "seconds": round(time.time() - start, 2)}
