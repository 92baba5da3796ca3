"""The pretraining data pipeline: two-view geometry, task masks, augmentation alignment, determinism, resume."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mass_nn.errors import MassError
from mass_nn.masks.mask_bank import write_mask_bank
from mass_nn.masks.proposal import MaskProposal
from mass_nn.preprocessing.blosc2_storage import open_array, save_array
from mass_nn.training.data.affine_transform import (ViewAffineTransform, centre_crop, sampling_coordinates,
                                                    warp_image, warp_masks_nearest)
from mass_nn.training.data.augmentation import TwoViewSettings, ViewAugmentation
from mass_nn.training.data.pretraining_loader import PretrainingCase, case_weights_by_volume, make_pretraining_loader
from mass_nn.masks.mask_bank import MaskBank
from mass_nn.training.data.two_view_sampler import (EVERYTHING, PADDING, choose_tasks, plan_view_starts,
                                                    sample_two_views)

PATCH = (16, 16, 16)
SHAPE = (40, 36, 32)
BLOCK, STEP = 6, 9  # label blocks: 6 voxels wide every 9 voxels


def block_labels(shape, offset: int = 1) -> np.ndarray:
    """Disjoint cubes labelled 1..n on a regular grid (0 between them)."""
    labels = np.zeros(shape, dtype=np.int32)
    starts = [range(offset, s - BLOCK + 1, STEP) for s in shape]
    label = 0
    for z in starts[0]:
        for y in starts[1]:
            for x in starts[2]:
                label += 1
                labels[z:z + BLOCK, y:y + BLOCK, x:x + BLOCK] = label
    return labels


def write_case(root: Path, case_id: str, image: np.ndarray, labels: np.ndarray,
               max_masks: int | None = None) -> PretrainingCase:
    """A .b2nd image (c, z, y, x) and a bank with one mask per label (the first `max_masks`)."""
    save_array(image.astype(np.float32), root / f"{case_id}.b2nd", PATCH)
    values = [v for v in np.unique(labels) if v > 0][:max_masks]
    proposals = [MaskProposal.from_full(labels == v, "test") for v in values]
    write_mask_bank(root / f"{case_id}.masks", case_id, labels.shape, proposals, "test", "hash")
    return PretrainingCase(case_id, root / f"{case_id}.b2nd", root / f"{case_id}.masks")


def label_case(root: Path, case_id: str = "labels", shape=SHAPE, max_masks=None) -> PretrainingCase:
    """Three image channels, 10, 20 and 30 times the label: intensities name the mask they belong to."""
    labels = block_labels(shape)
    return write_case(root, case_id, np.stack([10.0 * labels, 20.0 * labels, 30.0 * labels]), labels, max_masks)


def position_case(root: Path, case_id: str = "positions", shape=SHAPE) -> PretrainingCase:
    """Image channels = 1-based (z, y, x) of each voxel, so a patch tells where it was cut (0 = padding)."""
    grid = np.indices(shape).astype(np.float32) + 1
    return write_case(root, case_id, grid, block_labels(shape))


def settings(affine: bool = False, appearance: bool = False, **kwargs) -> TwoViewSettings:
    def view(base: ViewAugmentation) -> ViewAugmentation:
        if not affine:
            base.affine_probability = 0.0
        if not appearance:
            base.appearance_probability = 0.0
        return base

    kwargs = {"num_tasks": 6, **kwargs}
    return TwoViewSettings(patch_size_zyx=PATCH, reference=view(ViewAugmentation.weak()),
                           query=view(ViewAugmentation.strong()), **kwargs)


def batches(cases, view_settings, count: int, batch_size: int = 2, seed: int = 0, **kwargs) -> list[dict]:
    loader = make_pretraining_loader(cases, view_settings, batch_size, seed, num_workers=kwargs.pop("workers", 0),
                                     **kwargs)
    try:
        return [next(loader) for _ in range(count)]
    finally:
        loader.close()


def assert_same_batch(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], np.ndarray):
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)
        else:
            assert a[key] == b[key], key


def test_settings_presets_and_round_trip():
    weak, strong = ViewAugmentation.weak(), ViewAugmentation.strong()
    assert (weak.affine_probability, weak.shear, weak.noise_std) == (0.5, 0.0, 0.02)
    assert (strong.affine_probability, strong.shear, strong.noise_std) == (0.8, 0.1, 0.04)
    assert weak.scale_range == pytest.approx((0.7, 1 / 0.7)) and strong.blur_sigma_range == (0.7, 1.5)
    full = TwoViewSettings(patch_size_zyx=(128, 128, 128))
    assert full.margin_zyx == (20, 20, 20) and full.crop_size_zyx == (168, 168, 168)  # the release's 168^3
    assert TwoViewSettings(patch_size_zyx=(64, 48, 48)).margin_zyx == (10, 8, 8)
    custom = TwoViewSettings(patch_size_zyx=(32, 32, 16), num_tasks=5, margin_voxels=(3, 3, 1), query=weak)
    assert TwoViewSettings.from_dict(custom.to_dict()) == custom
    assert ViewAugmentation.from_dict(strong.to_dict()) == strong


def test_batch_shapes_dtypes_and_weights(tmp_path):
    batch = batches([label_case(tmp_path)], settings(affine=True, appearance=True), 1, batch_size=3)[0]
    for view in ("reference", "query"):
        assert batch[f"{view}_image"].shape == (3, 3, *PATCH) and batch[f"{view}_image"].dtype == np.float32
        assert batch[f"{view}_masks"].shape == (3, 6, *PATCH) and batch[f"{view}_masks"].dtype == np.uint8
        assert set(np.unique(batch[f"{view}_masks"])) <= {0, 1}
    assert batch["task_weights"].shape == (3, 6) and batch["task_weights"].dtype == np.float32
    assert np.all(batch["task_weights"] == 1)  # 16 masks in the case: every slot is a real task
    assert batch["case_ids"] == ["labels"] * 3 and batch["batch_index"] == 0


def ellipsoid_case(root: Path) -> PretrainingCase:
    """One mask, an off-centre ellipsoid with three different radii; image = 100 and 200 times its indicator."""
    grid = np.indices(SHAPE).astype(np.float32)
    inside = sum(((g - c) / r) ** 2 for g, c, r in zip(grid, (18, 20, 15), (14, 9, 6))) <= 1
    return write_case(root, "ellipsoid", np.stack([100.0 * inside, 200.0 * inside]), inside.astype(np.int32))


@pytest.mark.parametrize("affine", [False, True])
def test_image_and_masks_stay_aligned(tmp_path, affine):
    view_settings = settings(affine=affine, num_tasks=1, everything_task=False)
    view_settings.reference.affine_probability = view_settings.query.affine_probability = float(affine)
    view_settings.reference.shear = 0.1
    ious = []
    for batch in batches([ellipsoid_case(tmp_path)], view_settings, 4):
        for view in ("reference", "query"):
            for image, masks in zip(batch[f"{view}_image"], batch[f"{view}_masks"]):
                np.testing.assert_allclose(image[1], 2 * image[0], atol=1e-3)  # channels warped alike
                if masks[0].sum() >= 20:
                    image_says = image[0] > 50  # linear interpolation: closer to inside than to outside
                    ious.append((image_says & (masks[0] > 0)).sum() / (image_says | (masks[0] > 0)).sum())
    assert len(ious) >= 8
    if affine:
        assert min(ious) > 0.9  # linear and nearest sampling differ only on the border
    else:
        assert min(ious) == 1.0


def test_identity_warp_is_the_centre_crop():
    rng = np.random.default_rng(0)
    image, masks = rng.random((2, 12, 10, 9)).astype(np.float32), (rng.random((3, 12, 10, 9)) > 0.5)
    masks = masks.astype(np.uint8)
    mesh = np.indices((8, 6, 5)).reshape(3, -1) - ((np.array([8, 6, 5]) - 1) / 2)[:, None]
    coordinates = sampling_coordinates(np.eye(3), mesh, image.shape[1:])
    np.testing.assert_allclose(warp_image(image, coordinates, (8, 6, 5)), centre_crop(image, (8, 6, 5)), atol=1e-6)
    np.testing.assert_array_equal(warp_masks_nearest(masks, coordinates, (8, 6, 5)), centre_crop(masks, (8, 6, 5)))
    shifted = sampling_coordinates(np.eye(3), mesh, image.shape[1:]) + np.array([[100.0], [0], [0]])
    assert not warp_masks_nearest(masks, shifted, (8, 6, 5)).any()  # outside the crop is 0
    transform = ViewAffineTransform((8, 6, 5), 1.0, (0.7, 1.4), 30.0, 0.1, "image", "masks")
    out = transform(image=image[None], masks=masks[None])
    assert out["image"].shape == (1, 2, 8, 6, 5) and out["masks"].shape == (1, 3, 8, 6, 5)


def test_crop_planning_keeps_the_views_overlapping_and_inside():
    rng = np.random.default_rng(0)
    crop = np.array([20, 20, 20])
    for _ in range(500):
        first, second = plan_view_starts((40, 25, 12), crop, 0.67, rng)
        assert np.all(np.abs(first - second) <= np.floor(0.33 * crop))
        assert np.all(first[:2] >= 0) and np.all(first[:2] + crop[:2] <= (40, 25))  # inside where it fits
        assert np.all(second[:2] >= 0) and np.all(second[:2] + crop[:2] <= (40, 25))
        assert -8 <= first[2] <= 0 and -8 <= second[2] <= 0  # covers the whole 12-voxel axis otherwise


def test_views_show_the_same_structures(tmp_path):
    """Without augmentation a patch's positions are known: the views overlap, within the allowed shift."""
    view_settings = settings()
    both = reference_only = 0
    for batch in batches([position_case(tmp_path)], view_settings, 8):
        for b in range(2):
            ref_start = batch["reference_image"][b, :, 0, 0, 0]
            query_start = batch["query_image"][b, :, 0, 0, 0]
            assert np.all(ref_start > 0) and np.all(query_start > 0)  # inside the volume: no padding
            assert np.all(np.abs(ref_start - query_start) <= np.floor(0.33 * np.array(view_settings.crop_size_zyx)))
            nonempty_ref = batch["reference_masks"][b].reshape(6, -1).any(axis=1)
            nonempty_query = batch["query_masks"][b].reshape(6, -1).any(axis=1)
            both += int((nonempty_ref & nonempty_query).sum())
            reference_only += int((nonempty_ref & ~nonempty_query).sum())
    assert both > 3 * reference_only


