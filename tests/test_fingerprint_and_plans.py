"""Fingerprint statistics, the planner's derivations, and the plans JSON contract."""
import dataclasses
import json

import numpy as np
import pytest

from mass_nn.errors import PlansValidationError
from mass_nn.io.image_geometry import ImageGeometry
from mass_nn.planning.fingerprint import extract_fingerprint
from mass_nn.planning.fingerprint_records import PERCENTILES, DatasetFingerprint
from mass_nn.planning.planner import plan_experiment
from mass_nn.planning.planner_settings import PlannerSettings, available_presets, load_preset
from mass_nn.planning.plans import Plans, load_plans, save_plans
from mass_nn.training.pretrain.hi_end_mae_pretrainer import HiEndMAESettings, network_config
from tests.conftest import make_raw_dataset, write_case
from mass_nn.io.dataset_json import DatasetJson, save_dataset_json


def _constant_body_dataset(raw_root, modality):
    """Two cases with known foreground values: a body of values 1..N surrounded by background."""
    dataset = raw_root / "Dataset910_Known"
    values = np.arange(1, 1001, dtype=np.float32)
    for i in range(2):
        volume = np.full((10, 20, 20), -1000.0 if modality == "CT" else 0.0, np.float32)
        body = volume[2:7, 5:15, 5:15]  # 500 voxels
        body[...] = values[i * 500:(i + 1) * 500].reshape(body.shape)
        geometry = ImageGeometry((0.8, 0.8, 2.0 + 1.5 * i), (0, 0, 0), (1, 0, 0, 0, 1, 0, 0, 0, 1), (20, 20, 10))
        write_case(dataset, f"k{i}", [volume], geometry)
    save_dataset_json(DatasetJson({"0": modality}, 2, ".nii.gz"), dataset)
    return dataset, values


@pytest.mark.parametrize("modality", ["CT", "MR"])
def test_fingerprint_statistics_over_foreground(tmp_path, modality):
    dataset, values = _constant_body_dataset(tmp_path, modality)
    fp = extract_fingerprint(dataset, progress=False)
    stats = fp.channels[0]
    assert stats.modality == modality
    assert stats.foreground_definition.startswith("body" if modality == "CT" else "nonzero")
    # samples are drawn with replacement from the foreground: statistics approach those of 1..1000
    assert stats.min >= 1 and stats.max <= 1000
    assert stats.mean == pytest.approx(values.mean(), rel=0.01)
    for q in PERCENTILES:
        assert stats.percentile(q) == pytest.approx(np.percentile(values, q), abs=6)
    assert [c.shape_before_crop_zyx for c in fp.cases] == [[10, 20, 20]] * 2
    assert [c.shape_after_crop_zyx for c in fp.cases] == [[5, 10, 10]] * 2
    assert fp.cases[0].spacing_zyx_mm == pytest.approx([2.0, 0.8, 0.8])
    assert fp.median_spacing_zyx_mm == pytest.approx([2.75, 0.8, 0.8])
    assert [c.anisotropy for c in fp.cases] == pytest.approx([2.0 / 0.8, 3.5 / 0.8])
    assert fp.fraction_anisotropic_cases == pytest.approx(0.5)
    assert DatasetFingerprint.from_dict(json.loads(json.dumps(fp.to_dict()))) == fp


def test_fingerprint_is_deterministic(tmp_path):
    dataset = make_raw_dataset(tmp_path, num_cases=2)
    assert extract_fingerprint(dataset, progress=False) == extract_fingerprint(dataset, progress=False)


@pytest.fixture
def plans(tmp_path):
    dataset = make_raw_dataset(tmp_path, num_cases=3, shape_zyx=(30, 60, 50), spacing_xyz=(0.8, 0.8, 3.0))
    return plan_experiment(extract_fingerprint(dataset, progress=False), PlannerSettings())


def test_paper_and_cpu_configurations(plans):
    paper, cpu = plans.configurations["3d_paper"], plans.configurations["3d_cpu"]
    assert paper.target_spacing_zyx_mm == [1.5] * 3 and paper.patch_size_zyx == [128] * 3
    assert paper.network.channels == [32, 64, 128, 256, 512] and paper.network.num_blocks == [2, 2, 2, 2]
    assert paper.batch_size == 4
    assert cpu.target_spacing_zyx_mm == [3.0] * 3
    # median cropped shape ~ (28, 58, 50) voxels -> at 3 mm (28, 15, 13): patch rounds up to 16s, min 32
    assert cpu.patch_size_zyx == [32, 32, 32]
    assert cpu.network.channels == [8, 16, 32, 64, 128] and cpu.batch_size == 2
    assert plans.mask_generation.axis == 0 and plans.mask_generation.seed_slice_interval_native == 5
    assert paper.seed_slice_interval == 10 and cpu.seed_slice_interval == 5
    assert plans.channels[0].normalization == "ct_clip_zscore"


