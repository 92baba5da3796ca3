"""The synthetic phantom: determinism, labels, intensities, spacing, variation and the written dataset."""
from __future__ import annotations

import functools

import numpy as np
import pytest

from dataset_conversion.phantom import PHANTOM_LABELS, case_spacing_zyx_mm, generate_phantom_case, \
    write_phantom_dataset
from mass_nn.io.dataset_json import list_cases, load_dataset_json
from mass_nn.io.image_io import read_image

LABEL = PHANTOM_LABELS
CHECKED_CASES = (0, 1, 2)


@functools.lru_cache(maxsize=None)
def _case(case_index: int, modality: str = "CT", seed: int = 0):
    """Cached so each case is generated once per test session; callers must not modify the arrays."""
    return generate_phantom_case(case_index, seed, modality)


def _volume_mm3(label: np.ndarray, spacing_zyx_mm, value: int) -> float:
    return float((label == value).sum() * np.prod(spacing_zyx_mm))


def _centroid_mm(label: np.ndarray, spacing_zyx_mm, value: int) -> np.ndarray:
    """Centroid (z, y, x) in mm relative to the grid centre."""
    indices = np.argwhere(label == value)
    return (indices.mean(axis=0) - (np.array(label.shape) - 1) / 2) * np.array(spacing_zyx_mm)


def test_same_seed_gives_byte_identical_arrays():
    image, label, spacing = _case(0)
    again_image, again_label, again_spacing = generate_phantom_case(0, 0, "CT")
    assert image.dtype == np.float32 and label.dtype == np.uint8
    assert image.shape == label.shape and len(spacing) == 3
    assert image.tobytes() == again_image.tobytes()
    assert label.tobytes() == again_label.tobytes()
    assert spacing == again_spacing


def test_different_cases_and_seeds_give_different_volumes():
    image_0, label_0, spacing_0 = _case(0)
    for other_image, other_label, other_spacing in (_case(1), _case(0, seed=4)):
        assert not np.array_equal(other_label, label_0) and not np.array_equal(other_image, image_0)
        volumes_mm3 = [_volume_mm3(lab, sp, LABEL["liver"]) for lab, sp in ((label_0, spacing_0),
                                                                          (other_label, other_spacing))]
        assert abs(volumes_mm3[0] - volumes_mm3[1]) > 100.0


@pytest.mark.parametrize("case_index", CHECKED_CASES)
def test_labels_present_with_plausible_sizes(case_index):
    image, label, spacing = _case(case_index)
    present = set(np.unique(label).tolist()) - {0}
    assert present <= set(LABEL.values())
    assert len(present) >= 8
    assert present >= set(LABEL.values()) - {0, LABEL["liver_lesion"]}
    volume = {name: _volume_mm3(label, spacing, value) for name, value in LABEL.items() if name != "background"}
    total = float(label.size * np.prod(spacing))
    body = float((image > -500).sum() * np.prod(spacing))
    assert 0.03 < volume["liver"] / body < 0.2
    assert volume["liver"] > max(volume["spleen"], volume["kidney_left"], volume["kidney_right"], volume["stomach"])
    assert 0 < volume["hepatic_vessels"] < 0.1 * volume["liver"]
    assert volume["aorta"] < 0.02 * total
    assert volume["liver_lesion"] < 0.1 * volume["liver"]
    assert volume["liver_lesion"] <= 3 * (4 / 3) * np.pi * 13.0 ** 3


def test_lesions_are_small_and_inside_the_liver():
    cases_with_lesions = 0
    for case_index in CHECKED_CASES:
        _, label, spacing = _case(case_index)
        lesion = label == LABEL["liver_lesion"]
        if not lesion.any():
            continue
        cases_with_lesions += 1
        liver_box = np.argwhere(np.isin(label, [LABEL["liver"], LABEL["hepatic_vessels"]]))
        lesion_voxels = np.argwhere(lesion)
        assert (lesion_voxels.min(0) >= liver_box.min(0)).all() and (lesion_voxels.max(0) <= liver_box.max(0)).all()
        extent_mm = (lesion_voxels.max(0) - lesion_voxels.min(0) + 1) * np.array(spacing)
        assert extent_mm.min() < 30.0
    assert cases_with_lesions >= 2


@pytest.mark.parametrize("case_index", CHECKED_CASES)
def test_ct_intensities_are_in_hounsfield_ranges(case_index):
    image, label, _ = _case(case_index)
    assert image.min() >= -1024 and image.max() <= 3071
    assert np.array_equal(image, np.rint(image))
    corners = image[:, :5, :5]
    assert -1010 < corners.mean() < -985
    for bone in ("vertebrae", "ribs"):
        assert image[label == LABEL[bone]].mean() > 200
    for soft_tissue in ("liver", "spleen", "psoas"):
        assert -150 <= image[label == LABEL[soft_tissue]].mean() <= 150
    body = image > -500
    fat_fraction = np.mean((image[body] > -150) & (image[body] < -50))
    assert fat_fraction > 0.05


