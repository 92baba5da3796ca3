"""Every baseline pretrainer on real CT from ../shared/data (soft-tissue-sarcoma tumours): a short pretraining,
then few-shot segmentation finetuning from its checkpoint with the test-split evaluation."""
from __future__ import annotations

import json

import pytest

from mass_nn.paths import MassPaths
from mass_nn.training.options import TrainingOptions
from mass_nn.training.run_training import run_training
from tests.conftest import requires_shared_data, shared_data_dir

pytestmark = [requires_shared_data, pytest.mark.slow]

BASELINES = ["MAEPretrainer", "S3DPretrainer", "SimCLRPretrainer", "ModelsGenesisPretrainer", "HiEndMAEPretrainer",
             "MiMPretrainer"]


@pytest.fixture(scope="module")
def sarcoma_ct(tmp_path_factory):
    from dataset_conversion.shared_data import convert_shared_data
    from mass_nn.preprocessing.plan_and_preprocess import PlanAndPreprocessOptions, plan_and_preprocess
    root = tmp_path_factory.mktemp("baselines_real")
    paths = MassPaths(raw=root / "raw", preprocessed=root / "pre", results=root / "res")
    raw = convert_shared_data(shared_data_dir(), paths.raw, which=["ct_tumour"])["ct_tumour"]
    dataset_id = raw.name.split("_")[0].removeprefix("Dataset")
    plan_and_preprocess(int(dataset_id), paths, PlanAndPreprocessOptions(preset="cpu_only", num_processes=2,
                                                                         progress=False))
    return paths, dataset_id


@pytest.mark.parametrize("trainer", BASELINES)
def test_baseline_pretrains_and_transfers_on_real_ct(sarcoma_ct, trainer):
    paths, dataset_id = sarcoma_ct
    common = dict(datasets=[dataset_id], configuration="3d_cpu", epochs=1, iters_per_epoch=1, batch_size=1,
                  num_workers=0, device="cpu", val_batches=1)
    pretraining = run_training(TrainingOptions(mode="PRETRAIN", trainer=trainer, **common), paths)
    assert not pretraining["stopped_early"]
    checkpoint = f"{pretraining['output_folder']}/checkpoint_final.pt"
    finetuning = run_training(TrainingOptions(mode="FINETUNE", trainer="SegmentationFinetuner", shots=1,
                                              pretrained=checkpoint, tag=trainer, **common), paths)
    folder = finetuning["output_folder"]
    shots = json.loads(open(f"{folder}/shots.json").read())
    assert shots["weights"]["unexpected"] == [] and shots["weights"]["loaded"] > 0
    summary = json.loads(open(f"{folder}/test/summary.json").read())
    assert summary["num_cases"] >= 1 and summary["errors"] == []
