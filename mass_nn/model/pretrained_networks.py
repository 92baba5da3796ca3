"""Downstream networks of the baselines built from their pretraining checkpoints.

A baseline's pretraining network names its downstream network by class attribute (`downstream_network` for
segmentation, `classification_network` for classification); the builders here make that network for the run's
classes and load what transfers (ViT keys into UNETR or the ViT classifier, MiM backbones into their segmenter
and classifier). They live in the model layer so that network modules never read checkpoints.
"""
from __future__ import annotations

import dataclasses

from mass_nn.errors import MassError
from mass_nn.model.checkpoint import Checkpoint
from mass_nn.model.classifier_initialisation import load_pretrained_encoder
from mass_nn.model.pretrained import WeightTransfer
from mass_nn.networks.baselines.mim_backbone import MiMBackboneConfig
from mass_nn.networks.baselines.mim_classifier import MiMClassifier, MiMClassifierConfig
from mass_nn.networks.baselines.mim_segmenter import MiMSegmenter, MiMSegmenterConfig
from mass_nn.networks.baselines.unetr import UNETRConfig, UNETRSegmenter
from mass_nn.networks.baselines.vit import ViTConfig, patch_grid
from mass_nn.networks.baselines.vit_classifier import ViTClassifier, ViTClassifierConfig
from mass_nn.registry import NETWORKS


def pretrained_vit_config(checkpoint: Checkpoint, source: str):
    """The pretraining network configuration of a checkpoint whose network has a ViT `encoder` (e.g. HiEndMAE's);
    anything else raises MassError naming `source`."""
    config = NETWORKS.get(checkpoint.meta.network_class).config_class.from_dict(checkpoint.meta.network_config)
    if not isinstance(getattr(config, "encoder", None), ViTConfig):
        raise MassError(f"{source}: a {checkpoint.meta.network_class} checkpoint has no ViT encoder; pass a "
                        f"checkpoint of a ViT pretraining (e.g. -tr HiEndMAEPretrainer)")
    return config


def unetr_from_pretrained(checkpoint: Checkpoint, class_names: list[str], label_values: list[int],
                          source: str) -> tuple[UNETRSegmenter, WeightTransfer]:
    """(UNETRSegmenter for these classes with every ViT key of a ViT pretraining checkpoint loaded, transfer
    report). The positional embedding becomes learnable, starting from the pretrained one (as the reference);
    skip layers and feature size follow the pretraining network (hier_layers, downstream_feature_size)."""
    pretraining = pretrained_vit_config(checkpoint, source)
    vit = dataclasses.replace(pretraining.encoder, learned_pos_embed=True)
    config = UNETRConfig(vit=vit, class_names=list(class_names), label_values=[int(v) for v in label_values],
                         skip_layers=list(pretraining.hier_layers),
                         feature_size=int(pretraining.downstream_feature_size))
    network = UNETRSegmenter(config)
    return network, load_pretrained_encoder(network, checkpoint, source)


def mim_segmenter_from_pretrained(checkpoint: Checkpoint, class_names: list[str], label_values: list[int],
                                  source: str) -> tuple[MiMSegmenter, WeightTransfer]:
    """(segmenter whose backbone holds the checkpoint's backbone weights, weight-transfer report); every
    backbone key must load, decoder keys are reported missing."""
    stored = checkpoint.meta.network_config
    if "backbone" not in stored:
        raise MassError(f"{source}: the {checkpoint.meta.network_class} configuration has no 'backbone' entry; "
                        f"pass a checkpoint of mass_train PRETRAIN -tr MiMPretrainer")
    backbone = MiMBackboneConfig.from_dict(stored["backbone"])
    network = MiMSegmenter(MiMSegmenterConfig(backbone, list(class_names), [int(v) for v in label_values]))
    return network, load_pretrained_encoder(network, checkpoint, source)


def vit_classifier_from_pretrained(checkpoint: Checkpoint, num_classes: int, input_size: list[int],
                                   dropout: float, source) -> tuple[ViTClassifier, WeightTransfer]:
    """(classifier with every ViT key of a ViT pretraining checkpoint loaded, transfer report); the head
    starts fresh. `input_size` sides must be multiples of the ViT patch (MassError otherwise)."""
    vit = pretrained_vit_config(checkpoint, str(source)).encoder
    try:
        patch_grid(input_size, vit.patch_size)
    except MassError as error:
        raise MassError(f"{source}: {error}") from error
    network = ViTClassifier(ViTClassifierConfig(vit=vit, num_classes=num_classes, input_size=list(input_size),
                                                dropout=dropout))
    return network, load_pretrained_encoder(network, checkpoint, source)


def mim_classifier_from_pretrained(checkpoint: Checkpoint, num_classes: int, input_size: list[int],
                                   dropout: float, source) -> tuple[MiMClassifier, WeightTransfer]:
    """(classifier with the checkpoint's backbone for `input_size` windows, weight-transfer report); every
    backbone key must load, the head's keys are reported missing."""
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
    network = MiMClassifier(MiMClassifierConfig(backbone, int(num_classes), dropout=float(dropout)))
    return network, load_pretrained_encoder(network, checkpoint, source)


# downstream network name -> builder(checkpoint, class_names, label_values, source) -> (network, report)
SEGMENTERS_FROM_PRETRAINED = {NETWORKS.name_of(UNETRSegmenter): unetr_from_pretrained,
                              NETWORKS.name_of(MiMSegmenter): mim_segmenter_from_pretrained}
# classification network name -> builder(checkpoint, num_classes, input_size, dropout, source) -> (network, report)
CLASSIFIERS_FROM_PRETRAINED = {NETWORKS.name_of(ViTClassifier): vit_classifier_from_pretrained,
                               NETWORKS.name_of(MiMClassifier): mim_classifier_from_pretrained}
