"""Reading and writing NIfTI, NRRD, MHA and DICOM series with their geometry."""
import numpy as np
import pytest
import SimpleITK as sitk

from mass_nn.errors import ImageReadError
from mass_nn.io.dataset_json import DatasetJson, list_cases, load_dataset_json, save_dataset_json
from mass_nn.io.image_io import ImageGeometry, read_geometry, read_image, write_image
from mass_nn.io.integrity import find_dataset_problems
from tests.conftest import requires_shared_data, shared_data_dir

GEOMETRY = ImageGeometry(spacing_xyz=(0.7, 0.8, 3.0), origin_xyz=(-10.0, 20.5, 3.0),
                         direction=(0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0), size_xyz=(9, 8, 5))


@pytest.mark.parametrize("ending", [".nii.gz", ".nii", ".nrrd", ".mha"])
def test_round_trip_keeps_voxels_and_geometry(tmp_path, ending):
    array = np.arange(5 * 8 * 9, dtype=np.float32).reshape(5, 8, 9)
    path = tmp_path / f"image{ending}"
    write_image(array, GEOMETRY, path)
    read, geometry = read_image(path)
    assert np.array_equal(read, array)
    assert geometry.differences(GEOMETRY) == [] and read_geometry(path).differences(GEOMETRY) == []
    assert geometry.spacing_zyx == pytest.approx((3.0, 0.8, 0.7)) and geometry.shape_zyx == (5, 8, 9)


def write_dicom_series(folder, volume):
    """A minimal CT DICOM series: 2.5 mm slices, 0.6 x 0.5 mm pixels, origin (1, 2, 3)."""
    folder.mkdir(parents=True)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for z in range(volume.shape[0]):
        image = sitk.GetImageFromArray(volume[z])
        image.SetSpacing((0.5, 0.6))
        for tag, value in {"0020|000e": "1.2.3.4.5", "0020|0013": str(z + 1), "0008|0060": "CT",
                           "0020|0032": f"1\\2\\{3 + 2.5 * z}", "0020|0037": "1\\0\\0\\0\\1\\0",
                           "0028|0030": "0.6\\0.5", "0018|0050": "2.5"}.items():
            image.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"slice{z:03d}.dcm"))
        writer.Execute(image)


def test_dicom_series_folder(tmp_path):
    volume = (np.arange(4 * 6 * 7).reshape(4, 6, 7) - 50).astype(np.int16)
    write_dicom_series(tmp_path / "series", volume)
    array, geometry = read_image(tmp_path / "series")
    assert np.array_equal(array, volume)
    assert geometry.spacing_zyx == pytest.approx((2.5, 0.6, 0.5))
    assert geometry.origin_xyz == pytest.approx((1.0, 2.0, 3.0))


def test_dicom_folder_stands_in_for_a_channel_file(tmp_path):
    dataset = tmp_path / "Dataset930_Dicom"
    volume = np.full((4, 6, 7), -1000, np.int16)
    volume[:, 1:5, 1:6] = 40
    write_dicom_series(dataset / "imagesTr" / "scan_0000", volume)
    save_dataset_json(DatasetJson({"0": "CT"}, 1, ".nii.gz"), dataset)
    cases = list_cases(dataset, load_dataset_json(dataset))
    assert [(c.case_id, [p.name for p in c.images]) for c in cases] == [("scan", ["scan_0000"])]
    assert find_dataset_problems(dataset) == []


@requires_shared_data
def test_real_dicom_series_matches_its_label_grid():
    source = shared_data_dir() / "totalsegmentator"
    array, geometry = read_image(source / "example_ct_dicom")
    label_geometry = read_geometry(source / "example_seg_dicom.nii.gz")
    assert array.shape == (20, 512, 512) and geometry.size_xyz == label_geometry.size_xyz
    assert geometry.spacing_xyz == pytest.approx(label_geometry.spacing_xyz, abs=1e-3)


def test_nifti_with_non_orthonormal_affine_is_read_with_nibabel(tmp_path):
    import nibabel as nib
    affine = np.array([[0.8, 0.02, 0, 5], [0, 0.8, 0, -3], [0, 0, 2.5, 7], [0, 0, 0, 1]])
    data = np.random.default_rng(0).random((6, 5, 4)).astype(np.float32)  # nibabel order: x, y, z
    path = tmp_path / "skewed.nii.gz"
    nib.save(nib.Nifti1Image(data, affine), str(path))
    array, geometry = read_image(path)
    assert array.shape == (4, 5, 6) and np.allclose(array, np.transpose(data, (2, 1, 0)))
    assert geometry.spacing_xyz == pytest.approx((0.8, 0.80025, 2.5), abs=1e-3)
    assert geometry.origin_xyz == pytest.approx((-5, 3, 7))


def test_unreadable_and_missing_files_name_the_file(tmp_path):
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(b"nope")
    with pytest.raises(ImageReadError, match="bad.nii.gz: cannot be read"):
        read_image(bad)
    with pytest.raises(ImageReadError, match="missing.nrrd: file not found"):
        read_image(tmp_path / "missing.nrrd")
