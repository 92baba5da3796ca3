"""Downstream on real CT from ../shared/data (soft-tissue-sarcoma tumours): pretrain briefly, then the few-shot
protocol (in context and finetuned) and mass_predict with references, scored in the raw geometry."""
from __future__ import annotations

import pytest

import json

import numpy as np

from mass_nn.cli.fewshot import main as fewshot_main
from mass_nn.cli.predict import main as predict_main
from mass_nn.io.case_labels import CaseLabels, write_case_labels
from mass_nn.io.image_io import read_image
from mass_nn.paths import MassPaths
from mass_nn.training.options import TrainingOptions
from mass_nn.training.run_training import run_training
from tests.conftest import requires_shared_data, shared_data_dir

pytestmark = requires_shared_data


@pytest.mark.slow  # about 110 s on 2 cores: keeps the default run under 10 minutes
def test_few_shot_protocol_and_prediction_on_sarcoma_ct(tmp_path):
    from dataset_conversion.shared_data import convert_shared_data
    from mass_nn.masks.generate import MaskGenerationOptions, generate_masks
    from mass_nn.preprocessing.plan_and_preprocess import PlanAndPreprocessOptions, plan_and_preprocess
    paths = MassPaths(raw=tmp_path / "raw", preprocessed=tmp_path / "pre", results=tmp_path / "res")
    raw = convert_shared_data(shared_data_dir(), paths.raw, which=["ct_tumour"])["ct_tumour"]
    dataset_id = raw.name.split("_")[0].removeprefix("Dataset")
    plan_and_preprocess(int(dataset_id), paths, PlanAndPreprocessOptions(preset="cpu_only", num_processes=2,
                                                                         progress=False))
    generate_masks(int(dataset_id), paths, MaskGenerationOptions(generator="supervoxel", configuration="3d_cpu",
                                                                 num_processes=2, progress=False))
    pretraining = run_training(TrainingOptions(mode="PRETRAIN", datasets=[dataset_id], configuration="3d_cpu",
                                               epochs=1, iters_per_epoch=2, batch_size=1, num_workers=1,
                                               device="cpu", val_batches=1, extra={"num_tasks": 4}), paths)
    checkpoint = f"{pretraining['output_folder']}/checkpoint_final.pt"
    out = tmp_path / "fewshot"
    roots = ["--raw", str(paths.raw), "--preprocessed", str(paths.preprocessed), "--results", str(paths.results)]
    assert fewshot_main(["-d", dataset_id, "--checkpoint", checkpoint, "-k", "1", "--seeds", "0", "--epochs", "1",
                         "--iters-per-epoch", "2", "-o", str(out), *roots]) == 0
    results = json.loads((out / "results.json").read_text())
    assert [r["method"] for r in results["runs"]] == ["in_context", "finetune"]
    assert all(0.0 <= r["mean_dice"] <= 1.0 for r in results["runs"] if r["mean_dice"] is not None)
    splits = json.loads((paths.preprocessed / raw.name / "splits.json").read_text())
    summary = json.loads((out / "in_context" / "1shot_seed0" / "summary.json").read_text())
    assert [c["case_id"] for c in summary["per_case"]] == sorted(splits["test"])

    # mass_predict with a reference from the train split: output on the query's own raw grid
    shot = json.loads((out / "in_context" / "1shot_seed0" / "shots.json").read_text())["training_cases"][0]
    query = raw / "imagesTr" / f"{splits['test'][0]}_0000.nii.gz"
    assert predict_main(["-i", str(query), "-o", str(tmp_path / "pred"), "--checkpoint", checkpoint,
                         "--reference-image", str(raw / "imagesTr" / f"{shot}_0000.nii.gz"),
                         "--reference-mask", str(raw / "labelsTr" / f"{shot}.nii.gz"), "--device", "cpu"]) == 0
    label_map, geometry = read_image(tmp_path / "pred" / f"{splits['test'][0]}.nii.gz", dtype=np.int16)
    assert geometry.differences(read_image(query)[1]) == [] and set(np.unique(label_map)) <= {0, 1}

    # frozen-encoder classification on a case-level target measured from the labels: tumour larger than the median
    volumes = {}
    for label_path in sorted((raw / "labelsTr").glob("*.nii.gz")):
        label, label_geometry = read_image(label_path, dtype=np.int16)
        volumes[label_path.name.removesuffix(".nii.gz")] = (label > 0).sum() * np.prod(label_geometry.spacing_xyz)
    median = float(np.median(list(volumes.values())))
    write_case_labels(CaseLabels("multiclass", ["0", "1"], {c: int(v > median) for c, v in volumes.items()},
                                 "large_tumour"), raw / "labels.csv")
    probe = run_training(TrainingOptions(mode="FINETUNE", datasets=[dataset_id], trainer="ClassificationProbe",
                                         configuration="3d_cpu", epochs=2, pretrained=checkpoint, device="cpu"), paths)
    test_summary = json.loads((tmp_path / probe["output_folder"] / "test_summary.json").read_text())
    assert test_summary["num_test_cases"] == len(splits["test"]) and test_summary["num_labelled"] == len(splits["test"])
