"""Planner settings and the presets in `plans/` (JSON files that override them).

A preset is {"description": "...", "plans_name": "...", "settings": {<PlannerSettings fields>}}; fields it does
not name keep their defaults, unknown fields are an error. Presets are looked up by name in the repository's
`plans/` folder (or the installed copy under <prefix>/share/mass_nn/plans), or given as a path.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

from mass_nn.errors import PlansValidationError
from mass_nn.io.atomic import read_json
from mass_nn.planning.mask_slicing import DEFAULT_SEED_SLICE_DISTANCE_MM, ISOTROPY_RATIO
from mass_nn.planning.windows import DEFAULT_CT_WINDOWS_HU, DEFAULT_QUANTILE_WINDOWS
from mass_nn.registry import CONFIGURATION_PLANNERS
from mass_nn.schema import from_dict, to_dict

DEFAULT_PRESET = "default"


@dataclass
class PlannerSettings:
    """Every knob of the planner. Defaults reproduce the paper (1.5 mm, 128³, channels 32…512, batch 4) and a
    2-core CPU configuration with the same physical field of view at half the resolution."""

    configurations: list[str] = field(default_factory=lambda: ["3d_cpu", "3d_paper"])
    paper_target_spacing_mm: float = 1.5
    paper_patch_edge: int = 128
    paper_channels: list[int] = field(default_factory=lambda: [32, 64, 128, 256, 512])
    paper_num_blocks: list[int] = field(default_factory=lambda: [2, 2, 2, 2])
    paper_batch_size: int = 4
    cpu_resolution_factor: float = 2.0  # CPU spacing = paper spacing x this; patch edge = paper edge / this
    cpu_channels: list[int] = field(default_factory=lambda: [8, 16, 32, 64, 128])
    cpu_num_blocks: list[int] = field(default_factory=lambda: [1, 1, 1, 1])
    cpu_batch_size: int = 2
    cpu_min_patch_edge: int = 32
    cpu_max_patch_edge: int = 0  # 0: no cap; else the patch edge never exceeds it (a cheaper step, smaller view)
    seed_slice_distance_mm: float = DEFAULT_SEED_SLICE_DISTANCE_MM
    isotropy_ratio: float = ISOTROPY_RATIO
    mask_channel: int = 0  # the input channel masks are made from (mass_generate_masks --channel overrides)
    ct_windows_center_width_hu: dict[str, tuple[float, float]] = field(
        default_factory=lambda: dict(DEFAULT_CT_WINDOWS_HU))
    quantile_windows_percent: dict[str, tuple[float, float]] = field(
        default_factory=lambda: dict(DEFAULT_QUANTILE_WINDOWS))
    split_seed: int = 12345
    split_fractions: dict[str, float] = field(default_factory=lambda: {"train": 0.8, "val": 0.1, "test": 0.1})


@dataclass
class PlansPreset:
    description: str
    plans_name: str
    settings: dict = field(default_factory=dict)


def preset_folders() -> list[Path]:
    """Where named presets live: the source tree's plans/ first, then the installed data files."""
    return [Path(__file__).resolve().parents[2] / "plans", Path(sys.prefix) / "share" / "mass_nn" / "plans"]


def available_presets() -> list[str]:
    return sorted({p.stem for folder in preset_folders() if folder.is_dir() for p in folder.glob("*.json")})


def find_preset(name_or_path: str) -> Path:
    candidate = Path(name_or_path)
    if candidate.suffix == ".json" and candidate.is_file():
        return candidate
    for folder in preset_folders():
        path = folder / f"{name_or_path}.json"
        if path.is_file():
            return path
    raise PlansValidationError(f"plans preset {name_or_path!r} not found; available presets: "
                               f"{', '.join(available_presets()) or 'none'} (or give the path of a .json file)")


def load_preset(name_or_path: str = DEFAULT_PRESET) -> tuple[str, str, PlannerSettings]:
    """(preset name, plans name, settings) of a preset, with its overrides validated and applied."""
    path = find_preset(name_or_path)
    preset = from_dict(PlansPreset, read_json(path), str(path))
    overrides = from_dict(PlannerSettings, {**to_dict(PlannerSettings()), **preset.settings}, f"{path}.settings")
    known = CONFIGURATION_PLANNERS.names()
    bad = [c for c in overrides.configurations if c not in known]
    if bad or not overrides.configurations:
        raise PlansValidationError(f"{path}.settings.configurations: {overrides.configurations} must be a non-empty "
                                   f"subset of {known}")
    return path.stem, preset.plans_name, overrides
