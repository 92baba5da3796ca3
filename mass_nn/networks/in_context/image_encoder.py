"""The image encoder an InContextNetworkConfig asks for: our ResUNet encoder, or nnU-Net's ResEnc when the
configuration carries a ResEnc architecture. Every network that trains this encoder (the in-context model,
SimCLR's contrastive encoder) builds it here, so a ResEnc trained by any of them exports to nnU-Net the same way."""
from __future__ import annotations

from torch import nn

from mass_nn.networks.in_context.config import InContextNetworkConfig
from mass_nn.networks.in_context.encoder import ResUNetEncoder
from mass_nn.networks.in_context.resenc_encoder import ResEncEncoder


def build_image_encoder(config: InContextNetworkConfig) -> nn.Module:
    """[B, in_channels, D, H, W] -> one feature map per stage, deepest first."""
    if config.resenc is None:
        return ResUNetEncoder(config)
    return ResEncEncoder(config.resenc, config.in_channels)
