"""MiMClassifier: the pretrained MiM backbone with the attention-pooling head of the classification probe.

The deepest features are the transformer's tokens (all of them, no mask) laid out as their grid
[B, C, D/2^n, H/2^n, W/2^n] and LayerNormed over the channels without parameters (the pretraining network's
final norm sits after the multi-scale fusion, which does not transfer); the head is `AttentionPoolHead`. Keys
under `backbone.` match the pretraining network's, so its backbone loads by name.
"""
from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor

from mass_nn.errors import MassError
from mass_nn.networks.attention_pool_head import AttentionPoolHead
from mass_nn.networks.pooled_classifier import PooledClassifier, check_head_settings
from mass_nn.networks.mim_backbone import MiMBackbone, MiMBackboneConfig
from mass_nn.schema import from_dict, to_dict


@dataclass
class MiMClassifierConfig:
    """The backbone (its input_size_zyx is the classifier's input window) and the head."""

    backbone: MiMBackboneConfig
    num_classes: int
    attention_channels: int = 128
    dropout: float = 0.1

    def to_dict(self) -> dict:
        return to_dict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "MiMClassifierConfig":
        config = from_dict(cls, d)
        config.validate()
        return config

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

    @classmethod
    def from_pretrained_for_classification(cls, checkpoint, num_classes: int, input_size: list[int], dropout: float,
                                           source) -> tuple["MiMClassifier", object]:
        """(classifier with the checkpoint's backbone for `input_size` windows, weight-transfer report); every
        backbone key must load, the head's keys are reported missing."""
        from mass_nn.training.finetune.classifier_initialisation import load_pretrained_encoder
        stored = checkpoint.meta.network_config
        if "backbone" not in stored:
            raise MassError(f"{source}: the {checkpoint.meta.network_class} configuration has no 'backbone' entry; "
                            f"pass a checkpoint of mass_train PRETRAIN -tr MiMPretrainer")
        backbone = MiMBackboneConfig.from_dict(stored["backbone"])
        backbone = dataclasses.replace(backbone, input_size_zyx=[int(s) for s in input_size])
        try:
            backbone.validate()
        except ValueError as error:
            raise MassError(f"{source}: the classifier window {list(input_size)} does not fit the MiM backbone "
                            f"({error}); pass -s input_size=[z,y,x] with sides divisible by {backbone.patch_size}"
                            ) from error
        network = cls(MiMClassifierConfig(backbone, int(num_classes), dropout=float(dropout)))
        return network, load_pretrained_encoder(network, checkpoint, source)
