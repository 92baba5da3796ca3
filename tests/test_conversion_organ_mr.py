"""mass_convert_dataset chaos_mr / mscmrseg: small made-up source folders, and the real sets when present."""
from __future__ import annotations

import numpy as np
import pytest

from dataset_conversion.cli import main as convert_main
from dataset_conversion.organ_mr import ORGAN_MR_SETS, convert_organ_mr
from mass_nn.errors import MassError
from mass_nn.io.dataset_json import list_cases, load_dataset_json
from mass_nn.io.image_io import ImageGeometry, read_image, write_image
from tests.conftest import requires_shared_data, shared_data_dir

GEOMETRY = ImageGeometry(spacing_xyz=(1.25, 1.25, 7.7), origin_xyz=(0.0, 0.0, 0.0),
                         direction=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0), size_xyz=(20, 20, 6))


def _write_patient(folder, pid: str, values: tuple[int, ...], shape=(6, 20, 20)) -> np.ndarray:
    """image_<pid> / label_<pid> as float64 (like the source), one cube per label value; returns the label."""
    rng = np.random.default_rng(int(pid))
    label = np.zeros(shape, dtype=np.float64)
    for k, value in enumerate(values):
        label[1:5, 2 + 4 * k:5 + 4 * k, 3:9] = value
    write_image(rng.normal(size=shape), GEOMETRY, folder / f"image_{pid}.nii.gz")
    write_image(label, GEOMETRY, folder / f"label_{pid}.nii.gz")
    return label


def test_mscmrseg_values_become_one_to_three_with_names(tmp_path):
    source = tmp_path / "mscmrseg_bssfp"
    source.mkdir()
    labels = {pid: _write_patient(source, pid, (200, 500, 600)) for pid in ("2", "13")}
    dataset = convert_organ_mr(tmp_path, tmp_path / "raw", 627, "mscmrseg")  # the root holding the folder
    meta = load_dataset_json(dataset)
    assert dataset.name == "Dataset627_MSCMRSegbSSFP"
    assert meta.labels == {"background": 0, "lv_myocardium": 1, "lv_blood_pool": 2, "rv_blood_pool": 3}
    assert meta.extra["patient_of_case"] == {"mscmrseg_02": "mscmrseg_02", "mscmrseg_13": "mscmrseg_13"}
    for case in list_cases(dataset, meta):
        converted = read_image(case.label, dtype=np.int32)[0]
        source_label = labels[str(int(case.case_id.split("_")[1]))]
        for source_value, value in ((200, 1), (500, 2), (600, 3)):
            assert np.array_equal(converted == value, source_label == source_value)
        assert np.array_equal(converted == 0, source_label == 0)


def test_chaos_keeps_its_values_and_reads_the_folder_itself(tmp_path):
    _write_patient(tmp_path, "8", (1, 2, 3, 4))
    dataset = convert_organ_mr(tmp_path, tmp_path / "raw", 626, "chaos_mr")
    meta = load_dataset_json(dataset)
    assert meta.labels == ORGAN_MR_SETS["chaos_mr"].labels
    assert list(meta.labels) == ["background", "liver", "right_kidney", "left_kidney", "spleen"]
    (case,) = list_cases(dataset, meta)
    assert case.case_id == "chaos_08"
    assert sorted(np.unique(read_image(case.label, dtype=np.int32)[0]).tolist()) == [0, 1, 2, 3, 4]
    assert "CC BY-NC-SA" in meta.description


def test_a_value_outside_the_set_names_the_file(tmp_path):
    _write_patient(tmp_path, "4", (200, 500, 700))
    with pytest.raises(MassError, match=r"label_4\.nii\.gz.*700"):
        convert_organ_mr(tmp_path, tmp_path / "raw", 627, "mscmrseg")


def test_an_image_without_its_label_is_refused(tmp_path):
    _write_patient(tmp_path, "5", (1, 2, 3, 4))
    (tmp_path / "label_5.nii.gz").unlink()
    with pytest.raises(MassError, match=r"label_5\.nii\.gz: not found.*restore"):
        convert_organ_mr(tmp_path, tmp_path / "raw", 626, "chaos_mr")


def test_a_folder_without_images_is_refused(tmp_path):
    with pytest.raises(MassError, match="no image_<pid>.nii.gz"):
        convert_organ_mr(tmp_path, tmp_path / "raw", 626, "chaos_mr")


def test_cli_subcommand_uses_the_default_id(tmp_path, capsys):
    _write_patient(tmp_path, "1", (1, 2, 3, 4))
    _write_patient(tmp_path, "2", (1, 2, 3, 4))
    assert convert_main(["chaos_mr", str(tmp_path), "--raw", str(tmp_path / "raw")]) == 0
    assert "Dataset626_CHAOSMRT2SPIR: 2 training case(s), 0 test case(s), channels T2SPIR" in capsys.readouterr().out


@requires_shared_data
@pytest.mark.parametrize("key, cases, classes", [("chaos_mr", 12, 4), ("mscmrseg", 25, 3)])
def test_the_real_sets_convert_with_every_structure_in_every_case(tmp_path, key, cases, classes):
    dataset = convert_organ_mr(shared_data_dir(), tmp_path, 626, key)
    meta = load_dataset_json(dataset)
    assert meta.num_training == cases
    for case in list_cases(dataset, meta)[:3]:
        values = np.unique(read_image(case.label, dtype=np.int32)[0])
        assert values.tolist() == list(range(classes + 1))
