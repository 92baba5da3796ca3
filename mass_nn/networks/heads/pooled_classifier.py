"""What every classifier of the classification probe shares: an encoder whose deepest features feed an
attention-pooling head, a way to run the head alone on cached features, and freezing the encoder.

Subclasses (EncoderClassifier for the ResUNet, ViTClassifier, MiMClassifier) build `self.head` and their
encoder module (named by `encoder_attribute`) and implement `deepest_features`.
"""
from __future__ import annotations

from typing import ClassVar

from torch import Tensor, nn
from mass_nn.networks.network_base import Network


def check_head_settings(config_name: str, num_classes: int, attention_channels: int, dropout: float) -> None:
    """Raise ValueError unless num_classes >= 1, attention_channels >= 1 and 0 <= dropout < 1."""
    if num_classes < 1 or attention_channels < 1 or not 0.0 <= dropout < 1.0:
        raise ValueError(f"invalid {config_name}: need num_classes >= 1 (got {num_classes}), attention_channels >= 1 "
                         f"(got {attention_channels}) and dropout in [0, 1) (got {dropout})")


class PooledClassifier(Network):
    """Logits [B, num_classes] of images through `deepest_features` and the head."""

    encoder_attribute: ClassVar[str] = "encoder"
    head: nn.Module

    def deepest_features(self, images: Tensor) -> Tensor:
        """Subclass: the deepest feature map [B, C, d, h, w] of images."""
        raise NotImplementedError

    def classify_features(self, features: Tensor) -> Tensor:
        """Logits [B, num_classes] from deepest features (as returned by `deepest_features`)."""
        return self.head(features)

    def forward(self, inputs: Tensor, from_features: bool = False) -> Tensor:
        """Logits of images, or of cached deepest features when `from_features` (the frozen-encoder probe calls
        the network this way so that DistributedDataParallel still sees the call)."""
        if from_features:
            return self.classify_features(inputs)
        return self.classify_features(self.deepest_features(inputs))

    def freeze_encoder(self) -> None:
        """Stop gradients into the encoder (the frozen-encoder probe trains the head only)."""
        getattr(self, self.encoder_attribute).requires_grad_(False)
