"""ContrastiveEncoder: SimCLR's network - the ResUNet encoder (or nnU-Net's ResEnc, built from an nnU-Net plans
file), global average pooling of each of its stage outputs (concatenated), and a projector MLP whose output the
NT-Xent loss compares.

The encoder is the in-context model's (same modules, `encoder.*` keys), so its weights transfer to the downstream
FixedClassSegmenter and the ClassificationProbe unchanged; the projector is dropped downstream. Projector layers:
Linear -> feature normalisation without affine parameters -> ReLU, the last one a plain Linear. The reference's
InstanceNorm1d(affine=False) applied to a (batch, features) matrix treats it as one unbatched sample and normalises
each row over its features; LayerNorm without affine parameters computes exactly that, and says so.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from mass_nn.networks.in_context.config import InContextNetworkConfig
from mass_nn.networks.in_context.image_encoder import build_image_encoder
from mass_nn.networks.in_context.resenc_architecture import ResEncArchitecture
from mass_nn.networks.network_base import Network, NetworkConfig

PAPER_PROJECTOR_WIDTH = 2048  # nnssl SimCLR, for the ResEnc-L encoder
PAPER_DEEPEST_CHANNELS = 512  # the MASS paper encoder's deepest stage, the width the paper projector goes with
MIN_PROJECTOR_WIDTH = 64


def derived_projector_width(encoder: InContextNetworkConfig) -> int:
    """The paper's 2048 scaled by the encoder's deepest width relative to the paper encoder's (512), at least 64:
    2048 for the paper network, 512 for the CPU network with 128 deepest channels."""
    scaled = PAPER_PROJECTOR_WIDTH * encoder.channels[-1] // PAPER_DEEPEST_CHANNELS
    return max(MIN_PROJECTOR_WIDTH, min(PAPER_PROJECTOR_WIDTH, scaled))


@dataclass
class ContrastiveEncoderConfig(NetworkConfig):
    """The encoder's configuration (only channels, blocks, in_channels and norm_eps matter here; input_size_zyx
    is the plans' patch, which the downstream network is built for) and the projector: `projector_layers` linear
    layers of `projector_width` outputs each."""

    encoder: InContextNetworkConfig
    projector_width: int = PAPER_PROJECTOR_WIDTH
    projector_layers: int = 3


    @classmethod
    def paper(cls) -> "ContrastiveEncoderConfig":
        """The MASS paper encoder with the reference projector (3 layers of 2048)."""
        return cls(InContextNetworkConfig.paper())

    @classmethod
    def from_configuration(cls, configuration, in_channels: int, projector_width: int = 0,
                           projector_layers: int = 3, resenc: ResEncArchitecture | None = None
                           ) -> "ContrastiveEncoderConfig":
        """The ResUNet encoder of a plans configuration (with `resenc`: nnU-Net's ResEnc); projector width 0 means
        `derived_projector_width`."""
        encoder = InContextNetworkConfig.from_configuration(configuration, in_channels, resenc)
        width = projector_width or derived_projector_width(encoder)
        config = cls(encoder, projector_width=width, projector_layers=projector_layers)
        config.validate()
        return config

    @property
    def pooled_features(self) -> int:
        """Length of the concatenated pooled stage outputs (the projector's input)."""
        return sum(self.encoder.channels)

    def validate(self) -> None:
        """Raise ValueError naming the field that cannot build a network."""
        self.encoder.validate()
        if self.projector_width < 1 or self.projector_layers < 1:
            raise ValueError(f"invalid ContrastiveEncoderConfig: need projector_width >= 1 (got "
                             f"{self.projector_width}) and projector_layers >= 1 (got {self.projector_layers})")


def projector(in_features: int, width: int, layers: int) -> nn.Sequential:
    """`layers` Linear layers to `width`; all but the last followed by a row-wise norm without affine and ReLU."""
    modules: list[nn.Module] = []
    for index in range(layers):
        modules.append(nn.Linear(in_features if index == 0 else width, width))
        if index < layers - 1:
            modules += [nn.LayerNorm(width, elementwise_affine=False), nn.ReLU(inplace=True)]
    return nn.Sequential(*modules)


class ContrastiveEncoder(Network):
    """Crops [B, in_channels, D, H, W] (sides divisible by 16, at least 32) -> embeddings [B, projector_width]."""

    encoder_key_prefix = "encoder."
    config_class = ContrastiveEncoderConfig
    downstream_network = "FixedClassSegmenter"  # its encoder goes into the downstream ResUNet

    def __init__(self, config: ContrastiveEncoderConfig):
        super().__init__()
        config.validate()
        self.config = copy.deepcopy(config)
        self.encoder = build_image_encoder(config.encoder)
        self.projector = projector(config.pooled_features, config.projector_width, config.projector_layers)

    def pooled_features(self, x: Tensor) -> Tensor:
        """[B, sum(channels)]: the mean of every encoder stage output over space, shallow stages first."""
        features = self.encoder(x)[::-1]
        return torch.cat([feature.mean(dim=(2, 3, 4)) for feature in features], dim=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.projector(self.pooled_features(x))
