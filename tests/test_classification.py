"""Frozen-encoder classification (mass_train FINETUNE -tr ClassificationProbe): the head, the network, labels,
case selection, batches, a synthetic task the encoder must learn, and the trainer end to end on the phantom."""
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from dataset_conversion.phantom_case_labels import phantom_case_labels, write_phantom_case_labels
from mass_nn.cli.train import main as train_main
from mass_nn.errors import MassError
from mass_nn.io.atomic import write_json_atomic
from mass_nn.io.case_labels import CaseLabels, read_case_labels, write_case_labels
from mass_nn.model.checkpoint import encoder_state_dict, load_checkpoint, save_checkpoint
from mass_nn.networks.build import build_network
from mass_nn.networks.heads.attention_pool_head import AttentionPoolHead
from mass_nn.networks.heads.encoder_classifier import EncoderClassifier, EncoderClassifierConfig
from mass_nn.networks.in_context.config import InContextNetworkConfig
from mass_nn.networks.in_context.in_context_model import InContextSegmenter
from mass_nn.paths import MassPaths
from mass_nn.preprocessing.blosc2_storage import save_array
from mass_nn.training.finetune.classification.batches import ClassificationBatches, batch_case_indices
from mass_nn.training.finetune.classification.case_selection import select_training_cases
from mass_nn.training.finetune.classification.inputs import window_coverage
from mass_nn.training.finetune.classification.loss import class_weights, positive_weights
from mass_nn.training.finetune.classification.settings import ClassificationSettings
from mass_nn.training.metrics_log import read_metrics
from mass_nn.training.options import TrainingOptions
from mass_nn.training.run_training import run_training
from mass_nn.training.trainer_settings import parse_settings
from tests.conftest import single_folder

PHANTOM = "Dataset990_PhantomCT"


# ----------------------------------------------------------------- network
def test_attention_head_shapes_and_weights_sum_to_one():
    torch.manual_seed(0)
    head = AttentionPoolHead(in_channels=16, num_classes=3, hidden_channels=8).eval()
    features = torch.randn(2, 16, 2, 3, 4)
    weights = head.attention_weights(features)
    assert head(features).shape == (2, 3) and weights.shape == (2, 24)
    assert torch.all(weights >= 0) and torch.allclose(weights.sum(dim=1), torch.ones(2))
    pooled = head.pool(features)
    assert torch.allclose(pooled, (features.flatten(2) * weights[:, None]).sum(-1), atol=1e-6)
    one_voxel = torch.randn(1, 16, 1, 1, 1)  # a single voxel gets all the weight
    assert torch.allclose(head.pool(one_voxel), one_voxel.flatten(1))
    with pytest.raises(ValueError, match="dropout"):
        AttentionPoolHead(16, 2, dropout=1.0)


def test_encoder_classifier_keys_match_the_in_context_encoder_and_config_round_trips():
    encoder = InContextNetworkConfig.tiny()
    config = EncoderClassifierConfig(encoder=encoder, num_classes=2)
    classifier = EncoderClassifier(config)
    segmenter_keys = {k: v.shape for k, v in InContextSegmenter(encoder).state_dict().items()
                      if k.startswith("encoder.")}
    classifier_keys = {k: v.shape for k, v in classifier.state_dict().items() if k.startswith("encoder.")}
    assert classifier_keys == segmenter_keys and classifier.encoder_key_prefix == "encoder."
    assert sorted(k for k in classifier.state_dict() if not k.startswith("encoder.")) == [
        "head.classifier.bias", "head.classifier.weight", "head.score.0.bias", "head.score.0.weight",
        "head.score.2.bias", "head.score.2.weight"]
    rebuilt = build_network("EncoderClassifier", json.loads(json.dumps(config.to_dict())))
    assert rebuilt.config == config
    logits = classifier.eval()(torch.randn(2, 1, 32, 32, 32))
    features = classifier.deepest_features(torch.zeros(1, 1, 32, 48, 64))
    assert logits.shape == (2, 2) and features.shape == (1, 128, 2, 3, 4)
    with pytest.raises(ValueError, match="channels"):
        classifier(torch.zeros(1, 2, 32, 32, 32))


# ----------------------------------------------------------------- labels, settings, selection, batches, loss
@pytest.mark.parametrize("text, message", [
    ("case,target\na,1\nb,0\n", "header row starting with 'case_id'"),
    ("case_id,target\na,1\na,0\n", "case 'a' appears twice"),
    ("case_id,x,y\na,1,0\nb,2,1\n", "must be 0 or 1"),
    ("case_id,target\na,1\nb,1\n", "single class"),
    ("case_id,target\na,1\nb,\n", "line 3: expected 2 non-empty values"),
])
def test_labels_csv_errors_name_the_file_and_the_problem(tmp_path, text, message):
    path = tmp_path / "labels.csv"
    path.write_text(text)
    with pytest.raises(MassError, match=message) as error:
        read_case_labels(path)
    assert str(path) in str(error.value)


