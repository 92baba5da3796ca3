"""benchmarks/conv_passes.py: FLOPs of a pass, the three timed passes, and the section's totals."""
import math

import torch

from benchmarks.conv_layout import Convolution
from benchmarks.conv_passes import PASSES, output_shape, pass_flops, pass_seconds, section, uses_tap_sums


def test_output_shape_and_pass_flops_follow_the_convolution_geometry():
    same = Convolution((2, 8, 16, 12, 10), (4, 8, 3, 3, 3), (1, 1, 1), (1, 1, 1))
    assert output_shape(same) == (2, 4, 16, 12, 10)
    assert pass_flops(same) == 2 * (2 * 4 * 16 * 12 * 10) * (8 * 27)
    strided = Convolution((1, 2, 9, 8, 7), (3, 2, 3, 3, 3), (2, 2, 2), (1, 1, 1))
    assert output_shape(strided) == (1, 3, 5, 4, 4)
    pointwise = Convolution((26, 64, 4, 3, 3), (32, 64, 1, 1, 1), (1, 1, 1), (0, 0, 0))
    assert pass_flops(pointwise) == 2 * 26 * 32 * 36 * 64


def test_every_pass_is_timed_in_both_layouts():
    for conv in (Convolution((1, 2, 6, 6, 6), (3, 2, 3, 3, 3), (1, 1, 1), (1, 1, 1)),
                 Convolution((2, 1, 6, 6, 6), (4, 1, 3, 3, 3), (1, 1, 1), (1, 1, 1))):
        for channels_last in (False, True):
            seconds = pass_seconds(conv, channels_last, repeats=1)
            assert set(seconds) == set(PASSES) and all(value > 0 for value in seconds.values())


def test_one_channel_weight_gradients_are_timed_as_the_step_computes_them():
    assert uses_tap_sums(Convolution((2, 1, 6, 6, 6), (8, 1, 3, 3, 3), (1, 1, 1), (1, 1, 1)))
    assert not uses_tap_sums(Convolution((2, 8, 6, 6, 6), (8, 8, 3, 3, 3), (1, 1, 1), (1, 1, 1)))
    assert not uses_tap_sums(Convolution((2, 1, 6, 6, 6), (8, 1, 3, 3, 3), (2, 2, 2), (1, 1, 1)))
    assert not uses_tap_sums(Convolution((2, 1, 6, 6, 6), (8, 1, 1, 1, 1), (1, 1, 1), (0, 0, 0)))


def test_section_weights_passes_by_calls_and_compares_with_sgemm():
    conv = Convolution((2, 8, 64, 48, 48), (4, 8, 3, 3, 3), (1, 1, 1), (1, 1, 1))
    flops = pass_flops(conv)
    rows = [dict(conv=conv, count=2, channels_last=True, flops=flops,
                 seconds={"forward": flops / 50e9, "input gradient": flops / 40e9, "weight gradient": flops / 25e9})]
    text = section(rows, sgemm=50e9, threads=2, seconds=6.0)
    assert "| 8 → 4, 3×3×3 on 2×64×48×48 | channels-last | 2 |" in text
    total_forward_ms = 2 * flops / 50e9 * 1e3
    assert f"**{total_forward_ms:.0f} (50)**" in text
    assert "the forward passes run at 100% of this machine's SGEMM speed" in text
    assert "the weight gradients at 50%" in text
    assert math.isclose(2 * flops / 25e9 * 1e3, float(text.split("instead of ")[1].split(" ms")[0]), rel_tol=0.01)
