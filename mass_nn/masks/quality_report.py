"""Quality report of a folder of mask banks against the preprocessed labels (MASS paper, Table 4a metrics)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from mass_nn.errors import MassError
from mass_nn.io import artifact_layout as layout
from mass_nn.io.atomic import write_json_atomic
from mass_nn.masks.case_loading import load_label
from mass_nn.masks.mask_bank import MaskBank
from mass_nn.masks.quality import mask_quality

METRICS = ("best", "avg", "percent_above_40")


def quality_report(bank_folder: Path) -> dict:
    """Per-case and mean Best / Avg / %>40 for every bank whose case has a label; written to quality.json."""
    bank_folder = Path(bank_folder)
    case_folder = bank_folder.parent
    per_case = {}
    for bank_path in layout.bank_files(bank_folder):
        bank = MaskBank(bank_path)
        label = load_label(case_folder, bank.case_id)
        if label is not None:
            per_case[bank.case_id] = mask_quality(bank.proposals(), label).to_dict()
        bank.close()
    if not per_case:
        raise MassError(f"{bank_folder}: no mask bank of a case with labels; the quality report needs labelsTr")
    mean = {m: round(float(np.mean([c[m] for c in per_case.values()])), 2) for m in METRICS}
    mean["masks_per_case"] = round(float(np.mean([c["num_masks"] for c in per_case.values()])), 1)
    report = {"cases": len(per_case), "mean": mean, "per_case": per_case}
    write_json_atomic(report, bank_folder / "quality.json")
    return report


def format_report(report: dict) -> str:
    """A readable table of the report: one row per case, then the mean."""
    lines = [f"{'case':<24} {'Best':>7} {'Avg':>7} {'%>40':>7} {'masks':>7}"]
    for case_id, row in report["per_case"].items():
        lines.append(f"{case_id:<24} {row['best']:7.1f} {row['avg']:7.1f} {row['percent_above_40']:7.1f} "
                     f"{row['num_masks']:7d}")
    mean = report["mean"]
    lines.append(f"{'mean':<24} {mean['best']:7.1f} {mean['avg']:7.1f} {mean['percent_above_40']:7.1f} "
                 f"{mean['masks_per_case']:7.1f}")
    return "\n".join(lines)
