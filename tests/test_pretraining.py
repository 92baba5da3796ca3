"""mass_train PRETRAIN end to end on a tiny phantom: outputs, checkpoints, resume, stop signal, bad inputs."""
from __future__ import annotations

import json
import os
import shutil
import signal

import numpy as np
import pytest
import torch

from mass_nn.cli.train import main as train_main
from mass_nn.errors import MassError
from mass_nn.model.checkpoint import load_checkpoint
from mass_nn.planning.plans import load_plans
from mass_nn.preprocessing.blosc2_storage import open_array
from mass_nn.registry import TRAINERS
from mass_nn.training.data.augmentation import ViewAugmentation
from mass_nn.training.metrics_log import read_metrics
from mass_nn.training.options import TrainingOptions
from mass_nn.training.pretrain.validation import InContextValidation
from mass_nn.training.run_training import run_training
from mass_nn.training.trainer_settings import parse_settings

RUN = "MASSPretrainer__MassPlans__3d_cpu"


def options(**overrides) -> TrainingOptions:
    values = dict(mode="PRETRAIN", datasets=["990"], configuration="3d_cpu", epochs=2, iters_per_epoch=3,
                  batch_size=1, num_workers=0, device="cpu", val_batches=1, extra={"num_tasks": 4})
    values.update(overrides)
    return TrainingOptions(**values)


def run_folder(paths, tag: str = ""):
    return paths.results / "Dataset990_PhantomCT" / (RUN + (f"__{tag}" if tag else ""))


def cli(paths, *args) -> int:
    return train_main(["PRETRAIN", "-d", "990", "-c", "3d_cpu", "--raw", str(paths.raw), "--preprocessed",
                       str(paths.preprocessed), "--results", str(paths.results), "--device", "cpu",
                       "--num-workers", "0", "--batch-size", "1", "--val-batches", "1", "-s", "num_tasks=4", *args])


def test_cli_writes_every_artifact(pretraining_roots):
    assert cli(pretraining_roots, "--epochs", "2", "--iters-per-epoch", "2") == 0
    folder = run_folder(pretraining_roots)
    for name in ("run_config.json", "checkpoint_latest.pt", "checkpoint_best.pt", "checkpoint_final.pt",
                 "metrics.jsonl", "progress.png", "training_log.txt", "replica_sync.json"):
        assert (folder / name).is_file(), name
    records = read_metrics(folder)
    assert [r["epoch"] for r in records] == [1, 2]
    assert all(r["global_step"] == 2 * r["epoch"] for r in records)
    for key in ("train_loss", "train_dice_loss", "train_bce_loss", "lr", "val_loss", "val_mask_dice"):
        assert key in records[0], key
    config = json.loads((folder / "run_config.json").read_text())
    assert config["epochs"] == 2 and config["masks"] == "supervoxel"
    assert config["global_batch_size"] == 1 and config["lr"] == pytest.approx(2e-3 * (1 / 32) ** 0.5)
    assert config["extra"]["num_tasks"] == 4
    final = load_checkpoint(folder / "checkpoint_final.pt")
    assert final.meta.trainer == "MASSPretrainer" and final.meta.network_class == "InContextSegmenter"
    assert final.meta.configuration == "3d_cpu" and final.meta.encoder_key_prefix == "encoder."
    assert final.meta.plans["configurations"]["3d_cpu"]["patch_size_zyx"] == final.meta.network_config["input_size_zyx"]
    assert final.meta.global_step == 4 and final.ema["num_updates"] == 4
    assert any(k.startswith("encoder.") for k in final.model)
    log = (folder / "training_log.txt").read_text()
    assert "epoch 2" in log and "training finished" in log


def _stop_at(step: int, monkeypatch):
    """Make the trainer receive SIGTERM while computing the loss of global step `step`."""
    from mass_nn.training.pretrain.mass_pretrainer import MASSPretrainer
    original = MASSPretrainer.compute_loss

    def compute_loss(self, batch):
        if self.global_step == step:
            os.kill(os.getpid(), signal.SIGTERM)
        return original(self, batch)
    monkeypatch.setattr(MASSPretrainer, "compute_loss", compute_loss)