def test_everything_task_and_padding(tmp_path):
    batch = batches([label_case(tmp_path, max_masks=3)], settings(), 1, batch_size=4)[0]
    for b in range(4):
        np.testing.assert_array_equal(batch["task_weights"][b], [1, 1, 1, 1, 0, 0])  # 3 masks + everything
        for view in ("reference", "query"):
            masks = batch[f"{view}_masks"][b]
            all_ones = [k for k in range(6) if masks[k].all()]
            assert len(all_ones) == 1 and all_ones[0] < 4
            assert not masks[4:].any()  # padding channels are empty
        everything_ref = [k for k in range(6) if batch["reference_masks"][b, k].all()]
        assert everything_ref == [k for k in range(6) if batch["query_masks"][b, k].all()]  # same task id


def test_everything_task_is_set_before_the_warp(tmp_path):
    """Zoomed out, the everything mask shows the crop's outline: what comes from outside the crop is 0."""
    view_settings = settings(affine=True)
    view_settings.reference.affine_probability = 0.0
    view_settings.query.affine_probability, view_settings.query.scale_range = 1.0, (1.4, 1.43)
    batch = batches([label_case(tmp_path, max_masks=3)], view_settings, 1)[0]
    for b in range(2):
        everything = int(np.flatnonzero(batch["reference_masks"][b].reshape(6, -1).all(axis=1))[0])
        warped = batch["query_masks"][b, everything]
        assert 0.3 < warped.mean() < 1.0


