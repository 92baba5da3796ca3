"""The sam2 generator: orchestration on a fake engine (seeds, frames, both propagation directions, assembly on
every axis, diversity selection, component filtering), the real sam2 code path with random weights at a small
image size, and the checkpoint errors a user can cause."""
from __future__ import annotations

import json
import re
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch

from mass_nn.errors import MassError
from mass_nn.masks.generate import MaskGenerationOptions, generate_masks
from mass_nn.masks.generators import sam2_backend
from mass_nn.masks.generators.sam2_backend import CHECKPOINT_GUIDANCE, Sam2Backend, Sam2Settings, SeedMask
from mass_nn.masks.generators.sam2_generator import (
    Sam2Generator, axes_and_intervals, drop_small_masks, select_diverse, seed_slices, slice_frames)
from mass_nn.masks.mask_bank import MaskBank
from mass_nn.masks.native_grid import transfer_to_grid
from mass_nn.masks.proposal import CaseInput, MaskProposal
from mass_nn.paths import MassPaths
from mass_nn.preprocessing.plan_and_preprocess import PlanAndPreprocessOptions, plan_and_preprocess
from mass_nn.registry import MASK_GENERATORS
from tests.conftest import make_raw_dataset


# ---- a fake engine: objects are encoded as grey values of channel 0 ---------------------------------------

class FakeTracker:
    """Tracks the true object: the pixels of each frame whose channel-0 value is the one under the seed mask."""

    def __init__(self, frames, extra_blob=None):
        self.frames = frames
        self.extra_blob = extra_blob  # optional (frame, bool (H, W)) added to every object's output
        self.calls: list[tuple[int, int, bool]] = []
        self.yielded: list[list[int]] = []

    def propagate(self, seed_frame, masks, reverse):
        self.calls.append((seed_frame, len(masks), reverse))
        values = [int(np.bincount(self.frames[seed_frame][..., 0][m]).argmax()) for m in masks]
        order = range(seed_frame, -1, -1) if reverse else range(seed_frame, len(self.frames))
        self.yielded.append([])
        for frame in order:
            self.yielded[-1].append(frame)
            out = np.stack([self.frames[frame][..., 0] == v for v in values])
            if self.extra_blob is not None and self.extra_blob[0] == frame:
                out |= self.extra_blob[1]
            yield frame, out


class FakeEngine:
    """Automatic masks = one per non-zero grey value of channel 0, predicted IoU = value / 255."""

    def __init__(self, extra_blob=None):
        self.trackers: list[FakeTracker] = []
        self.amg_images = 0
        self.closed = False
        self.extra_blob = extra_blob

    def automatic_masks(self, image):
        self.amg_images += 1
        return [SeedMask(image[..., 0] == v, predicted_iou=v / 255, stability_score=0.9)
                for v in np.unique(image[..., 0]) if v > 0]

    @contextmanager
    def open_frames(self, frames):
        tracker = FakeTracker(frames, self.extra_blob)
        self.trackers.append(tracker)
        yield tracker

    def close(self):
        self.closed = True


def _labelled_case(label: np.ndarray, axis: int, interval: int, spacing=(1.0, 1.0, 1.0)) -> CaseInput:
    """A case whose three windows all show `label` * 40 (object k has grey value 40 k)."""
    windowed = np.repeat((label * 40).astype(np.uint8)[None], 3, axis=0)
    return CaseInput("fake", windowed, spacing, axis, interval)


def _phantom() -> np.ndarray:
    """Three 26-connected objects on a (14, 20, 18) grid: an ellipsoid, a box touching two faces, a rod."""
    z, y, x = np.mgrid[:14, :20, :18]
    label = np.zeros((14, 20, 18), np.uint8)
    label[((z - 7) / 5.0) ** 2 + ((y - 9) / 6.0) ** 2 + ((x - 8) / 5.0) ** 2 <= 1] = 1
    label[0:5, 14:20, 0:4] = 2
    label[2:13, 2:4, 14:17] = 3
    return label


def _generator(engine, **kwargs) -> Sam2Generator:
    return Sam2Generator(engine=engine, min_area_px=1, **kwargs)


# ---- seeds, frames, axes ----------------------------------------------------------------------------------

@pytest.mark.parametrize("length, interval, expected", [
    (6, 3, [1, 4]), (10, 3, [1, 4, 7]), (8, 3, [0, 3, 6]), (150, 10, list(range(4, 145, 10))),
    (4, 100, [1]), (1, 5, [0]), (5, 1, [0, 1, 2, 3, 4])])