@pytest.mark.slow  # about 30 s on 2 cores: keeps the default run under 10 minutes
def test_sigterm_then_continue_equals_an_uninterrupted_run(pretraining_roots, monkeypatch):
    straight = run_training(options(tag="straight"), pretraining_roots)
    assert not straight["stopped_early"] and straight["global_step"] == 6

    _stop_at(4, monkeypatch)  # mid-way through epoch 2
    stopped = run_training(options(tag="resumed"), pretraining_roots)
    assert stopped["stopped_early"] and stopped["global_step"] == 5 and stopped["epochs_done"] == 1
    assert not (run_folder(pretraining_roots, "resumed") / "checkpoint_final.pt").exists()
    monkeypatch.undo()
    resumed = run_training(options(tag="resumed", continue_training=True), pretraining_roots)
    assert resumed["global_step"] == 6 and not resumed["stopped_early"]

    a = load_checkpoint(run_folder(pretraining_roots, "straight") / "checkpoint_final.pt")
    b = load_checkpoint(run_folder(pretraining_roots, "resumed") / "checkpoint_final.pt")
    for key in a.model:
        torch.testing.assert_close(a.model[key], b.model[key], rtol=0, atol=1e-6, msg=key)
    for key in a.ema["module"]:
        torch.testing.assert_close(a.ema["module"][key], b.ema["module"][key], rtol=0, atol=1e-6, msg=key)
    assert a.scheduler["last_epoch"] == b.scheduler["last_epoch"]
    metrics_a, metrics_b = read_metrics(run_folder(pretraining_roots, "straight")), read_metrics(
        run_folder(pretraining_roots, "resumed"))
    assert [r["epoch"] for r in metrics_b] == [1, 2]
    assert metrics_a[1]["train_loss"] == pytest.approx(metrics_b[1]["train_loss"], abs=1e-5)


def test_max_minutes_stops_before_the_epoch_that_would_not_fit_and_resumes_its_count(pretraining_roots,
                                                                                     monkeypatch):
    from types import SimpleNamespace

    import mass_nn.training.trainer as trainer_module
    from mass_nn.training.pretrain.mass_pretrainer import MASSPretrainer
    clock = [1000.0]  # each step costs 20 s of a fake clock, so an epoch of 3 steps is one minute
    monkeypatch.setattr(trainer_module, "time", SimpleNamespace(time=lambda: clock[0]))
    original = MASSPretrainer.compute_loss

    def compute_loss(self, batch):
        clock[0] += 20.0
        return original(self, batch)
    monkeypatch.setattr(MASSPretrainer, "compute_loss", compute_loss)
    summary = run_training(options(epochs=5, max_minutes=2.5), pretraining_roots)
    # after epoch 2 another minute would end at 3 > 2.5: a finished run of 2 epochs on the 5 epochs' schedule
    assert (summary["epochs_done"], summary["global_step"], summary["stopped_early"]) == (2, 6, False)
    assert summary["trained_minutes"] == pytest.approx(2.0)
    folder = run_folder(pretraining_roots)
    assert [r["trained_minutes"] for r in read_metrics(folder)] == pytest.approx([1.0, 2.0])
    final = load_checkpoint(folder / "checkpoint_final.pt")
    assert final.trainer_state["trained_seconds"] == pytest.approx(120.0)
    assert final.scheduler["last_epoch"] == 6 and final.optimizer["param_groups"][0]["lr"] > 0
    assert "time budget: 2 of 5 epochs (6 steps) in 2.0 of 2.5 minutes" in (folder / "training_log.txt").read_text()
    resumed = run_training(options(epochs=5, max_minutes=2.5, continue_training=True), pretraining_roots)
    assert (resumed["epochs_done"], resumed["global_step"]) == (2, 6)  # the spent minutes came back with the run
    with pytest.raises(MassError, match="max_minutes: run has 2.5"):
        run_training(options(epochs=5, max_minutes=10.0, continue_training=True), pretraining_roots)


def test_max_minutes_must_be_positive(pretraining_roots):
    with pytest.raises(MassError, match="--max-minutes 0: give a positive number of minutes"):
        run_training(options(max_minutes=0.0), pretraining_roots)


def test_existing_run_needs_continue_and_keeps_its_options(pretraining_roots):
    run_training(options(epochs=1, iters_per_epoch=1), pretraining_roots)
    with pytest.raises(MassError, match="--continue"):
        run_training(options(epochs=1, iters_per_epoch=1), pretraining_roots)
    with pytest.raises(MassError, match="lr: run has 0.00035"):
        run_training(options(epochs=1, iters_per_epoch=1, lr=1e-3, continue_training=True), pretraining_roots)


