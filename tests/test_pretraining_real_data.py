"""MASS pretraining on real MR from ../shared/data (PyRadiomics brain/breast cases), with in-context validation."""
from __future__ import annotations

import pytest

from mass_nn.model.checkpoint import load_network
from mass_nn.paths import MassPaths
from mass_nn.training.metrics_log import read_metrics
from mass_nn.training.options import TrainingOptions
from mass_nn.training.run_training import run_training
from tests.conftest import requires_shared_data, shared_data_dir

pytestmark = requires_shared_data


@pytest.mark.slow  # about 50 s on 2 cores: keeps the default run under 10 minutes
def test_pretraining_runs_on_real_mr_and_validates_in_context(tmp_path):
    from dataset_conversion.shared_data import convert_shared_data
    from mass_nn.masks.generate import MaskGenerationOptions, generate_masks
    from mass_nn.preprocessing.plan_and_preprocess import PlanAndPreprocessOptions, plan_and_preprocess
    paths = MassPaths(raw=tmp_path / "raw", preprocessed=tmp_path / "pre", results=tmp_path / "res")
    convert_shared_data(shared_data_dir(), paths.raw, which=["pyradiomics_mr"])
    plan_and_preprocess(608, paths, PlanAndPreprocessOptions(preset="cpu_only", num_processes=2, progress=False))
    generate_masks(608, paths, MaskGenerationOptions(generator="supervoxel", configuration="3d_cpu",
                                                     num_processes=2, progress=False))
    options = TrainingOptions(mode="PRETRAIN", datasets=["608"], configuration="3d_cpu", epochs=2, iters_per_epoch=2,
                              batch_size=1, num_workers=1, device="cpu", val_dataset=["608"], extra={"num_tasks": 4})
    summary = run_training(options, paths)
    records = read_metrics(summary["output_folder"])
    assert [r["epoch"] for r in records] == [1, 2]
    assert all(0.0 <= r["val_dice"] <= 1.0 for r in records)
    network, checkpoint = load_network(f"{summary['output_folder']}/checkpoint_final.pt")
    assert checkpoint.meta.plans["channels"][0]["modality"] == "MR"
    assert network.config.input_size_zyx == checkpoint.meta.plans["configurations"]["3d_cpu"]["patch_size_zyx"]
    assert summary["best_metric_key"] == "val_dice" and summary["best_metric"] == pytest.approx(
        max(r["val_dice"] for r in records))
