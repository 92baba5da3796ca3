"""mass_generate_masks orchestration: outputs, sharding, resumption, failures and user errors."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from mass_nn.cli import generate_masks as cli
from mass_nn.errors import MassError, PlansValidationError
from mass_nn.io.atomic import read_json
from mass_nn.masks.generate import MaskGenerationOptions, generate_masks, select_part
from mass_nn.masks.mask_bank import MaskBank
from mass_nn.paths import MassPaths
from mass_nn.preprocessing.plan_and_preprocess import PlanAndPreprocessOptions, plan_and_preprocess
from tests.conftest import make_raw_dataset


@pytest.fixture(scope="module")
def phantom_roots(tmp_path_factory):
    """A preprocessed 4-case phantom (3d_cpu), shared by the tests of this module (each copies it)."""
    from dataset_conversion.phantom import write_phantom_dataset
    root = tmp_path_factory.mktemp("phantom")
    paths = MassPaths(raw=root / "raw", preprocessed=root / "pre", results=root / "res")
    write_phantom_dataset(paths.raw, 990, num_cases=4, seed=1)
    plan_and_preprocess(990, paths, PlanAndPreprocessOptions(preset="cpu_only", num_processes=1, progress=False))
    return paths


@pytest.fixture
def paths(phantom_roots, tmp_path):
    copy = MassPaths(raw=tmp_path / "raw", preprocessed=tmp_path / "pre", results=tmp_path / "res")
    shutil.copytree(phantom_roots.raw, copy.raw)
    shutil.copytree(phantom_roots.preprocessed, copy.preprocessed)
    return copy


def _bank_folder(paths):
    return paths.preprocessed / "Dataset990_PhantomCT" / "MassPlans_3d_cpu" / "masks_labels"


def _options(**kwargs):
    return MaskGenerationOptions(generator="labels", progress=False, **kwargs)


def test_labels_generator_end_to_end(paths, capsys):
    roots = ["--raw", str(paths.raw), "--preprocessed", str(paths.preprocessed), "--results", str(paths.results)]
    assert cli.main(["-d", "990", "-g", "labels", "--quality", "--no-progress", *roots]) == 0
    out = capsys.readouterr().out
    assert "Dataset990_PhantomCT [labels]: 4 cases (4 generated, 0 skipped)" in out and "mean" in out
    folder = _bank_folder(paths)
    record = json.loads((folder / "masks.json").read_text())
    assert record["generator"] == "labels" and record["parameters"]["include_components"] is True
    assert record["postprocessing"]["iou_threshold"] == 0.9 and len(record["cases"]) == 4
    assert len(list((folder / "previews").glob("*.png"))) == 4
    quality = json.loads((folder / "quality.json").read_text())
    assert quality["mean"]["best"] > 95, "label masks reproduce the labels"
    bank = MaskBank(folder / "phantom_000.masks")
    seg_shape = bank.shape
    props = json.loads((folder.parent / "phantom_000.json").read_text())
    assert list(seg_shape) == props["shape_after_resampling_zyx"], "masks live on the preprocessed grid"


def test_sharding_covers_every_case_exactly_once(paths):
    ids = [f"c{i}" for i in range(11)]
    parts = [select_part(ids, 3, p) for p in range(3)]
    assert sorted(sum(parts, [])) == sorted(ids) and sum(len(p) for p in parts) == len(ids)
    for part in range(3):
        generate_masks(990, paths, _options(num_parts=3, part_id=part, previews=False))
    record = json.loads((_bank_folder(paths) / "masks.json").read_text())
    assert sorted(record["cases"]) == ["phantom_000", "phantom_001", "phantom_002", "phantom_003"]
    with pytest.raises(MassError, match="--part-id must be in 0..2"):
        select_part(ids, 3, 3)


def test_resume_skips_finished_cases_and_redoes_stale_ones(paths):
    first = generate_masks(990, paths, _options(previews=False))
    assert (first["generated"], first["skipped"]) == (4, 0)
    (_bank_folder(paths) / "phantom_002.masks").unlink()               # the case in flight when killed
    second = generate_masks(990, paths, _options(previews=False))
    assert (second["generated"], second["skipped"]) == (1, 3)
    third = generate_masks(990, paths, _options(previews=False, min_volume_mm3=500.0))  # other parameters
    assert third["generated"] == 4
    assert generate_masks(990, paths, _options(previews=False, min_volume_mm3=500.0, clean=True))["generated"] == 4


def test_failures_are_collected_while_other_cases_finish(paths):
    (paths.preprocessed / "Dataset990_PhantomCT" / "MassPlans_3d_cpu" / "phantom_001.b2nd").unlink()
    with pytest.raises(MassError) as info:
        generate_masks(990, paths, _options(previews=False))
    assert "1 case(s) failed" in str(info.value) and "phantom_001" in str(info.value)
    assert sorted(p.name for p in _bank_folder(paths).glob("*.masks")) == [
        "phantom_000.masks", "phantom_002.masks", "phantom_003.masks"]


def test_user_errors(paths, tmp_path, capsys):
    with pytest.raises(MassError, match="unknown mask generator 'magic'; known: labels, sam2, supervoxel"):
        generate_masks(990, paths, MaskGenerationOptions(generator="magic", progress=False))
    with pytest.raises(MassError, match="no configuration '3d_paper'"):
        generate_masks(990, paths, _options(configuration="3d_paper"))
    shutil.rmtree(paths.preprocessed / "Dataset990_PhantomCT" / "MassPlans_3d_cpu")
    roots = ["--raw", str(paths.raw), "--preprocessed", str(paths.preprocessed), "--results", str(paths.results)]
    assert cli.main(["-d", "990", "-g", "labels", *roots]) == 1
    assert "no preprocessed cases; run mass_plan_and_preprocess -d 990 -c 3d_cpu first" in capsys.readouterr().err


def test_unlabelled_cases_cannot_use_the_labels_generator(paths):
    for seg in (paths.preprocessed / "Dataset990_PhantomCT" / "MassPlans_3d_cpu").glob("*_seg.b2nd"):
        seg.unlink()
    with pytest.raises(MassError, match="has no preprocessed label"):
        generate_masks(990, paths, _options(previews=False))


def test_masks_equal_the_label_components(paths):
    generate_masks(990, paths, MaskGenerationOptions(generator="labels", progress=False, previews=False,
                                                     min_volume_mm3=0.0, iou_threshold=1.0))
    from mass_nn.masks.case_loading import load_label
    label = load_label(paths.preprocessed / "Dataset990_PhantomCT" / "MassPlans_3d_cpu", "phantom_000")
    bank = MaskBank(_bank_folder(paths) / "phantom_000.masks")
    wholes = {e.extra["class"]: i for i, e in enumerate(bank.entries) if e.extra["component"] is None}
    assert sorted(wholes) == sorted(int(v) for v in np.unique(label) if v > 0)
    for value, index in wholes.items():
        assert np.array_equal(bank.read(index), label == value)


def test_sam2_without_checkpoint_stops_before_any_work(paths, monkeypatch, capsys):
    monkeypatch.delenv("MASS_SAM2_CHECKPOINT", raising=False)
    roots = ["--raw", str(paths.raw), "--preprocessed", str(paths.preprocessed), "--results", str(paths.results)]
    assert cli.main(["-d", "990", "-g", "sam2", *roots]) == 1
    err = capsys.readouterr().err
    assert "needs a checkpoint" in err and "-g supervoxel" in err
    assert not (paths.preprocessed / "Dataset990_PhantomCT" / "MassPlans_3d_cpu" / "masks_sam2").exists()
    monkeypatch.setenv("MASS_SAM2_CHECKPOINT", str(paths.raw / "missing_sam2.1_hiera_tiny.pt"))
    assert cli.main(["-d", "990", *roots]) == 1, "a configured checkpoint makes sam2 the default generator"
    assert "missing_sam2.1_hiera_tiny.pt" in capsys.readouterr().err


def test_the_plans_choose_the_mask_channel_and_a_missing_channel_is_refused(tmp_path):
    paths = MassPaths(raw=tmp_path / "raw", preprocessed=tmp_path / "pre", results=tmp_path / "res")
    make_raw_dataset(paths.raw, num_cases=2, channel_names=("CT", "PET"))
    preset = tmp_path / "pet_masks.json"
    preset.write_text('{"description": "masks from PET", "plans_name": "MassPlans", '
                      '"settings": {"configurations": ["3d_cpu"], "mask_channel": 1}}')
    plan_and_preprocess(900, paths, PlanAndPreprocessOptions(preset=str(preset), num_processes=1, progress=False))
    plans = read_json(paths.preprocessed / "Dataset900_Tiny" / "MassPlans.json")
    assert plans["mask_generation"]["channel"] == 1
    options = MaskGenerationOptions(generator="supervoxel", num_processes=1, progress=False, previews=False)
    summary = generate_masks(900, paths, options)
    assert read_json(Path(summary["folder"]) / "masks.json")["channel"] == 1  # the PET channel, from the plans
    with pytest.raises(MassError, match="--channel 2 does not exist; the dataset's channels are 0 \\(CT\\), 1 "):
        generate_masks(900, paths, MaskGenerationOptions(channel=2, progress=False))
    preset.write_text('{"description": "no such channel", "plans_name": "MassPlans", '
                      '"settings": {"configurations": ["3d_cpu"], "mask_channel": 3}}')
    with pytest.raises(PlansValidationError, match="mask_channel = 3: dataset Dataset900_Tiny has 2 channel"):
        plan_and_preprocess(900, paths, PlanAndPreprocessOptions(preset=str(preset), num_processes=1,
                                                                 progress=False))


def test_without_c_masks_follow_the_configuration_mass_train_picks_on_this_machine(paths, monkeypatch, capsys):
    """On a CUDA machine mass_train trains 3d_paper, so mass_generate_masks must make 3d_paper masks there."""
    roots = ["--raw", str(paths.raw), "--preprocessed", str(paths.preprocessed), "--results", str(paths.results)]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert cli.main(["-d", "990", "-g", "labels", "--no-progress", *roots]) == 1
    assert "no configuration '3d_paper'" in capsys.readouterr().err  # the phantom was planned for 3d_cpu only
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert cli.main(["-d", "990", "-g", "labels", "--no-progress", *roots]) == 0
    assert "3d_cpu" in capsys.readouterr().out
