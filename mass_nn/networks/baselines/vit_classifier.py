"""ViTClassifier: a pretrained 3D ViT with the attention-pooling classification head of the MASS probe.

The deepest features are the ViT's final (normed) patch tokens laid out on the token grid, [B, dim, gz, gy, gx];
`AttentionPoolHead` weighs the grid cells and classifies their weighted mean. ViT keys are `vit.*`, exactly the
pretraining encoder's. The classifier may see windows of another size than the pretraining input (sides must be
multiples of the patch): the fixed sin-cos positional embedding is then computed for that grid, which is exact,
since it was never trained.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

from torch import Tensor

from mass_nn.networks.baselines.vit import ViTConfig, ViTEncoder, tokens_to_grid
from mass_nn.networks.heads.attention_pool_head import AttentionPoolHead
from mass_nn.networks.heads.pooled_classifier import PooledClassifier, check_head_settings
from mass_nn.networks.network_base import NetworkConfig


@dataclass
class ViTClassifierConfig(NetworkConfig):
    """The ViT (as pretrained), the window the classifier sees, and the head."""

    vit: ViTConfig
    num_classes: int
    input_size: list[int]
    attention_channels: int = 128
    dropout: float = 0.1


    def validate(self) -> None:
        """Raise ValueError naming the first field that cannot build a network."""
        self.vit.validate()
        check_head_settings("ViTClassifierConfig", self.num_classes, self.attention_channels, self.dropout)


class ViTClassifier(PooledClassifier):
    """Images [B, in_channels, Z, Y, X] (sides multiples of the patch) -> logits [B, num_classes]."""

    encoder_attribute = "vit"
    encoder_key_prefix = "vit."
    config_class = ViTClassifierConfig

    def __init__(self, config: ViTClassifierConfig):
        super().__init__()
        config.validate()
        self.config = copy.deepcopy(config)
        self.vit = ViTEncoder(config.vit)
        self.head = AttentionPoolHead(config.vit.dim, config.num_classes, hidden_channels=config.attention_channels,
                                      dropout=config.dropout)

    def deepest_features(self, images: Tensor) -> Tensor:
        """The final patch tokens on their grid [B, dim, Z/p, Y/p, X/p]."""
        final, _ = self.vit(images)
        return tokens_to_grid(final[:, 1:], self.vit.grid(images.shape[2:]))
