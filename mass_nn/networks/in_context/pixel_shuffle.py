"""3D pixel shuffle and unshuffle (sub-pixel rearrangement between channels and space).

Channel layout is (c, i, j, k) with i the depth, j the height and k the width sub-index: with per-axis factors
(a, b, c'), input channel c·a·b·c' + (i·b + j)·c' + k moves to voxel (d·a + i, h·b + j, w·c' + k) of output
channel c. A single integer s means (s, s, s). The two modules are exact inverses of each other for any channel
count.
"""
from __future__ import annotations

from torch import Tensor, nn


def scale_triple(scale: int | tuple[int, int, int] | list[int]) -> tuple[int, int, int]:
    """(s, s, s) for an integer, the three factors (z, y, x) otherwise."""
    factors = (scale,) * 3 if isinstance(scale, int) else tuple(int(s) for s in scale)
    if len(factors) != 3 or min(factors) < 1:
        raise ValueError(f"pixel shuffle scale must be a positive integer or three of them, got {scale}")
    return factors


def pixel_shuffle_3d(x: Tensor, scale: int | tuple[int, int, int]) -> Tensor:
    """[B, C·a·b·c, d, h, w] → [B, C, d·a, h·b, w·c] for scale (a, b, c) (or s for (s, s, s))."""
    a, b, c = scale_triple(scale)
    batch, channels, depth, height, width = x.shape
    if channels % (a * b * c):
        raise ValueError(f"pixel_shuffle_3d: {channels} channels are not divisible by {a}·{b}·{c} = {a * b * c}")
    out_channels = channels // (a * b * c)
    x = x.reshape(batch, out_channels, a, b, c, depth, height, width)
    x = x.permute(0, 1, 5, 2, 6, 3, 7, 4)
    return x.reshape(batch, out_channels, depth * a, height * b, width * c)


def pixel_unshuffle_3d(x: Tensor, scale: int | tuple[int, int, int]) -> Tensor:
    """[B, C, d·a, h·b, w·c] → [B, C·a·b·c, d, h, w]; the inverse of `pixel_shuffle_3d`."""
    a, b, c = scale_triple(scale)
    batch, channels, depth, height, width = x.shape
    if depth % a or height % b or width % c:
        raise ValueError(f"pixel_unshuffle_3d: spatial size {(depth, height, width)} is not divisible by "
                         f"{(a, b, c)}")
    d, h, w = depth // a, height // b, width // c
    x = x.reshape(batch, channels, d, a, h, b, w, c)
    x = x.permute(0, 1, 3, 5, 7, 2, 4, 6)
    return x.reshape(batch, channels * a * b * c, d, h, w)


class PixelShuffle3d(nn.Module):
    """Module form of `pixel_shuffle_3d`."""

    def __init__(self, scale: int | tuple[int, int, int]):
        super().__init__()
        self.scale = scale

    def forward(self, x: Tensor) -> Tensor:
        """[B, C·s³, d, h, w] → [B, C, d·s, h·s, w·s]."""
        return pixel_shuffle_3d(x, self.scale)

    def extra_repr(self) -> str:
        return f"scale={self.scale}"


class PixelUnshuffle3d(nn.Module):
    """Module form of `pixel_unshuffle_3d`."""

    def __init__(self, scale: int | tuple[int, int, int]):
        super().__init__()
        self.scale = scale

    def forward(self, x: Tensor) -> Tensor:
        """[B, C, d·s, h·s, w·s] → [B, C·s³, d, h, w]."""
        return pixel_unshuffle_3d(x, self.scale)

    def extra_repr(self) -> str:
        return f"scale={self.scale}"
