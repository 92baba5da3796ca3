"""Pooling datasets of different modalities in one pretraining run, and using such a checkpoint downstream.

Synthetic plans only (no preprocessing, no training): fast on a CPU.
"""
from __future__ import annotations

import dataclasses
import json
from types import SimpleNamespace

import pytest
import torch

from mass_nn.datasets.preprocessed_sources import resolve_sources
from mass_nn.errors import MassError
from mass_nn.model.checkpoint import Checkpoint, CheckpointMeta, load_checkpoint, save_checkpoint
from mass_nn.model.pretrained import load_pretrained_checkpoint
from mass_nn.paths import MassPaths
from mass_nn.planning.plans import (PLANS_FORMAT_VERSION, ChannelPlan, ConfigurationPlan, MaskGenerationPlan,
                                    NetworkPlan, Plans, save_plans)
from mass_nn.planning.plans_compatibility import (channel_layout, plans_differences, pool_channel_layouts,
                                                  pooled_model_differences, pretraining_pool_differences)
from mass_nn.planning.windows import IntensityWindow
from mass_nn.training.trainer import Trainer

CONFIG = "3d_cpu"
NORMALIZATION = {"CT": "ct_clip_zscore", "MR": "zscore_per_image", "PET": "zscore_per_image"}


def make_plans(name: str, modality: str, channel_name: str | None = None, spacing=(2.0, 2.0, 2.0),
               patch=(32, 32, 32), stages=(8, 16, 32, 64, 128)) -> Plans:
    """Plans of a one-channel dataset `name` of `modality`, with the given grid, patch and network."""
    channel = ChannelPlan(index=0, name=channel_name or modality, modality=modality,
                          normalization=NORMALIZATION[modality], foreground_definition="nonzero",
                          windows=[IntensityWindow(name="q05_95", kind="quantile", lower=5.0, upper=95.0)])
    config = ConfigurationPlan(name=CONFIG, data_identifier=f"MassPlans_{CONFIG}",
                               target_spacing_zyx_mm=list(spacing), patch_size_zyx=list(patch), batch_size=2,
                               network=NetworkPlan(architecture="ResUNet", channels=list(stages),
                                                   num_blocks=[1, 1, 1, 1]),
                               median_shape_after_resampling_zyx=[64, 64, 64])
    masks = MaskGenerationPlan(axis=0, axis_spacing_mm=2.0, seed_slice_distance_mm=4.0, seed_slice_interval_native=2,
                               isotropy_ratio=1.0)
    return Plans(format_version=PLANS_FORMAT_VERSION, plans_name="MassPlans", dataset_name=name, planner="test",
                 preset="cpu", mass_nn_version="test", median_spacing_zyx_mm=list(spacing),
                 median_shape_after_crop_zyx=[64, 64, 64], channels=[channel], configurations={CONFIG: config},
                 mask_generation=masks)


def write_preprocessed(root, plans: Plans) -> None:
    """Just enough of a preprocessed dataset for resolve_source: plans, one case array file, splits."""
    folder = root / plans.dataset_name
    data = folder / plans.configuration(CONFIG).data_identifier
    data.mkdir(parents=True)
    save_plans(plans, folder / "MassPlans.json")
    (data / "case_000.b2nd").write_bytes(b"")
    (folder / "splits.json").write_text(json.dumps({"train": ["case_000"], "val": [], "test": []}))


def make_meta(plans: Plans, layouts: list[list[dict]]) -> CheckpointMeta:
    return CheckpointMeta(trainer="MASSPretrainer", network_class="InContextSegmenter", network_config={},
                          plans=plans.to_dict(), configuration=CONFIG, encoder_key_prefix="encoder.", epoch=1,
                          global_step=10, trained_channel_layouts=layouts)


def saved_checkpoint(tmp_path, plans: Plans, layouts: list[list[dict]]):
    path = tmp_path / "checkpoint_final.pt"
    save_checkpoint(Checkpoint(meta=make_meta(plans, layouts), model={}), path)
    return path


def test_ct_and_pet_datasets_pool_in_one_pretraining_run(tmp_path):
    ct, pet = make_plans("Dataset711_CT", "CT"), make_plans("Dataset712_PET", "PET", channel_name="SUV")
    assert pretraining_pool_differences(ct, pet, CONFIG) == []
    for plans in (ct, pet):
        write_preprocessed(tmp_path / "pre", plans)
    paths = MassPaths(raw=tmp_path / "raw", preprocessed=tmp_path / "pre", results=tmp_path / "res")
    sources = resolve_sources(["711", "712"], paths, "MassPlans", CONFIG)
    assert [s.dataset_name for s in sources] == ["Dataset711_CT", "Dataset712_PET"]
    assert pool_channel_layouts([s.plans for s in sources]) == [
        [{"modality": "CT", "normalization": "ct_clip_zscore"}],
        [{"modality": "PET", "normalization": "zscore_per_image"}]]


