"""mass_generate_masks as a library: every preprocessed case of a configuration -> one mask bank per case.

Output folder `<preprocessed>/<Dataset>/<data_identifier>/masks_<generator>/`: `<case>.masks` (mask_bank.py),
`previews/<case>.png`, and `masks.json` (generator, all parameters, post-processing, masks per case).
A bank is written atomically and records a hash of every parameter, so re-runs skip finished cases and redo
stale ones; a killed run loses at most the cases in flight. Failures are collected and reported at the end.
"""
from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from mass_nn import __version__
from mass_nn.errors import MassError
from mass_nn.io import artifact_layout as layout
from mass_nn.io.atomic import write_json_atomic
from mass_nn.io.dataset_json import find_dataset_name
from mass_nn.masks.case_loading import load_case_input, preprocessed_case_ids
from mass_nn.masks.mask_bank import MaskBank, write_mask_bank
from mass_nn.masks.native_grid import load_native_case_input, proposals_to_grid
from mass_nn.masks.postprocess import deduplicate, drop_small
from mass_nn.masks.previews import write_preview
from mass_nn.masks.windowing import QUANTILE_RULE
from mass_nn.parallel import run_per_item
from mass_nn.paths import MassPaths
from mass_nn.planning.plans import load_plans
from mass_nn.preprocessing.case_properties import load_properties
from mass_nn.registry import MASK_GENERATORS

logger = logging.getLogger(__name__)
_WORKER_GENERATORS: dict = {}  # one generator (model) per worker process, built on its first case


@dataclass
class MaskGenerationOptions:
    generator: str = "supervoxel"
    generator_settings: dict = field(default_factory=dict)
    configuration: str = "3d_cpu"
    plans_name: str = "MassPlans"
    channel: int | None = None  # None: the plans' mask_generation.channel
    min_volume_mm3: float = 200.0
    iou_threshold: float = 0.9
    dedupe_seed: int = 0
    num_processes: int = 1
    num_parts: int = 1
    part_id: int = 0
    clean: bool = False
    previews: bool = True
    progress: bool = True


@dataclass(frozen=True)
class _CaseJob:
    case_id: str
    case_folder: Path
    bank_folder: Path
    plans_path: Path
    options: MaskGenerationOptions
    parameters_hash: str
    min_voxels: int


def _generator(options: MaskGenerationOptions):
    key = (options.generator, json.dumps(options.generator_settings, sort_keys=True, default=str))
    if key not in _WORKER_GENERATORS:
        _WORKER_GENERATORS[key] = MASK_GENERATORS.get(options.generator)(**options.generator_settings)
    return _WORKER_GENERATORS[key]


def close_generators() -> None:
    for generator in _WORKER_GENERATORS.values():
        generator.close()
    _WORKER_GENERATORS.clear()


def _run_case(job: _CaseJob) -> dict:
    start = time.time()
    plans = load_plans(job.plans_path)
    generator = _generator(job.options)
    case = load_case_input(job.case_folder, job.case_id, plans, job.options.channel, generator.needs_label)
    if generator.native_resolution:
        props = load_properties(layout.CaseOutput(job.case_folder, job.case_id).properties)
        native = load_native_case_input(props, plans, job.options.channel)
        proposals = proposals_to_grid(generator.generate(native), native.shape, case.shape)
    else:
        proposals = generator.generate(case)
    proposals = drop_small(proposals, job.min_voxels)
    proposals = deduplicate(proposals, job.options.iou_threshold, job.options.dedupe_seed)
    bank_path = layout.bank_file(job.bank_folder, job.case_id)
    write_mask_bank(bank_path, job.case_id, case.shape, proposals, job.options.generator, job.parameters_hash)
    if job.options.previews:
        write_preview(MaskBank(bank_path), case.windowed, case.mask_axis, case.seed_slice_interval,
                      _preview_path(bank_path))
    return {"case_id": job.case_id, "masks": len(proposals), "seconds": round(time.time() - start, 2)}


def _preview_path(bank_path: Path) -> Path:
    return bank_path.parent / "previews" / f"{layout.case_of_bank_file(bank_path)}.png"


def _is_done(bank_path: Path, parameters_hash: str, preview: bool = False) -> bool:
    """Done = the bank verifies (sizes in its header) with the expected hash, and its preview exists if asked."""
    if preview and not _preview_path(bank_path).is_file():
        return False
    try:
        return bank_path.is_file() and MaskBank(bank_path).parameters_hash == parameters_hash
    except (MassError, ValueError, OSError):
        return False


def _mask_channel(plans, requested: int | None, plans_path: Path) -> int:
    """The channel masks are made from: --channel, else the plans' choice; refused when it does not exist."""
    channel = plans.mask_generation.channel if requested is None else requested
    if not 0 <= channel < len(plans.channels):
        names = ", ".join(f"{c.index} ({c.name})" for c in plans.channels)
        source = "--channel" if requested is not None else f"{plans_path}: mask_generation.channel"
        raise MassError(f"{source} {channel} does not exist; the dataset's channels are {names}")
    return channel


