"""The ResUNet encoder: a stem at full resolution and four max-pool + residual stages."""
from __future__ import annotations

from torch import Tensor, nn

from mass_nn.networks.conv_blocks import ResBlock3d, SmallMapSafeConv3d, res_blocks
from mass_nn.networks.in_context.config import MIN_SIZE, SIZE_DIVISOR, InContextNetworkConfig


def check_spatial_size(x: Tensor, name: str = "input", divisors=(SIZE_DIVISOR,) * 3,
                       min_sizes=(MIN_SIZE,) * 3) -> None:
    """Raise ValueError unless x is [B, C, D, H, W] with every side a multiple of its divisor and at least its
    minimum (the ResUNet's 16 and 32 unless given)."""
    if x.dim() != 5:
        raise ValueError(f"{name} must be a 5D tensor [B, C, D, H, W], got shape {list(x.shape)}")
    if any(side % d or side < m for side, d, m in zip(x.shape[2:], divisors, min_sizes)):
        raise ValueError(f"{name} of shape {list(x.shape)}: the spatial sides must be multiples of "
                         f"{list(divisors)} and at least {list(min_sizes)}")


class ResUNetEncoder(nn.Module):
    """Stem Conv3d(in → c0, 3, no bias) + ResBlock3d(c0), then four stages MaxPool3d(2) → num_blocks[i] residual
    blocks (c_{i} → c_{i+1}). Returns the five feature maps deepest first. Every convolution, the stem's too, runs
    through `conv_blocks.conv3d`."""

    def __init__(self, config: InContextNetworkConfig):
        super().__init__()
        channels, eps = config.channels, config.norm_eps
        self.stem = nn.Sequential(
            SmallMapSafeConv3d(config.in_channels, channels[0], 3, padding=1, bias=False),
            ResBlock3d(channels[0], channels[0], eps=eps),
        )
        self.stages = nn.ModuleList(
            nn.Sequential(nn.MaxPool3d(2), *res_blocks(channels[i], channels[i + 1], count, eps))
            for i, count in enumerate(config.num_blocks)
        )

    def forward(self, x: Tensor) -> list[Tensor]:
        """[B, in, D, H, W] → [x5 (c4, /16), x4 (c3, /8), x3 (c2, /4), x2 (c1, /2), x1 (c0, /1)]."""
        check_spatial_size(x)
        features = [self.stem(x)]
        for stage in self.stages:
            features.append(stage(features[-1]))
        return features[::-1]