def test_seed_slices_are_interval_apart_and_centred(length, interval, expected):
    assert seed_slices(length, interval) == expected


def test_seed_slices_cover_every_volume_evenly():
    for length in range(1, 80):
        for interval in range(1, 25):
            seeds = seed_slices(length, interval)
            assert 0 <= seeds[0] and seeds[-1] < length
            assert all(b - a == interval for a, b in zip(seeds, seeds[1:]))
            assert abs(seeds[0] - (length - 1 - seeds[-1])) <= 1
            assert max(min(abs(i - s) for s in seeds) for i in range(length)) <= 0.75 * interval + 1


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_slice_frames_are_rgb_slices_along_the_axis(axis):
    windowed = np.random.default_rng(axis).integers(0, 255, (3, 4, 5, 6), dtype=np.uint8)
    frames = slice_frames(windowed, axis)
    others = [a for a in range(3) if a != axis]
    assert frames.shape == (windowed.shape[axis + 1], windowed.shape[others[0] + 1], windowed.shape[others[1] + 1], 3)
    index = [slice(None)] * 4
    index[axis + 1] = 2
    np.testing.assert_array_equal(frames[2], np.moveaxis(windowed[tuple(index)], 0, -1))


def test_multi_axis_uses_the_same_physical_seed_distance_on_every_axis():
    case = CaseInput("c", np.zeros((3, 30, 40, 50), np.uint8), (3.0, 1.0, 1.5), mask_axis=1, seed_slice_interval=15)
    assert axes_and_intervals(case, multi_axis=False) == [(1, 15)]
    assert axes_and_intervals(case, multi_axis=True) == [(0, 5), (1, 15), (2, 10)]


# ---- propagation and assembly on the fake engine ----------------------------------------------------------

def test_each_batch_is_tracked_forward_then_backward_from_its_seed():
    label = np.zeros((9, 12, 12), np.uint8)
    label[:, 1:3, 1:3], label[:, 5:7, 5:7], label[:, 9:11, 9:11] = 1, 2, 3
    engine = FakeEngine()
    _generator(engine, objects_per_batch=2).generate(_labelled_case(label, axis=0, interval=4))
    tracker, = engine.trackers
    assert seed_slices(9, 4) == [2, 6]
    assert tracker.calls == [(2, 2, False), (2, 2, True), (2, 1, False), (2, 1, True),
                             (6, 2, False), (6, 2, True), (6, 1, False), (6, 1, True)]
    assert tracker.yielded[0] == list(range(2, 9)) and tracker.yielded[1] == [2, 1, 0]
    assert engine.amg_images == 2


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_a_tracker_returning_the_true_objects_gives_them_back_exactly(axis):
    label = _phantom()
    engine = FakeEngine()
    proposals = _generator(engine).generate(_labelled_case(label, axis=axis, interval=5))
    seeds = seed_slices(label.shape[axis], 5)
    assert {p.extra["stability_score"] for p in proposals} == {0.9}
    found = set()
    for proposal in proposals:
        value = int(round(proposal.score * 255 / 40))
        np.testing.assert_array_equal(proposal.full(label.shape), label == value)
        assert proposal.axis == axis and proposal.seed_slice in seeds and proposal.generator == "sam2"
        found.add(value)
    assert found == {1, 2, 3}
    expected = sum(len(np.unique(np.take(label, s, axis=axis))) - 1 for s in seeds)
    assert len(proposals) == expected  # one proposal per object visible on each seed slice


def test_multi_axis_seeds_along_all_three_axes():
    label = _phantom()
    engine = FakeEngine()
    proposals = _generator(engine, multi_axis=True).generate(_labelled_case(label, axis=0, interval=5))
    assert {p.axis for p in proposals} == {0, 1, 2}
    assert [t.frames.shape[0] for t in engine.trackers] == [14, 20, 18]
    for proposal in proposals:
        np.testing.assert_array_equal(proposal.full(label.shape), label == round(proposal.score * 255 / 40))


def test_disconnected_output_is_cut_to_the_component_touching_the_seed():
    label = np.zeros((10, 16, 16), np.uint8)
    label[3:7, 2:6, 2:6] = 1
    blob = np.zeros((16, 16), bool)
    blob[6:16, 6:16] = True  # larger than the object, never touching it
    proposals = _generator(FakeEngine(extra_blob=(0, blob))).generate(_labelled_case(label, axis=0, interval=10))
    proposal, = proposals
    np.testing.assert_array_equal(proposal.full(label.shape), label == 1)