def select_part(case_ids: list[str], num_parts: int, part_id: int) -> list[str]:
    """The cases of shard `part_id` of `num_parts` (every case in exactly one shard)."""
    if num_parts < 1 or not 0 <= part_id < num_parts:
        raise MassError(f"--part-id must be in 0..{num_parts - 1} and --num-parts >= 1 (got {part_id} of {num_parts})")
    return case_ids[part_id::num_parts]


def _record(options: MaskGenerationOptions, generator_parameters: dict, spacing_mm: list[float]) -> dict:
    voxel_mm3 = spacing_mm[0] * spacing_mm[1] * spacing_mm[2]
    return {"generator": options.generator, "parameters": generator_parameters,
            "postprocessing": {"min_volume_mm3": options.min_volume_mm3,
                               "min_voxels": max(1, round(options.min_volume_mm3 / voxel_mm3)),
                               "iou_threshold": options.iou_threshold, "dedupe_seed": options.dedupe_seed},
            "configuration": options.configuration, "plans_name": options.plans_name, "channel": options.channel}


def generate_masks(dataset: str | int, paths: MassPaths, options: MaskGenerationOptions) -> dict:
    """Generate the mask banks of one dataset (this shard's cases); returns a summary dict."""
    start = time.time()
    name = find_dataset_name(dataset, [paths.preprocessed, paths.raw])
    plans_path = layout.plans_file(paths.preprocessed / name, options.plans_name)
    plans = load_plans(plans_path)
    options = replace(options, channel=_mask_channel(plans, options.channel, plans_path))
    config = plans.configuration(options.configuration)
    case_folder = paths.preprocessed / name / config.data_identifier
    case_ids = select_part(preprocessed_case_ids(case_folder, str(dataset), options.configuration),
                           options.num_parts, options.part_id)
    generator = MASK_GENERATORS.get(options.generator)(**options.generator_settings)  # fails early on bad input
    record = _record(options, generator.parameters(), config.target_spacing_zyx_mm)
    if generator.native_resolution:
        record["grid"] = "native, carried to the preprocessed grid by linear + 0.5"
    generator.close()
    record["preprocessing_hash"] = plans.preprocessing_hash(options.configuration)
    if any(w.kind == "quantile" for w in plans.channels[options.channel].windows):
        record["quantile_windows"] = QUANTILE_RULE
    parameters_hash = hashlib.sha256(json.dumps(record, sort_keys=True, default=str).encode()).hexdigest()[:16]
    bank_folder = layout.bank_folder(case_folder, options.generator)
    if options.clean and bank_folder.exists():
        shutil.rmtree(bank_folder)
    bank_folder.mkdir(parents=True, exist_ok=True)
    todo = [c for c in case_ids
            if not _is_done(layout.bank_file(bank_folder, c), parameters_hash, options.previews)]
    jobs = [_CaseJob(c, case_folder, bank_folder, plans_path, options, parameters_hash,
                     record["postprocessing"]["min_voxels"]) for c in todo]
    results, failures = [], []
    try:
        for index, result in run_per_item(_run_case, jobs, options.num_processes, desc=f"masks {options.generator}",
                                          progress=options.progress):
            if isinstance(result, Exception):
                failures.append(f"{jobs[index].case_id}: {result}")
            else:
                results.append(result)
                logger.info("%s: %d masks in %.1f s", result["case_id"], result["masks"], result["seconds"])
    finally:
        close_generators()
    counts = {layout.case_of_bank_file(p): len(MaskBank(p)) for p in layout.bank_files(bank_folder)
              if _is_done(p, parameters_hash)}
    write_json_atomic({**record, "parameters_hash": parameters_hash, "mass_nn_version": __version__,
                       "cases": counts}, layout.bank_index(bank_folder))
    if failures:
        raise MassError(f"{len(failures)} case(s) failed (the others are done; fix these and re-run):\n  "
                        + "\n  ".join(failures))
    return {"dataset": name, "generator": options.generator, "folder": str(bank_folder), "cases": len(case_ids),
            "generated": len(results), "skipped": len(case_ids) - len(todo),
            "masks": sum(counts.get(c, 0) for c in case_ids), "seconds": round(time.time() - start, 1)}


def bank_folder_of(dataset: str | int, paths: MassPaths, options: MaskGenerationOptions) -> Path:
    """Where the banks of `options.generator` for this dataset and configuration live."""
    name = find_dataset_name(dataset, [paths.preprocessed, paths.raw])
    plans = load_plans(layout.plans_file(paths.preprocessed / name, options.plans_name))
    folder = paths.preprocessed / name / plans.configuration(options.configuration).data_identifier
    return layout.bank_folder(folder, options.generator)
