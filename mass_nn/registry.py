"""Name -> class lookups for things picked by name: mask generators, trainers, networks, configuration
planners (and back from a class to its name).

Entries are "module:Class" strings imported on first use: choosing one generator never imports the others
(sam2 loads only when asked for), and nothing is found by scanning packages.
"""
from __future__ import annotations

import importlib

from mass_nn.errors import MassError


class Registry:
    def __init__(self, kind: str, entries: dict[str, str]):
        self.kind = kind
        self._entries = dict(entries)

    def names(self) -> list[str]:
        return sorted(self._entries)

    def get(self, name: str):
        """The class registered as `name`; an unknown name lists the known ones."""
        if name not in self._entries:
            raise MassError(f"unknown {self.kind} {name!r}; known: {', '.join(self.names())}")
        module_name, class_name = self._entries[name].split(":")
        return getattr(importlib.import_module(module_name), class_name)

    def name_of(self, cls: type) -> str:
        """The name `cls` is registered under (what checkpoints record); an unregistered class is an error, so
        nothing is saved that could not be loaded again."""
        entry = f"{cls.__module__}:{cls.__qualname__}"
        for name, registered in self._entries.items():
            if registered == entry:
                return name
        raise MassError(f"{cls.__qualname__} is not a registered {self.kind}; add it to mass_nn.registry")


# a plans configuration by name: the function that plans it from the fingerprint and the planner settings
CONFIGURATION_PLANNERS = Registry("configuration", {
    "3d_paper": "mass_nn.planning.planner:plan_paper_configuration",
    "3d_cpu": "mass_nn.planning.planner:plan_cpu_configuration",
})

MASK_GENERATORS = Registry("mask generator", {
    "supervoxel": "mass_nn.masks.generators.supervoxel:SupervoxelGenerator",
    "sam2": "mass_nn.masks.generators.sam2_generator:Sam2Generator",
    "labels": "mass_nn.masks.generators.labels:LabelsGenerator",
})

TRAINERS = Registry("trainer", {
    "MASSPretrainer": "mass_nn.training.pretrain.mass_pretrainer:MASSPretrainer",
    "MASSCPUPretrainer": "mass_nn.training.pretrain.mass_cpu_pretrainer:MASSCPUPretrainer",
    "MiMPretrainer": "mass_nn.training.pretrain.mim_pretrainer:MiMPretrainer",
    "HiEndMAEPretrainer": "mass_nn.training.pretrain.hi_end_mae_pretrainer:HiEndMAEPretrainer",
    "MAEPretrainer": "mass_nn.training.pretrain.mae_pretrainer:MAEPretrainer",
    "S3DPretrainer": "mass_nn.training.pretrain.s3d_pretrainer:S3DPretrainer",
    "ClassificationProbe": "mass_nn.training.finetune.classification.trainer:ClassificationProbe",
    "SegmentationFinetuner": "mass_nn.training.finetune.segmentation_finetuner:SegmentationFinetuner",
    "EmbeddingTuner": "mass_nn.training.finetune.segmentation_finetuner:EmbeddingTuner",
    "SimCLRPretrainer": "mass_nn.training.pretrain.simclr_pretrainer:SimCLRPretrainer",
    "ModelsGenesisPretrainer": "mass_nn.training.pretrain.models_genesis_pretrainer:ModelsGenesisPretrainer",
})

NETWORKS = Registry("network", {
    "InContextSegmenter": "mass_nn.networks.in_context.in_context_model:InContextSegmenter",
    "EncoderClassifier": "mass_nn.networks.heads.encoder_classifier:EncoderClassifier",
    "FixedClassSegmenter": "mass_nn.networks.in_context.fixed_class_segmenter:FixedClassSegmenter",
    "ReconstructionUNet": "mass_nn.networks.baselines.reconstruction_unet:ReconstructionUNet",
    "MiMNetwork": "mass_nn.networks.baselines.mim_network:MiMNetwork",
    "MiMSegmenter": "mass_nn.networks.baselines.mim_segmenter:MiMSegmenter",
    "MiMClassifier": "mass_nn.networks.baselines.mim_classifier:MiMClassifier",
    "ContrastiveEncoder": "mass_nn.networks.baselines.contrastive_encoder:ContrastiveEncoder",
    "HiEndMAE": "mass_nn.networks.baselines.hi_end_mae:HiEndMAE",
    "UNETRSegmenter": "mass_nn.networks.baselines.unetr:UNETRSegmenter",
    "ViTClassifier": "mass_nn.networks.baselines.vit_classifier:ViTClassifier",
    "S3DNetwork": "mass_nn.networks.baselines.s3d_network:S3DNetwork",
})
