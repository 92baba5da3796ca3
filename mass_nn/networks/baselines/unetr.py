"""UNETRSegmenter: the downstream segmentation network of a pretrained 3D ViT (Hatamizadeh et al., 2022; the
network Hi-End-MAE is finetuned in), with a fixed set of classes.

The ViT sees all tokens of a window. With S skip layers (deepest first, default Hi-End-MAE's hierarchical
layers, e.g. hidden states 9, 6, 3) and the token grid G = window / p, skip j (1 = deepest) is hidden state
`skip_layers[j-1]` reshaped to the grid and brought to G·2^(j-1+s) by transposed convolutions, with
feature_size · 2^(S+1-j) channels. s = 1 as in UNETR (levels G·2, G·4, G·8) unless that leaves less than 1.5x
for the last stage (p = 8: the last skip level would be the window itself), then s = 0 (levels G, G·2, G·4), so
no stage with the wide skip channels runs at full resolution. The decoder starts from the final (normed) tokens
at G; each stage upsamples (2x, or 1x into a skip at G), concatenates its skip and applies a residual conv block.
The last stage brings the features to the window by the remaining factor: a transposed convolution when it is an
integer (16 / 8 = 2, 8 / 4 = 2), trilinear resizing plus a convolution otherwise (12 / 8 = 1.5, as the reference),
and joins a residual conv block on the image itself. A 1x1x1 convolution gives one logit channel per class. ViT
keys are `vit.*`, exactly the pretraining encoder's.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mass_nn.networks.baselines.vit import ViTConfig, ViTEncoder, tokens_to_grid
from mass_nn.networks.network_base import Network, NetworkConfig

LEAKY_SLOPE = 0.01
MIN_FINAL_FACTOR = 1.5  # the last stage upsamples at least this much, so its input is not at full resolution


@dataclass
class UNETRConfig(NetworkConfig):
    """The ViT, the classes (names and label values, same order), the skip layers (0-based block outputs,
    deepest first) and the decoder's base channel count."""

    vit: ViTConfig
    class_names: list[str]
    label_values: list[int]
    skip_layers: list[int] = field(default_factory=lambda: [9, 6, 3])
    feature_size: int = 32


    def validate(self) -> None:
        """Raise ValueError naming every field that cannot build the network."""
        self.vit.validate()
        problems = []
        if len(self.class_names) != len(self.label_values) or not self.class_names:
            problems.append(f"need one label value per class name, got {self.class_names} / {self.label_values}")
        if not self.skip_layers or any(not 0 <= i < self.vit.depth for i in self.skip_layers):
            problems.append(f"skip_layers {self.skip_layers} must be block indices in [0, {self.vit.depth})")
        elif self.final_factor() < MIN_FINAL_FACTOR:
            problems.append(f"{len(self.skip_layers)} skip levels need a patch of at least "
                            f"{MIN_FINAL_FACTOR * 2 ** (len(self.skip_layers) - 1):g}, got {self.vit.patch_size}")
        if self.feature_size < 1:
            problems.append(f"feature_size must be >= 1, got {self.feature_size}")
        if problems:
            raise ValueError("invalid UNETRConfig: " + "; ".join(problems))

    def first_scale(self) -> int:
        """log2 of the deepest skip's upsampling from the token grid: 1 (UNETR) or 0 for small patches."""
        return 1 if self.vit.patch_size / 2 ** len(self.skip_layers) >= MIN_FINAL_FACTOR else 0

    def final_factor(self) -> float:
        """The last stage's upsampling factor: patch / the shallowest skip level's scale."""
        return self.vit.patch_size / 2 ** (len(self.skip_layers) - 1 + self.first_scale())


