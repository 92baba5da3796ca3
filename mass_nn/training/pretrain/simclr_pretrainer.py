"""SimCLRPretrainer: contrastive pretraining of the ResUNet encoder (nnssl's SimCLR trainer on the MASS encoder).

Each sample gives `crops_per_sample` pairs of overlapping crops of one region, every crop augmented on its own
(contrastive_crops.py). The encoder's five stage outputs are average-pooled and concatenated, a projector MLP maps
them to the embedding (ContrastiveEncoder), and NT-Xent (cosine similarity, temperature 0.5) makes each crop pick
its partner among all 2N - 1 other crops of the batch. SGD with Nesterov momentum, poly decay and gradient
clipping at 0.1 as the reference. The encoder (`encoder.*`) transfers downstream; the projector is dropped.
"""
from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor, nn

from mass_nn.errors import MassError
from mass_nn.networks.contrastive_encoder import ContrastiveEncoder, ContrastiveEncoderConfig
from mass_nn.training.data.contrastive_crops import (ContrastiveCropSettings, derived_crop_size,
                                                     derived_region_size, make_contrastive_loader)
from mass_nn.training.pretrain.image_pretrainer import VALIDATION_SEED_OFFSET, ImagePretrainer
from mass_nn.training.pretrain.nt_xent import nt_xent_loss

SIMCLR_SETTINGS = {
    "crop_size": [],  # [z, y, x]; empty: half the plans' patch, rounded down to a multiple of 16, at least 32
    "region_size": [],  # [z, y, x] the pairs are cut from; empty: crop deep, 3 crops wide in-plane (reference)
    "crops_per_sample": 2,  # reference crops (each with a partner) per region
    "min_overlap": 0.5,  # least overlap of a pair per axis, as a share of the crop
    "temperature": 0.5,
    "projector_width": 0,  # 0: 2048 scaled by the encoder's deepest width / 512 (2048 paper, 512 phantom CPU)
    "projector_layers": 3,
}


def _size_setting(value: list, name: str, fallback) -> tuple[int, int, int]:
    """A [z, y, x] size setting, or `fallback` when it is empty."""
    if not value:
        return tuple(int(s) for s in fallback)
    if len(value) != 3 or any(isinstance(s, bool) or not isinstance(s, int) for s in value):
        raise MassError(f"setting {name}={value!r}: expected three integers [z,y,x], e.g. -s {name}=[32,32,32]")
    return tuple(value)


class SimCLRPretrainer(ImagePretrainer):
    """-s settings: see SIMCLR_SETTINGS."""

    default_epochs: ClassVar[int] = 1000
    default_iters_per_epoch: ClassVar[int] = 250
    default_lr: ClassVar[float] = 1e-2
    default_grad_clip: ClassVar[float] = 0.1  # the reference clips SimCLR's gradients harder than nnssl's 12
    momentum: ClassVar[float] = 0.99
    weight_decay: ClassVar[float] = 3e-5
    settings_defaults: ClassVar[dict] = SIMCLR_SETTINGS

    def build_network(self) -> tuple[nn.Module, str, dict]:
        config = ContrastiveEncoderConfig.from_configuration(
            self.configuration_plan, len(self.plans.channels), projector_width=int(self.settings["projector_width"]),
            projector_layers=int(self.settings["projector_layers"]))
        return ContrastiveEncoder(config), "ContrastiveEncoder", config.to_dict()

    def setup(self) -> None:
        super().setup()
        s = self.settings
        crop = _size_setting(s["crop_size"], "crop_size", derived_crop_size(self.patch_size_zyx))
        region = _size_setting(s["region_size"], "region_size", derived_region_size(crop))
        self.crop_settings = ContrastiveCropSettings(crop_size_zyx=crop, region_size_zyx=region,
                                                     crops_per_sample=int(s["crops_per_sample"]),
                                                     min_overlap=float(s["min_overlap"]))
        self.crop_settings.check(f"{self.name} settings")
        # run_config.json records the sizes really used, not "derived"
        s.update(crop_size=list(crop), region_size=list(region), projector_width=self.network.config.projector_width)
        if not s["temperature"] > 0:
            raise MassError(f"setting temperature={s['temperature']!r}: expected a number > 0")

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
        return nt_xent_loss(network(crops), float(self.settings["temperature"])), {}

    def validate(self) -> dict[str, float]:
        """The base class's held-out loss, on fixed (augmented) crop pairs of the val split."""
        if self.val_cases and self._validation_batches is None:
            with self._crop_loader(self.val_cases, self.options.seed + VALIDATION_SEED_OFFSET, 0) as loader:
                self._validation_batches = [next(loader) for _ in range(self.options.val_batches)]
        return super().validate()
