"""Typed -s settings (training/trainer_settings.py): parsing, messages, validation, and every trainer has a class."""
import dataclasses

import pytest

from mass_nn.errors import MassError
from mass_nn.registry import TRAINERS
from mass_nn.training.pretrain.mass_cpu_pretrainer import MASSCPUSettings
from mass_nn.training.pretrain.mass_pretrainer import MASSSettings
from mass_nn.training.trainer_settings import parse_settings


def test_defaults_types_and_conversion():
    assert parse_settings(MASSSettings, {}, "MASSPretrainer") == MASSSettings()
    settings = parse_settings(MASSSettings, {"min_mask_fraction": 0, "absent_tasks": 6}, "MASSPretrainer")
    assert settings.min_mask_fraction == 0.0 and isinstance(settings.min_mask_fraction, float)
    assert settings.absent_tasks == 6
    assert MASSCPUSettings().min_mask_fraction == 0.01 and MASSCPUSettings().num_tasks == 16
    assert MASSSettings().num_tasks == 13  # the paper's


@pytest.mark.parametrize("given, message", [
    ({"num_task": 3}, r"unknown MASSPretrainer setting\(s\) \['num_task'\]; known: \[.*'num_tasks'"),
    ({"num_tasks": "13"}, "MASSPretrainer setting num_tasks='13': must be an integer"),
    ({"num_tasks": True}, "MASSPretrainer setting num_tasks=True: must be an integer"),
    ({"everything_task": 1}, "MASSPretrainer setting everything_task=1: must be bool"),
    ({"num_tasks": 0}, "setting num_tasks=0: expected a positive integer"),
    ({"absent_tasks": 14}, r"setting absent_tasks=14: expected 0 to num_tasks \(13\)"),
    ({"min_mask_fraction": 1.0}, r"setting min_mask_fraction=1.0: expected a share"),
    ({"query_appearance": "strong"}, r"setting query_appearance='strong': expected one of release, wide"),
    ({"reference_region_shift": 1.5}, r"setting reference_region_shift=1.5: expected a share of the task regions"),
    ({"case_sampling": "size"}, r"setting case_sampling='size': expected one of uniform, volume"),
])
def test_bad_settings_name_the_setting(given, message):
    with pytest.raises(MassError, match=message):
        parse_settings(MASSSettings, given, "MASSPretrainer")


def test_every_registered_trainer_names_a_settings_dataclass_with_defaults():
    for name in TRAINERS.names():
        settings_class = TRAINERS.get(name).settings_class
        assert dataclasses.is_dataclass(settings_class), name
        assert parse_settings(settings_class, {}, name) == settings_class(), name
