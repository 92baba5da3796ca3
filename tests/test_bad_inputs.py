"""Bad inputs across every command: each is refused with one `error:` line that names the file (or flag) and the
fix, exit code 1, no traceback, and no output or partial file left behind; or, where the input is a damaged
artefact of our own, it is redone on the next run instead of counted as done (documentation/bad_inputs.md)."""
from __future__ import annotations

import gzip
import io
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from dataset_conversion.cli import main as convert_main
from mass_nn.cli.evaluate import main as evaluate_main
from mass_nn.cli.fewshot import main as fewshot_main
from mass_nn.cli.generate_masks import main as generate_main
from mass_nn.cli.plan_and_preprocess import main as plan_main
from mass_nn.cli.predict import main as predict_main
from mass_nn.cli.train import main as train_main
from mass_nn.io.image_io import read_image, write_image
from mass_nn.paths import MassPaths
from mass_nn.preprocessing.blosc2_storage import load_array
from mass_nn.training.options import TrainingOptions
from mass_nn.training.run_training import run_training
from tests.conftest import make_raw_dataset

PHANTOM = "Dataset990_PhantomCT"


def _roots(paths: MassPaths) -> list[str]:
    return ["--raw", str(paths.raw), "--preprocessed", str(paths.preprocessed), "--results", str(paths.results)]


def _leftovers(*folders: Path) -> list[Path]:
    """Temporary or partial files under `folders`."""
    return [p for folder in folders if folder.exists() for p in folder.rglob("*") if ".tmp" in p.name]


def refused(capsys, code: int, *fragments: str) -> str:
    """Assert a clean refusal: exit code 1, one `error:` line holding every fragment, no traceback."""
    err = capsys.readouterr().err
    assert code == 1, err
    assert "Traceback" not in err
    error_lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1, err
    for fragment in fragments:
        assert fragment in error_lines[0], f"{fragment!r} not in {error_lines[0]!r}"
    return error_lines[0]


@pytest.fixture
def world(phantom_with_masks, tmp_path) -> MassPaths:
    """A private copy of the preprocessed phantom with masks (tests here damage its files)."""
    paths = MassPaths(raw=tmp_path / "raw", preprocessed=tmp_path / "pre", results=tmp_path / "res")
    shutil.copytree(phantom_with_masks.raw, paths.raw)
    shutil.copytree(phantom_with_masks.preprocessed, paths.preprocessed)
    paths.results.mkdir()
    return paths


@pytest.fixture(scope="module")
def checkpoint(phantom_with_masks, tmp_path_factory) -> str:
    """A MASS checkpoint from a 1-step pretraining on the shared phantom."""
    paths = MassPaths(raw=phantom_with_masks.raw, preprocessed=phantom_with_masks.preprocessed,
                      results=tmp_path_factory.mktemp("bad_inputs_results"))
    summary = run_training(TrainingOptions(mode="PRETRAIN", datasets=["990"], configuration="3d_cpu", epochs=1,
                                           iters_per_epoch=1, batch_size=1, num_workers=0, device="cpu",
                                           val_batches=1, extra={"num_tasks": 2}), paths)
    return summary["output_folder"] + "/checkpoint_final.pt"


# ------------------------------------------------------------------ damaged image files, written by hand
def _truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def _rewrite_nifti_header(path: Path, **fields) -> None:
    """Rewrite header fields of a .nii.gz byte for byte, bypassing nibabel's repairs on save."""
    raw = gzip.open(path).read()
    header = nib.Nifti1Header.from_fileobj(io.BytesIO(raw[:348]), check=False)
    for key, value in fields.items():
        if key == "pixdim_x":
            header["pixdim"][1] = value
        else:
            header[key] = value
    with gzip.open(path, "wb") as stream:
        stream.write(header.binaryblock + raw[348:])


def _with_voxel(path: Path, value: float) -> None:
    array, geometry = read_image(path)
    array[1, 1, 1] = value
    # NIfTI through nibabel keeps NaN/inf (SimpleITK's writer would too, but its reader hides them)
    header = nib.load(str(path)).header.copy()
    header.set_data_dtype(np.float32)
    header.set_slope_inter(1.0, 0.0)
    nib.save(nib.Nifti1Image(np.transpose(array, (2, 1, 0)), header.get_best_affine(), header), str(path))