def test_masks_in_view_are_preferred(tmp_path):
    big = (80, 72, 64)
    case = label_case(tmp_path, "big", shape=big)

    def nonempty_rate(prefer: bool) -> float:
        """Share of task channels with voxels in at least one of the two patches."""
        view_settings = settings(everything_task=False, prefer_masks_in_view=prefer)
        found = [np.concatenate([batch["reference_masks"], batch["query_masks"]], axis=2).reshape(2, 6, -1)
                 .any(axis=2) for batch in batches([case], view_settings, 6)]
        return float(np.mean(found))

    assert nonempty_rate(True) == 1.0  # solid blocks: a box meeting a patch window means voxels in it
    assert nonempty_rate(False) < 0.3


def _sized_bank(root: Path) -> MaskBank:
    """Masks 0-3: 2^3-voxel specks; masks 4-5: 6^3-voxel blocks; mask 6: an 8^3 block."""
    shape = (40, 36, 32)
    boxes = [(2, 2, 2)] * 4 + [(6, 6, 6)] * 2 + [(8, 8, 8)]
    proposals = []
    for k, size in enumerate(boxes):
        mask = np.zeros(shape, dtype=bool)
        z = 4 * k
        mask[z:z + size[0], 2:2 + size[1], 3:3 + size[2]] = True
        proposals.append(MaskProposal.from_full(mask, "test"))
    write_mask_bank(root / "sized.masks", "sized", shape, proposals, "test", "hash")
    return MaskBank(root / "sized.masks")