def test_plans_json_round_trip(plans, tmp_path):
    path = tmp_path / "plans.json"
    save_plans(plans, path)
    assert load_plans(path) == plans


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d.update(surprise=1), "unknown field(s) ['surprise']"),
    (lambda d: d.pop("channels"), "missing field 'channels'"),
    (lambda d: d["configurations"]["3d_cpu"].update(batch_size="two"), "3d_cpu.batch_size: must be an integer"),
    (lambda d: d["configurations"]["3d_cpu"]["network"].update(architecture="VNet"), "must be one of ['ResUNet']"),
    (lambda d: d["channels"][0].pop("windows"), "missing field 'windows'"),
    (lambda d: d.update(format_version=99), "this mass_nn reads version 1"),
])
def test_plans_validation_errors(plans, tmp_path, mutate, message):
    data = plans.to_dict()
    mutate(data)
    path = tmp_path / "bad_plans.json"
    path.write_text(json.dumps(data))
    with pytest.raises(PlansValidationError) as info:
        load_plans(path)
    assert message in str(info.value) and str(path) in str(info.value)


def test_presets_are_valid_and_unknown_fields_rejected(tmp_path):
    assert {"default", "cpu_only", "paper_only"} <= set(available_presets())
    for name in available_presets():
        load_preset(name)
    _, _, settings = load_preset("cpu_only")
    assert settings.configurations == ["3d_cpu"]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"description": "", "plans_name": "X", "settings": {"patch": 3}}))
    with pytest.raises(PlansValidationError, match="unknown field.*'patch'"):
        load_preset(str(bad))
    with pytest.raises(PlansValidationError, match="not found; available presets"):
        load_preset("no_such_preset")


def test_cpu_in_context_preset_plans_4mm_and_48_cubed(tmp_path):
    name, plans_name, settings = load_preset("cpu_in_context")
    assert (name, plans_name, settings.configurations) == ("cpu_in_context", "MassPlansInContextCPU", ["3d_cpu"])
    dataset = make_raw_dataset(tmp_path, channel_names=("T2",), num_cases=2, shape_zyx=(70, 170, 170))
    plans: Plans = plan_experiment(extract_fingerprint(dataset, progress=False), settings)
    config = plans.configuration("3d_cpu")
    assert config.target_spacing_zyx_mm == pytest.approx([4.0, 4.0, 4.0])
    assert config.patch_size_zyx == [48, 48, 48]


def test_cpu_in_context_6mm_preset_keeps_the_field_of_view_at_6mm_and_32_cubed(tmp_path):
    name, plans_name, settings = load_preset("cpu_in_context_6mm")
    assert (name, plans_name, settings.configurations) == ("cpu_in_context_6mm", "MassPlansInContextCPU6mm",
                                                           ["3d_cpu"])
    dataset = make_raw_dataset(tmp_path, channel_names=("T2",), num_cases=2, shape_zyx=(70, 170, 170))
    config = plan_experiment(extract_fingerprint(dataset, progress=False), settings).configuration("3d_cpu")
    assert config.target_spacing_zyx_mm == pytest.approx([6.0, 6.0, 6.0])
    assert config.patch_size_zyx == [32, 32, 32]  # 192 mm per axis, as cpu_in_context's 48 x 4 mm


def test_demo_preset_caps_the_patch_at_32_and_3mm(tmp_path):
    name, plans_name, settings = load_preset("demo_in_context")
    assert (name, plans_name, settings.cpu_max_patch_edge) == ("demo_in_context", "MassPlansDemo", 32)
    dataset = make_raw_dataset(tmp_path, channel_names=("T2",), num_cases=2, shape_zyx=(70, 170, 170))
    config = plan_experiment(extract_fingerprint(dataset, progress=False), settings).configuration("3d_cpu")
    assert config.target_spacing_zyx_mm == pytest.approx([3.0, 3.0, 3.0])
    assert config.patch_size_zyx == [32, 32, 32]  # 64 from the field of view, capped
    assert "at most 32" in config.derivation
    uncapped = plan_experiment(extract_fingerprint(dataset, progress=False),
                               dataclasses.replace(settings, cpu_max_patch_edge=0)).configuration("3d_cpu")
    assert uncapped.patch_size_zyx == [64, 64, 64] and "at most" not in uncapped.derivation

def test_mr_channel_plan(tmp_path):
    dataset = make_raw_dataset(tmp_path, channel_names=("T1", "PET"), num_cases=2)
    plans: Plans = plan_experiment(extract_fingerprint(dataset, progress=False), PlannerSettings())
    assert [c.modality for c in plans.channels] == ["MR", "PET"]
    assert all(c.normalization == "zscore_per_image" and c.mean is None for c in plans.channels)
    assert all(w.kind == "quantile" for c in plans.channels for w in c.windows)


def test_baselines_are_sized_by_the_plans_field_not_the_configuration_name(plans):
    assert plans.configurations["3d_paper"].baseline_size == "paper"
    assert plans.configurations["3d_cpu"].baseline_size == "cpu"
    plans = plans.to_dict()
    legacy = json.loads(json.dumps(plans))
    for config in legacy["configurations"].values():
        del config["baseline_size"]
    upgraded = Plans.from_dict(legacy)
    assert {k: c.baseline_size for k, c in upgraded.configurations.items()} == \
        {k: ("paper" if k == "3d_paper" else "cpu") for k in plans["configurations"]}
    cpu = Plans.from_dict(plans).configuration("3d_cpu")
    cpu.patch_size_zyx = [48, 48, 48]
    assert network_config(cpu, 1, HiEndMAESettings()).encoder.dim == 96
    cpu.baseline_size = "paper"  # a 3d_cpu configuration planned with the paper's baselines
    assert network_config(cpu, 1, HiEndMAESettings()).encoder.dim == 1536
