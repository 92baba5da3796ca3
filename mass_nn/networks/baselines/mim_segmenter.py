"""MiMSegmenter: the downstream segmentation network of a MiM checkpoint - the pretrained hybrid backbone with a
convolutional U-Net decoder (in the spirit of the Swin-UNETR decoder MiM finetunes with).

The backbone's n stage outputs (conv stages at 1/2 ... 1/2^(n-1), transformer tokens as a 1/2^n grid) are
channel-LayerNormed and decoded deep to shallow: trilinear upsampling to the next skip, concatenation, a residual
block; a last residual block joins a full-resolution convolution block on the raw input; a 1x1x1 convolution gives one
logit per class. The backbone keys are those of the pretraining network (`backbone.*`), so they load one to one;
norms, decoder and head start fresh.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

from torch import Tensor, nn

from mass_nn.networks.baselines.mim_backbone import ChannelLayerNorm, MiMBackbone, MiMBackboneConfig
from mass_nn.networks.conv_blocks import ResBlock3d
from mass_nn.networks.in_context.decoder import UpBlock
from mass_nn.networks.network_base import Network, NetworkConfig

DECODER_NORM_EPS = 1e-4


@dataclass
class MiMSegmenterConfig(NetworkConfig):
    """The backbone and the classes (names and label values, same order). Decoder widths follow the stage
    widths; the full-resolution level has stage_dims[0] channels."""

    backbone: MiMBackboneConfig
    class_names: list[str]
    label_values: list[int]


    def validate(self) -> None:
        self.backbone.validate()
        if not self.class_names or len(self.class_names) != len(self.label_values):
            raise ValueError(f"need one label value per class name, got {self.class_names} / {self.label_values}")


class MiMSegmenter(Network):
    """forward(image [B, in_channels, D, H, W], sides divisible by 2**n) -> logits [B, num_classes, D, H, W]."""

    encoder_key_prefix = "backbone."
    config_class = MiMSegmenterConfig

    def __init__(self, config: MiMSegmenterConfig):
        super().__init__()
        config.validate()
        self.config = copy.deepcopy(config)
        dims = config.backbone.stage_dims
        self.backbone = MiMBackbone(config.backbone)
        self.stage_norms = nn.ModuleList(ChannelLayerNorm(dim) for dim in dims)
        self.ups = nn.ModuleList(UpBlock(dims[i + 1], dims[i], dims[i], 1, DECODER_NORM_EPS)
                                 for i in reversed(range(len(dims) - 1)))
        # a plain convolution first: a pre-activation block would normalise and rectify the raw intensities
        self.input_block = nn.Sequential(nn.Conv3d(config.backbone.in_channels, dims[0], 3, padding=1, bias=False),
                                         ResBlock3d(dims[0], dims[0], eps=DECODER_NORM_EPS))
        self.full_resolution = UpBlock(dims[0], dims[0], dims[0], 1, DECODER_NORM_EPS)
        self.output = nn.Conv3d(dims[0], len(config.class_names), 1)

    @property
    def num_classes(self) -> int:
        return len(self.config.class_names)

    def forward(self, image: Tensor) -> Tensor:
        maps = [norm(m) for norm, m in zip(self.stage_norms, self.backbone.feature_maps(image))]
        x = maps[-1]
        for up, skip in zip(self.ups, reversed(maps[:-1])):
            x = up(x, skip)
        return self.output(self.full_resolution(x, self.input_block(image)))
