"""benchmarks/supervoxel_speed.py's pieces: the side runner times the generator of the tree it is given (and
refuses to time an installed copy instead), and the table's ratios are earlier / this tree."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from benchmarks.supervoxel_speed import run_side, table

REPO = Path(__file__).resolve().parents[1]


def _save_case(folder: Path) -> None:
    rng = np.random.default_rng(0)
    windowed = np.full((3, 20, 24, 24), 60, np.uint8)
    windowed[:, 5:12, 6:16, 8:18] = 200
    windowed = np.clip(windowed + rng.integers(0, 20, windowed.shape), 0, 255).astype(np.uint8)
    np.save(folder / "case_00.npy", windowed)
    (folder / "cases.json").write_text(json.dumps({"box": {"file": "case_00.npy",
                                                           "spacing_zyx_mm": [2.0, 2.0, 2.0]}}))


def test_side_runner_times_the_given_tree_and_refuses_a_folder_without_mass_nn(tmp_path):
    _save_case(tmp_path)
    seconds = run_side(REPO, tmp_path)
    assert set(seconds) == {"box"} and seconds["box"] > 0
    with pytest.raises(SystemExit, match="has no mass_nn package"):
        run_side(tmp_path, tmp_path)  # no mass_nn there: an installed one, if any, would be timed instead


def test_table_gives_medians_and_earlier_over_this_tree():
    seconds = {"abc1234": {"box": [2.0, 4.0, 3.0]}, "this tree": {"box": [1.0, 1.5, 2.0]}}
    text = table({"box": (20, 24, 24)}, seconds)
    assert "| box | 20x24x24 | 3.00 | 1.50 | 2.00 |" in text
    assert "| **all 1** | | **3.0** | **1.5** | **2.00** |" in text
