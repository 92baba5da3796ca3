"""One owner of the file layout (mass_nn/io/artifact_layout.py): its names round-trip, the stages write where it
says, and no module joins those file names by hand."""
import re
from pathlib import Path

import pytest

from mass_nn.io import artifact_layout as layout

REPO = Path(__file__).resolve().parents[1]


def test_names_round_trip(tmp_path):
    folder = layout.bank_folder(tmp_path / "MassPlans_3d_cpu", "supervoxel")
    assert folder == tmp_path / "MassPlans_3d_cpu" / "masks_supervoxel"
    assert layout.generator_of(folder) == "supervoxel"
    assert layout.case_of_bank_file(layout.bank_file(folder, "case_007")) == "case_007"
    files = layout.CaseOutput(tmp_path, "case_007")
    assert (files.data.name, files.seg.name, files.properties.name) == ("case_007.b2nd", "case_007_seg.b2nd",
                                                                          "case_007.json")
    assert layout.data_identifier("MassPlansDemo", "3d_cpu") == "MassPlansDemo_3d_cpu"
    assert layout.plans_file(tmp_path, "MassPlans") == tmp_path / "MassPlans.json"
    assert layout.checkpoint_path(tmp_path, "best") == tmp_path / "checkpoint_best.pt"
    with pytest.raises(ValueError, match="checkpoint kind 'last'"):
        layout.checkpoint_path(tmp_path, "last")


def test_bank_folders_lists_only_finished_banks(tmp_path):
    for generator, finished in (("sam2", True), ("supervoxel", False), ("labels", True)):
        folder = layout.bank_folder(tmp_path, generator)
        folder.mkdir()
        if finished:
            layout.bank_index(folder).write_text("{}")
    assert [layout.generator_of(f) for f in layout.bank_folders(tmp_path)] == ["labels", "sam2"]


HAND_BUILT = re.compile(r'/\s*f?"[^"\n]*(\.b2nd|\.masks|masks_|checkpoint_(latest|best|final)\.pt)"')


def test_the_scan_catches_a_hand_built_path():
    assert HAND_BUILT.search('image = folder / f"{case_id}.b2nd"')
    assert HAND_BUILT.search('path = run / "checkpoint_final.pt"')
    assert not HAND_BUILT.search('image = layout.CaseOutput(folder, case_id).data')


def test_no_module_joins_artifact_names_by_hand():
    offenders = []
    for path in sorted((REPO / "mass_nn").rglob("*.py")) + sorted((REPO / "benchmarks").glob("*.py")):
        if path.name == "artifact_layout.py":
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if HAND_BUILT.search(line) and "tmp" not in line:
                offenders.append(f"{path.relative_to(REPO)}:{number}: {line.strip()}")
    assert offenders == []