def test_masks_below_the_size_floor_are_never_drawn(tmp_path):
    bank = _sized_bank(tmp_path)
    whole = [((0, 40), (0, 36), (0, 32))]
    for seed in range(20):
        rng = np.random.default_rng(seed)
        codes = choose_tasks(bank, whole, 5, True, True, rng, min_mask_voxels=100)
        real = codes[codes >= 0]
        assert sorted(real.tolist()) == [4, 5, 6]  # all three large masks, no speck
        assert (codes == EVERYTHING).sum() == 1 and (codes == PADDING).sum() == 1
    unfiltered = np.concatenate([choose_tasks(bank, whole, 5, True, True, np.random.default_rng(s)) for s in range(20)])
    assert np.isin(unfiltered, [0, 1, 2, 3]).any()  # without the floor specks are drawn
    # no mask reaches the floor: the largest one alone is the task
    codes = choose_tasks(bank, whole, 3, False, False, np.random.default_rng(0), min_mask_voxels=10_000)
    assert codes.tolist() == [6, PADDING, PADDING]



def test_absent_tasks_take_masks_of_the_reference_view_only(tmp_path):
    bank = _sized_bank(tmp_path)  # masks 0-3 lie at z < 16, masks 4-6 at z >= 16
    reference, query = ((0, 16), (0, 36), (0, 32)), ((16, 40), (0, 36), (0, 32))
    for seed in range(10):
        codes = choose_tasks(bank, [reference, query], 5, True, True, np.random.default_rng(seed), absent_tasks=4)
        assert sorted(codes[codes >= 0].tolist()) == [0, 1, 2, 3]  # every real slot is a "not here" task
        codes = choose_tasks(bank, [reference, query], 5, True, True, np.random.default_rng(seed), absent_tasks=2)
        assert np.isin(codes, [0, 1, 2, 3]).sum() >= 2
        plain = choose_tasks(bank, [reference, query], 5, True, True, np.random.default_rng(seed))
        assert np.array_equal(plain, choose_tasks(bank, [reference, query], 5, True, True,
                                                  np.random.default_rng(seed), absent_tasks=0))
    codes = choose_tasks(bank, [query, query], 5, True, True, np.random.default_rng(0), absent_tasks=3)
    assert (codes == EVERYTHING).sum() == 1 and len(set(codes[codes >= 0].tolist())) == 4  # none to give: normal
    with pytest.raises(ValueError, match="absent_tasks"):
        TwoViewSettings(patch_size_zyx=(16, 16, 16), num_tasks=3, absent_tasks=4)

def _view_starts(sample) -> tuple[np.ndarray, np.ndarray]:
    """Start corners of both crops of a position_case sample (its channels are the 1-based voxel positions)."""
    return tuple(view[:, 0, 0, 0].astype(np.int64) - 1 for view in (sample.reference_image, sample.query_image))


def test_distant_query_places_the_query_anywhere_and_prefers_the_reference_masks(tmp_path):
    case = position_case(tmp_path, shape=(64, 64, 64))
    image, bank = open_array(case.image_path), MaskBank(case.bank_path)
    crop, patch = (20, 20, 20), (16, 16, 16)
    max_shift = int(np.floor((1 - 0.67) * 20))

    def draw(seed: int, distant: float):
        return sample_two_views(image, bank, crop, patch, 4, 0.67, True, True, np.random.default_rng(seed),
                                distant_query=distant)

    shifts = [np.abs(np.subtract(*_view_starts(draw(seed, 1.0)))).max() for seed in range(30)]
    assert max(shifts) > 3 * max_shift  # overlapping views never lie this far apart
    assert all(np.abs(np.subtract(*_view_starts(draw(seed, 0.0)))).max() <= max_shift for seed in range(30))
    for seed in range(10):  # every real task of a distant sample shows in the reference view
        sample = draw(seed, 1.0)
        real = sample.task_weights > 0
        assert sample.reference_masks[real].reshape(real.sum(), -1).any(axis=1).all()
    with pytest.raises(ValueError, match="distant_query"):
        TwoViewSettings(patch_size_zyx=(16, 16, 16), distant_query=1.5)


