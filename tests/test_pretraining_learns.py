"""A few hundred MASS steps on the phantom lower the loss (coarse 6 mm grid, 32³ patch, to keep it quick)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from mass_nn.paths import MassPaths
from mass_nn.training.metrics_log import read_metrics
from mass_nn.training.options import TrainingOptions
from mass_nn.training.run_training import run_training


@pytest.mark.slow
def test_a_few_hundred_steps_lower_the_loss(tmp_path):
    from dataset_conversion.phantom import write_phantom_dataset
    from mass_nn.masks.generate import MaskGenerationOptions, generate_masks
    from mass_nn.preprocessing.plan_and_preprocess import PlanAndPreprocessOptions, plan_and_preprocess
    preset = tmp_path / "coarse.json"
    preset.write_text(json.dumps({"description": "6 mm, 32^3 patch", "plans_name": "MassPlansCoarse",
                                  "settings": {"configurations": ["3d_cpu"], "cpu_resolution_factor": 4.0}}))
    paths = MassPaths(raw=tmp_path / "raw", preprocessed=tmp_path / "pre", results=tmp_path / "res")
    write_phantom_dataset(paths.raw, 990, num_cases=6, seed=5)
    plan_and_preprocess(990, paths, PlanAndPreprocessOptions(preset=str(preset), num_processes=1, progress=False))
    generate_masks(990, paths, MaskGenerationOptions(generator="supervoxel", configuration="3d_cpu",
                                                     plans_name="MassPlansCoarse", num_processes=1, progress=False))
    options = TrainingOptions(mode="PRETRAIN", datasets=["990"], configuration="3d_cpu", plans_name="MassPlansCoarse",
                              epochs=6, iters_per_epoch=40, batch_size=2, num_workers=0, device="cpu",
                              val_batches=2, extra={"num_tasks": 6})
    summary = run_training(options, paths)
    records = read_metrics(summary["output_folder"])
    losses = [r["train_loss"] for r in records]
    assert summary["global_step"] == 240 and len(losses) == 6
    assert np.mean(losses[-2:]) < 0.85 * losses[0], losses
    assert records[-1]["val_loss"] < records[0]["val_loss"], [r["val_loss"] for r in records]