def test_settings_reject_unknown_names_and_bad_values():
    assert parse_settings(ClassificationSettings, {}, "P") == ClassificationSettings()
    assert parse_settings(ClassificationSettings, {"weight_decay": 0}, "P").weight_decay == 0.0  # int for float
    with pytest.raises(MassError, match=r"unknown P setting\(s\) \['num_tasks'\]"):
        parse_settings(ClassificationSettings, {"num_tasks": 3}, "P")
    with pytest.raises(MassError, match="divisible by 16"):
        parse_settings(ClassificationSettings, {"input_size": [32, 40, 32]}, "P")
    with pytest.raises(MassError, match="P setting finetune_encoder='yes': must be bool"):
        parse_settings(ClassificationSettings, {"finetune_encoder": "yes"}, "P")
    with pytest.raises(MassError, match=r"setting dropout=1.5: expected a value in \[0, 1\)"):
        parse_settings(ClassificationSettings, {"dropout": 1.5}, "P")


def _labels(counts: dict[int, int]) -> CaseLabels:
    targets = {f"c{cls}_{i:02d}": cls for cls, n in counts.items() for i in range(n)}
    return CaseLabels("multiclass", [str(c) for c in sorted(counts)], targets, "target")


def test_stratified_selection_is_seeded_keeps_proportions_and_every_class():
    labels = _labels({0: 80, 1: 16, 2: 4})
    cases = list(labels.targets)
    chosen = select_training_cases(cases, labels, 0.25, seed=0)
    assert chosen == select_training_cases(cases[::-1], labels, 0.25, seed=0)  # order-independent, seeded
    assert chosen != select_training_cases(cases, labels, 0.25, seed=1)
    per_class = np.bincount([labels.targets[c] for c in chosen], minlength=3)
    assert per_class.tolist() == [20, 4, 1]
    tiny = select_training_cases(cases, labels, 0.01, seed=0)  # 1 case by the fraction, raised to one per class
    assert sorted({labels.targets[c] for c in tiny}) == [0, 1, 2] and len(tiny) == 3
    assert select_training_cases(cases, labels, 1.0, seed=5) == sorted(cases)
    with pytest.raises(MassError, match="--train-fraction 0"):
        select_training_cases(cases, labels, 0.0, seed=0)


def test_multilabel_selection_keeps_a_positive_of_every_label():
    targets = {f"n{i:02d}": [0, 0] for i in range(30)}
    targets.update({"a": [1, 0], "b": [0, 1]})
    labels = CaseLabels("multilabel", ["x", "y"], targets)
    chosen = select_training_cases(list(targets), labels, 0.1, seed=3)
    assert {"a", "b"} <= set(chosen) and len(chosen) == 5


def test_batches_are_a_function_of_the_batch_index_and_cover_each_case_once_per_pass():
    first_pass = np.concatenate([batch_case_indices(b, 10, 5, seed=2) for b in range(2)])
    assert sorted(first_pass.tolist()) == list(range(10))
    fetch = lambda indices: indices.tolist()  # noqa: E731
    straight = ClassificationBatches(fetch, 10, 3, seed=2)
    sequence = [next(straight) for _ in range(7)]
    resumed = ClassificationBatches(fetch, 10, 3, seed=2, start_batch=4)
    assert [next(resumed) for _ in range(3)] == sequence[4:]
    ranks = [batch_case_indices(0, 10, 5, seed=2, rank=r, world_size=2) for r in range(2)]
    assert sorted(np.concatenate(ranks).tolist()) == list(range(10))


def test_class_weights_balance_the_classes():
    weights = class_weights(np.array([0, 0, 0, 1]), 3)
    assert torch.allclose(weights, torch.tensor([4 / 6, 2.0, 0.0]))
    assert torch.allclose(positive_weights(np.array([[1, 0], [0, 0], [0, 0], [0, 1]])), torch.tensor([3.0, 3.0]))
    assert window_coverage([64, 48, 48], [32, 48, 64]) == pytest.approx(0.5)


# ----------------------------------------------------------------- a task the encoder must learn
def _blob_volume(rng: np.random.Generator, positive: bool, size: int = 32) -> np.ndarray:
    """White noise; positives add +4 inside a ball of radius 4 voxels at a random place."""
    volume = rng.standard_normal((1, size, size, size)).astype(np.float32)
    if positive:
        centre = rng.uniform(6, size - 6, 3)
        grid = np.stack(np.meshgrid(*[np.arange(size)] * 3, indexing="ij"))
        volume[0][((grid - centre[:, None, None, None]) ** 2).sum(0) <= 16.0] += 4.0
    return volume


