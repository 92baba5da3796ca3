"""EncoderClassifier: the ResUNet encoder of the in-context model with an attention-pooling classification head.

The encoder's state-dict keys are `encoder.<...>`, exactly those of `InContextSegmenter`, so a pretraining
checkpoint's encoder loads by name. The head sees only the deepest feature map (x5, 1/16 resolution), as in the
MASS release's classification probe; `classify_features` runs the head alone, so a frozen encoder's features can be
computed once and cached.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

from torch import Tensor

from mass_nn.networks.heads.attention_pool_head import AttentionPoolHead
from mass_nn.networks.heads.pooled_classifier import PooledClassifier, check_head_settings
from mass_nn.networks.in_context.config import InContextNetworkConfig
from mass_nn.networks.in_context.encoder import ResUNetEncoder
from mass_nn.networks.network_base import NetworkConfig


@dataclass
class EncoderClassifierConfig(NetworkConfig):
    """Shape of an `EncoderClassifier`: the encoder part of an in-context network config (its input_size_zyx is the
    classifier's input size) and the head."""

    encoder: InContextNetworkConfig
    num_classes: int
    attention_channels: int = 128
    dropout: float = 0.1


    def validate(self) -> None:
        """Raise ValueError naming the first field that cannot build a network."""
        self.encoder.validate()
        check_head_settings("EncoderClassifierConfig", self.num_classes, self.attention_channels, self.dropout)


class EncoderClassifier(PooledClassifier):
    """Images [B, in_channels, D, H, W] (sides divisible by 16, at least 32) → logits [B, num_classes]."""

    encoder_key_prefix = "encoder."
    config_class = EncoderClassifierConfig  # how checkpoints rebuild the network from its saved configuration

    def __init__(self, config: EncoderClassifierConfig):
        super().__init__()
        config.validate()
        self.config = copy.deepcopy(config)
        self.encoder = ResUNetEncoder(config.encoder)
        self.head = AttentionPoolHead(config.encoder.channels[-1], config.num_classes,
                                      hidden_channels=config.attention_channels, dropout=config.dropout)

    def deepest_features(self, images: Tensor) -> Tensor:
        """The encoder's deepest feature map [B, channels[-1], D/16, H/16, W/16]."""
        if images.dim() == 5 and images.shape[1] != self.config.encoder.in_channels:
            raise ValueError(f"images of shape {list(images.shape)} have {images.shape[1]} channels; the network "
                             f"expects {self.config.encoder.in_channels}")
        return self.encoder(images)[0]
