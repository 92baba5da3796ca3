"""The mask bank: round trip, random access, region queries, and a corrupt file."""
import numpy as np
import pytest

from mass_nn.errors import MassError
from mass_nn.masks.mask_bank import MaskBank, write_mask_bank
from mass_nn.masks.proposal import MaskProposal

SHAPE = (30, 40, 35)


def _random_proposals(count, seed=0):
    rng = np.random.default_rng(seed)
    grid = np.ogrid[: SHAPE[0], : SHAPE[1], : SHAPE[2]]
    proposals = []
    for i in range(count):
        center, radius = rng.integers(3, 27, 3), rng.integers(1, 9)
        mask = sum((g - c) ** 2 for g, c in zip(grid, center)) <= radius ** 2
        mask &= rng.random(SHAPE) > 0.1  # ragged content, not just balls
        proposal = MaskProposal.from_full(mask, "test", score=float(i) / count, axis=i % 3, seed_slice=i,
                                          extra={"level": i % 4})
        if proposal is not None:
            proposals.append(proposal)
    return proposals


def test_round_trip_and_random_access(tmp_path):
    proposals = _random_proposals(120)
    path = tmp_path / "case.masks"
    write_mask_bank(path, "case", SHAPE, proposals, "test", "hash123")
    bank = MaskBank(path)
    assert (len(bank), bank.shape, bank.case_id, bank.parameters_hash) == (len(proposals), SHAPE, "case", "hash123")
    for index in np.random.default_rng(1).permutation(len(proposals)):
        expected = proposals[index]
        assert np.array_equal(bank.read(index), expected.full(SHAPE))
        entry = bank.entries[index]
        assert (entry.voxels, entry.box, entry.axis, entry.seed_slice, entry.extra) == (
            expected.voxels, expected.box, expected.axis, expected.seed_slice, expected.extra)
        assert entry.score == pytest.approx(expected.score)
    assert not list(tmp_path.glob(".*tmp*"))


def test_masks_intersecting_a_region(tmp_path):
    proposals = _random_proposals(60, seed=3)
    write_mask_bank(tmp_path / "c.masks", "c", SHAPE, proposals, "test", "h")
    bank = MaskBank(tmp_path / "c.masks")
    region = ((5, 12), (10, 20), (0, 35))
    found = set(bank.indices_intersecting(region).tolist())
    region_mask = np.zeros(SHAPE, bool)
    region_mask[tuple(slice(a, b) for a, b in region)] = True
    for index, proposal in enumerate(proposals):
        if (proposal.full(SHAPE) & region_mask).any():
            assert index in found, "every mask with voxels in the region is found"
    boxes_overlap = [all(b0 < r1 and b1 > r0 for (b0, b1), (r0, r1) in zip(p.box, region)) for p in proposals]
    assert found == {i for i, hit in enumerate(boxes_overlap) if hit}


def test_empty_bank_and_errors(tmp_path):
    write_mask_bank(tmp_path / "e.masks", "e", SHAPE, [], "test", "h")
    assert len(MaskBank(tmp_path / "e.masks")) == 0
    assert MaskBank(tmp_path / "e.masks").indices_intersecting(((0, 1), (0, 1), (0, 1))).size == 0
    (tmp_path / "bad.masks").write_bytes(b"garbage!" * 4)
    with pytest.raises(MassError, match="not a mass_nn mask bank"):
        MaskBank(tmp_path / "bad.masks")
    with pytest.raises(MassError, match="run mass_generate_masks first"):
        MaskBank(tmp_path / "missing.masks")
    outside = MaskProposal(box=((0, 2), (0, 2), (34, 36)), crop=np.ones((2, 2, 2), bool), generator="t")
    with pytest.raises(ValueError, match="outside the case grid"):
        write_mask_bank(tmp_path / "o.masks", "o", SHAPE, [outside], "t", "h")