def _write_blob_dataset(phantom: MassPaths, root) -> MassPaths:
    """A preprocessed dataset of blob volumes (the phantom's plans with a smaller network) and its labels.csv."""
    paths = MassPaths(raw=root / "raw", preprocessed=root / "pre", results=root / "res")
    folder = paths.preprocessed / "Dataset991_Blobs"
    plans = json.loads((phantom.preprocessed / PHANTOM / "MassPlans.json").read_text())
    plans["configurations"]["3d_cpu"]["network"]["channels"] = [4, 8, 32, 32, 32]
    write_json_atomic(plans, folder / "MassPlans.json")
    rng, splits, rows = np.random.default_rng(0), {}, ["case_id,blob"]
    for split, count in (("train", 40), ("val", 16), ("test", 32)):
        splits[split] = [f"{split}_{i:03d}" for i in range(count)]
        for i, case in enumerate(splits[split]):
            save_array(_blob_volume(rng, positive=i % 2 == 1), folder / "MassPlans_3d_cpu" / f"{case}.b2nd",
                       [32, 32, 32])
            rows.append(f"{case},{i % 2}")
    write_json_atomic(splits, folder / "splits.json")
    (paths.raw / "Dataset991_Blobs").mkdir(parents=True)
    (paths.raw / "Dataset991_Blobs" / "labels.csv").write_text("\n".join(rows) + "\n")
    return paths


def test_full_finetuning_learns_to_detect_a_bright_blob(phantom_with_masks, tmp_path):
    paths = _write_blob_dataset(phantom_with_masks, tmp_path)
    options = TrainingOptions(mode="FINETUNE", datasets=["991"], trainer="ClassificationProbe",
                              configuration="3d_cpu", epochs=8, lr=1e-3, device="cpu", patience=3,
                              extra={"input_size": [32, 32, 32], "finetune_encoder": True})
    summary = run_training(options, paths)
    assert summary["output_folder"].endswith("ClassificationProbe__MassPlans__3d_cpu__scratch_frac1_seed0_full")
    test = json.loads((Path(summary["output_folder"]) / "test_summary.json").read_text())
    assert summary["best_metric_key"] == "val_auc" and summary["best_metric"] >= 0.9
    assert test["num_labelled"] == 32 and test["mean_auc"] >= 0.9 and summary["test_mean_auc"] == test["mean_auc"]
    assert summary["epochs_done"] < 8 or test["mean_auc"] == 1.0  # early stopping once val AUC stops improving


# ----------------------------------------------------------------- the trainer on the phantom
@pytest.fixture(scope="module")
def probe_paths(phantom_with_masks, tmp_path_factory) -> MassPaths:
    """The shared phantom with a copied raw folder holding labels.csv (large_liver), and a short pretraining run."""
    root = tmp_path_factory.mktemp("probe")
    paths = MassPaths(raw=root / "raw", preprocessed=phantom_with_masks.preprocessed, results=root / "results")
    shutil.copytree(phantom_with_masks.raw / PHANTOM, paths.raw / PHANTOM)
    write_phantom_case_labels(paths.raw / PHANTOM, ["large_liver"])
    assert _cli(paths, "PRETRAIN", "-c", "3d_cpu", "--epochs", "1", "--iters-per-epoch", "1", "--batch-size", "1",
                "--val-batches", "1", "--num-workers", "0", "-s", "num_tasks=2") == 0
    return paths


def _cli(paths: MassPaths, mode: str, *args) -> int:
    return train_main([mode, "-d", "990", "--raw", str(paths.raw), "--preprocessed", str(paths.preprocessed),
                       "--results", str(paths.results), "--device", "cpu", *args])


def _pretrained(paths: MassPaths):
    return paths.results / PHANTOM / "MASSPretrainer__MassPlans__3d_cpu" / "checkpoint_final.pt"


def test_phantom_case_labels_vary_and_are_written_as_labels_csv(probe_paths):
    labels = read_case_labels(probe_paths.raw / PHANTOM / "labels.csv")
    assert labels.kind == "multiclass" and labels.target_name == "large_liver"
    assert sorted(labels.targets.values()).count(1) == 3  # above the median: half of the six cases
    both = phantom_case_labels(probe_paths.raw / PHANTOM, ("has_liver_lesion", "large_liver"))
    assert both.kind == "multilabel" and 0 < sum(t[0] for t in both.targets.values()) < 6