def test_continue_refuses_changed_plans(pretraining_roots, tmp_path):
    run_training(options(epochs=1, iters_per_epoch=1), pretraining_roots)
    preprocessed = tmp_path / "pre_copy"
    shutil.copytree(pretraining_roots.preprocessed, preprocessed)
    plans_file = preprocessed / "Dataset990_PhantomCT" / "MassPlans.json"
    plans = json.loads(plans_file.read_text())
    plans["configurations"]["3d_cpu"]["target_spacing_zyx_mm"] = [2.5, 2.5, 2.5]
    plans_file.write_text(json.dumps(plans))
    changed = type(pretraining_roots)(raw=pretraining_roots.raw, preprocessed=preprocessed,
                                      results=pretraining_roots.results)
    with pytest.raises(MassError, match=r"(?s)plans changed.*target spacing"):
        run_training(options(epochs=1, iters_per_epoch=1, continue_training=True), changed)


def test_corrupt_checkpoint_is_a_clear_error(pretraining_roots, capsys):
    run_training(options(epochs=1, iters_per_epoch=1), pretraining_roots)
    latest = run_folder(pretraining_roots) / "checkpoint_latest.pt"
    latest.write_bytes(latest.read_bytes()[:1000])
    assert cli(pretraining_roots, "--epochs", "1", "--iters-per-epoch", "1", "--continue") == 1
    err = capsys.readouterr().err
    assert "checkpoint_latest.pt: checkpoint cannot be read" in err and "Traceback" not in err


def test_missing_masks_unknown_trainer_and_wrong_mode(pretraining_roots, tmp_path, capsys):
    preprocessed = tmp_path / "pre_no_masks"
    shutil.copytree(pretraining_roots.preprocessed, preprocessed, ignore=shutil.ignore_patterns("masks_*"))
    no_masks = type(pretraining_roots)(raw=pretraining_roots.raw, preprocessed=preprocessed,
                                       results=pretraining_roots.results)
    with pytest.raises(MassError, match="no masks generated yet; run mass_generate_masks -d Dataset990_PhantomCT"):
        run_training(options(), no_masks)
    assert cli(pretraining_roots, "-tr", "NoSuchTrainer") == 1
    error = capsys.readouterr().err
    assert "unknown trainer 'NoSuchTrainer'; known: " in error
    assert {"MASSPretrainer", "SegmentationFinetuner"} <= set(error.split("known: ")[1].strip().split(", "))
    with pytest.raises(MassError, match="unknown MASSPretrainer setting"):
        run_training(options(extra={"num_task": 3}), pretraining_roots)


def test_in_context_validation_on_a_labelled_dataset(pretraining_roots):
    summary = run_training(options(epochs=1, iters_per_epoch=1, val_dataset=["990"],
                                   extra={"num_tasks": 4, "val_reference_choices": 2}), pretraining_roots)
    record = read_metrics(run_folder(pretraining_roots))[0]
    assert 0.0 <= record["val_dice"] <= 1.0
    assert any(k.startswith("val_dice_") for k in record)
    assert "val_loss" in record and "val_mask_dice" in record  # the pretext validation runs beside it
    assert 0.0 <= record["val_calibrated_dice"] <= 1.0 and any(k.startswith("val_calibrated_dice_") for k in record)
    assert summary["best_metric_key"] == "val_dice"
    assert load_checkpoint(run_folder(pretraining_roots) / "checkpoint_best.pt").meta.best_metric == record["val_dice"]


def test_in_context_validation_crops_to_the_networks_patch(pretraining_roots):
    # a val dataset planned with a larger patch than the pool's (taller volumes) must still give references
    # and queries the network accepts: the crops follow the pretraining plans' patch, not the val dataset's
    plans_file = pretraining_roots.preprocessed / "Dataset990_PhantomCT" / "MassPlans.json"
    pool_plans = load_plans(plans_file)
    own_patch = pool_plans.configuration("3d_cpu").patch_size_zyx
    smaller = [edge - 16 if edge > 32 else edge for edge in own_patch]
    assert smaller != own_patch
    pool_plans.configuration("3d_cpu").patch_size_zyx = smaller
    validation = InContextValidation.from_dataset("990", pretraining_roots, pool_plans, "MassPlans", "3d_cpu")
    crops = [crop for crops in validation.references.values() for crop in crops] + validation.queries
    assert crops and {image.shape[1:] for image, _ in crops} == {tuple(smaller)}
    assert {mask.shape for _, mask in crops} == {tuple(smaller)}