IMAGE_DAMAGE = {
    "truncated gzip": (lambda p: _truncate(p), "damaged or truncated"),
    "cut to a header": (lambda p: _truncate(p, 0.02), "damaged or truncated"),
    "not an image": (lambda p: p.write_bytes(b"plain text, not NIfTI"), "cannot be read"),
    "zero voxel size": (lambda p: _rewrite_nifti_header(p, pixdim_x=0.0), "pixdim[1] = 0"),
    "negative voxel size": (lambda p: _rewrite_nifti_header(p, pixdim_x=-2.5), "pixdim[1] = -2.5"),
    "NaN voxel size": (lambda p: _rewrite_nifti_header(p, pixdim_x=float("nan")), "pixdim[1] = nan"),
    "degenerate sform": (lambda p: _rewrite_nifti_header(p, sform_code=1, srow_x=np.zeros(4, np.float32)),
                         "sform matrix"),
    "NaN voxels": (lambda p: _with_voxel(p, float("nan")), "NaN/infinite voxel"),
    "infinite voxels": (lambda p: _with_voxel(p, float("inf")), "NaN/infinite voxel"),
}


def _damaged_copy(source: Path, target: Path, damage: str) -> str:
    """Copy `source` to `target`, damage it; returns the message fragment the refusal must hold."""
    shutil.copy(source, target)
    make_damage, expected = IMAGE_DAMAGE[damage]
    make_damage(target)
    return expected


def _predict_in_context(checkpoint: str, phantom: MassPaths, query: Path, reference: Path, out: Path) -> int:
    return predict_main(["-i", str(query), "-o", str(out), "--checkpoint", checkpoint, "--device", "cpu",
                         "--reference-image", str(reference), "--reference-mask",
                         str(phantom.raw / PHANTOM / "labelsTr" / "phantom_000.nii.gz"), "--labels", "1"])


@pytest.mark.parametrize("damage", sorted(IMAGE_DAMAGE))
def test_predict_refuses_a_damaged_query_and_writes_nothing(damage, checkpoint, phantom_with_masks, tmp_path, capsys):
    images = phantom_with_masks.raw / PHANTOM / "imagesTr"
    query = tmp_path / "query_0000.nii.gz"
    expected = _damaged_copy(images / "phantom_001_0000.nii.gz", query, damage)
    code = _predict_in_context(checkpoint, phantom_with_masks, query, images / "phantom_000_0000.nii.gz",
                               tmp_path / "out")
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err
    failure = [line for line in err.splitlines() if line.startswith("failed: query")]
    assert len(failure) == 1 and str(query) in failure[0] and expected in failure[0], err
    assert not any((tmp_path / "out").iterdir()) and _leftovers(tmp_path) == []


@pytest.mark.parametrize("damage", ["truncated gzip", "zero voxel size", "NaN voxels", "negative voxel size"])
def test_predict_refuses_a_damaged_reference(damage, checkpoint, phantom_with_masks, tmp_path, capsys):
    images = phantom_with_masks.raw / PHANTOM / "imagesTr"
    reference = tmp_path / "ref_0000.nii.gz"
    expected = _damaged_copy(images / "phantom_000_0000.nii.gz", reference, damage)
    code = _predict_in_context(checkpoint, phantom_with_masks, images / "phantom_001_0000.nii.gz", reference,
                               tmp_path / "out")
    refused(capsys, code, str(reference), expected)
    assert not any((tmp_path / "out").iterdir()) and _leftovers(tmp_path) == []


@pytest.mark.parametrize("damage", ["truncated gzip", "zero voxel size", "NaN voxels", "degenerate sform"])
def test_planning_refuses_a_damaged_training_image(damage, tmp_path, capsys):
    paths = MassPaths(raw=tmp_path / "raw", preprocessed=tmp_path / "pre", results=tmp_path / "res")
    dataset = make_raw_dataset(paths.raw, num_cases=2)
    image = dataset / "imagesTr" / "case_001_0000.nii.gz"
    make_damage, _ = IMAGE_DAMAGE[damage]
    make_damage(image)
    code = plan_main(["-d", "900", "-np", "1", "--no-progress", *_roots(paths)])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err and "1 problem(s) in raw dataset" in err
    assert str(image) in err
    assert not (paths.preprocessed / "Dataset900_Tiny").exists() or not any(
        (paths.preprocessed / "Dataset900_Tiny").rglob("*.b2nd"))


