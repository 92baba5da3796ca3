"""3D pixel shuffle and unshuffle (sub-pixel rearrangement between channels and space).

Channel layout is (c, i, j, k) with i the depth, j the height and k the width sub-index: input channel
c·s³ + (i·s + j)·s + k moves to voxel (d·s + i, h·s + j, w·s + k) of output channel c. The two modules are exact
inverses of each other for any channel count.
"""
from __future__ import annotations

from torch import Tensor, nn


def pixel_shuffle_3d(x: Tensor, scale: int) -> Tensor:
    """[B, C·s³, d, h, w] → [B, C, d·s, h·s, w·s]."""
    batch, channels, depth, height, width = x.shape
    if channels % scale ** 3:
        raise ValueError(f"pixel_shuffle_3d: {channels} channels are not divisible by scale³ = {scale ** 3}")
    out_channels = channels // scale ** 3
    x = x.reshape(batch, out_channels, scale, scale, scale, depth, height, width)
    x = x.permute(0, 1, 5, 2, 6, 3, 7, 4)
    return x.reshape(batch, out_channels, depth * scale, height * scale, width * scale)


def pixel_unshuffle_3d(x: Tensor, scale: int) -> Tensor:
    """[B, C, d·s, h·s, w·s] → [B, C·s³, d, h, w]; the inverse of `pixel_shuffle_3d`."""
    batch, channels, depth, height, width = x.shape
    if depth % scale or height % scale or width % scale:
        raise ValueError(f"pixel_unshuffle_3d: spatial size {(depth, height, width)} is not divisible by {scale}")
    d, h, w = depth // scale, height // scale, width // scale
    x = x.reshape(batch, channels, d, scale, h, scale, w, scale)
    x = x.permute(0, 1, 3, 5, 7, 2, 4, 6)
    return x.reshape(batch, channels * scale ** 3, d, h, w)


class PixelShuffle3d(nn.Module):
    """Module form of `pixel_shuffle_3d`."""

    def __init__(self, scale: int):
        super().__init__()
        self.scale = scale

    def forward(self, x: Tensor) -> Tensor:
        """[B, C·s³, d, h, w] → [B, C, d·s, h·s, w·s]."""
        return pixel_shuffle_3d(x, self.scale)

    def extra_repr(self) -> str:
        return f"scale={self.scale}"


class PixelUnshuffle3d(nn.Module):
    """Module form of `pixel_unshuffle_3d`."""

    def __init__(self, scale: int):
        super().__init__()
        self.scale = scale

    def forward(self, x: Tensor) -> Tensor:
        """[B, C, d·s, h·s, w·s] → [B, C·s³, d, h, w]."""
        return pixel_unshuffle_3d(x, self.scale)

    def extra_repr(self) -> str:
        return f"scale={self.scale}"
