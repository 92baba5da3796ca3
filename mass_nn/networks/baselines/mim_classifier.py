"""MiMClassifier: the pretrained MiM backbone with the attention-pooling head of the classification probe.

The deepest features are the transformer's tokens (all of them, no mask) laid out as their grid
[B, C, D/2^n, H/2^n, W/2^n] and LayerNormed over the channels without parameters (the pretraining network's
final norm sits after the multi-scale fusion, which does not transfer); the head is `AttentionPoolHead`. Keys
under `backbone.` match the pretraining network's, so its backbone loads by name.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor

from mass_nn.networks.baselines.mim_backbone import MiMBackbone, MiMBackboneConfig
from mass_nn.networks.heads.attention_pool_head import AttentionPoolHead
from mass_nn.networks.heads.pooled_classifier import PooledClassifier, check_head_settings
from mass_nn.networks.network_base import NetworkConfig


@dataclass
class MiMClassifierConfig(NetworkConfig):
    """The backbone (its input_size_zyx is the classifier's input window) and the head."""

    backbone: MiMBackboneConfig
    num_classes: int
    attention_channels: int = 128
    dropout: float = 0.1


    def validate(self) -> None:
        self.backbone.validate()
        check_head_settings("MiMClassifierConfig", self.num_classes, self.attention_channels, self.dropout)


class MiMClassifier(PooledClassifier):
    """Images [B, in_channels, D, H, W] (sides divisible by 2**n) -> logits [B, num_classes]."""

    encoder_attribute = "backbone"
    encoder_key_prefix = "backbone."
    config_class = MiMClassifierConfig

    def __init__(self, config: MiMClassifierConfig):
        super().__init__()
        config.validate()
        self.config = copy.deepcopy(config)
        self.backbone = MiMBackbone(config.backbone)
        self.head = AttentionPoolHead(config.backbone.stage_dims[-1], config.num_classes,
                                      hidden_channels=config.attention_channels, dropout=config.dropout)

    def deepest_features(self, images: Tensor) -> Tensor:
        """The normalised transformer tokens as a grid [B, C, D/2^n, H/2^n, W/2^n]."""
        tokens = self.backbone.feature_maps(images)[-1]
        return F.layer_norm(tokens.movedim(1, -1), (tokens.shape[1],)).movedim(-1, 1)
