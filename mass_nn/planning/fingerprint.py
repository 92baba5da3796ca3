"""Dataset fingerprint: what planning needs to know about a raw dataset, computed without labels.

Per case: spacing, shape before and after cropping to the foreground (see preprocessing/foreground.py for the
definition used per modality), and a seeded sample of foreground intensities per channel. Per channel, the
pooled samples give mean, std, min, max and the percentiles in PERCENTILES.
"""
from __future__ import annotations

import functools
import logging
import time
from pathlib import Path

import numpy as np

from mass_nn.errors import MassError
from mass_nn.io.dataset_json import CaseFiles, DatasetJson, list_cases, load_dataset_json
from mass_nn.io.image_io import read_image
from mass_nn.parallel import run_per_item
from mass_nn.planning.fingerprint_records import (PERCENTILES, CaseFingerprint, ChannelIntensityStats,
                                                  DatasetFingerprint, percentile_key)
from mass_nn.planning.foreground import bounding_box, crop_to_box, foreground_definition, foreground_mask
from mass_nn.planning.modality import modality_of_channel

logger = logging.getLogger(__name__)

TOTAL_INTENSITY_SAMPLES = 10_000_000  # pooled over the dataset; bounds memory, plenty for percentiles
ANISOTROPY_THRESHOLD = 3.0  # max/min spacing ratio above which a case counts as anisotropic


def _case_fingerprint(indexed_case: tuple[int, CaseFiles], modalities: list[str], samples_per_case: int, seed: int):
    case_index, case = indexed_case
    volumes, geometry = [], None
    for path in case.images:
        volume, geometry = read_image(path)
        volumes.append(volume)
    channels = np.stack(volumes)
    mask = foreground_mask(channels, modalities)
    box = bounding_box(mask)
    rng = np.random.default_rng(seed + case_index)
    flat_mask = np.flatnonzero(mask)
    picks = flat_mask[rng.integers(0, flat_mask.size, size=samples_per_case)]
    samples = [volume.ravel()[picks] for volume in channels]
    spacing = geometry.spacing_zyx
    fingerprint = CaseFingerprint(case_id=case.case_id, spacing_zyx_mm=list(spacing),
                                  shape_before_crop_zyx=list(channels.shape[1:]),
                                  shape_after_crop_zyx=list(crop_to_box(mask, box).shape),
                                  anisotropy=float(max(spacing) / min(spacing)))
    return fingerprint, samples


def _channel_stats(name: str, modality: str, samples: np.ndarray) -> ChannelIntensityStats:
    values = np.percentile(samples, PERCENTILES)
    return ChannelIntensityStats(
        name=name, modality=modality, foreground_definition=foreground_definition(modality),
        mean=float(samples.mean()), std=float(samples.std()), min=float(samples.min()), max=float(samples.max()),
        percentiles={percentile_key(q): float(v) for q, v in zip(PERCENTILES, values)})


def source_signature(cases: list[CaseFiles]) -> dict[str, int]:
    """File name -> byte size of every image; a changed dataset changes this and invalidates the fingerprint."""
    sig = {}
    for case in cases:
        for path in case.images:
            sig[path.name] = (sum(f.stat().st_size for f in path.iterdir()) if path.is_dir()
                              else path.stat().st_size)
    return sig


def extract_fingerprint(dataset_dir: Path, num_processes: int = 1, seed: int = 1234,
                        progress: bool = True, pool=None) -> DatasetFingerprint:
    """Fingerprint the training cases of the raw dataset at `dataset_dir`."""
    dataset_dir = Path(dataset_dir)
    dataset_json: DatasetJson = load_dataset_json(dataset_dir)
    cases = list_cases(dataset_dir, dataset_json)
    names = [dataset_json.channel_names[str(c)] for c in range(dataset_json.num_channels)]
    modalities = [modality_of_channel(n) for n in names]
    per_case = max(1000, TOTAL_INTENSITY_SAMPLES // max(1, len(cases)))
    work = functools.partial(_case_fingerprint, modalities=modalities, samples_per_case=per_case, seed=seed)
    start = time.time()
    results = [None] * len(cases)
    for index, result in run_per_item(work, list(enumerate(cases)), num_processes, "fingerprint",
                                      progress=progress, pool=pool):
        if isinstance(result, Exception):
            raise MassError(f"fingerprint of case {cases[index].case_id} failed: {result}") from result
        results[index] = result
    case_fps = [r[0] for r in results]
    channels = [_channel_stats(names[c], modalities[c], np.concatenate([r[1][c] for r in results]))
                for c in range(len(names))]
    anisotropies = np.array([c.anisotropy for c in case_fps])
    logger.info("fingerprint of %d cases in %.1f s", len(cases), time.time() - start)
    return DatasetFingerprint(
        dataset_name=dataset_dir.name, cases=case_fps, channels=channels,
        median_spacing_zyx_mm=[float(v) for v in np.median([c.spacing_zyx_mm for c in case_fps], axis=0)],
        median_shape_after_crop_zyx=[int(v) for v in np.median([c.shape_after_crop_zyx for c in case_fps], axis=0)],
        median_anisotropy=float(np.median(anisotropies)),
        fraction_anisotropic_cases=float(np.mean(anisotropies > ANISOTROPY_THRESHOLD)),
        source_signature=source_signature(cases))