def test_size_floor_is_a_share_of_the_patch():
    assert TwoViewSettings(patch_size_zyx=(64, 48, 48), min_mask_fraction=0.01).min_mask_voxels == 1475
    assert TwoViewSettings(patch_size_zyx=(64, 48, 48)).min_mask_voxels == 0
    with pytest.raises(ValueError, match="min_mask_fraction"):
        TwoViewSettings(patch_size_zyx=(16, 16, 16), min_mask_fraction=1.0)


def test_determinism_and_weighted_cases(tmp_path):
    cases = [label_case(tmp_path), position_case(tmp_path)]
    view_settings = settings(affine=True, appearance=True)
    first = batches(cases, view_settings, 2, seed=7)
    again = batches(cases, view_settings, 2, seed=7)
    for a, b in zip(first, again):
        assert_same_batch(a, b)
    assert not np.array_equal(first[0]["query_image"], first[1]["query_image"])
    other_seed = batches(cases, view_settings, 1, seed=8)[0]
    assert not np.array_equal(first[0]["query_image"], other_seed["query_image"])
    weighted = batches(cases, view_settings, 3, seed=7, case_weights=[0.0, 1.0])
    assert all(batch["case_ids"] == ["positions", "positions"] for batch in weighted)


def test_case_weights_by_volume_count_the_voxels_of_each_grid(tmp_path):
    small = label_case(tmp_path, "small", shape=(20, 18, 16))
    large = label_case(tmp_path, "large")  # SHAPE: 8 times the voxels, 3 image channels that must not count
    assert case_weights_by_volume([small, large]) == [20 * 18 * 16, float(np.prod(SHAPE))]
    loader = make_pretraining_loader([small, large], settings(), 2, seed=0, num_workers=0,
                                     case_weights=case_weights_by_volume([small, large]))
    assert np.allclose(loader.loader.case_probabilities, [1 / 9, 8 / 9])


def test_resume_with_workers_and_ddp_ranks(tmp_path):
    cases = [label_case(tmp_path), position_case(tmp_path)]
    view_settings = settings(affine=True, appearance=True)
    fresh = batches(cases, view_settings, 6, seed=3)
    assert [b["batch_index"] for b in fresh] == list(range(6))
    resumed = batches(cases, view_settings, 3, seed=3, start_batch=3, workers=2)  # round-robin over 2 processes
    for expected, got in zip(fresh[3:], resumed):
        assert_same_batch(expected, got)
    rank_batches = [batches(cases, view_settings, 3, seed=3, rank=r, world_size=2) for r in (0, 1)]
    indices = [[b["batch_index"] for b in rank] for rank in rank_batches]
    assert indices == [[0, 2, 4], [1, 3, 5]]
    for rank in rank_batches:
        for batch in rank:
            assert_same_batch(fresh[batch["batch_index"]], batch)


def test_small_volumes_are_padded(tmp_path):
    small = (10, 8, 20)
    batch = batches([position_case(tmp_path, "small", shape=small)], settings(), 1, batch_size=2)[0]
    for view in ("reference", "query"):
        image, masks = batch[f"{view}_image"], batch[f"{view}_masks"]
        assert image.shape == (2, 3, *PATCH)
        for b in range(2):
            inside = image[b, 0] > 0
            assert 0 < inside.sum() < inside.size and not image[b][:, ~inside].any()  # zero padding around
            assert np.all(image[b][:, inside] > 0)
            everything = [k for k in range(6) if masks[b, k].sum() == inside.sum()]
            assert everything and np.array_equal(masks[b, everything[0]] > 0, inside)  # ones only on real voxels


def test_cases_with_different_channel_counts_fail_clearly(tmp_path):
    with pytest.raises(MassError, match="different channel counts"):
        batches([label_case(tmp_path), ellipsoid_case(tmp_path)], settings(), 4, batch_size=4)


def test_missing_and_empty_banks_fail_clearly(tmp_path):
    labels = block_labels(SHAPE)
    empty = write_case(tmp_path, "empty", labels[None].astype(np.float32), labels, max_masks=0)
    with pytest.raises(MassError, match=r"empty\.masks.*mass_generate_masks"):
        make_pretraining_loader([empty], settings(), 2, 0, num_workers=0)
    loader = make_pretraining_loader([empty], settings(), 2, 0, num_workers=0, validate=False)
    with pytest.raises(MassError, match=r"empty\.masks.*mass_generate_masks"):
        next(loader)
    missing = PretrainingCase("gone", empty.image_path, tmp_path / "gone.masks")
    with pytest.raises(MassError, match=r"gone\.masks.*mass_generate_masks"):
        make_pretraining_loader([missing], settings(), 2, 0, num_workers=0)
