"""Every integrity problem is found, named with its file and a fix, and all are reported at once."""
import json

import numpy as np
import pytest
import SimpleITK as sitk

from mass_nn.errors import DatasetIntegrityError, DatasetNotFoundError
from mass_nn.io.dataset_json import find_dataset_name
from mass_nn.io.image_io import ImageGeometry, write_image
from mass_nn.io.integrity import find_dataset_problems, verify_dataset_integrity
from tests.conftest import make_raw_dataset


def _geometry_of(path):
    image = sitk.ReadImage(str(path))
    return ImageGeometry.from_sitk(image), sitk.GetArrayFromImage(image)


def test_clean_dataset_passes(tmp_path):
    dataset = make_raw_dataset(tmp_path)
    assert verify_dataset_integrity(dataset) == []  # no problem raised, no warning recorded


@pytest.mark.parametrize("change, expected", [
    ("spacing", "spacing"), ("origin", "origin"), ("direction", "direction"), ("shape", "shape")])
def test_label_geometry_mismatch(tmp_path, change, expected):
    dataset = make_raw_dataset(tmp_path)
    label_path = dataset / "labelsTr" / "case_001.nii.gz"
    geometry, label = _geometry_of(label_path)
    fields = geometry.to_dict()
    if change == "spacing":
        fields["spacing_xyz"][0] *= 2
    elif change == "origin":
        fields["origin_xyz"][1] += 7
    elif change == "direction":
        fields["direction"] = [0, 1, 0, 1, 0, 0, 0, 0, 1]
    else:
        label = label[:, :, :-2]
        fields["size_xyz"][0] -= 2
    write_image(label, ImageGeometry.from_dict(fields), label_path)
    problems = find_dataset_problems(dataset)
    assert len(problems) == 1
    assert "case_001.nii.gz" in problems[0] and expected in problems[0] and "resample the label" in problems[0]


def test_all_problems_reported_at_once(tmp_path):
    dataset = make_raw_dataset(tmp_path, num_cases=4, channel_names=("CT", "PET"))
    (dataset / "imagesTr" / "case_000_0001.nii.gz").unlink()                       # missing channel
    geometry, volume = _geometry_of(dataset / "imagesTr" / "case_001_0000.nii.gz")
    volume = volume.astype(np.float32)
    volume[0, 0, 0] = np.nan
    write_image(volume, geometry, dataset / "imagesTr" / "case_001_0000.nii.gz")  # NaN
    geometry, label = _geometry_of(dataset / "labelsTr" / "case_002.nii.gz")
    label[0, 0, 0] = 7
    write_image(label, geometry, dataset / "labelsTr" / "case_002.nii.gz")         # label value not in json
    (dataset / "imagesTr" / "case_003_0000.nii.gz").write_bytes(b"not an image")   # unreadable
    image_2d = sitk.GetImageFromArray(np.zeros((5, 5), np.float32))
    sitk.WriteImage(image_2d, str(dataset / "imagesTr" / "case_003_0001.nii.gz"))  # not 3D
    (dataset / "imagesTr" / "notes.txt").write_text("stray")                        # misnamed file
    with pytest.raises(DatasetIntegrityError) as info:
        verify_dataset_integrity(dataset, num_processes=2)
    text = str(info.value)
    assert "case_000_0001.nii.gz: missing channel file" in text
    assert "case_001_0000.nii.gz: 1 NaN/infinite voxel" in text
    assert "case_002.nii.gz: label value(s) [7] are not in dataset.json" in text
    assert "case_003_0000.nii.gz: cannot be read" in text
    assert "case_003_0001.nii.gz: is 2D" in text and "convert" in text
    assert "notes.txt: not named <case>_XXXX.nii.gz" in text
    assert len(info.value.problems) == 6


def test_channel_geometry_must_agree(tmp_path):
    dataset = make_raw_dataset(tmp_path, num_cases=1, channel_names=("T1", "T2"))
    path = dataset / "imagesTr" / "case_000_0001.nii.gz"
    geometry, volume = _geometry_of(path)
    fields = geometry.to_dict()
    fields["origin_xyz"][0] += 5
    write_image(volume, ImageGeometry.from_dict(fields), path)
    problems = find_dataset_problems(dataset)
    assert len(problems) == 1 and "co-registered" in problems[0]


def test_empty_dataset_and_count_mismatch(tmp_path):
    dataset = make_raw_dataset(tmp_path, num_cases=2)
    meta = json.loads((dataset / "dataset.json").read_text())
    meta["numTraining"] = 5
    (dataset / "dataset.json").write_text(json.dumps(meta))
    assert any("numTraining is 5 but imagesTr holds 2" in p for p in find_dataset_problems(dataset))
    for path in (dataset / "imagesTr").iterdir():
        path.unlink()
    problems = find_dataset_problems(dataset)
    assert len(problems) == 1 and "empty dataset" in problems[0]


def test_labels_without_label_map_and_orphan_label(tmp_path):
    dataset = make_raw_dataset(tmp_path, num_cases=2)
    meta = json.loads((dataset / "dataset.json").read_text())
    del meta["labels"]
    (dataset / "dataset.json").write_text(json.dumps(meta))
    (dataset / "imagesTr" / "case_001_0000.nii.gz").unlink()
    problems = find_dataset_problems(dataset)
    assert any("case_001.nii.gz: label without a matching image" in p for p in problems)
    assert any("has no 'labels'" in p for p in problems)


def test_bad_dataset_json(tmp_path):
    dataset = make_raw_dataset(tmp_path, num_cases=1)
    (dataset / "dataset.json").write_text(json.dumps({"numTraining": 1}))
    problems = find_dataset_problems(dataset)
    assert len(problems) == 1
    assert "channel_names" in problems[0] and "file_ending" in problems[0]


def test_unknown_dataset_id(tmp_path):
    make_raw_dataset(tmp_path, dataset_id=900)
    assert find_dataset_name(900, [tmp_path]) == "Dataset900_Tiny"
    assert find_dataset_name("Dataset900_Tiny", [tmp_path]) == "Dataset900_Tiny"
    with pytest.raises(DatasetNotFoundError, match="no dataset '901'.*Dataset901_<Name>"):
        find_dataset_name(901, [tmp_path])