def test_mr_variant_shares_anatomy_with_different_contrast():
    ct_image, ct_label, ct_spacing = _case(0)
    mr_image, mr_label, mr_spacing = _case(0, "MR")
    assert np.array_equal(ct_label, mr_label) and ct_spacing == mr_spacing
    assert mr_image.dtype == np.float32 and mr_image.min() >= 0
    bright_tissue = np.percentile(mr_image, 99)
    assert mr_image[:, :5, :5].mean() < 0.05 * bright_tissue

    def mean(image, name):
        return image[mr_label == LABEL[name]].mean()

    # Flowing blood: bright with contrast on CT, dark flow void on T2 MR; urine the other way round.
    assert mean(ct_image, "aorta") > mean(ct_image, "liver") and mean(mr_image, "aorta") < mean(mr_image, "liver")
    assert mean(ct_image, "bladder") < mean(ct_image, "liver") and mean(mr_image, "bladder") > mean(mr_image, "liver")


@pytest.mark.parametrize("seed", [0, 7])
def test_some_of_the_first_six_cases_are_anisotropic(seed):
    spacings = [np.array(case_spacing_zyx_mm(i, seed)) for i in range(6)]
    ratios = [s.max() / s.min() for s in spacings]
    assert any(r > 1.5 for r in ratios) and any(r < 1.1 for r in ratios)
    for s in spacings:
        assert 1.4 <= s.min() and s.max() <= 3.6
    assert _case(0)[2] == case_spacing_zyx_mm(0, 0)
    assert all(40 <= n <= 120 for n in _case(0)[0].shape)


def test_layout_is_consistent_while_cases_vary():
    centroids, liver_volumes = [], []
    for case_index in CHECKED_CASES:
        _, label, spacing = _case(case_index)
        centroid = {name: _centroid_mm(label, spacing, value) for name, value in LABEL.items() if name != "background"
                    and name != "liver_lesion"}
        # Axes (z, y, x): +z superior, +y posterior, +x patient left.
        assert centroid["liver"][2] < 0 < centroid["spleen"][2]
        assert centroid["kidney_right"][2] < 0 < centroid["kidney_left"][2]
        assert centroid["bladder"][0] < centroid["kidney_left"][0] < centroid["liver"][0]
        assert centroid["aorta"][1] < centroid["vertebrae"][1]
        assert centroid["stomach"][1] < centroid["spleen"][1]
        centroids.append(centroid)
        liver_volumes.append(_volume_mm3(label, spacing, LABEL["liver"]))
    assert np.ptp(liver_volumes) > 0.02 * np.mean(liver_volumes)
    for name in ("liver", "spleen", "kidney_left", "bladder"):
        positions = np.array([c[name] for c in centroids])
        assert np.linalg.norm(positions.max(0) - positions.min(0)) > 1.0


def test_written_dataset_is_readable_and_matches_generated_cases(tmp_path):
    dataset_dir = write_phantom_dataset(tmp_path, dataset_id=990, num_cases=2, seed=0, num_test_cases=1)
    assert dataset_dir == tmp_path / "Dataset990_PhantomCT"
    dataset_json = load_dataset_json(dataset_dir)
    assert dataset_json.channel_names == {"0": "CT"}
    assert dataset_json.labels == PHANTOM_LABELS and dataset_json.num_training == 2
    assert dataset_json.file_ending == ".nii.gz" and dataset_json.name == "PhantomCT"
    assert dataset_json.extra == {"phantom_seed": 0}
    training = list_cases(dataset_dir, dataset_json, "Tr")
    test = list_cases(dataset_dir, dataset_json, "Ts")
    assert [c.case_id for c in training] == ["phantom_000", "phantom_001"]
    assert [c.case_id for c in test] == ["phantom_002"]
    for case_index, case in enumerate(training + test):
        image, label, spacing = _case(case_index)
        written_image, geometry = read_image(case.images[0])
        written_label, label_geometry = read_image(case.label, dtype=np.uint8)
        assert np.array_equal(written_image, image) and np.array_equal(written_label, label)
        assert np.allclose(geometry.spacing_zyx, spacing) and not geometry.differences(label_geometry)
        assert geometry.direction == (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)


def test_written_mr_dataset_uses_name_and_float_images(tmp_path):
    dataset_dir = write_phantom_dataset(tmp_path, dataset_id=991, num_cases=1, modality="MR", name="Tiny")
    assert dataset_dir.name == "Dataset991_Tiny"
    dataset_json = load_dataset_json(dataset_dir)
    assert dataset_json.channel_names == {"0": "MR"}
    (case,) = list_cases(dataset_dir, dataset_json)
    written_image, _ = read_image(case.images[0])
    assert np.array_equal(written_image, _case(0, "MR")[0])


def test_invalid_arguments_are_rejected(tmp_path):
    with pytest.raises(ValueError):
        generate_phantom_case(0, 0, "PET")
    with pytest.raises(ValueError):
        generate_phantom_case(-1)
    with pytest.raises(ValueError):
        write_phantom_dataset(tmp_path, num_cases=0)
