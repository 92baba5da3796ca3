"""A plain ResUNet for the reconstruction and contrastive baselines (MAE, S3D, Models Genesis, SimCLR): the
in-context model's ResUNet encoder (same modules, same `encoder.*` keys, so its weights transfer to the
downstream FixedClassSegmenter unchanged) with an upsampling decoder without task conditioning and a 1x1x1
output convolution."""
from __future__ import annotations

import copy
from dataclasses import dataclass

from torch import Tensor, nn

from mass_nn.networks.in_context.config import InContextNetworkConfig
from mass_nn.networks.in_context.decoder import UpBlock
from mass_nn.networks.in_context.encoder import ResUNetEncoder
from mass_nn.networks.network_base import Network, NetworkConfig


@dataclass
class ReconstructionUNetConfig(NetworkConfig):
    """The encoder's configuration (only channels, blocks, in_channels and norm_eps matter here) and the number
    of output channels (e.g. 1 for intensity reconstruction)."""

    encoder: InContextNetworkConfig
    out_channels: int = 1


    @classmethod
    def from_configuration(cls, configuration, in_channels: int, out_channels: int = 1) -> "ReconstructionUNetConfig":
        """The ResUNet of a plans configuration (the same encoder MASS uses for it)."""
        return cls(InContextNetworkConfig.from_configuration(configuration, in_channels), out_channels)


class ReconstructionUNet(Network):
    """[B, in_channels, D, H, W] (sides divisible by 16, at least 32) -> [B, out_channels, D, H, W]."""

    encoder_key_prefix = "encoder."
    config_class = ReconstructionUNetConfig
    downstream_network = "FixedClassSegmenter"  # its encoder goes into the downstream ResUNet

    def __init__(self, config: ReconstructionUNetConfig):
        super().__init__()
        config.encoder.validate()
        self.config = copy.deepcopy(config)
        channels, blocks, eps = config.encoder.channels, config.encoder.num_blocks, config.encoder.norm_eps
        self.encoder = ResUNetEncoder(config.encoder)
        self.ups = nn.ModuleList(UpBlock(channels[4 - j], channels[3 - j], channels[3 - j], blocks[3 - j], eps)
                                 for j in range(4))
        self.output = nn.Conv3d(channels[0], config.out_channels, 1)

    def decode(self, features: list[Tensor]) -> Tensor:
        """Output from the encoder's five feature maps (deepest first), e.g. after they were modified."""
        x = features[0]
        for up, skip in zip(self.ups, features[1:]):
            x = up(x, skip)
        return self.output(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.decode(self.encoder(x))