def test_the_largest_of_several_components_touching_the_seed_is_kept():
    label = np.zeros((12, 16, 16), np.uint8)
    label[4:6, 2:5, 2:5] = 1  # short tube
    label[0:12, 9:12, 9:12] = 1  # long tube, both cut by the seed slice 5 or 6
    proposal, = _generator(FakeEngine()).generate(_labelled_case(label, axis=0, interval=12))
    expected = np.zeros_like(label, dtype=bool)
    expected[0:12, 9:12, 9:12] = True
    np.testing.assert_array_equal(proposal.full(label.shape), expected)


def test_stop_after_empty_ends_a_direction_once_every_object_is_gone():
    label = np.zeros((30, 8, 8), np.uint8)
    label[12:18, 2:6, 2:6] = 1
    engine = FakeEngine()
    proposal, = _generator(engine, stop_after_empty=2).generate(_labelled_case(label, axis=0, interval=30))
    forward, backward = engine.trackers[0].yielded
    assert forward == list(range(14, 20)) and backward == [14, 13, 12, 11, 10]
    np.testing.assert_array_equal(proposal.full(label.shape), label == 1)


def test_small_seed_masks_are_dropped_before_tracking():
    label = np.zeros((6, 20, 20), np.uint8)
    label[:, 0:2, 0:2], label[:, 10:16, 10:16] = 1, 2  # 4 px and 36 px per slice
    engine = FakeEngine()
    proposals = Sam2Generator(engine=engine, min_area_px=10).generate(_labelled_case(label, axis=0, interval=6))
    assert [round(p.score * 255 / 40) for p in proposals] == [2]
    fraction = Sam2Generator(engine=FakeEngine(), min_area_fraction=0.02)  # 0.02 * 400 px = 8 px
    assert fraction.min_area_for((20, 20)) == 8
    assert len(drop_small_masks([SeedMask(np.ones((3, 3), bool), 0.5)], 9)) == 1


def test_parameters_are_json_and_close_releases_the_engine():
    engine = FakeEngine()
    generator = _generator(engine)
    json.dumps(generator.parameters())
    assert generator.parameters()["max_masks_per_slice"] == 70
    generator.close()
    assert engine.closed


# ---- diversity selection ----------------------------------------------------------------------------------

def _square(size: int, row: int, col: int, iou: float, shape=(96, 96)) -> SeedMask:
    mask = np.zeros(shape, bool)
    mask[row: row + size, col: col + size] = True
    return SeedMask(mask, predicted_iou=iou)


