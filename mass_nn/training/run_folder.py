"""Where a run lives: MASS_results/<Dataset>/<Trainer>__<plans>__<configuration>[__<tag>]/."""
from __future__ import annotations

import re
from pathlib import Path

from mass_nn.errors import MassError


def run_folder_name(trainer: str, plans_name: str, configuration: str, tag: str = "") -> str:
    if tag and not re.fullmatch(r"[A-Za-z0-9_.-]+", tag):
        raise MassError(f"--tag {tag!r}: use letters, digits, '.', '_' or '-' only (it becomes part of a folder name)")
    name = f"{trainer}__{plans_name}__{configuration}"
    return f"{name}__{tag}" if tag else name


def run_folder(results_root: Path, dataset_name: str, trainer: str, plans_name: str, configuration: str,
               tag: str = "") -> Path:
    return Path(results_root) / dataset_name / run_folder_name(trainer, plans_name, configuration, tag)
