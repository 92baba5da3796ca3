"""Locating preprocessed cases and turning one into the CaseInput a mask generator reads."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from mass_nn.errors import MassError
from mass_nn.io.artifact_layout import CaseOutput
from mass_nn.masks.proposal import CaseInput
from mass_nn.masks.windowing import windowed_channels
from mass_nn.planning.plans import Plans
from mass_nn.preprocessing.blosc2_storage import load_array
from mass_nn.preprocessing.case_properties import CaseProperties, load_properties
from mass_nn.preprocessing.restore import raw_intensities


def preprocessed_case_ids(folder: Path, dataset: str, configuration: str) -> list[str]:
    """Case ids with finished preprocessing in `folder` (sorted); a clear error when there are none."""
    ids = sorted(p.stem for p in Path(folder).glob("*.json")) if Path(folder).is_dir() else []
    if not ids:
        raise MassError(f"{folder}: no preprocessed cases; run mass_plan_and_preprocess -d {dataset} "
                        f"-c {configuration} first")
    return ids


def load_case_input(folder: Path, case_id: str, plans: Plans, channel: int, with_label: bool) -> CaseInput:
    """The windowed channel `channel` (raw intensities recovered, then the plan's three windows) and, when asked
    for, the label map of one preprocessed case."""
    output = CaseOutput(Path(folder), case_id)
    props = load_properties(output.properties)
    label = None
    if with_label:
        if not output.seg.is_file():
            raise MassError(f"case {case_id} has no preprocessed label ({output.seg}); it had no labelsTr file")
        label = load_array(output.seg)[0]
    return case_input_from_arrays(case_id, load_array(output.data), props, plans, channel, label)


def case_input_from_arrays(case_id: str, data: np.ndarray, props: CaseProperties, plans: Plans, channel: int,
                           label: np.ndarray | None = None) -> CaseInput:
    """The CaseInput of a preprocessed case held in memory (data (c, z, y, x) and its properties)."""
    if not 0 <= channel < len(plans.channels):
        raise MassError(f"channel {channel} does not exist; the dataset has {len(plans.channels)} channel(s)")
    raw = raw_intensities(data, props)[channel]
    return CaseInput(case_id=case_id, windowed=windowed_channels(raw, plans.channels[channel]),
                     spacing_zyx_mm=tuple(props.target_spacing_zyx_mm), mask_axis=props.mask_axis,
                     seed_slice_interval=props.seed_slice_interval, label=label)


def load_label(folder: Path, case_id: str) -> np.ndarray | None:
    """The preprocessed label map of a case, or None without one."""
    seg = CaseOutput(Path(folder), case_id).seg
    return load_array(seg)[0] if seg.is_file() else None
