"""ModelsGenesisPretrainer: restore the original volume from a corrupted copy (nnssl's ModelGenesisTrainer on the
MASS ResUNet).

The loader's workers crop and spatially augment as for MAE, then corrupt each patch (models_genesis_corruptions.py:
flip shared with the target, local pixel shuffling, Bezier intensity map, in-/out-painting). The full ResUNet
(ReconstructionUNet) predicts the flipped original from the corrupted input; the loss is the mean squared error
over the valid voxels (padding counts nowhere). SGD with Nesterov momentum, poly decay and gradient clipping at 12
as nnssl. The encoder (`encoder.*`) transfers to the downstream ResUNet.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, fields
from typing import ClassVar

import torch
from batchgenerators.transforms.abstract_transforms import Compose
from torch import Tensor, nn

from mass_nn.errors import MassError
from mass_nn.networks.baselines.reconstruction_unet import ReconstructionUNet, ReconstructionUNetConfig
from mass_nn.networks.network_base import Network
from mass_nn.training.data.augmentation import ViewAugmentation, build_single_view_transform
from mass_nn.training.data.image_crop_loader import ImageCropLoader
from mass_nn.training.data.indexed_loader import AugmentedBatches, augmented_batches
from mass_nn.training.pretrain.image_pretrainer import VALIDATION_SEED_OFFSET, ImagePretrainer
from mass_nn.training.pretrain.models_genesis_corruptions import (GenesisCorruptionSettings,
                                                                  GenesisCorruptionTransform, derived_shuffle_blocks)
from mass_nn.training.trainer_settings import check_range



@dataclass
class GenesisSettings:
    """-s settings of ModelsGenesisPretrainer (the corruptions' probabilities; sizes as the reference)."""

    num_shuffle_blocks: int = 0  # per sample; 0: the reference's density (10,000 per 160^3 voxels) for the patch
    flip_probability: float = 0.4
    shuffle_probability: float = 0.5
    nonlinear_probability: float = 0.9
    paint_probability: float = 0.9
    inpaint_probability: float = 0.2

    def validate(self) -> None:
        for f in fields(self):
            if f.name.endswith("_probability"):
                check_range(f.name, getattr(self, f.name), 0.0, 1.0, high_inclusive=True)
        if self.num_shuffle_blocks < 0:
            raise MassError(f"setting num_shuffle_blocks={self.num_shuffle_blocks}: expected >= 0 (0: derived)")


def valid_mse(prediction: Tensor, target: Tensor, valid: Tensor) -> Tensor:
    """Mean squared error over the valid voxels (valid (B, 1, *S) = 1) of every channel; 0 when there are none."""
    squared = (prediction.float() - target.float()).square() * valid
    return squared.sum() / (valid.sum() * prediction.shape[1]).clamp(min=1.0)


def make_genesis_loader(cases, patch_size_zyx, batch_size: int, seed: int, num_workers: int,
                        augmentation: ViewAugmentation, corruption: GenesisCorruptionSettings, start_batch: int = 0,
                        rank: int = 0, world_size: int = 1) -> AugmentedBatches:
    """Crops spatially augmented, then corrupted, in the loader's `num_workers` processes (0: in this one):
    `image` (corrupted), `target` (the flipped original), `valid`; batch i = f(seed, i)."""
    missing = [c.image_path for c in cases if not os.path.isfile(c.image_path)]
    if not cases or missing:
        raise MassError(f"no cases to train on, or preprocessed images missing: {missing[:3]}; run "
                        f"mass_plan_and_preprocess for this configuration")
    workers = max(0, int(num_workers))
    loader = ImageCropLoader(cases, patch_size_zyx, batch_size, seed, start_batch=start_batch, rank=rank,
                             world_size=world_size, num_threads_in_multithreaded=max(1, workers))
    transform = Compose([build_single_view_transform(augmentation, patch_size_zyx, "image", "valid"),
                         GenesisCorruptionTransform(corruption)])
    return augmented_batches(loader, transform, workers)


class ModelsGenesisPretrainer(ImagePretrainer):
    """-s settings: GenesisSettings."""

    default_epochs: ClassVar[int] = 1000
    default_iters_per_epoch: ClassVar[int] = 250
    default_lr: ClassVar[float] = 1e-2
    default_grad_clip: ClassVar[float] = 12.0  # nnssl's trainer default
    momentum: ClassVar[float] = 0.99
    weight_decay: ClassVar[float] = 3e-5
    settings_class: ClassVar[type] = GenesisSettings

    @staticmethod
    def augmentation() -> ViewAugmentation:
        """nnssl's spatial augmentation (as MAEPretrainer): an affine warp (rotation up to 30 degrees, scale
        0.7-1.4) in 20 % of the crops; intensities are left to the corruptions."""
        return ViewAugmentation(affine_probability=0.2, scale_range=(0.7, 1.4), rotation_degrees=30.0,
                                appearance_probability=0.0)

    def build_network(self) -> Network:
        channels = len(self.plans.channels)
        config = ReconstructionUNetConfig.from_configuration(self.configuration_plan, channels, out_channels=channels)
        return ReconstructionUNet(config)

    def setup(self) -> None:
        super().setup()
        s = self.settings
        s.num_shuffle_blocks = s.num_shuffle_blocks or derived_shuffle_blocks(self.patch_size_zyx)
        self.corruption = GenesisCorruptionSettings(**asdict(s))

    def build_optimizer(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.network.parameters(), lr=self.options.lr, momentum=self.momentum,
                               nesterov=True, weight_decay=self.weight_decay)

    def make_train_loader(self, start_batch: int):
        return make_genesis_loader(self.train_cases, self.patch_size_zyx, self.options.batch_size, self.options.seed,
                                   self.options.num_workers, self.augmentation(), self.corruption, start_batch,
                                   self.context.rank, self.context.world_size)

    def loss_of(self, network: nn.Module, batch: dict) -> tuple[Tensor, dict[str, float]]:
        corrupted, valid = self.batch_tensors(batch)
        target = torch.as_tensor(batch["target"]).to(self.device, dtype=torch.float32)
        return valid_mse(network(corrupted), target, valid), {}

    def validate(self) -> dict[str, float]:
        """The base class's held-out loss, on fixed corrupted (not spatially augmented) patches of the val split."""
        if self.val_cases and self._validation_batches is None:
            seed = self.options.seed + VALIDATION_SEED_OFFSET
            with make_genesis_loader(self.val_cases, self.patch_size_zyx, self.options.batch_size, seed, 0,
                                     ViewAugmentation.none(), self.corruption) as loader:
                self._validation_batches = [next(loader) for _ in range(self.options.val_batches)]
        return super().validate()