class ResidualConvBlock(nn.Module):
    """Two 3x3x3 conv -> InstanceNorm (-> LeakyReLU) with a (1x1x1 conv -> norm) shortcut when channels change,
    LeakyReLU after the sum."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv1 = nn.Conv3d(in_channels, out_channels, 3, padding=1, bias=False)
        self.norm1 = nn.InstanceNorm3d(out_channels, affine=True)
        self.conv2 = nn.Conv3d(out_channels, out_channels, 3, padding=1, bias=False)
        self.norm2 = nn.InstanceNorm3d(out_channels, affine=True)
        self.shortcut = nn.Identity() if in_channels == out_channels else nn.Sequential(
            nn.Conv3d(in_channels, out_channels, 1, bias=False), nn.InstanceNorm3d(out_channels, affine=True))

    def forward(self, x: Tensor) -> Tensor:
        y = F.leaky_relu(self.norm1(self.conv1(x)), LEAKY_SLOPE)
        return F.leaky_relu(self.norm2(self.conv2(y)) + self.shortcut(x), LEAKY_SLOPE)


def transposed_up(in_channels: int, out_channels: int, factor: int = 2) -> nn.ConvTranspose3d:
    return nn.ConvTranspose3d(in_channels, out_channels, factor, stride=factor, bias=False)


class ProjectUp(nn.Sequential):
    """A hidden-state grid [B, D, G] -> skip features [B, out, G·2^ups]: a transposed conv (a residual block when
    ups = 0), then (ups - 1) times transposed conv + residual block."""

    def __init__(self, in_channels: int, out_channels: int, ups: int):
        if ups == 0:
            super().__init__(ResidualConvBlock(in_channels, out_channels))
            return
        layers = [transposed_up(in_channels, out_channels)]
        for _ in range(ups - 1):
            layers += [transposed_up(out_channels, out_channels), ResidualConvBlock(out_channels, out_channels)]
        super().__init__(*layers)


class UpStage(nn.Module):
    """x [B, in, g] -> upsampled to the skip's size by `factor` -> concat skip [B, out, s] -> residual block."""

    def __init__(self, in_channels: int, out_channels: int, factor: float):
        super().__init__()
        self.factor = factor
        if factor == 1:
            self.up = nn.Conv3d(in_channels, out_channels, 1, bias=False)
        elif float(factor).is_integer():
            self.up = transposed_up(in_channels, out_channels, int(factor))
        else:
            self.up = nn.Conv3d(in_channels, out_channels, 3, padding=1, bias=False)
        self.block = ResidualConvBlock(2 * out_channels, out_channels)

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        if not float(self.factor).is_integer():
            x = F.interpolate(x, size=tuple(skip.shape[2:]), mode="trilinear", align_corners=False)
        return self.block(torch.cat([self.up(x), skip], dim=1))


class UNETRSegmenter(Network):
    """Windows [B, C, Z, Y, X] (sides multiples of the patch) -> logits [B, num_classes, Z, Y, X]."""

    encoder_key_prefix = "vit."
    config_class = UNETRConfig

    def __init__(self, config: UNETRConfig):
        super().__init__()
        config.validate()
        self.config = copy.deepcopy(config)
        vit, f, levels = config.vit, config.feature_size, len(config.skip_layers)
        channels = [f * 2 ** (levels + 1 - j) for j in range(1, levels + 1)]  # 8f, 4f, 2f for 3 levels
        first = config.first_scale()
        self.vit = ViTEncoder(vit)
        self.image_block = ResidualConvBlock(vit.in_channels, f)
        self.skips = nn.ModuleList(ProjectUp(vit.dim, c, j - 1 + first) for j, c in enumerate(channels, start=1))
        self.ups = nn.ModuleList(UpStage(c_in, c, 2 if j > 0 or first else 1)
                                 for j, (c_in, c) in enumerate(zip([vit.dim] + channels[:-1], channels)))
        self.final_up = UpStage(channels[-1], f, config.final_factor())
        self.output = nn.Conv3d(f, len(config.class_names), 1)

    @property
    def num_classes(self) -> int:
        return len(self.config.class_names)

    def forward(self, image: Tensor) -> Tensor:
        grid = self.vit.grid(image.shape[2:])
        final, hidden = self.vit(image)
        x = tokens_to_grid(final[:, 1:], grid)
        for layer, project, up in zip(self.config.skip_layers, self.skips, self.ups):
            x = up(x, project(tokens_to_grid(hidden[layer][:, 1:], grid)))
        return self.output(self.final_up(x, self.image_block(image)))
