"""blosc2 storage, preprocessing, and the exact way back to the raw geometry and intensities."""
import numpy as np
import pytest

from mass_nn.io.artifact_layout import CaseOutput
from mass_nn.io.dataset_json import list_cases, load_dataset_json
from mass_nn.io.image_io import read_image
from mass_nn.planning.fingerprint import extract_fingerprint
from mass_nn.planning.planner import plan_experiment
from mass_nn.planning.planner_settings import PlannerSettings
from mass_nn.preprocessing.blosc2_storage import (FLOAT_MANTISSA_BITS, chunk_and_block_shape, load_array, open_array,
                                                  save_array)
from mass_nn.preprocessing.case_properties import load_properties
from mass_nn.preprocessing.preprocessor import preprocess_cases
from mass_nn.preprocessing.restore import export_to_raw_geometry, raw_intensities, to_original_grid
from tests.conftest import make_raw_dataset


@pytest.mark.parametrize("dtype", [np.float32, np.int16])
def test_blosc2_round_trip_and_partial_reads(tmp_path, dtype):
    rng = np.random.default_rng(0)
    array = (rng.standard_normal((2, 37, 50, 41)) * 100).astype(dtype)
    path = tmp_path / "case.b2nd"
    save_array(array, path, patch_size_zyx=(32, 32, 32))
    if dtype == np.int16:
        assert np.array_equal(load_array(path), array), "integer arrays (labels) are lossless"
    else:
        relative = np.abs(load_array(path) - array) / np.maximum(np.abs(array), 1e-30)
        assert relative.max() < 2.0 ** -FLOAT_MANTISSA_BITS, "floats keep FLOAT_MANTISSA_BITS bits"
        array = load_array(path)
    stored = open_array(path)
    assert stored.chunks[0] == 1 and stored.blocks[0] == 1, "chunks never span channels"
    assert np.array_equal(stored[1, 5:20, 10:42, 3:30], array[1, 5:20, 10:42, 3:30])
    assert not list(tmp_path.glob(".*tmp*")), "no temporary file is left behind"


def test_chunk_rule_follows_patch_size():
    chunks, blocks = chunk_and_block_shape((1, 200, 300, 300), (128, 128, 128), 4)
    assert blocks == (1, 32, 32, 32) and all(c <= 128 for c in chunks[1:])
    assert np.prod(chunks) * 4 <= 4 * 1024 * 1024
    small_chunks, small_blocks = chunk_and_block_shape((1, 200, 300, 300), (64, 64, 64), 4)
    assert small_blocks == (1, 16, 16, 16) and all(c <= 64 for c in small_chunks[1:])


def _plan(dataset, configurations=("3d_cpu", "3d_paper")):
    fingerprint = extract_fingerprint(dataset, progress=False)
    return plan_experiment(fingerprint, PlannerSettings(configurations=list(configurations)))


def _preprocess(dataset, plans, out_root, **kwargs):
    cases = list_cases(dataset, load_dataset_json(dataset))
    folders = {c: out_root / plans.configurations[c].data_identifier for c in plans.configurations}
    return cases, folders, preprocess_cases(cases, plans, folders, progress=False, **kwargs)


@pytest.mark.parametrize("channel_names", [("CT",), ("T1", "PET")])
def test_preprocess_then_map_back_restores_geometry_and_intensities(tmp_path, channel_names):
    rotated = (0.0, -1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0)  # non-identity direction
    dataset = make_raw_dataset(tmp_path / "raw", num_cases=2, channel_names=channel_names, shape_zyx=(14, 30, 26),
                               spacing_xyz=(0.9, 1.1, 2.6), direction=rotated)
    plans = _plan(dataset, ["3d_paper"])
    cases, folders, _ = _preprocess(dataset, plans, tmp_path / "pre")
    output = CaseOutput(folders["3d_paper"], cases[0].case_id)
    props = load_properties(output.properties)
    data = load_array(output.data)
    assert data.shape == (len(channel_names), *props.shape_after_resampling_zyx) and data.dtype == np.float32
    raw = raw_intensities(data, props)
    for channel, path in enumerate(cases[0].images):
        original, geometry = read_image(path)
        restored = to_original_grid(raw[channel], props, is_label=False)
        export_to_raw_geometry(raw[channel], props, tmp_path / f"restored_{channel}.nii.gz", is_label=False)
        written, written_geometry = read_image(tmp_path / f"restored_{channel}.nii.gz")
        assert written_geometry.differences(geometry) == []
        box = tuple(slice(a, b) for a, b in props.crop_box_zyx)
        error = np.abs(restored[box] - original[box])
        value_range = np.ptp(original[box])
        assert np.median(error) < 0.02 * value_range and error.mean() < 0.03 * value_range
        assert np.allclose(written, restored, atol=1e-3 * value_range)
    label = load_array(output.seg)[0]
    original_label, _ = read_image(cases[0].label)
    back = to_original_grid(label, props, is_label=True)
    dice = 2 * np.sum((back == 1) & (original_label == 1)) / (np.sum(back == 1) + np.sum(original_label == 1))
    assert dice > 0.85


