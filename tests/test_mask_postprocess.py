"""Post-processing rules of the MASS supplement (6.1) and the Table 4a metrics."""
import numpy as np

from mass_nn.masks.postprocess import deduplicate, drop_small, keep_component_touching_seed
from mass_nn.masks.proposal import MaskProposal
from mass_nn.masks.quality import mask_quality


def _cube(shape, lo, hi):
    mask = np.zeros(shape, bool)
    mask[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] = True
    return mask


def test_largest_component_touching_the_seed_is_kept():
    shape = (20, 20, 20)
    big_far = _cube(shape, (0, 0, 0), (8, 8, 8))           # largest, but does not touch the seed
    touching_small = _cube(shape, (12, 12, 12), (14, 14, 14))
    touching_large = _cube(shape, (12, 2, 12), (18, 6, 18))
    seed = np.zeros(shape, bool)
    seed[13] = True                                          # the seed slice z = 13
    result = keep_component_touching_seed(big_far | touching_small | touching_large, seed & (touching_small | touching_large))
    assert np.array_equal(result, touching_large)
    assert not keep_component_touching_seed(big_far, seed & touching_small).any()


def test_minimum_volume():
    shape = (10, 10, 10)
    proposals = [MaskProposal.from_full(_cube(shape, (0, 0, 0), (n, 1, 1)), "t") for n in (1, 4, 5, 9)]
    assert [p.voxels for p in drop_small(proposals, 5)] == [5, 9]


def test_iou_deduplication_keeps_one_of_each_near_duplicate_pair_at_random():
    shape = (30, 30, 30)
    a = _cube(shape, (0, 0, 0), (10, 10, 10))
    a_almost = a.copy()
    a_almost[0, 0, :5] = False                               # IoU 995/1000 > 0.9
    b = _cube(shape, (0, 0, 0), (10, 10, 8))                 # IoU 0.8 with a: kept
    c = _cube(shape, (20, 20, 20), (25, 25, 25))
    proposals = [MaskProposal.from_full(m, "t", extra={"name": n})
                 for m, n in ((a, "a"), (a_almost, "a2"), (b, "b"), (c, "c"))]
    survivors = {seed: sorted(p.extra["name"] for p in deduplicate(proposals, 0.9, seed)) for seed in range(12)}
    assert all(len(names) == 3 and {"b", "c"} <= set(names) for names in survivors.values())
    assert {tuple(n) for n in survivors.values()} == {("a", "b", "c"), ("a2", "b", "c")}, "either one may go"
    assert deduplicate(proposals, 0.9, 5) == deduplicate(proposals, 0.9, 5)


def test_table_4a_metrics_by_hand():
    label = np.zeros((10, 10, 10), int)
    label[:5] = 1
    label[5:, :5] = 2
    exact = MaskProposal.from_full(label == 1, "t")
    everything = MaskProposal.from_full(np.ones_like(label, bool), "t")
    report = mask_quality([exact, everything], label)
    # pairs: (exact, 1) = 100, (everything, 1) = 2*500/1500, (everything, 2) = 2*250/1250 = 40
    assert report.best == (100 + 40) / 2
    assert np.isclose(report.avg, (100 + 200 / 3 + 40) / 3)
    assert np.isclose(report.percent_above_40, 200 / 3)
