"""SimCLRPretrainer: contrastive pretraining of the ResUNet encoder (nnssl's SimCLR trainer on the MASS encoder).

Each sample gives `crops_per_sample` pairs of overlapping crops of one region, every crop augmented on its own
(contrastive_crops.py). The encoder's five stage outputs are average-pooled and concatenated, a projector MLP maps
them to the embedding (ContrastiveEncoder), and NT-Xent (cosine similarity, temperature 0.5) makes each crop pick
its partner among all 2N - 1 other crops of the batch. SGD with Nesterov momentum, poly decay and gradient
clipping at 0.1 as the reference. The encoder (`encoder.*`) transfers downstream; the projector is dropped.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import Tensor, nn

from mass_nn.errors import MassError
from mass_nn.networks.baselines.contrastive_encoder import ContrastiveEncoder, ContrastiveEncoderConfig
from mass_nn.networks.network_base import Network
from mass_nn.training.data.contrastive_crops import (ContrastiveCropSettings, derived_crop_size,
                                                     derived_region_size, make_contrastive_loader)
from mass_nn.training.pretrain.image_pretrainer import VALIDATION_SEED_OFFSET, ImagePretrainer
from mass_nn.training.pretrain.nnunet_encoder_settings import NnUNetEncoderSettings
from mass_nn.training.pretrain.nt_xent import nt_xent_loss


@dataclass
class SimCLRSettings(NnUNetEncoderSettings):
    """-s settings of SimCLRPretrainer (nnunet_plans / nnunet_configuration: train nnU-Net's ResEnc encoder of
    that plans file instead of our ResUNet, documentation/nnunet.md)."""

    crop_size: list[int] = field(default_factory=list)  # [z, y, x]; empty: half the plans' patch, rounded down to
    # a multiple of 16, at least 32
    region_size: list[int] = field(default_factory=list)  # [z, y, x] the pairs are cut from; empty: crop deep,
    # 3 crops wide in-plane (reference)
    crops_per_sample: int = 2  # reference crops (each with a partner) per region
    min_overlap: float = 0.5  # least overlap of a pair per axis, as a share of the crop
    temperature: float = 0.5
    projector_width: int = 0  # 0: 2048 scaled by the encoder's deepest width / 512 (2048 paper, 512 phantom CPU)
    projector_layers: int = 3

    def validate(self) -> None:
        for name in ("crop_size", "region_size"):
            value = getattr(self, name)
            if value and len(value) != 3:
                raise MassError(f"setting {name}={value!r}: expected three integers [z,y,x], e.g. "
                                f"-s {name}=[32,32,32]")
        if not self.temperature > 0:
            raise MassError(f"setting temperature={self.temperature!r}: expected a number > 0")


class SimCLRPretrainer(ImagePretrainer):
    """-s settings: SimCLRSettings."""

    default_epochs: ClassVar[int] = 1000
    default_iters_per_epoch: ClassVar[int] = 250
    default_lr: ClassVar[float] = 1e-2
    default_grad_clip: ClassVar[float] = 0.1  # the reference clips SimCLR's gradients harder than nnssl's 12
    momentum: ClassVar[float] = 0.99
    weight_decay: ClassVar[float] = 3e-5
    settings_class: ClassVar[type] = SimCLRSettings

    def build_network(self) -> Network:
        s, plan = self.settings, self.configuration_plan
        config = s.network_config(
            lambda resenc: ContrastiveEncoderConfig.from_configuration(
                plan, len(self.plans.channels), projector_width=s.projector_width,
                projector_layers=s.projector_layers, resenc=resenc),
            "contrastive encoder", plan)
        return ContrastiveEncoder(config)

    def setup(self) -> None:
        super().setup()
        s = self.settings
        crop = tuple(int(v) for v in s.crop_size or derived_crop_size(self.patch_size_zyx))
        region = tuple(int(v) for v in s.region_size or derived_region_size(crop))
        self.crop_settings = ContrastiveCropSettings(crop_size_zyx=crop, region_size_zyx=region,
                                                     crops_per_sample=s.crops_per_sample, min_overlap=s.min_overlap)
        self.crop_settings.check(f"{self.name} settings")
        # run_config.json records the sizes really used, not "derived"
        s.crop_size, s.region_size = list(crop), list(region)
        s.projector_width = self.network.config.projector_width

    def build_optimizer(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.network.parameters(), lr=self.options.lr, momentum=self.momentum,
                               nesterov=True, weight_decay=self.weight_decay)

    def _crop_loader(self, cases, seed: int, num_workers: int, start_batch: int = 0, rank: int = 0,
                     world_size: int = 1):
        return make_contrastive_loader(cases, self.crop_settings, self.options.batch_size, seed=seed,
                                       num_workers=num_workers, start_batch=start_batch, rank=rank,
                                       world_size=world_size)

    def make_train_loader(self, start_batch: int):
        return self._crop_loader(self.train_cases, self.options.seed, self.options.num_workers, start_batch,
                                 self.context.rank, self.context.world_size)

    def loss_of(self, network: nn.Module, batch: dict) -> tuple[Tensor, dict[str, float]]:
        crops = torch.as_tensor(batch["image"]).to(self.device, dtype=torch.float32)
        return nt_xent_loss(network(crops), self.settings.temperature), {}

    def validate(self) -> dict[str, float]:
        """The base class's held-out loss, on fixed (augmented) crop pairs of the val split."""
        if self.val_cases and self._validation_batches is None:
            with self._crop_loader(self.val_cases, self.options.seed + VALIDATION_SEED_OFFSET, 0) as loader:
                self._validation_batches = [next(loader) for _ in range(self.options.val_batches)]
        return super().validate()