def test_ct_normalisation_is_dataset_level_and_invertible(tmp_path):
    dataset = make_raw_dataset(tmp_path / "raw", num_cases=2)
    plans = _plan(dataset, ["3d_cpu"])
    cases, folders, _ = _preprocess(dataset, plans, tmp_path / "pre")
    channel = plans.channels[0]
    for case in cases:
        props = load_properties(CaseOutput(folders["3d_cpu"], case.case_id).properties)
        norm = props.normalization[0]
        assert (norm.offset, norm.scale, norm.clip_lower, norm.clip_upper) == (
            channel.mean, channel.std, channel.clip_lower, channel.clip_upper)
        assert all(channel.clip_lower <= w.lower < w.upper <= channel.clip_upper for w in channel.windows)


def test_finished_cases_are_skipped_and_changes_redo_them(tmp_path):
    dataset = make_raw_dataset(tmp_path / "raw", num_cases=3)
    plans = _plan(dataset, ["3d_cpu"])
    cases, folders, first = _preprocess(dataset, plans, tmp_path / "pre")
    assert first[0]["preprocessed"] == 3
    _, _, second = _preprocess(dataset, plans, tmp_path / "pre")
    assert (second[0]["preprocessed"], second[0]["skipped"]) == (0, 3)
    CaseOutput(folders["3d_cpu"], cases[1].case_id).properties.unlink()   # a case killed before it finished
    _, _, third = _preprocess(dataset, plans, tmp_path / "pre")
    assert (third[0]["preprocessed"], third[0]["skipped"]) == (1, 2)
    plans.configurations["3d_cpu"].target_spacing_zyx_mm = [2.0, 2.0, 2.0]  # plans changed: all stale
    _, _, fourth = _preprocess(dataset, plans, tmp_path / "pre")
    assert fourth[0]["preprocessed"] == 3
    _, _, fifth = _preprocess(dataset, plans, tmp_path / "pre", clean=True)
    assert fifth[0]["preprocessed"] == 3


def test_properties_record_mask_axis_and_interval(tmp_path):
    dataset = make_raw_dataset(tmp_path / "raw", num_cases=1, spacing_xyz=(0.7, 0.7, 5.0))
    plans = _plan(dataset)
    cases, folders, _ = _preprocess(dataset, plans, tmp_path / "pre")
    for config, folder in folders.items():
        props = load_properties(CaseOutput(folder, cases[0].case_id).properties)
        assert props.mask_axis == 0
        assert props.seed_slice_interval == {"3d_paper": 10, "3d_cpu": 5}[config]
        assert props.label_voxel_counts["1"] > 0 and len(props.label_bboxes_zyx["1"]) == 3


def test_thick_slices_are_resampled_nearest_and_map_back_exactly(tmp_path):
    dataset = make_raw_dataset(tmp_path / "raw", num_cases=1, shape_zyx=(8, 24, 24), spacing_xyz=(1.5, 1.5, 6.0))
    plans = _plan(dataset, ["3d_paper"])  # 1.5 mm: in-plane unchanged, 6 mm slices -> 4 copies each
    cases, folders, _ = _preprocess(dataset, plans, tmp_path / "pre")
    output = CaseOutput(folders["3d_paper"], cases[0].case_id)
    props = load_properties(output.properties)
    assert props.nearest_resampling_axis == 0
    data = load_array(output.data)[0]
    assert data.shape[0] == 4 * props.shape_after_crop_zyx[0]
    assert np.array_equal(data[0], data[1]), "no slice is invented between two thick slices"
    original, _ = read_image(cases[0].images[0])
    restored = to_original_grid(raw_intensities(data[None], props)[0], props, is_label=False)
    box = tuple(slice(a, b) for a, b in props.crop_box_zyx)
    norm = props.normalization[0]
    inside_clip = (original[box] > norm.clip_lower) & (original[box] < norm.clip_upper)
    assert inside_clip.mean() > 0.9
    assert np.allclose(restored[box][inside_clip], original[box][inside_clip], atol=0.3), \
        "nearest down and up returns the original slices (HU within the storage precision)"
