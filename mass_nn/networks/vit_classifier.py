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

from torch import Tensor, nn

from mass_nn.errors import MassError
from mass_nn.networks.attention_pool_head import AttentionPoolHead
from mass_nn.networks.vit import (ViTConfig, ViTEncoder, patch_grid, pretrained_vit_config, tokens_to_grid,
                                  transfer_vit_weights)
from mass_nn.schema import from_dict, to_dict


@dataclass
class ViTClassifierConfig:
    """The ViT (as pretrained), the window the classifier sees, and the head."""

    vit: ViTConfig
    num_classes: int
    input_size: list[int]
    attention_channels: int = 128
    dropout: float = 0.1

    def to_dict(self) -> dict:
        return to_dict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ViTClassifierConfig":
        config = from_dict(cls, d, error_cls=ValueError)
        config.validate()
        return config

    def validate(self) -> None:
        """Raise ValueError naming the first field that cannot build a network."""
        self.vit.validate()
        if self.num_classes < 1 or self.attention_channels < 1 or not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"invalid ViTClassifierConfig: need num_classes >= 1 (got {self.num_classes}), "
                             f"attention_channels >= 1 (got {self.attention_channels}) and dropout in [0, 1) "
                             f"(got {self.dropout})")


class ViTClassifier(nn.Module):
    """Images [B, in_channels, Z, Y, X] (sides multiples of the patch) -> logits [B, num_classes]."""

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

    def classify_features(self, features: Tensor) -> Tensor:
        """Logits [B, num_classes] from deepest features (as returned by `deepest_features`)."""
        return self.head(features)

    def forward(self, inputs: Tensor, from_features: bool = False) -> Tensor:
        """Logits of images, or of cached deepest features when `from_features`."""
        if from_features:
            return self.classify_features(inputs)
        return self.classify_features(self.deepest_features(inputs))

    def freeze_encoder(self) -> None:
        """Stop gradients into the ViT (the frozen-encoder probe trains the head only)."""
        for parameter in self.vit.parameters():
            parameter.requires_grad_(False)

    @classmethod
    def from_pretrained_for_classification(cls, checkpoint, num_classes: int, input_size: list[int], dropout: float,
                                           source):
        """(classifier with every ViT key of a ViT pretraining checkpoint loaded, transfer report); the head
        starts fresh. `input_size` sides must be multiples of the ViT patch (MassError otherwise)."""
        vit = pretrained_vit_config(checkpoint, str(source)).encoder
        try:
            patch_grid(input_size, vit.patch_size)
        except MassError as error:
            raise MassError(f"{source}: {error}") from error
        network = cls(ViTClassifierConfig(vit=vit, num_classes=num_classes, input_size=list(input_size),
                                          dropout=dropout))
        return network, transfer_vit_weights(network, checkpoint, str(source), cls.encoder_key_prefix)
