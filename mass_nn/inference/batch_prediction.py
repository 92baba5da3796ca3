"""Predicting a folder (or list) of raw images: group files into cases, segment each, keep going past a
failing case and report every failure at the end."""
from __future__ import annotations

import logging
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
from tqdm import tqdm

from mass_nn.errors import MassError
from mass_nn.io.dataset_json import CHANNEL_SUFFIX, CaseFiles
from mass_nn.inference.predictor import SegmentationPredictor

logger = logging.getLogger(__name__)

IMAGE_ENDINGS = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")


def image_ending(path: Path) -> str | None:
    """The image file ending of `path` (".nii.gz", ".nrrd", ...) or None when it is not an image file."""
    name = path.name.lower()
    return next((e for e in IMAGE_ENDINGS if name.endswith(e)), None)


def gather_cases(inputs: list[Path], num_channels: int) -> list[tuple[CaseFiles, str]]:
    """(case, file ending) for every case among `inputs` (files and/or folders of files).

    Files named `<case>_<XXXX><ending>` are grouped into multi-channel cases by XXXX; for a single-channel
    model a file without that suffix is a case of its own (named after the file).
    """
    files = []
    for item in inputs:
        item = Path(item)
        if item.is_dir():
            files += sorted(p for p in item.iterdir() if p.is_file() and image_ending(p) and not p.name.startswith("."))
        elif item.is_file() and image_ending(item):
            files.append(item)
        else:
            raise MassError(f"{item}: not an image file ({', '.join(IMAGE_ENDINGS)}) or folder; check the -i path")
    if not files:
        raise MassError(f"no image files in {', '.join(str(i) for i in inputs)}")
    grouped: dict[str, dict[int, Path]] = {}
    endings: dict[str, str] = {}
    for path in files:
        ending = image_ending(path)
        stem = path.name[: -len(ending)]
        match = CHANNEL_SUFFIX.match(stem)
        case_id, channel = (match["case"], int(match["channel"])) if match else (stem, 0)
        if not match and num_channels != 1:
            raise MassError(f"{path}: the model takes {num_channels} channels; name the files <case>_0000{ending}, "
                            f"<case>_0001{ending}, ...")
        if channel in grouped.setdefault(case_id, {}):
            raise MassError(f"{path}: case {case_id!r} channel {channel} given twice ({grouped[case_id][channel]})")
        grouped[case_id][channel] = path
        endings[case_id] = ending
    cases = []
    for case_id, channels in sorted(grouped.items()):
        if sorted(channels) != list(range(num_channels)):
            raise MassError(f"case {case_id!r}: channels {sorted(channels)} found, the model expects "
                            f"{list(range(num_channels))}")
        cases.append((CaseFiles(case_id, tuple(channels[c] for c in range(num_channels))), endings[case_id]))
    return cases


def predict_cases(predictor: SegmentationPredictor, cases: list[tuple[CaseFiles, str]], output_folder: Path,
                  skip_existing: bool = False, progress: bool = True,
                  on_structure_masks: Callable[[CaseFiles, dict[int, np.ndarray]], None] | None = None) -> dict:
    """Segment every case into `output_folder/<case><ending>`; a failing case is logged and listed in the
    summary's "failed" entry, the others go on. skip_existing keeps outputs already there (resume).
    `on_structure_masks`, when given, gets each case's structure masks (predictor.predict_case) before its label
    map is written; they are not kept, so a long list of cases does not hold them all in memory."""
    output_folder = Path(output_folder)
    output_folder.mkdir(parents=True, exist_ok=True)
    done, skipped, failed = [], [], []
    for case, ending in tqdm(cases, desc="predict", disable=not progress, dynamic_ncols=True):
        target = output_folder / f"{case.case_id}{ending}"
        if skip_existing and target.is_file():
            skipped.append(case.case_id)
            continue
        try:
            handle = None if on_structure_masks is None else (lambda masks, case=case: on_structure_masks(case, masks))
            done.append(predictor.predict_case(case, target, on_structure_masks=handle))
        except Exception as err:  # one broken case must not cost the others their predictions
            message = str(err) if isinstance(err, MassError) else f"{type(err).__name__}: {err}"
            logger.error("case %s failed: %s", case.case_id, message)
            failed.append({"case_id": case.case_id, "error": re.sub(r"\s+", " ", message)})
    return {"output_folder": str(output_folder), "predicted": done, "skipped": skipped, "failed": failed}
