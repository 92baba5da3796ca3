"""Downstream on the phantom: FINETUNE trainers, mass_predict (fixed classes and in context), the in-context
protocol and mass_fewshot, and the errors a user can cause."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from mass_nn import threads
from mass_nn.cli.fewshot import main as fewshot_main
from mass_nn.cli.predict import main as predict_main
from mass_nn.cli.train import main as train_main
from mass_nn.datasets.labelled_data import LabelledCase
from mass_nn.inference.task_embedding_file import load_task_embedding
from mass_nn.io.image_io import read_image, write_image
from mass_nn.model.checkpoint import load_checkpoint, model_state_dict, save_checkpoint
from mass_nn.preprocessing.blosc2_storage import save_array
from mass_nn.training.data.labelled_patch_loader import make_labelled_loader
from mass_nn.training.options import TrainingOptions
from mass_nn.training.run_folder import checkpoint_identity
from mass_nn.training.run_training import run_training
from tests.conftest import single_folder


@pytest.fixture(scope="module")
def pretrained(phantom_with_masks, tmp_path_factory):
    """(paths with a fresh results root, a MASS checkpoint from a 2-step pretraining run)."""
    from mass_nn.paths import MassPaths
    paths = MassPaths(raw=phantom_with_masks.raw, preprocessed=phantom_with_masks.preprocessed,
                      results=tmp_path_factory.mktemp("downstream_results"))
    summary = run_training(TrainingOptions(mode="PRETRAIN", datasets=["990"], configuration="3d_cpu", epochs=1,
                                           iters_per_epoch=2, batch_size=1, num_workers=0, device="cpu",
                                           val_batches=1, extra={"num_tasks": 4}), paths)
    return paths, summary["output_folder"] + "/checkpoint_final.pt"


def _roots(paths) -> list[str]:
    return ["--raw", str(paths.raw), "--preprocessed", str(paths.preprocessed), "--results", str(paths.results)]


def _finetune_args(paths, *extra) -> list[str]:
    return ["FINETUNE", "-d", "990", "-c", "3d_cpu", "--epochs", "1", "--iters-per-epoch", "2", "--batch-size", "1",
            "--num-workers", "0", "--device", "cpu", *extra, *_roots(paths)]


@pytest.mark.parametrize("cores, expected_workers", [(2, 0), (3, 2)])
def test_finetuning_loads_in_its_own_process_on_two_cores(pretrained, monkeypatch, cores, expected_workers):
    # on 2 cores a loader worker takes a core from the step: 1.83-1.92 s per CHAOS step against 1.10 s + 0.04 s
    # of loading without it (mass_nn.threads.default_loader_workers)
    paths, _ = pretrained
    monkeypatch.setattr(threads, "usable_cores", lambda: cores)
    options = TrainingOptions(mode="FINETUNE", datasets=["990"], trainer="SegmentationFinetuner", shots=1,
                              configuration="3d_cpu", epochs=1, iters_per_epoch=1, batch_size=1, device="cpu",
                              tag=f"workers_{cores}")
    summary = run_training(options, paths)
    config = json.loads((Path(summary["output_folder"]) / "run_config.json").read_text())
    assert config["num_workers"] == expected_workers


def test_finetune_from_pretrained_writes_shots_checkpoints_and_test_summary(pretrained, capsys):
    paths, checkpoint = pretrained
    assert train_main(_finetune_args(paths, "-shots", "2", "--seed", "1", "--pretrained", checkpoint)) == 0
    folder = paths.results / "Dataset990_PhantomCT" / (f"SegmentationFinetuner__MassPlans__3d_cpu__pretrained-"
                                                       f"{checkpoint_identity(checkpoint)}_2shot_seed1")
    shots = json.loads((folder / "shots.json").read_text())
    assert len(shots["training_cases"]) == 2 and shots["seed"] == 1
    assert shots["weights"]["missing"] == [] and shots["weights"]["unexpected"] == []
    splits = json.loads((paths.preprocessed / "Dataset990_PhantomCT" / "splits.json").read_text())
    assert set(shots["training_cases"]) <= set(splits["train"])
    summary = json.loads((folder / "test" / "summary.json").read_text())
    assert [c["case_id"] for c in summary["per_case"]] == splits["test"]
    assert set(summary["labels"]) == set(shots["classes"])
    for kind in ("latest", "final"):
        assert (folder / f"checkpoint_{kind}.pt").is_file()
    meta = load_checkpoint(folder / "checkpoint_final.pt").meta
    assert meta.network_class == "FixedClassSegmenter" and meta.trainer == "SegmentationFinetuner"

    # mass_predict with the run folder: label maps in the raw images' geometry, one per case
    query = paths.raw / "Dataset990_PhantomCT" / "imagesTr" / f"{splits['test'][0]}_0000.nii.gz"
    out = paths.results / "predicted"
    assert predict_main(["-i", str(query), "-o", str(out), "-m", str(folder), "--checkpoint-kind", "final",
                         "--device", "cpu"]) == 0
    label_map, geometry = read_image(out / f"{splits['test'][0]}.nii.gz", dtype=np.int16)
    assert geometry.differences(read_image(query)[1]) == []
    assert set(np.unique(label_map)) <= set(shots["classes"].values()) | {0}


def test_embedding_tuner_trains_only_embeddings_and_head(pretrained):
    paths, checkpoint = pretrained
    assert train_main(_finetune_args(paths, "-tr", "EmbeddingTuner", "-shots", "1", "--pretrained", checkpoint)) == 0
    folder = single_folder(paths.results / "Dataset990_PhantomCT",
                           "EmbeddingTuner__MassPlans__3d_cpu__pretrained-*_1shot_seed0")
    before = model_state_dict(load_checkpoint(checkpoint))  # finetuning starts from the EMA weights
    after = load_checkpoint(folder / "checkpoint_final.pt").model
    for key, value in before.items():
        changed = not torch.equal(value, after[f"segmenter.{key}"])
        assert changed == key.startswith("head."), key
    assert train_main(_finetune_args(paths, "-tr", "EmbeddingTuner", "--tag", "x")) == 1  # needs --pretrained


def test_scratch_run_and_incompatible_plans_error(pretrained, tmp_path, capsys):
    paths, checkpoint = pretrained
    assert train_main(_finetune_args(paths, "-shots", "1")) == 0
    assert (paths.results / "Dataset990_PhantomCT" / "SegmentationFinetuner__MassPlans__3d_cpu__scratch_1shot_seed0"
            / "test" / "summary.json").is_file()
    bad = load_checkpoint(checkpoint)
    bad.meta.plans["configurations"]["3d_cpu"]["target_spacing_zyx_mm"] = [9.0, 9.0, 9.0]
    bad_path = tmp_path / "other_spacing.pt"
    save_checkpoint(bad, bad_path)
    capsys.readouterr()
    assert train_main(_finetune_args(paths, "-shots", "1", "--pretrained", str(bad_path), "--tag", "bad")) == 1
    error = capsys.readouterr().err
    assert "target spacing (mm, zyx): [9.0, 9.0, 9.0] vs" in error and "re-plan" in error
    assert train_main(_finetune_args(paths, "-shots", "99", "--tag", "many")) == 1
    assert "choose 1 to" in capsys.readouterr().err


def test_in_context_predict_saves_and_reuses_the_encoding(pretrained, tmp_path, capsys):
    paths, checkpoint = pretrained
    images = paths.raw / "Dataset990_PhantomCT" / "imagesTr"
    labels = paths.raw / "Dataset990_PhantomCT" / "labelsTr"
    reference, query = ["phantom_000", "phantom_001"]
    args = ["-i", str(images / f"{query}_0000.nii.gz"), "--checkpoint", checkpoint, "--device", "cpu"]
    refs = ["--reference-image", str(images / f"{reference}_0000.nii.gz"), "--reference-mask",
            str(labels / f"{reference}.nii.gz")]
    assert predict_main([*args, "-o", str(tmp_path / "a"), *refs, "--labels", "1", "7",
                         "--save-embedding", str(tmp_path / "refs.pt")]) == 0
    assert predict_main([*args, "-o", str(tmp_path / "b"), "--embedding", str(tmp_path / "refs.pt")]) == 0
    first = read_image(tmp_path / "a" / f"{query}.nii.gz", dtype=np.int16)[0]
    np.testing.assert_array_equal(first, read_image(tmp_path / "b" / f"{query}.nii.gz", dtype=np.int16)[0])
    assert set(np.unique(first)) <= {0, 1, 7}
    # each pass is filled with context tasks up to the pretraining task count; --context-tasks 0: none
    run_tasks = load_checkpoint(checkpoint).meta.run_config["extra"]["num_tasks"]
    assert 0 < load_task_embedding(tmp_path / "refs.pt")[1]["context_tasks"] <= run_tasks - 2
    assert predict_main([*args, "-o", str(tmp_path / "c"), *refs, "--labels", "1", "7", "--context-tasks", "0",
                         "--save-embedding", str(tmp_path / "plain.pt")]) == 0
    assert load_task_embedding(tmp_path / "plain.pt")[2] is None
    capsys.readouterr()
    assert predict_main([*args, "-o", str(tmp_path / "d"), "--embedding", str(tmp_path / "refs.pt"),
                         "--context-tasks", "4"]) == 1
    assert "--context-tasks fills passes" in capsys.readouterr().err
    # the release's rule for overlapping labels: the same claimed voxels, each to its most probable label
    assert predict_main([*args, "-o", str(tmp_path / "p"), "--embedding", str(tmp_path / "refs.pt"),
                         "--label-fusion", "most_probable"]) == 0
    most_probable = read_image(tmp_path / "p" / f"{query}.nii.gz", dtype=np.int16)[0]
    np.testing.assert_array_equal(most_probable > 0, first > 0)
    assert set(np.unique(most_probable)) <= {0, 1, 7}
    # each label's own claim beside the label map: in the query's geometry, covering the label map's voxels
    assert predict_main([*args, "-o", str(tmp_path / "s"), "--embedding", str(tmp_path / "refs.pt"),
                         "--structure-masks"]) == 0
    np.testing.assert_array_equal(read_image(tmp_path / "s" / f"{query}.nii.gz", dtype=np.int16)[0], first)
    claims = {}
    for value in (1, 7):
        claims[value], claim_geometry = read_image(tmp_path / "s" / "structures" / query / f"label_{value}.nii.gz",
                                                   dtype=np.uint8)
        assert claim_geometry.differences(read_image(images / f"{query}_0000.nii.gz")[1]) == []
        assert set(np.unique(claims[value])) <= {0, 1} and not ((first == value) & (claims[value] == 0)).any()
    np.testing.assert_array_equal((claims[1] | claims[7]) > 0, first > 0)

    # reference-calibrated thresholds: saved with the encoding, reused from it; an old encoding has none
    assert predict_main([*args, "-o", str(tmp_path / "f"), *refs, "--labels", "1", "7", "--calibrated-threshold",
                         "--save-embedding", str(tmp_path / "calibrated.pt")]) == 0
    thresholds = load_task_embedding(tmp_path / "calibrated.pt")[1]["thresholds"]
    assert len(thresholds) == 2 and all(0.05 <= t <= 0.95 for t in thresholds)
    assert predict_main([*args, "-o", str(tmp_path / "g"), "--embedding", str(tmp_path / "calibrated.pt"),
                         "--calibrated-threshold"]) == 0
    np.testing.assert_array_equal(read_image(tmp_path / "f" / f"{query}.nii.gz", dtype=np.int16)[0],
                                  read_image(tmp_path / "g" / f"{query}.nii.gz", dtype=np.int16)[0])
    capsys.readouterr()
    assert predict_main([*args, "-o", str(tmp_path / "h"), "--embedding", str(tmp_path / "refs.pt"),
                         "--calibrated-threshold"]) == 1
    assert "saved without calibrated thresholds" in capsys.readouterr().err

    # an empty reference mask and a mask on another grid are refused with the file named
    mask, geometry = read_image(labels / f"{reference}.nii.gz")
    write_image(np.zeros_like(mask, dtype=np.uint8), geometry, tmp_path / "empty.nii.gz")
    capsys.readouterr()
    assert predict_main([*args, "-o", str(tmp_path / "c"), "--reference-image", refs[1], "--reference-mask",
                         str(tmp_path / "empty.nii.gz")]) == 1
    assert "empty.nii.gz is empty" in capsys.readouterr().err
    shifted = dataclasses.replace(geometry, origin_xyz=tuple(o + 25.0 for o in geometry.origin_xyz))
    write_image(mask.astype(np.uint8), shifted, tmp_path / "shifted.nii.gz")
    assert predict_main([*args, "-o", str(tmp_path / "d"), "--reference-image", refs[1], "--reference-mask",
                         str(tmp_path / "shifted.nii.gz")]) == 1
    assert "shifted.nii.gz does not match its image" in capsys.readouterr().err
    assert predict_main(["-i", str(images), "-o", str(tmp_path / "e")]) == 1
    assert "give either -m" in capsys.readouterr().err
    assert predict_main(["-i", str(images), "-o", str(tmp_path / "e"), "-m", str(tmp_path / "nothing")]) == 1
    assert "run folder not found" in capsys.readouterr().err


def test_fewshot_runner_writes_table_and_figure_and_resumes(pretrained, tmp_path, capsys):
    paths, checkpoint = pretrained
    out = tmp_path / "fewshot"
    args = ["-d", "990", "--checkpoint", checkpoint, "-k", "1", "2", "--seeds", "0", "1", "--no-finetune",
            "-o", str(out), *_roots(paths)]
    assert fewshot_main(args) == 0
    results = json.loads((out / "results.json").read_text())
    assert [(r["method"], r["shots"], r["seed"]) for r in results["runs"]] == [
        ("in_context", 1, 0), ("in_context", 1, 1), ("in_context", 2, 0), ("in_context", 2, 1)]
    assert "| MASS in-context |" in (out / "results.md").read_text() and (out / "examples.png").is_file()
    shots_0 = json.loads((out / "in_context" / "2shot_seed0" / "shots.json").read_text())["training_cases"]
    shots_1 = json.loads((out / "in_context" / "1shot_seed0" / "shots.json").read_text())
    assert shots_1["training_cases"] == shots_0[:1] and shots_1["label_fusion"] == "smallest_volume"
    assert shots_1["overlap"] == 0.75 and shots_1["context_tasks"] >= 0
    stamp = (out / "in_context" / "1shot_seed0" / "summary.json").stat().st_mtime_ns
    assert fewshot_main(args) == 0  # resumes: finished runs are read back
    assert (out / "in_context" / "1shot_seed0" / "summary.json").stat().st_mtime_ns == stamp
    # another context setting is another evaluation: redone in place, recorded in shots.json
    assert fewshot_main([*args[:-len(_roots(paths))], "--context-tasks", "0", *_roots(paths)]) == 0
    alone = json.loads((out / "in_context" / "1shot_seed0" / "shots.json").read_text())
    assert alone["context_tasks"] == 0 and alone["context_tasks_asked"] == 0
    assert (out / "in_context" / "1shot_seed0" / "summary.json").stat().st_mtime_ns != stamp

    calibrated_out = tmp_path / "fewshot_calibrated"
    assert fewshot_main(["-d", "990", "--checkpoint", checkpoint, "-k", "1", "--seeds", "0", "--no-finetune",
                         "--calibrated", "-o", str(calibrated_out), *_roots(paths)]) == 0
    methods = [r["method"] for r in json.loads((calibrated_out / "results.json").read_text())["runs"]]
    assert methods == ["in_context", "in_context_calibrated"]
    thresholds = json.loads((calibrated_out / "in_context_calibrated" / "1shot_seed0" / "shots.json").read_text()
                            )["thresholds"]
    assert thresholds and all(0.05 <= t <= 0.95 for t in thresholds.values())
    assert set(json.loads((calibrated_out / "in_context" / "1shot_seed0" / "shots.json").read_text()
                          )["thresholds"].values()) == {0.5}


@pytest.mark.slow  # about 25 s on 2 cores: keeps the default run under 10 minutes
def test_fewshot_results_of_one_checkpoint_are_never_reused_for_another(pretrained, tmp_path, capsys):
    """mass_fewshot for checkpoint B after checkpoint A, without --tag or -o: B gets its own runs and folders."""
    paths, checkpoint = pretrained
    other = load_checkpoint(checkpoint)
    for name, tensor in other.model.items():
        if tensor.is_floating_point():
            other.model[name] = tensor + 0.05
    other_path = tmp_path / "other.pt"
    save_checkpoint(other, other_path)
    assert checkpoint_identity(other_path) != checkpoint_identity(checkpoint)
    folders = []
    for path in (checkpoint, str(other_path)):
        assert fewshot_main(["-d", "990", "--checkpoint", path, "-k", "1", "--seeds", "0", "--epochs", "1",
                             "--iters-per-epoch", "1", *_roots(paths)]) == 0
        folder = paths.results / "Dataset990_PhantomCT" / f"fewshot__{checkpoint_identity(path)}"
        results = json.loads((folder / "results.json").read_text())
        assert results["checkpoint"] == path
        finetune, = [r for r in results["runs"] if r["method"] == "finetune"]
        assert f"pretrained-{checkpoint_identity(path)}_1shot_seed0" in finetune["run_folder"]
        folders.append((folder, finetune["run_folder"]))
    assert folders[0][0] != folders[1][0] and folders[0][1] != folders[1][1]


def test_foreground_probability_reaches_the_patch_loader(tmp_path):
    """-s foreground_probability decides how many patches are centred on a labelled voxel (a small organ in a large
    volume: centred patches always contain it, uncentred ones rarely do)."""
    image = np.random.default_rng(0).normal(size=(1, 96, 96, 96)).astype(np.float32)
    seg = np.zeros((1, 96, 96, 96), dtype=np.int16)
    seg[0, 70:74, 10:14, 80:84] = 1
    save_array(image, tmp_path / "c.b2nd", (16, 16, 16))
    save_array(seg, tmp_path / "c_seg.b2nd", (16, 16, 16))
    case = LabelledCase("c", tmp_path / "c.b2nd", tmp_path / "c_seg.b2nd")
    hits = {}
    for probability in (1.0, 0.0):
        with make_labelled_loader([case], [1], (16, 16, 16), 8, seed=0, num_workers=0,
                                  foreground_probability=probability) as loader:
            masks = np.concatenate([next(loader)["masks"] for _ in range(4)])
        hits[probability] = float(np.mean(masks.reshape(len(masks), -1).any(axis=1)))
    assert hits[1.0] == 1.0 and hits[0.0] < 0.5