def test_probe_from_a_pretrained_checkpoint_end_to_end(probe_paths, capsys):
    assert _cli(probe_paths, "FINETUNE", "-tr", "ClassificationProbe", "--pretrained", str(_pretrained(probe_paths)),
                "--epochs", "3") == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith("finished: 3 epochs") and "test mean AUC" in line
    folder = single_folder(probe_paths.results / PHANTOM,
                           "ClassificationProbe__MassPlans__3d_cpu__pretrained-*_frac1_seed0")
    for name in ("checkpoint_best.pt", "checkpoint_final.pt", "training_cases.json", "test_summary.json",
                 "test_predictions.csv", "encoder_initialisation.json", "metrics.jsonl", "training_log.txt"):
        assert (folder / name).is_file(), name
    cases = json.loads((folder / "training_cases.json").read_text())
    assert cases["selected"] == ["phantom_000", "phantom_001", "phantom_002", "phantom_005"]
    assert cases["selected_per_stratum"] == {"0": 2, "1": 2}
    initialisation = json.loads((folder / "encoder_initialisation.json").read_text())
    pretrained = load_checkpoint(_pretrained(probe_paths))
    assert initialisation["loaded"] == len(encoder_state_dict(pretrained)) and not initialisation["unexpected"]
    assert initialisation["missing"] and all(k.startswith("head.") for k in initialisation["missing"])
    final = load_checkpoint(folder / "checkpoint_final.pt")
    assert final.meta.network_class == "EncoderClassifier" and final.meta.encoder_key_prefix == "encoder."
    for key, value in encoder_state_dict(pretrained).items():  # the frozen encoder did not move
        assert torch.equal(final.model[f"encoder.{key}"], value), key
    summary = json.loads((folder / "test_summary.json").read_text())
    assert summary["num_test_cases"] == 1 and summary["weights"] == "checkpoint_best.pt"
    assert summary["mean_auc"] is None and "undefined" in summary["note"]  # a one-case test split has no AUC
    with open(folder / "test_predictions.csv", newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["case_id", "0", "1"] and rows[1][0] == "phantom_004"
    assert sum(float(v) for v in rows[1][1:]) == pytest.approx(1.0, abs=1e-5)
    records = read_metrics(folder)
    assert [r["epoch"] for r in records] == [1, 2, 3] and "val_loss" in records[0]  # the val case has one class


def test_probe_from_scratch_with_a_fraction_of_the_labels(probe_paths, capsys):
    assert _cli(probe_paths, "FINETUNE", "-tr", "ClassificationProbe", "--train-fraction", "0.5", "--epochs", "2",
                "--tag", "demo") == 0
    folder = probe_paths.results / PHANTOM / "ClassificationProbe__MassPlans__3d_cpu__scratch_frac0.5_seed0_demo"
    cases = json.loads((folder / "training_cases.json").read_text())
    assert cases["num_selected"] == 2 and cases["selected_per_stratum"] == {"0": 1, "1": 1}
    assert json.loads((folder / "encoder_initialisation.json").read_text())["initialisation"] == "scratch"
    assert "randomly initialised (scratch baseline)" in (folder / "training_log.txt").read_text()
    assert (folder / "test_summary.json").is_file()


def test_checkpoint_with_incompatible_plans_is_a_clear_error(probe_paths, tmp_path, capsys):
    checkpoint = load_checkpoint(_pretrained(probe_paths))
    checkpoint.meta.plans["configurations"]["3d_cpu"]["target_spacing_zyx_mm"] = [1.5, 1.5, 1.5]
    save_checkpoint(checkpoint, tmp_path / "other.pt")
    assert _cli(probe_paths, "FINETUNE", "-tr", "ClassificationProbe", "--pretrained", str(tmp_path / "other.pt"),
                "--tag", "incompatible") == 1
    err = capsys.readouterr().err
    assert "other.pt: the checkpoint was trained with plans" in err and "target spacing" in err
    assert "Traceback" not in err


def test_probe_with_multilabel_targets(probe_paths, phantom_with_masks, tmp_path):
    paths = MassPaths(raw=tmp_path / "raw", preprocessed=probe_paths.preprocessed, results=tmp_path / "results")
    (paths.raw / PHANTOM).mkdir(parents=True)
    labels = phantom_case_labels(phantom_with_masks.raw / PHANTOM, ("has_liver_lesion", "large_liver"))
    write_case_labels(labels, paths.raw / PHANTOM / "labels.csv")
    summary = run_training(TrainingOptions(mode="FINETUNE", datasets=["990"], trainer="ClassificationProbe",
                                           configuration="3d_cpu", epochs=2, device="cpu"), paths)
    folder = Path(summary["output_folder"])
    with open(folder / "test_predictions.csv", newline="") as handle:
        assert next(csv.reader(handle)) == ["case_id", "has_liver_lesion", "large_liver"]
    test = json.loads((folder / "test_summary.json").read_text())
    assert test["kind"] == "multilabel" and set(test["auc"]) == {"has_liver_lesion", "large_liver"}
    assert summary["best_metric_key"] == "val_loss"  # the single val case cannot give an AUC
