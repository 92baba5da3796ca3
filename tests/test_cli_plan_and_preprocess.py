"""mass_plan_and_preprocess end to end through its CLI, on tiny data, the phantom and (when present) real CT."""
import json

import numpy as np

from mass_nn.cli import plan_and_preprocess
from mass_nn.preprocessing.blosc2_storage import open_array
from tests.conftest import make_raw_dataset, requires_shared_data, shared_data_dir


def _roots(tmp_path):
    return ["--raw", str(tmp_path / "raw"), "--preprocessed", str(tmp_path / "pre"), "--results", str(tmp_path / "res")]


def test_cli_writes_every_artifact(tmp_path, capsys):
    make_raw_dataset(tmp_path / "raw", dataset_id=905, num_cases=3)
    assert plan_and_preprocess.main(["-d", "905", "-np", "2", "--no-progress", *_roots(tmp_path)]) == 0
    out = tmp_path / "pre" / "Dataset905_Tiny"
    for name in ("dataset.json", "dataset_fingerprint.json", "MassPlans.json", "splits.json"):
        assert (out / name).is_file(), name
    for config in ("3d_cpu", "3d_paper"):
        folder = out / f"MassPlans_{config}"
        assert sorted(p.name for p in folder.glob("case_000*")) == ["case_000.b2nd", "case_000.json",
                                                                     "case_000_seg.b2nd"]
    splits = json.loads((out / "splits.json").read_text())
    assert sorted(splits["train"] + splits["val"] + splits["test"]) == ["case_000", "case_001", "case_002"]
    assert "Dataset905_Tiny: 3 cases" in capsys.readouterr().out
    assert plan_and_preprocess.main(["-d", "905", "-np", "1", "--no-progress", *_roots(tmp_path)]) == 0
    assert "(0 new, 3 skipped)" in capsys.readouterr().out


def test_cli_reports_user_errors_without_traceback(tmp_path, capsys):
    assert plan_and_preprocess.main(["-d", "123", "--no-progress", *_roots(tmp_path)]) == 1
    assert "error: no dataset '123'" in capsys.readouterr().err
    dataset = make_raw_dataset(tmp_path / "raw", dataset_id=906, num_cases=2)
    (dataset / "imagesTr" / "case_001_0000.nii.gz").unlink()
    (dataset / "labelsTr" / "case_000.nii.gz").write_bytes(b"garbage")
    assert plan_and_preprocess.main(["-d", "906", "--no-progress", *_roots(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "3 problem(s)" in err and "Traceback" not in err
    assert plan_and_preprocess.main(["-d", "906", "-p", "nope", "--skip-integrity-check", "--no-progress",
                                     *_roots(tmp_path)]) == 1
    assert "preset 'nope' not found" in capsys.readouterr().err


def test_end_to_end_on_the_phantom(tmp_path):
    from dataset_conversion.phantom import write_phantom_dataset
    write_phantom_dataset(tmp_path / "raw", dataset_id=990, num_cases=4, seed=3)
    assert plan_and_preprocess.main(["-d", "990", "-np", "2", "--no-progress", *_roots(tmp_path)]) == 0
    out = next((tmp_path / "pre").glob("Dataset990_*"))
    plans = json.loads((out / "MassPlans.json").read_text())
    assert [w["kind"] for w in plans["channels"][0]["windows"]] == ["fixed"] * 3
    case = sorted((out / "MassPlans_3d_cpu").glob("*_seg.b2nd"))[0]
    labels = np.unique(open_array(case)[:])
    assert len(labels) >= 9, "at least 8 structures survive preprocessing"


@requires_shared_data
def test_end_to_end_on_shared_ct_tumour_cases(tmp_path):
    from mass_nn.io.dataset_json import DatasetJson, save_dataset_json
    import shutil
    source = shared_data_dir() / "ibsi_sts"
    dataset = tmp_path / "raw" / "Dataset920_StsCT"
    cases = sorted(p.parent.name for p in source.glob("STS_*/CT_image.nii.gz"))[:3]
    for case in cases:
        (dataset / "imagesTr").mkdir(parents=True, exist_ok=True)
        (dataset / "labelsTr").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source / case / "CT_image.nii.gz", dataset / "imagesTr" / f"{case}_0000.nii.gz")
        shutil.copyfile(source / case / "CT_mask.nii.gz", dataset / "labelsTr" / f"{case}.nii.gz")
    save_dataset_json(DatasetJson({"0": "CT"}, len(cases), ".nii.gz", {"background": 0, "tumour": 1}), dataset)
    assert plan_and_preprocess.main(["-d", "920", "-np", "2", "--no-progress", *_roots(tmp_path)]) == 0
    out = tmp_path / "pre" / "Dataset920_StsCT"
    plans = json.loads((out / "MassPlans.json").read_text())
    assert plans["mask_generation"]["axis"] == 0 and plans["mask_generation"]["seed_slice_interval_native"] == 4
    clip = plans["channels"][0]
    assert clip["clip_lower"] < -100 < 100 < clip["clip_upper"]
    props = json.loads((out / "MassPlans_3d_paper" / f"{cases[0]}.json").read_text())
    assert props["target_spacing_zyx_mm"] == [1.5, 1.5, 1.5] and props["label_voxel_counts"]["1"] > 1000
