"""Converters for public datasets, each run on a tiny fake copy of the source's published folder layout."""
from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from dataset_conversion.amos import convert_amos
from dataset_conversion.bcv import BCV_LABELS, convert_bcv
from dataset_conversion.cli import main as convert_main
from dataset_conversion.common import RawDatasetWriter, Volume, labels_from_value_names, remap_label_values
from dataset_conversion.kits19 import convert_kits19
from dataset_conversion.msd import convert_msd
from dataset_conversion.shared_data import convert_shared_data
from dataset_conversion.totalsegmentator import convert_totalsegmentator
from mass_nn.errors import MassError
from mass_nn.io.dataset_json import list_cases, load_dataset_json
from mass_nn.io.image_io import ImageGeometry, read_geometry, read_image, write_image
from mass_nn.io.integrity import find_dataset_problems

SHAPE_ZYX = (6, 8, 8)
GEOMETRY = ImageGeometry(spacing_xyz=(0.8, 0.9, 2.5), origin_xyz=(-12.0, 30.0, 7.5),
                         direction=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0), size_xyz=SHAPE_ZYX[::-1])


def _image(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(-1000, 1000, SHAPE_ZYX).astype(np.int16)


def _label(seed: int, max_value: int) -> np.ndarray:
    label = np.zeros(SHAPE_ZYX, np.uint8)
    for value in range(1, max_value + 1):  # one small slab per class so every value is present
        label[value % SHAPE_ZYX[0], seed % 4: seed % 4 + 3, value % 8] = value
    return label


def _write(path: Path, array: np.ndarray, geometry: ImageGeometry = GEOMETRY) -> Path:
    write_image(array, geometry, path)
    return path


def _resource_fork(path: Path) -> None:
    """A macOS `._name` AppleDouble file as shipped in the MSD archives: not an image."""
    (path.parent / f"._{path.name}").write_bytes(b"\x00\x05\x16\x07 Mac OS X resource fork")


def _assert_sound(dataset_dir: Path, num_training: int, num_test: int) -> None:
    dataset_json = load_dataset_json(dataset_dir)
    assert dataset_json.num_training == num_training
    assert len(list_cases(dataset_dir, dataset_json, "Ts")) == num_test
    assert find_dataset_problems(dataset_dir) == []


def _read(path: Path) -> np.ndarray:
    return read_image(path, dtype=np.float64)[0]


# --- MSD -----------------------------------------------------------------------------------------------------

def _write_4d(path: Path, channels: list[np.ndarray]) -> None:
    image = sitk.JoinSeries([GEOMETRY.apply_to(sitk.GetImageFromArray(c)) for c in channels])
    sitk.WriteImage(image, str(path))


def _fake_msd_task(root: Path, name: str, modalities: dict, labels: dict, train: list[str], test: list[str]) -> Path:
    task = root / name
    for folder in ("imagesTr", "labelsTr", "imagesTs"):
        (task / folder).mkdir(parents=True)
    for i, case in enumerate(train + test):
        image = task / ("imagesTr" if case in train else "imagesTs") / f"{case}.nii.gz"
        channels = [_image(10 * i + c) for c in range(len(modalities))]
        _write_4d(image, channels) if len(channels) > 1 else _write(image, channels[0])
        _resource_fork(image)
        if case in train:
            _resource_fork(_write(task / "labelsTr" / f"{case}.nii.gz", _label(i, len(labels) - 1)))
    meta = {"name": name, "description": "fake", "licence": "CC-BY-SA 4.0", "tensorImageSize": "4D",
            "modality": modalities, "labels": labels, "numTraining": len(train), "numTest": len(test),
            "training": [{"image": f"./imagesTr/{c}.nii.gz", "label": f"./labelsTr/{c}.nii.gz"} for c in train],
            "test": [f"./imagesTs/{c}.nii.gz" for c in test]}
    (task / "dataset.json").write_text(json.dumps(meta))
    return task


def test_msd_4d_images_are_split_into_channels(tmp_path):
    modalities = {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"}
    labels = {"0": "background", "1": "edema", "2": "non-enhancing tumor", "3": "enhancing tumour"}
    task = _fake_msd_task(tmp_path, "Task01_BrainTumour", modalities, labels, ["BRATS_001", "BRATS_002"],
                          ["BRATS_750"])
    out = convert_msd(task, tmp_path / "raw", 1)
    assert out.name == "Dataset001_BrainTumour"
    _assert_sound(out, num_training=2, num_test=1)
    dataset_json = load_dataset_json(out)
    assert dataset_json.channel_names == modalities
    assert dataset_json.labels == {"background": 0, "edema": 1, "non-enhancing tumor": 2, "enhancing tumour": 3}
    for c in range(4):  # channel c of the 4D source becomes <case>_000c with the source's 3D geometry
        assert np.array_equal(_read(out / "imagesTr" / f"BRATS_002_{c:04d}.nii.gz"), _image(10 + c))
        assert read_geometry(out / "imagesTr" / f"BRATS_002_{c:04d}.nii.gz").differences(GEOMETRY) == []
    assert np.array_equal(_read(out / "labelsTr" / "BRATS_001.nii.gz"), _label(0, 3))
    assert not any(p.name.startswith(".") for p in out.rglob("*"))


def test_msd_single_channel_images_are_copied_byte_for_byte(tmp_path):
    task = _fake_msd_task(tmp_path, "Task09_Spleen", {"0": "CT"}, {"0": "background", "1": "spleen"},
                          ["spleen_2", "spleen_3"], [])
    out = convert_msd(task, tmp_path / "raw", 9)
    _assert_sound(out, num_training=2, num_test=0)
    copied = out / "imagesTr" / "spleen_2_0000.nii.gz"
    assert copied.read_bytes() == (task / "imagesTr" / "spleen_2.nii.gz").read_bytes()


def test_msd_wrong_folder_names_dataset_json_and_the_task_to_pass(tmp_path):
    _fake_msd_task(tmp_path, "Task09_Spleen", {"0": "CT"}, {"0": "background", "1": "spleen"}, ["spleen_2"], [])
    with pytest.raises(MassError, match=r"dataset\.json: not found.*Task09_Spleen"):
        convert_msd(tmp_path, tmp_path / "raw", 9)


# --- BCV -----------------------------------------------------------------------------------------------------

def _fake_bcv(root: Path, train: list[str], test: list[str]) -> Path:
    raw_data = root / "RawData"
    for i, number in enumerate(train):
        _write(raw_data / "Training" / "img" / f"img{number}.nii.gz", _image(i))
        _write(raw_data / "Training" / "label" / f"label{number}.nii.gz", _label(i, 13))
    for i, number in enumerate(test):
        _write(raw_data / "Testing" / "img" / f"img{number}.nii.gz", _image(50 + i))
    return root


def test_bcv_training_and_testing_cases_with_13_organs(tmp_path):
    out = convert_bcv(_fake_bcv(tmp_path / "Abdomen", ["0001", "0002"], ["0061"]), tmp_path / "raw", 620)
    _assert_sound(out, num_training=2, num_test=1)
    assert load_dataset_json(out).labels == BCV_LABELS and len(BCV_LABELS) == 14
    assert np.array_equal(_read(out / "labelsTr" / "bcv_0002.nii.gz"), _label(1, 13))
    assert (out / "imagesTs" / "bcv_0061_0000.nii.gz").is_file()


def test_reconversion_removes_cases_the_source_no_longer_has(tmp_path):
    source = _fake_bcv(tmp_path / "Abdomen", ["0001", "0002"], [])
    convert_bcv(source, tmp_path / "raw", 620)
    for path in (source / "RawData" / "Training").rglob("*0002.nii.gz"):
        path.unlink()
    out = convert_bcv(source, tmp_path / "raw", 620)
    _assert_sound(out, num_training=1, num_test=0)
    assert sorted(p.name for p in out.rglob("*.nii.gz")) == ["bcv_0001.nii.gz", "bcv_0001_0000.nii.gz"]


def test_bcv_missing_label_is_named(tmp_path):
    source = _fake_bcv(tmp_path / "Abdomen", ["0001"], [])
    (source / "RawData" / "Training" / "label" / "label0001.nii.gz").unlink()
    with pytest.raises(MassError, match="label0001.nii.gz: not found"):
        convert_bcv(source, tmp_path / "raw", 620)


# --- AMOS ----------------------------------------------------------------------------------------------------

AMOS_NAMES = ["background", "spleen", "right kidney", "left kidney", "gall bladder", "esophagus", "liver",
              "stomach", "arota", "postcava", "pancreas", "right adrenal gland", "left adrenal gland", "duodenum",
              "bladder", "prostate/uterus"]


def _fake_amos(root: Path) -> Path:
    amos = root / "amos22"
    layout = {"imagesTr": [1, 507], "imagesVa": [10, 540], "imagesTs": [2, 600]}
    for folder, numbers in layout.items():
        for number in numbers:
            _write(amos / folder / f"amos_{number:04d}.nii.gz", _image(number))
            if folder != "imagesTs":
                labels = _label(number, 15 if number <= 500 else 13)
                _write(amos / folder.replace("images", "labels") / f"amos_{number:04d}.nii.gz", labels)
    meta = {"name": "AMOS", "modality": {"0": "CT"}, "labels": {str(i): n for i, n in enumerate(AMOS_NAMES)},
            "training": [{"image": "./imagesTr/amos_0001.nii.gz", "label": "./labelsTr/amos_0001.nii.gz"}]}
    (amos / "dataset.json").write_text(json.dumps(meta))
    return amos


@pytest.mark.parametrize("modality, train, test", [("CT", {"amos_0001", "amos_0010"}, {"amos_0002"}),
                                                   ("MR", {"amos_0507", "amos_0540"}, {"amos_0600"})])
def test_amos_splits_ct_and_mr_into_separate_datasets(tmp_path, modality, train, test):
    out = convert_amos(_fake_amos(tmp_path), tmp_path / "raw", 621, modality=modality)
    assert out.name == f"Dataset621_AMOS22{modality}"
    _assert_sound(out, num_training=2, num_test=1)
    dataset_json = load_dataset_json(out)
    assert dataset_json.channel_names == {"0": modality}
    assert dataset_json.labels["prostate/uterus"] == 15 and dataset_json.labels["liver"] == 6
    assert {c.case_id for c in list_cases(out, dataset_json)} == train
    assert {c.case_id for c in list_cases(out, dataset_json, "Ts")} == test
    validation_case = sorted(train)[1]
    assert np.array_equal(_read(out / "labelsTr" / f"{validation_case}.nii.gz"),
                          _label(int(validation_case[-4:]), 15 if modality == "CT" else 13))


def test_amos_wrong_folder(tmp_path):
    with pytest.raises(MassError, match="amos22 folder"):
        convert_amos(tmp_path, tmp_path / "raw", 621)


# --- KiTS19 --------------------------------------------------------------------------------------------------

# KiTS19 style affine: the first array axis is the slice axis (5 mm), in-plane axes swapped and negated.
KITS_AFFINE = np.array([[0.0, 0.0, -0.78, 0.0], [0.0, -0.78, 0.0, 0.0], [-5.0, 0.0, 0.0, 0.0], [0, 0, 0, 1.0]])


def _fake_kits(root: Path, labelled: list[int], unlabelled: list[int]) -> Path:
    for number in labelled + unlabelled:
        case = root / "data" / f"case_{number:05d}"
        case.mkdir(parents=True)
        nib.save(nib.Nifti1Image(_image(number).astype(np.float32), KITS_AFFINE), case / "imaging.nii.gz")
        if number in labelled:
            nib.save(nib.Nifti1Image(_label(number, 2), KITS_AFFINE), case / "segmentation.nii.gz")
    return root


def test_kits19_keeps_the_unusual_geometry_and_puts_unlabelled_cases_in_test(tmp_path):
    source = _fake_kits(tmp_path / "kits19", [0, 1], [210])
    out = convert_kits19(source, tmp_path / "raw", 623)
    _assert_sound(out, num_training=2, num_test=1)
    assert load_dataset_json(out).labels == {"background": 0, "kidney": 1, "tumour": 2}
    source_case = source / "data" / "case_00001"
    for converted, original in ((out / "imagesTr" / "case_00001_0000.nii.gz", source_case / "imaging.nii.gz"),
                                (out / "labelsTr" / "case_00001.nii.gz", source_case / "segmentation.nii.gz")):
        assert read_geometry(converted).differences(read_geometry(original)) == []
        assert np.allclose(nib.load(converted).affine, KITS_AFFINE, atol=1e-4)
        assert np.array_equal(_read(converted), _read(original))
    assert (out / "imagesTs" / "case_00210_0000.nii.gz").is_file()
    assert not (out / "labelsTs").exists()


# --- TotalSegmentator ----------------------------------------------------------------------------------------

STRUCTURES = {"liver": (slice(0, 3), slice(0, 4)), "spleen": (slice(3, 6), slice(4, 8)),
              "aorta": (slice(2, 4), slice(2, 6))}


def _fake_totalsegmentator(root: Path, splits: dict[str, str]) -> Path:
    for i, case in enumerate(splits):
        _write(root / case / "ct.nii.gz", _image(i))
        for structure, (zs, ys) in STRUCTURES.items():
            mask = np.zeros(SHAPE_ZYX, np.uint8)
            mask[zs, ys, :] = 1
            _write(root / case / "segmentations" / f"{structure}.nii.gz", mask)
    rows = ["image_id;age;gender;institute;study_type;split"]
    rows += [f"{case};60;m;A;ct abdomen;{split}" for case, split in splits.items()]
    (root / "meta.csv").write_text("\n".join(rows) + "\n")
    return root


def test_totalsegmentator_merges_masks_in_sorted_order_and_keeps_the_test_split(tmp_path):
    source = _fake_totalsegmentator(tmp_path / "Totalsegmentator_dataset_v201",
                                    {"s0000": "train", "s0001": "val", "s0002": "test"})
    out = convert_totalsegmentator(source, tmp_path / "raw", 624)
    _assert_sound(out, num_training=2, num_test=1)
    assert load_dataset_json(out).labels == {"background": 0, "aorta": 1, "liver": 2, "spleen": 3}
    label = _read(out / "labelsTs" / "s0002.nii.gz")
    assert label[0, 0, 0] == 2 and label[5, 7, 0] == 3 and label[2, 4, 0] == 1
    assert label[2, 3, 0] == 2  # aorta and liver overlap here: the class later in the order (liver) wins
    assert set(np.unique(label)) == {0, 1, 2, 3}


def test_totalsegmentator_structure_subset_sets_the_class_order(tmp_path):
    source = _fake_totalsegmentator(tmp_path / "ts", {"s0000": "train"})
    out = convert_totalsegmentator(source, tmp_path / "raw", 624, structures=["spleen", "liver"])
    assert load_dataset_json(out).labels == {"background": 0, "spleen": 1, "liver": 2}
    label = _read(out / "labelsTr" / "s0000.nii.gz")
    assert label[0, 0, 0] == 2 and label[5, 7, 0] == 1 and label[2, 3, 0] == 2
    with pytest.raises(MassError, match=r"\['kidney'\] are not in this release"):
        convert_totalsegmentator(source, tmp_path / "raw", 624, structures=["kidney"])


# --- shared writer behaviour ---------------------------------------------------------------------------------

def test_label_on_a_flipped_grid_is_resampled_into_place(tmp_path):
    """Same voxels stored with a flipped y axis (as TotalSegmentator's DICOM label): voxels must realign."""
    label = _label(0, 2)
    flipped = ImageGeometry(spacing_xyz=GEOMETRY.spacing_xyz, size_xyz=GEOMETRY.size_xyz,
                            origin_xyz=(-12.0, 30.0 + 0.9 * (SHAPE_ZYX[1] - 1), 7.5),
                            direction=(1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0))
    label_path = _write(tmp_path / "flipped_label.nii.gz", label[:, ::-1, :].copy(), flipped)
    writer = RawDatasetWriter(tmp_path / "raw", 700, "Flip", ["CT"], {"background": 0, "a": 1, "b": 2})
    writer.add_case("case", [Volume(_image(0), GEOMETRY)], label_path)
    out = writer.finish()
    assert find_dataset_problems(out) == []
    assert np.array_equal(_read(out / "labelsTr" / "case.nii.gz"), label)


def test_writer_rejects_bad_labels_and_reused_ids(tmp_path):
    writer = RawDatasetWriter(tmp_path / "raw", 700, "Bad", ["CT"], {"background": 0, "a": 1})
    image = Volume(_image(0), GEOMETRY)
    with pytest.raises(MassError, match="not all whole numbers"):
        writer.add_case("fractional", [image], Volume(np.full(SHAPE_ZYX, 0.5, np.float32), GEOMETRY))
    with pytest.raises(MassError, match=r"value\(s\) \[2\] are not in the label map"):
        writer.add_case("unknown", [image], Volume(_label(0, 2), GEOMETRY))
    writer.add_case("good", [image], Volume(_label(0, 1), GEOMETRY))
    writer.finish()
    with pytest.raises(MassError, match="already uses dataset id 700"):
        RawDatasetWriter(tmp_path / "raw", 700, "Other", ["CT"])


def test_label_helpers():
    assert labels_from_value_names({"1": "liver", "0": "background"}, "x") == {"background": 0, "liver": 1}
    with pytest.raises(MassError, match="no background"):
        labels_from_value_names({"1": "liver"}, "x")
    assert remap_label_values(np.array([0, 4, 2]), {0: 0, 2: 1, 4: 1}, "x").tolist() == [0, 1, 1]
    with pytest.raises(MassError, match=r"\[3\] have no target"):
        remap_label_values(np.array([0, 3]), {0: 0}, "x")


# --- shared data folder (the real-data checks are in test_conversion_shared.py) ----------------------------

def test_shared_data_missing_subfolder_is_reported_before_writing(tmp_path):
    (tmp_path / "source" / "ibsi_sts").mkdir(parents=True)
    with pytest.raises(MassError, match=r"totalsegmentator: folder not found.*'totalseg_mr'"):
        convert_shared_data(tmp_path / "source", tmp_path / "raw", which=["sts_ct", "totalseg_mr"])
    assert not (tmp_path / "raw").exists()


# --- CLI -----------------------------------------------------------------------------------------------------

def test_cli_converts_and_reports_a_wrong_source_in_one_line(tmp_path, capsys):
    source = _fake_bcv(tmp_path / "Abdomen", ["0001"], [])
    assert convert_main(["bcv", str(source), "--raw", str(tmp_path / "raw")]) == 0
    assert "Dataset620_BCV: 1 training case(s)" in capsys.readouterr().out
    assert convert_main(["kits19", str(tmp_path / "nowhere"), "--raw", str(tmp_path / "raw")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "case_NNNNN" in err and "Traceback" not in err