def test_pool_refuses_other_spacing_patch_and_network_naming_each(tmp_path):
    ct = make_plans("Dataset711_CT", "CT")
    other = make_plans("Dataset713_MR", "MR", spacing=(3.0, 3.0, 3.0), patch=(48, 48, 48), stages=(4, 8, 16, 32, 64))
    for plans in (ct, other):
        write_preprocessed(tmp_path / "pre", plans)
    paths = MassPaths(raw=tmp_path / "raw", preprocessed=tmp_path / "pre", results=tmp_path / "res")
    with pytest.raises(MassError) as raised:
        resolve_sources(["711", "713"], paths, "MassPlans", CONFIG)
    message = str(raised.value)
    assert "Dataset711_CT and Dataset713_MR cannot be pretrained on together" in message
    assert "target spacing (mm, zyx): [2.0, 2.0, 2.0] vs [3.0, 3.0, 3.0]" in message
    assert "patch size (zyx): [32, 32, 32] vs [48, 48, 48]" in message and "network:" in message


def test_across_datasets_names_are_not_compared_but_modality_is():
    pet, suv = make_plans("A", "PET", channel_name="PET"), make_plans("B", "PET", channel_name="SUV")
    assert plans_differences(pet, CONFIG, suv, CONFIG, same_dataset=False) == []
    assert plans_differences(pet, CONFIG, suv, CONFIG, same_dataset=True)  # --continue stays strict
    differences = plans_differences(pet, CONFIG, make_plans("C", "CT"), CONFIG, same_dataset=False)
    assert differences == ["channel layout (modality/normalisation): [PET/zscore_per_image] vs "
                           "[CT/ct_clip_zscore]"]


def test_pooled_checkpoint_accepts_pet_and_refuses_mr(tmp_path):
    ct = make_plans("Dataset711_CT", "CT")
    layouts = pool_channel_layouts([ct, make_plans("Dataset712_PET", "PET")])
    path = saved_checkpoint(tmp_path, ct, layouts)
    checkpoint = load_pretrained_checkpoint(path, make_plans("Dataset800_Lesions", "PET", channel_name="SUV"),
                                            CONFIG, "Dataset800_Lesions")
    assert checkpoint.meta.trained_channel_layouts == layouts
    with pytest.raises(MassError) as raised:
        load_pretrained_checkpoint(path, make_plans("Dataset801_Brain", "MR", channel_name="FLAIR"), CONFIG,
                                   "Dataset801_Brain")
    message = str(raised.value)
    assert ("channel layout (modality/normalisation): [CT/ct_clip_zscore] or [PET/zscore_per_image] vs "
            "[MR/zscore_per_image]") in message
    assert "Dataset801_Brain" in message and "re-plan" in message


def test_pooled_checkpoint_still_refuses_other_spacing(tmp_path):
    ct = make_plans("Dataset711_CT", "CT")
    path = saved_checkpoint(tmp_path, ct, pool_channel_layouts([ct, make_plans("Dataset712_PET", "PET")]))
    with pytest.raises(MassError, match=r"target spacing \(mm, zyx\): \[2.0, 2.0, 2.0\] vs \[1.0, 1.0, 1.0\]"):
        load_pretrained_checkpoint(path, make_plans("D", "PET", spacing=(1.0, 1.0, 1.0)), CONFIG, "D")


def test_checkpoint_without_layouts_falls_back_to_its_plans(tmp_path):
    ct = make_plans("Dataset711_CT", "CT")
    path = saved_checkpoint(tmp_path, ct, [])
    payload = torch.load(path, weights_only=True)
    meta = json.loads(payload["meta_json"])
    del meta["trained_channel_layouts"]  # as written before the field existed
    payload["meta_json"] = json.dumps(meta)
    torch.save(payload, path)
    assert load_checkpoint(path).meta.trained_channel_layouts == []
    load_pretrained_checkpoint(path, make_plans("D", "CT", channel_name="HU"), CONFIG, "D")
    with pytest.raises(MassError, match=r"\[CT/ct_clip_zscore\] vs \[PET/zscore_per_image\]"):
        load_pretrained_checkpoint(path, make_plans("D", "PET"), CONFIG, "D")


def test_checkpoint_meta_round_trips_the_layouts(tmp_path):
    ct, pet = make_plans("A", "CT"), make_plans("B", "PET")
    layouts = pool_channel_layouts([ct, pet, make_plans("C", "CT", channel_name="CT_venous")])
    assert layouts == [channel_layout(ct), channel_layout(pet)]
    path = saved_checkpoint(tmp_path, ct, layouts)
    loaded = load_checkpoint(path)
    assert loaded.meta == make_meta(ct, layouts)
    copy = dataclasses.replace(loaded.meta, epoch=0)
    assert copy.trained_channel_layouts == layouts


def test_val_dataset_rule_uses_the_pool():
    ct, pet, mr = make_plans("A", "CT"), make_plans("B", "PET"), make_plans("C", "MR")
    pool = pool_channel_layouts([ct, pet])
    assert pooled_model_differences(ct, CONFIG, pool, pet, CONFIG) == []
    assert pooled_model_differences(ct, CONFIG, pool, mr, CONFIG)
    assert pooled_model_differences(ct, CONFIG, [], mr, CONFIG)  # empty pool: the reference's own layout


def test_trainer_records_every_pooled_layout_or_its_own():
    ct, pet = make_plans("A", "CT"), make_plans("B", "PET")
    pooled = SimpleNamespace(plans=ct, trained_plans=[ct, pet, ct])
    assert Trainer.trained_channel_layouts(pooled) == [channel_layout(ct), channel_layout(pet)]
    assert Trainer.trained_channel_layouts(SimpleNamespace(plans=pet, trained_plans=[])) == [channel_layout(pet)]