def test_diversity_selection_caps_and_spreads_over_sizes_and_positions():
    crowd = [_square(3, 40 + i % 5, 40 + i // 5, 0.99 - i * 0.001) for i in range(100)]  # small, central
    rare = [_square(60, 0, 0, 0.40), _square(30, 60, 60, 0.41), _square(12, 0, 80, 0.42), _square(6, 85, 0, 0.43)]
    chosen = select_diverse(crowd + rare, max_masks=10)
    assert len(chosen) == 10
    assert all(any(c is r for c in chosen) for r in rare)
    assert len({c.area for c in chosen}) >= 5


def test_diversity_selection_prefers_higher_iou_within_a_bin_and_keeps_short_lists():
    masks = [_square(4, 10, 10, iou) for iou in (0.5, 0.9, 0.7)]
    assert select_diverse(masks, max_masks=5) == masks
    assert [m.predicted_iou for m in select_diverse(masks, max_masks=2)] == [0.9, 0.7]


# ---- the real sam2 code path (random weights, small image size) -------------------------------------------

@pytest.fixture
def one_torch_thread():
    """One torch thread: on a shared 2-core machine two OpenMP threads stall whenever the other core is busy
    (measured: 1.6 s instead of 0.07 s for one image-encoder call at size 128)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_real_sam2_runs_amg_and_bidirectional_propagation_end_to_end(one_torch_thread, monkeypatch):
    torch.manual_seed(0)
    windowed = np.random.default_rng(0).integers(0, 60, (3, 40, 48, 6), dtype=np.uint8)
    windowed[:, 10:30, 12:36, :] = 220
    case = CaseInput("real", windowed, (1.0, 1.0, 3.0), mask_axis=2, seed_slice_interval=3)
    calls = []
    original = sam2_backend.Sam2Tracker.propagate

    def recording(self, seed_frame, masks, reverse):
        calls.append((seed_frame, len(masks), reverse, []))
        for frame, out in original(self, seed_frame, masks, reverse):
            calls[-1][3].append(frame)
            assert out.shape == (len(masks), 40, 48) and out.dtype == bool
            yield frame, out

    monkeypatch.setattr(sam2_backend.Sam2Tracker, "propagate", recording)
    generator = Sam2Generator(image_size=128, device="cpu", points_per_side=4, pred_iou_thresh=0.0,
                              stability_score_thresh=0.0, box_nms_thresh=1.0, max_masks_per_slice=3,
                              objects_per_batch=2, allow_random_weights=True)
    proposals = generator.generate(case)
    generator.close()
    assert [c[:3] for c in calls] == [(1, 2, False), (1, 2, True), (1, 1, False), (1, 1, True),
                                      (4, 2, False), (4, 2, True), (4, 1, False), (4, 1, True)]
    assert calls[0][3] == [1, 2, 3, 4, 5] and calls[1][3] == [1, 0] and calls[5][3] == [4, 3, 2, 1, 0]
    assert proposals and {p.seed_slice for p in proposals} <= {1, 4}
    for proposal in proposals:
        assert proposal.axis == 2 and proposal.generator == "sam2"
        assert all(0 <= a < b <= n for (a, b), n in zip(proposal.box, case.shape))
        assert proposal.crop.shape == tuple(b - a for a, b in proposal.box) and proposal.crop.dtype == bool
        assert proposal.full(case.shape)[:, :, proposal.seed_slice].any()
    json.dumps([p.extra for p in proposals])


def test_real_checkpoint_loads_and_a_file_that_does_not_fit_is_reported(tmp_path, one_torch_thread):
    from sam2.build_sam import build_sam2

    state = build_sam2("configs/sam2.1/sam2.1_hiera_t.yaml", None, device="cpu").state_dict()
    good = tmp_path / "sam2.1_hiera_tiny.pt"
    torch.save({"model": state}, good)
    backend = Sam2Backend(Sam2Settings(checkpoint=good, image_size=128, device="cpu"))
    assert backend.resolved.model == "tiny" and backend.resolved.config == "configs/sam2.1/sam2.1_hiera_t.yaml"
    assert isinstance(backend.automatic_masks(np.zeros((32, 32, 3), np.uint8)), list)
    backend.close()
    state.pop("obj_ptr_proj.layers.0.weight")
    broken = tmp_path / "broken.pt"
    torch.save({"model": state}, broken)
    with pytest.raises(MassError, match=r"broken\.pt does not fit SAM2 config .*sam2\.1_hiera_t\.yaml"):
        Sam2Backend(Sam2Settings(checkpoint=broken, image_size=128, device="cpu")).automatic_masks(
            np.zeros((32, 32, 3), np.uint8))


# ---- errors a user can cause ------------------------------------------------------------------------------

def test_no_checkpoint_is_refused_before_any_work_with_guidance():
    with pytest.raises(MassError) as error:
        MASK_GENERATORS.get("sam2")(checkpoint=None)
    message = str(error.value)
    for part in ("sam2.1_hiera_", "facebookresearch/sam2", "--checkpoint", "MASS_SAM2_CHECKPOINT", "-g supervoxel"):
        assert part in message
    assert CHECKPOINT_GUIDANCE in message


def test_missing_checkpoint_file_is_named(tmp_path):
    missing = tmp_path / "sam2.1_hiera_small.pt"
    with pytest.raises(MassError, match=re.escape(f"SAM2 checkpoint not found: {missing}")):
        Sam2Generator(checkpoint=missing)


def _fake_state(width: int, blocks: int, sam21: bool = True) -> dict:
    state = {sam2_backend._PATCH_EMBED_KEY: torch.zeros(width, 3, 7, 7)}
    state.update({f"image_encoder.trunk.blocks.{i}.norm1.weight": torch.zeros(1) for i in range(blocks)})
    if sam21:
        state["no_obj_embed_spatial"] = torch.zeros(1, 64)
    return state


def test_foreign_files_and_size_mismatches_are_reported(tmp_path):
    text = tmp_path / "notes.pt"
    text.write_text("not a checkpoint")
    with pytest.raises(MassError, match=r"notes\.pt is not a SAM2 checkpoint \(torch could not read it"):
        Sam2Generator(checkpoint=text)
    bare = tmp_path / "bare.pt"
    torch.save(_fake_state(96, 12), bare)
    with pytest.raises(MassError, match=r"bare\.pt is not a SAM2 checkpoint \(expected a torch file holding"):
        Sam2Generator(checkpoint=bare)
    small_named_tiny = tmp_path / "sam2.1_hiera_tiny.pt"
    torch.save({"model": _fake_state(96, 16)}, small_named_tiny)
    with pytest.raises(MassError, match="holds a SAM2 'small' model but 'tiny' was asked for; pass --sam2-model small"):
        Sam2Generator(checkpoint=small_named_tiny)


@pytest.mark.parametrize("width, blocks, sam21, config", [
    (96, 12, True, "configs/sam2.1/sam2.1_hiera_t.yaml"), (96, 16, True, "configs/sam2.1/sam2.1_hiera_s.yaml"),
    (112, 24, True, "configs/sam2.1/sam2.1_hiera_b+.yaml"), (144, 48, True, "configs/sam2.1/sam2.1_hiera_l.yaml"),
    (112, 24, False, "configs/sam2/sam2_hiera_b+.yaml")])
def test_model_size_and_family_are_read_from_the_weights(tmp_path, width, blocks, sam21, config):
    path = tmp_path / "my_weights.pt"
    torch.save({"model": _fake_state(width, blocks, sam21)}, path)
    assert Sam2Backend(Sam2Settings(checkpoint=path, device="cpu")).resolved.config == config


def test_bad_settings_are_refused():
    with pytest.raises(MassError, match="multiple of 32"):
        Sam2Generator(allow_random_weights=True, image_size=300)
    with pytest.raises(MassError, match="unknown SAM2 model size 'huge'"):
        Sam2Generator(allow_random_weights=True, model="huge")
    if not torch.cuda.is_available():
        with pytest.raises(MassError, match="no CUDA GPU"):
            Sam2Generator(allow_random_weights=True, device="cuda")


# ---- native resolution: SAM2 on the raw slices, masks carried to the preprocessed grid ----------------------

@pytest.mark.parametrize("native, target", [((20, 30, 25), (8, 12, 10)), ((10, 30, 25), (17, 12, 40))])
def test_carrying_a_mask_to_the_grid_is_linear_resampling_kept_at_one_half(native, target):
    mask = np.zeros(native, bool)
    mask[3:7, 5:20, 4:18] = np.random.default_rng(0).random((4, 15, 14)) > 0.3
    carried = transfer_to_grid(MaskProposal.from_full(mask, "sam2", axis=0, seed_slice=5), native, target)
    expected = torch.nn.functional.interpolate(torch.tensor(mask, dtype=torch.float32)[None, None], size=target,
                                               mode="trilinear", align_corners=False)[0, 0].numpy() >= 0.5
    np.testing.assert_array_equal(carried.full(target), expected)
    assert carried.seed_slice == round((5 + 0.5) * target[0] / native[0] - 0.5)
    assert carried.extra["native_box"] == [[3, 7], [5, 20], [4, 18]]


def test_sam2_tracks_the_raw_slices_of_a_thick_slice_volume(tmp_path, one_torch_thread, monkeypatch):
    paths = MassPaths(raw=tmp_path / "raw", preprocessed=tmp_path / "pre", results=tmp_path / "res")
    make_raw_dataset(paths.raw, num_cases=1, shape_zyx=(8, 24, 20), spacing_xyz=(1.5, 1.5, 6.0))
    plan_and_preprocess(900, paths, PlanAndPreprocessOptions(preset="cpu_only", num_processes=1, progress=False))
    props = json.loads(next((paths.preprocessed / "Dataset900_Tiny").rglob("case_000.json")).read_text())
    assert props["mask_axis"] == 0 and props["shape_after_resampling_zyx"][0] > 8  # 6 mm slices refined: repeats
    seen = []
    original = Sam2Backend.open_frames

    def recording(self, frames):
        seen.append(np.array(frames))
        return original(self, frames)

    monkeypatch.setattr(Sam2Backend, "open_frames", recording)
    settings = {"image_size": 128, "device": "cpu", "points_per_side": 4, "pred_iou_thresh": 0.0,
                "stability_score_thresh": 0.0, "box_nms_thresh": 1.0, "max_masks_per_slice": 2,
                "objects_per_batch": 2, "allow_random_weights": True}
    summary = generate_masks(900, paths, MaskGenerationOptions(generator="sam2", generator_settings=settings,
                                                               num_processes=1, progress=False, previews=False))
    frames, = seen
    crop = props["crop_box_zyx"]
    assert frames.shape[:3] == (crop[0][1] - crop[0][0], crop[1][1] - crop[1][0], crop[2][1] - crop[2][0])
    assert all(not np.array_equal(a, b) for a, b in zip(frames[:-1], frames[1:]))  # no duplicated frame
    bank = MaskBank(Path(summary["folder"]) / "case_000.masks")
    assert list(bank.shape) == props["shape_after_resampling_zyx"] and len(bank) > 0
    assert json.loads((Path(summary["folder"]) / "masks.json").read_text())["grid"].startswith("native")
