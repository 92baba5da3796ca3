"""The shared-data converter on the real volumes of ../shared/data (or $MASS_SHARED_DATA); skipped without them."""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from dataset_conversion.shared_data import convert_shared_data
from mass_nn.io.dataset_json import list_cases, load_dataset_json
from mass_nn.io.image_io import read_geometry, read_image
from mass_nn.io.integrity import find_dataset_problems
from tests.conftest import requires_shared_data, shared_data_dir

pytestmark = requires_shared_data


@pytest.fixture(scope="module")
def totalseg_ct(tmp_path_factory):
    raw = tmp_path_factory.mktemp("raw")
    return convert_shared_data(shared_data_dir(), raw, which=["totalseg_ct"])["totalseg_ct"]


def _mean_hu(dataset_dir, case_id, class_name):
    labels = load_dataset_json(dataset_dir).labels
    image = read_image(dataset_dir / "imagesTr" / f"{case_id}_0000.nii.gz")[0]
    label = read_image(dataset_dir / "labelsTr" / f"{case_id}.nii.gz", dtype=np.int32)[0]
    mask = label == labels[class_name]
    assert mask.sum() > 100, f"{case_id}: too few {class_name} voxels to judge alignment"
    return float(image[mask].mean())


def test_totalsegmentator_ct_cases_are_sound_and_share_the_total_label_map(totalseg_ct):
    dataset_json = load_dataset_json(totalseg_ct)
    assert totalseg_ct.name == "Dataset605_TotalSegExamplesCT"
    assert dataset_json.num_training == 3 and dataset_json.channel_names == {"0": "CT"}
    assert len(dataset_json.labels) == 118 and dataset_json.labels["liver"] == 5  # full 'total' class map
    assert dataset_json.extra["patient_of_case"]["example_ct"] == dataset_json.extra["patient_of_case"]["example_ct_sm"]
    assert "Apache-2.0" in dataset_json.description
    for case in list_cases(totalseg_ct, dataset_json):
        assert read_geometry(case.images[0]).differences(read_geometry(case.label)) == []
    assert find_dataset_problems(totalseg_ct) == []


def test_dicom_case_label_is_flipped_back_onto_the_image_grid(totalseg_ct):
    source = shared_data_dir() / "totalsegmentator"
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(source / "example_ct_dicom")))
    dicom_geometry = reader.Execute()
    converted = sitk.ReadImage(str(totalseg_ct / "labelsTr" / "example_ct_dicom.nii.gz"))
    assert converted.GetOrigin() == pytest.approx(dicom_geometry.GetOrigin(), abs=1e-3)
    assert converted.GetDirection() == pytest.approx(dicom_geometry.GetDirection(), abs=1e-6)
    source_label = sitk.GetArrayFromImage(sitk.ReadImage(str(source / "example_seg_dicom.nii.gz")))
    assert np.array_equal(sitk.GetArrayFromImage(converted), source_label[:, ::-1, :])


@pytest.mark.parametrize("case_id, bone", [("example_ct_dicom", "vertebrae_T12"), ("example_ct", "vertebrae_L3")])
def test_labels_sit_on_the_right_tissue(totalseg_ct, case_id, bone):
    assert _mean_hu(totalseg_ct, case_id, bone) > 150  # vertebral bone
    assert 0 < _mean_hu(totalseg_ct, case_id, "liver") < 200  # soft tissue


def test_sts_ct_masks_keep_every_tumour_voxel(tmp_path):
    out = convert_shared_data(shared_data_dir(), tmp_path, which=["sts_ct"])["sts_ct"]
    patients = sorted(p for p in (shared_data_dir() / "ibsi_sts").glob("STS_*") if (p / "CT_image.nii.gz").is_file())
    dataset_json = load_dataset_json(out)
    assert out.name == "Dataset601_STS_CT" and dataset_json.num_training == len(patients) > 0
    assert dataset_json.labels == {"background": 0, "tumour": 1} and "CC BY 3.0" in dataset_json.description
    for patient in patients:
        source_mask = read_image(patient / "CT_mask.nii.gz")[0]
        converted = read_image(out / "labelsTr" / f"{patient.name}.nii.gz")[0]
        assert converted.sum() == source_mask.sum() > 0
        copied = out / "imagesTr" / f"{patient.name}_0000.nii.gz"
        assert copied.read_bytes() == (patient / "CT_image.nii.gz").read_bytes()
    assert dataset_json.extra["patient_of_case"] == {p.name: p.name for p in patients}


def test_brats_float_labels_become_integer_classes(tmp_path):
    out = convert_shared_data(shared_data_dir(), tmp_path, which=["brats"], first_dataset_id=700)["brats"]
    dataset_json = load_dataset_json(out)
    assert out.name == "Dataset704_BRATS_FlairT1c" and dataset_json.channel_names == {"0": "FLAIR", "1": "T1c"}
    case = list_cases(out, dataset_json)[0]
    label = sitk.ReadImage(str(case.label))
    assert label.GetPixelID() == sitk.sitkUInt8
    assert set(np.unique(sitk.GetArrayViewFromImage(label))) == {0, 1, 2, 3, 4}