def test_suspicious_labels_are_warned_and_recorded(tmp_path, capsys):
    paths = MassPaths(raw=tmp_path / "raw", preprocessed=tmp_path / "pre", results=tmp_path / "res")
    dataset = make_raw_dataset(paths.raw, num_cases=3)
    label, geometry = read_image(dataset / "labelsTr" / "case_000.nii.gz", np.int16)
    write_image(np.zeros_like(label), geometry, dataset / "labelsTr" / "case_000.nii.gz")
    (dataset / "labelsTr" / "case_001.nii.gz").unlink()
    code = plan_main(["-d", "900", "-np", "1", "--no-progress", "--no-preprocess", *_roots(paths)])
    out = capsys.readouterr()
    assert code == 0 and "2 warning(s) recorded" in out.out
    warnings = [line for line in out.err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 2 and "case_000.nii.gz: the label map is all background" in warnings[1] + warnings[0]
    recorded = json.loads((paths.preprocessed / "Dataset900_Tiny" / "integrity_warnings.json").read_text())
    assert sorted(w.split(": ", 1)[1][:20] for w in recorded["warnings"]) == ["no label map in labe",
                                                                            "the label map is all"]


# ------------------------------------------------------------------ paths and flags
def test_a_dataset_name_that_is_a_path_is_refused_and_nothing_escapes(tmp_path, capsys):
    paths = MassPaths(raw=tmp_path / "raw", preprocessed=tmp_path / "pre", results=tmp_path / "res")
    make_raw_dataset(paths.raw, dataset_id=841, name="X", num_cases=2)
    code = plan_main(["-d", "../raw/Dataset841_X", "-np", "1", "--no-progress", *_roots(paths)])
    refused(capsys, code, "../raw/Dataset841_X", "not a path")
    assert sorted(p.name for p in (paths.raw / "Dataset841_X").iterdir()) == ["dataset.json", "imagesTr", "labelsTr"]
    assert not paths.preprocessed.exists() or not any(paths.preprocessed.rglob("*"))


def test_an_unknown_dataset_id_is_refused(tmp_path, capsys):
    paths = MassPaths(raw=tmp_path / "raw", preprocessed=tmp_path / "pre", results=tmp_path / "res")
    paths.raw.mkdir()
    refused(capsys, plan_main(["-d", "777", "--no-progress", *_roots(paths)]), "no dataset '777'", "MASS_raw")


def test_predict_checks_its_output_folder_before_loading_the_model(tmp_path, capsys, phantom_with_masks):
    images = phantom_with_masks.raw / PHANTOM / "imagesTr"
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    missing_checkpoint = str(tmp_path / "never_read.pt")  # proves the model is not loaded first
    for output, expected in ((blocker, "exists and is not a folder"), (blocker / "sub", "cannot write there")):
        code = predict_main(["-i", str(images / "phantom_001_0000.nii.gz"), "-o", str(output), "--checkpoint",
                             missing_checkpoint, "--embedding", str(tmp_path / "e.pt")])
        refused(capsys, code, str(output), expected, "-o")


def test_predict_refuses_missing_inputs_and_models(checkpoint, tmp_path, capsys, phantom_with_masks):
    images = phantom_with_masks.raw / PHANTOM / "imagesTr"
    labels = phantom_with_masks.raw / PHANTOM / "labelsTr"
    refs = ["--reference-image", str(images / "phantom_000_0000.nii.gz"), "--reference-mask",
            str(labels / "phantom_000.nii.gz")]
    out = tmp_path / "out"
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    cases = [
        (["-i", str(tmp_path / "nothing_here.nii.gz"), "--checkpoint", checkpoint, *refs], "nothing_here.nii.gz"),
        (["-i", str(tmp_path / "empty_dir"), "--checkpoint", checkpoint, *refs], "empty_dir"),
        (["-i", str(images / "phantom_001_0000.nii.gz"), "--checkpoint", str(tmp_path / "no.pt"), *refs], "no.pt"),
        (["-i", str(images / "phantom_001_0000.nii.gz"), "--checkpoint", str(garbage), *refs], "garbage.pt"),
        (["-i", str(images / "phantom_001_0000.nii.gz"), "--checkpoint", checkpoint, "--embedding", str(garbage)],
         "garbage.pt"),
        (["-i", str(images / "phantom_001_0000.nii.gz"), "--checkpoint", checkpoint, *refs, "--labels", "42"], "42"),
        (["-i", str(images / "phantom_001_0000.nii.gz"), "--checkpoint", checkpoint,
          "--reference-image", str(images / "phantom_000_0000.nii.gz")], "--reference-mask"),
        (["-i", str(images / "phantom_001_0000.nii.gz"), "--checkpoint", checkpoint, "--reference-image",
          str(images / "phantom_000_0000.nii.gz"), "--reference-mask", str(labels / "phantom_002.nii.gz")],
         "phantom_002.nii.gz"),
    ]
    (tmp_path / "empty_dir").mkdir()
    for argv, expected in cases:
        refused(capsys, predict_main([*argv, "-o", str(out), "--device", "cpu"]), expected)
        assert not out.exists() or not any(out.iterdir())
    assert _leftovers(tmp_path) == []


def test_an_all_background_reference_mask_is_refused(checkpoint, tmp_path, capsys, phantom_with_masks):
    images = phantom_with_masks.raw / PHANTOM / "imagesTr"
    label, geometry = read_image(phantom_with_masks.raw / PHANTOM / "labelsTr" / "phantom_000.nii.gz", np.int16)
    empty = tmp_path / "empty_mask.nii.gz"
    write_image(np.zeros_like(label), geometry, empty)
    out = tmp_path / "out"
    code = predict_main(["-i", str(images / "phantom_001_0000.nii.gz"), "-o", str(out), "--checkpoint", checkpoint,
                         "--device", "cpu", "--reference-image", str(images / "phantom_000_0000.nii.gz"),
                         "--reference-mask", str(empty)])
    refused(capsys, code, "empty_mask.nii.gz")
    assert not any(out.iterdir())


# ------------------------------------------------------------------ our own artefacts, damaged
def _bank(paths: MassPaths, case: str = "phantom_000") -> Path:
    return next(paths.preprocessed.rglob(f"masks_supervoxel/{case}.masks"))


def _generate(paths: MassPaths, capsys) -> str:
    code = generate_main(["-d", "990", "-g", "supervoxel", "--no-progress", *_roots(paths)])
    out = capsys.readouterr()
    assert code == 0, out.err
    return out.out + out.err


@pytest.mark.parametrize("damage", ["data cut short", "header cut short", "garbage", "preview missing"])
def test_a_damaged_bank_is_redone_not_skipped(damage, world, capsys):
    bank = _bank(world)
    original = bank.read_bytes()
    if damage == "data cut short":
        bank.write_bytes(original[:-50])
    elif damage == "header cut short":
        bank.write_bytes(original[:40])
    elif damage == "garbage":
        bank.write_bytes(b"\x00" * 64)
    else:
        (bank.parent / "previews" / "phantom_000.png").unlink()
    text = _generate(world, capsys)
    assert "1 generated" in text or "generated 1" in text or "1 case(s) generated" in text, text
    assert bank.read_bytes() == original and (bank.parent / "previews" / "phantom_000.png").is_file()


@pytest.mark.parametrize("damage, split", [("header cut short", "train"), ("data cut short", "train"),
                                           ("header cut short", "val")])
def test_pretraining_refuses_a_damaged_bank_before_the_first_step(damage, split, world, capsys):
    case = json.loads((world.preprocessed / PHANTOM / "splits.json").read_text())[split][0]
    bank = _bank(world, case)
    data = bank.read_bytes()
    bank.write_bytes(data[:40] if damage == "header cut short" else data[:-10])
    code = train_main(["PRETRAIN", "-d", "990", "-c", "3d_cpu", "--epochs", "1", "--iters-per-epoch", "1",
                       "--device", "cpu", "--num-workers", "0", *_roots(world)])
    refused(capsys, code, str(bank), "damaged mask bank", "mass_generate_masks")
    assert not any(world.results.rglob("checkpoint_*.pt"))


def _train_case(paths: MassPaths) -> str:
    return json.loads((paths.preprocessed / PHANTOM / "splits.json").read_text())["train"][0]


def test_pretraining_refuses_a_truncated_preprocessed_array(world, capsys):
    array = next(world.preprocessed.rglob(f"{_train_case(world)}.b2nd"))
    _truncate(array)
    code = train_main(["PRETRAIN", "-d", "990", "-c", "3d_cpu", "--epochs", "1", "--iters-per-epoch", "1",
                       "--device", "cpu", "--num-workers", "0", *_roots(world)])
    refused(capsys, code, str(array), "damaged or truncated", "mass_plan_and_preprocess")
    assert not any(world.results.rglob("checkpoint_*.pt"))


def test_a_truncated_preprocessed_array_is_redone_by_the_next_preprocessing_run(world, capsys):
    array = next(world.preprocessed.rglob("phantom_002.b2nd"))
    _truncate(array)
    code = plan_main(["-d", "990", "-p", "cpu_only", "-np", "1", "--no-progress", *_roots(world)])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert "(1 new, 5 skipped)" in out.out, out.out
    assert load_array(array).shape[0] == 1


def test_stale_temporaries_of_a_killed_writer_are_removed_by_the_next_write(world, capsys):
    bank = _bank(world)
    stale = bank.parent / ".phantom_000.999999999.partial.tmp.masks"  # pid that cannot be alive
    stale.write_bytes(b"\x00" * 1000)
    bank.unlink()
    _generate(world, capsys)
    assert not stale.exists() and bank.is_file() and _leftovers(world.preprocessed) == []


# ------------------------------------------------------------------ training, few-shot, evaluation flags
def test_training_refuses_unknown_names_and_missing_files(world, tmp_path, capsys):
    base = ["-d", "990", "-c", "3d_cpu", "--epochs", "1", "--iters-per-epoch", "1", "--device", "cpu",
            "--num-workers", "0", *_roots(world)]
    refused(capsys, train_main(["PRETRAIN", *base, "-tr", "NoSuchTrainer"]), "NoSuchTrainer")
    refused(capsys, train_main(["PRETRAIN", *base, "-s", "no_such_setting=1"]), "no_such_setting")
    refused(capsys, train_main(["PRETRAIN", *base, "-c", "4d_nothing"]), "4d_nothing")
    refused(capsys, train_main(["PRETRAIN", *base, "--lr", "1e-3", "--lr-scaling", "linear"]), "give one of them")
    refused(capsys, train_main(["FINETUNE", *base, "-shots", "1", "--pretrained", str(tmp_path / "none.pt")]),
            "none.pt")
    refused(capsys, train_main(["FINETUNE", *base, "-shots", "99"]), "choose 1 to")
    assert not any(world.results.rglob("checkpoint_*.pt"))


def test_fewshot_refuses_more_shots_than_labelled_training_cases(world, checkpoint, capsys):
    splits = json.loads((world.preprocessed / PHANTOM / "splits.json").read_text())
    too_many = len(splits["train"]) + 3
    code = fewshot_main(["-d", "990", "--checkpoint", checkpoint, "-k", str(too_many), "-c", "3d_cpu",
                         "--device", "cpu", *_roots(world)])
    refused(capsys, code, f"-k {too_many}", f"holds {len(splits['train'])} labelled case(s)", "k <=")
    assert not any(world.results.rglob("results.json"))


def test_fewshot_refuses_a_missing_checkpoint_and_a_file_as_output(world, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    refused(capsys, fewshot_main(["-d", "990", "--checkpoint", str(tmp_path / "gone.pt"), "-k", "1",
                                  *_roots(world)]), "gone.pt")
    refused(capsys, fewshot_main(["-d", "990", "--checkpoint", str(tmp_path / "gone.pt"), "-k", "1", "-o",
                                  str(blocker), *_roots(world)]), "exists and is not a folder")


def test_evaluate_refuses_missing_folders_bad_labels_and_a_file_as_output(world, tmp_path, capsys):
    labels = world.raw / PHANTOM / "labelsTr"
    bad_json = tmp_path / "dataset.json"
    bad_json.write_text("{not json")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    base = ["SEGMENTATION", "-ref", str(labels), "--no-progress"]
    refused(capsys, evaluate_main([*base, "-pred", str(tmp_path / "no_predictions")]), "no_predictions")
    refused(capsys, evaluate_main([*base, "-pred", str(labels), "--labels", str(bad_json)]), "dataset.json",
            "not valid JSON")
    refused(capsys, evaluate_main([*base, "-pred", str(labels), "-o", str(blocker)]), "exists and is not a folder")
    assert not (tmp_path / "summary.json").exists()


def test_evaluate_names_a_truncated_prediction_and_exits_non_zero(world, tmp_path, capsys):
    labels = world.raw / PHANTOM / "labelsTr"
    predictions = tmp_path / "pred"
    predictions.mkdir()
    for name in ("phantom_000.nii.gz", "phantom_001.nii.gz"):
        shutil.copy(labels / name, predictions / name)
    _truncate(predictions / "phantom_001.nii.gz")
    code = evaluate_main(["SEGMENTATION", "-pred", str(predictions), "-ref", str(labels), "--no-hd95",
                          "--no-progress"])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err
    assert "phantom_001.nii.gz" in err and "damaged or truncated" in err


def test_convert_refuses_a_missing_source_folder(tmp_path, capsys):
    code = convert_main(["chaos_mr", str(tmp_path / "no_source"), "--raw", str(tmp_path / "raw")])
    refused(capsys, code, "no_source")
    assert not (tmp_path / "raw").exists() or not any((tmp_path / "raw").rglob("*.nii.gz"))
