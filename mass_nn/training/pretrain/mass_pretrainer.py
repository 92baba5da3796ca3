"""MASSPretrainer: learn by in-context segmentation of automatically generated masks (the paper's method).

Each step takes two overlapping views of one volume: the weakly augmented reference view with K masks defines
K tasks, and the network must segment the same K masks in the strongly augmented query view. Loss = Dice
(adaptive Tversky by default) + BCE per task channel, LAMB, poly decay with warm-up, EMA 0.99.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import ClassVar

import torch

from mass_nn.datasets.preprocessed_sources import (cases_with_banks, mask_bank_folder, resolve_sources)
from mass_nn.errors import MassError
from mass_nn.io.artifact_layout import generator_of
from mass_nn.networks.in_context.config import InContextNetworkConfig
from mass_nn.networks.in_context.in_context_model import InContextSegmenter
from mass_nn.threads import default_loader_workers
from mass_nn.training.data.augmentation import TwoViewSettings, ViewAugmentation
from mass_nn.training.data.pretraining_loader import (PretrainingCase, batch_to_device, case_weights_by_volume,
                                                      make_pretraining_loader, validate_cases)
from mass_nn.training.losses import SegmentationLoss
from mass_nn.training.pretrain.nnunet_encoder_settings import NnUNetEncoderSettings
from mass_nn.training.pretrain.validation import AutoMaskValidation, InContextValidation, PretrainingValidation
from mass_nn.training.trainer import Trainer

# the query view's appearance augmentation by setting name
QUERY_APPEARANCE = {"release": ViewAugmentation.strong, "wide": ViewAugmentation.wide_appearance}
CASE_SAMPLING = ("uniform", "volume")
logger = logging.getLogger(__name__)

# trainer-specific settings (-s KEY=VALUE) and their defaults
@dataclass
class MASSSettings(NnUNetEncoderSettings):
    """-s settings of MASSPretrainer. num_tasks: task channels per sample; everything_task: one of them is the
    "segment everything in view" mask; prefer_masks_in_view: masks that meet a view's patch are drawn first (our
    deviation from the release, two_view_sampler.py); min_mask_fraction: masks under this share of the patch volume
    are never tasks; absent_tasks: up to that many channels per sample take masks seen in the reference view but
    not in the query view (their answer is "not here"); distant_query: the share of samples whose query view is
    placed anywhere in the volume, not overlapping the reference's (two_view_sampler.py); query_appearance: the
    query view's appearance augmentation, "release" (the release's strong view) or "wide" (wider ranges at
    probability 0.5, augmentation.py); reference_region_shift: the share of the reference view's task regions whose
    intensity is shifted by up to one standard deviation of the view (region_intensity.py); case_sampling: how
    cases are drawn, "uniform" (each case equally often) or "volume" (proportionally to its voxel count, so every
    voxel of the pool equally often); val_reference_choices:
    reference cases per label in --val-dataset validation; nnunet_plans / nnunet_configuration: build nnU-Net's
    own ResEnc encoder from that plans file (documentation/nnunet.md)."""

    num_tasks: int = 13
    everything_task: bool = True
    prefer_masks_in_view: bool = True
    min_mask_fraction: float = 0.0
    absent_tasks: int = 0
    distant_query: float = 0.0
    query_appearance: str = "release"
    reference_region_shift: float = 0.0
    case_sampling: str = "uniform"
    val_reference_choices: int = 1

    def validate(self) -> None:
        if self.num_tasks < 1:
            raise MassError(f"setting num_tasks={self.num_tasks}: expected a positive integer")
        if self.val_reference_choices < 1:
            raise MassError(f"setting val_reference_choices={self.val_reference_choices}: expected a positive "
                            f"integer (reference cases per label for in-context validation)")
        if not 0 <= self.absent_tasks <= self.num_tasks:
            raise MassError(f"setting absent_tasks={self.absent_tasks}: expected 0 to num_tasks ({self.num_tasks})")
        if not 0.0 <= self.distant_query <= 1.0:
            raise MassError(f"setting distant_query={self.distant_query}: expected a share of the samples in [0, 1], "
                            f"e.g. 0.5")
        if not 0.0 <= self.reference_region_shift <= 1.0:
            raise MassError(f"setting reference_region_shift={self.reference_region_shift}: expected a share of the "
                            f"task regions in [0, 1], e.g. 0.2")
        if self.case_sampling not in CASE_SAMPLING:
            raise MassError(f"setting case_sampling={self.case_sampling!r}: expected one of {', '.join(CASE_SAMPLING)}")
        if self.query_appearance not in QUERY_APPEARANCE:
            raise MassError(f"setting query_appearance={self.query_appearance!r}: expected one of "
                            f"{', '.join(QUERY_APPEARANCE)}")
        if not 0.0 <= self.min_mask_fraction < 1.0:
            raise MassError(f"setting min_mask_fraction={self.min_mask_fraction}: expected a share of the "
                            f"patch volume in [0, 1), e.g. 0.01")


class MASSPretrainer(Trainer):
    """In-context segmentation pretraining on mask banks (mass_generate_masks output)."""

    mode: ClassVar[str] = "PRETRAIN"
    default_epochs: ClassVar[int] = 100
    default_iters_per_epoch: ClassVar[int] = 1000
    default_lr: ClassVar[float] = 2e-3
    lr_reference_batch: ClassVar[int | None] = 32  # the paper: 8 processes x batch 4 at 2e-3
    settings_class: ClassVar[type] = MASSSettings

    def resolve_data(self) -> None:
        o = self.options
        self.sources = resolve_sources(o.datasets, self.paths, o.plans_name, o.configuration)
        bank_folders = [mask_bank_folder(self.sources[0], o.masks)]
        o.masks = generator_of(bank_folders[0])
        bank_folders += [mask_bank_folder(s, o.masks) for s in self.sources[1:]]
        self.train_cases = [PretrainingCase(c, image, bank) for s, f in zip(self.sources, bank_folders)
                            for c, image, bank in cases_with_banks(s, f, "train")]
        self.val_cases = [PretrainingCase(c, image, bank) for s, f in zip(self.sources, bank_folders)
                          for c, image, bank in cases_with_banks(s, f, "val")]
        if not self.train_cases:
            raise MassError(f"{self.sources[0].data_folder}: the train split has no cases; check splits.json")
        if self.val_cases:  # a damaged val bank must stop the run now, not at the first validation
            validate_cases(self.val_cases)
        self.adopt_sources(self.sources)

    def setup(self) -> None:
        o, s = self.options, self.settings
        o.batch_size = o.batch_size or self.configuration_plan.batch_size
        if o.num_workers is None:
            o.num_workers = default_loader_workers(self.device.type)
        config = self._network_config()
        self.network = InContextSegmenter(config)
        self.loss = SegmentationLoss(dice=o.dice)
        self.sampler_settings = TwoViewSettings(patch_size_zyx=list(self.configuration_plan.patch_size_zyx),
                                                num_tasks=s.num_tasks, everything_task=s.everything_task,
                                                prefer_masks_in_view=s.prefer_masks_in_view,
                                                min_mask_fraction=s.min_mask_fraction,
                                                absent_tasks=s.absent_tasks,
                                                distant_query=s.distant_query,
                                                reference_region_shift=s.reference_region_shift,
                                                query=QUERY_APPEARANCE[s.query_appearance]())
        self.validation = self._build_validation()
        if self.validation is not None:
            self.best_metric_key, self.best_metric_mode = self.validation.metric_key, self.validation.metric_mode

    def _network_config(self) -> InContextNetworkConfig:
        plan, in_channels = self.configuration_plan, len(self.plans.channels)
        return self.settings.network_config(
            lambda resenc: InContextNetworkConfig.from_configuration(plan, in_channels, resenc),
            "in-context network", plan)

    def _build_validation(self):
        o = self.options
        in_context = [InContextValidation.from_dataset(dataset, self.paths, self.plans, o.plans_name, o.configuration,
                                                       pool_layouts=self.trained_channel_layouts(),
                                                       reference_choices=self.settings.val_reference_choices,
                                                       seed=o.seed)
                      for dataset in o.val_dataset or []]
        auto_masks = None
        if self.val_cases:
            # held-out views keep the release's augmentation, so runs that train with another compare
            release_views = replace(self.sampler_settings, query=ViewAugmentation.strong(),
                                    reference_region_shift=0.0)
            auto_masks = AutoMaskValidation(self.val_cases, release_views, o.batch_size, o.val_batches,
                                            seed=o.seed, loss=self.loss)
        if auto_masks is None and not in_context:
            logger.warning("no val cases in splits.json and no --val-dataset: training without validation")
            return None
        return PretrainingValidation(auto_masks, in_context)

    def make_train_loader(self, start_batch: int):
        return make_pretraining_loader(self.train_cases, self.sampler_settings, self.options.batch_size,
                                       seed=self.options.seed, num_workers=self.options.num_workers,
                                       start_batch=start_batch, rank=self.context.rank,
                                       world_size=self.context.world_size, case_weights=self._case_weights())

    def _case_weights(self) -> list[float] | None:
        if self.settings.case_sampling == "uniform":
            return None
        weights = case_weights_by_volume(self.train_cases)
        total = sum(weights)
        logger.info("cases drawn by volume: %s", ", ".join(f"{c.case_id} {w / total:.3f}"
                                                          for c, w in zip(self.train_cases, weights)))
        return weights

    def compute_loss(self, batch) -> tuple[torch.Tensor, dict[str, float]]:
        tensors = batch_to_device(batch, self.device)
        logits = self.model(tensors["query_image"], tensors["reference_image"], tensors["reference_masks"])
        return self.loss(logits, tensors["query_masks"], tensors["task_weights"])

    def validate(self) -> dict[str, float]:
        if self.validation is None:
            return {}
        return self.validation.run(self.ema.module, self.device)