def test_cpu_recipe_trainer_sets_its_defaults_and_keeps_overrides(pretraining_roots):
    summary = run_training(options(trainer="MASSCPUPretrainer", epochs=1, iters_per_epoch=1), pretraining_roots)
    folder = pretraining_roots.results / "Dataset990_PhantomCT" / "MASSCPUPretrainer__MassPlans__3d_cpu"
    assert summary["output_folder"] == str(folder)
    config = json.loads((folder / "run_config.json").read_text())
    assert config["extra"]["min_mask_fraction"] == 0.01 and config["extra"]["num_tasks"] == 4
    assert load_checkpoint(folder / "checkpoint_final.pt").meta.trainer == "MASSCPUPretrainer"
    with pytest.raises(MassError, match="min_mask_fraction=1.5: expected a share of the patch volume"):
        run_training(options(trainer="MASSCPUPretrainer", tag="bad", extra={"min_mask_fraction": 1.5}),
                     pretraining_roots)


def test_in_context_validation_never_falls_back_to_test_cases(pretraining_roots, tmp_path):
    splits_path = pretraining_roots.preprocessed / "Dataset990_PhantomCT" / "splits.json"
    original = splits_path.read_text()
    splits = json.loads(original)
    splits["train"] += splits["val"]
    splits["val"] = []
    splits_path.write_text(json.dumps(splits))
    try:
        with pytest.raises(MassError, match=r"val split \(queries; the test split is never used.*splits\.json"):
            run_training(options(epochs=1, iters_per_epoch=1, val_dataset=["990"], tag="notest"), pretraining_roots)
    finally:
        splits_path.write_text(original)


def test_continue_checks_datasets_epochs_and_setting_types(pretraining_roots, capsys):
    run_training(options(epochs=1, iters_per_epoch=1), pretraining_roots)
    with pytest.raises(MassError, match="epochs: run has 1, command line asks 3"):
        run_training(options(epochs=3, iters_per_epoch=1, continue_training=True), pretraining_roots)
    with pytest.raises(MassError, match="MASSPretrainer setting everything_task='False': must be bool"):
        run_training(options(tag="typed", extra={"everything_task": "False"}), pretraining_roots)
    stored = json.loads((run_folder(pretraining_roots) / "run_config.json").read_text())
    from mass_nn.training.options import merge_for_continue
    with pytest.raises(MassError, match=r"datasets: run has \['990'\], command line asks \['990', '991'\]"):
        merge_for_continue(TrainingOptions.from_dict(stored), options(datasets=["990", "991"]))


def test_wide_query_appearance_changes_the_training_views_not_the_held_out_ones(pretraining_roots):
    trainer = TRAINERS.get("MASSPretrainer")(options(extra={"num_tasks": 4, "query_appearance": "wide"}),
                                             pretraining_roots)
    trainer.settings = parse_settings(trainer.settings_class, trainer.options.extra, trainer.name)  # as run() does
    trainer.resolve_data()
    trainer.fill_defaults()
    trainer.setup()
    assert trainer.sampler_settings.query == ViewAugmentation.wide_appearance()
    assert trainer.sampler_settings.reference == ViewAugmentation.weak()
    assert trainer.validation.auto_masks.settings.query == ViewAugmentation.strong()
    assert ViewAugmentation.wide_appearance().appearance_probability > ViewAugmentation.strong().appearance_probability


def test_reference_region_shift_reaches_the_training_views_not_the_held_out_ones(pretraining_roots):
    trainer = TRAINERS.get("MASSPretrainer")(options(extra={"num_tasks": 4, "reference_region_shift": 0.3}),
                                             pretraining_roots)
    trainer.settings = parse_settings(trainer.settings_class, trainer.options.extra, trainer.name)
    trainer.resolve_data()
    trainer.fill_defaults()
    trainer.setup()
    assert trainer.sampler_settings.reference_region_shift == 0.3
    assert trainer.validation.auto_masks.settings.reference_region_shift == 0.0


@pytest.mark.parametrize("case_sampling", ["uniform", "volume"])
def test_case_sampling_weights_the_train_cases_by_their_voxels(pretraining_roots, case_sampling):
    trainer = TRAINERS.get("MASSPretrainer")(options(extra={"num_tasks": 4, "case_sampling": case_sampling}),
                                             pretraining_roots)
    trainer.settings = parse_settings(trainer.settings_class, trainer.options.extra, trainer.name)
    trainer.resolve_data()
    trainer.fill_defaults()
    trainer.setup()
    loader = trainer.make_train_loader(0)
    try:
        probabilities = loader.loader.case_probabilities
    finally:
        loader.close()
    if case_sampling == "uniform":
        assert probabilities is None
        return
    voxels = np.array([np.prod(open_array(case.image_path).shape[1:]) for case in trainer.train_cases], float)
    assert len(set(voxels)) > 1  # the phantom's cases differ in size, so the weights are not uniform
    assert np.allclose(probabilities, voxels / voxels.sum())
