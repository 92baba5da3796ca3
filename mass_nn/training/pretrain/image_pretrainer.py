"""The shared base of the baseline pretrainers (MAE, S3D, SimCLR, Models Genesis, Hi-End-MAE, MiM): image-only
data from the train split of the preprocessed datasets (no mask bank), -s settings, validation loss on fixed
held-out batches. A subclass builds its network and defines the loss of a batch; the Trainer base class does
the rest (checkpoints, exact resume, logs, DDP).
"""
from __future__ import annotations

import logging
from typing import ClassVar

import torch
from torch import nn

from mass_nn.datasets.preprocessed_sources import resolve_sources
from mass_nn.errors import MassError
from mass_nn.io.artifact_layout import CaseOutput
from mass_nn.networks.network_base import Network
from mass_nn.parallel import default_num_processes
from mass_nn.training.data.augmentation import ViewAugmentation
from mass_nn.training.data.image_crop_loader import ImageCase, make_image_crop_loader
from mass_nn.training.trainer import Trainer

logger = logging.getLogger(__name__)

VALIDATION_SEED_OFFSET = 1_000_003  # fixed held-out batches, drawn apart from the training stream


class ImagePretrainer(Trainer):
    """Subclass: set `settings_class` (the -s settings), implement `build_network()` (returns a registered
    network) and `loss_of(network, batch)`."""

    mode: ClassVar[str] = "PRETRAIN"

    @staticmethod
    def augmentation() -> ViewAugmentation:
        """Spatial and appearance augmentation of the crops (default: the weak view's of MASS)."""
        return ViewAugmentation.weak()

    def build_network(self) -> Network:
        raise NotImplementedError

    def loss_of(self, network: nn.Module, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        """The loss of a loader batch (`image` (B, C, *patch), `valid` (B, 1, *patch)) under `network`."""
        raise NotImplementedError

    def resolve_data(self) -> None:
        o = self.options
        self.sources = resolve_sources(o.datasets, self.paths, o.plans_name, o.configuration)
        self.train_cases, self.val_cases = ([ImageCase(c, CaseOutput(s.data_folder, c).data)
                                             for s in self.sources for c in s.cases(split)]
                                            for split in ("train", "val"))
        if not self.train_cases:
            raise MassError(f"{self.sources[0].data_folder}: the train split has no cases; check splits.json")
        self.adopt_sources(self.sources)

    def setup(self) -> None:
        o = self.options
        o.batch_size = o.batch_size or self.configuration_plan.batch_size
        if o.num_workers is None:
            o.num_workers = max(1, min(4, default_num_processes() - 1))
        self.network = self.build_network()
        self._validation_batches: list[dict] | None = None

    @property
    def patch_size_zyx(self) -> tuple[int, int, int]:
        return tuple(self.configuration_plan.patch_size_zyx)

    def make_train_loader(self, start_batch: int):
        return make_image_crop_loader(self.train_cases, self.patch_size_zyx, self.options.batch_size,
                                      seed=self.options.seed, num_workers=self.options.num_workers,
                                      augmentation=self.augmentation(), start_batch=start_batch,
                                      rank=self.context.rank, world_size=self.context.world_size)

    def batch_tensors(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """(image float32, valid float32) of a loader batch on the device."""
        image = torch.as_tensor(batch["image"]).to(self.device, dtype=torch.float32)
        valid = torch.as_tensor(batch["valid"]).to(self.device, dtype=torch.float32)
        return image, valid

    def compute_loss(self, batch) -> tuple[torch.Tensor, dict[str, float]]:
        return self.loss_of(self.model, batch)

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Mean loss of the EMA network on `options.val_batches` fixed batches of the val split; random choices
        inside the loss (masks, corruptions) are seeded so every epoch scores the same problem."""
        if not self.val_cases:
            return {}
        if self._validation_batches is None:
            loader = make_image_crop_loader(self.val_cases, self.patch_size_zyx, self.options.batch_size,
                                            seed=self.options.seed + VALIDATION_SEED_OFFSET, num_workers=0,
                                            augmentation=ViewAugmentation.none())
            try:
                self._validation_batches = [next(loader) for _ in range(self.options.val_batches)]
            finally:
                loader.close()
        network = self.ema.module.eval()
        losses = []
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            torch.manual_seed(self.options.seed + VALIDATION_SEED_OFFSET)
            for batch in self._validation_batches:
                losses.append(float(self.loss_of(network, batch)[0]))
        return {"val_loss": sum(losses) / len(losses)}
