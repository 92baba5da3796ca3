"""MAEPretrainer: the dense CNN masked autoencoder of nnssl (BaseMAETrainer) on the MASS ResUNet.

Each step hides 75 % of the cubic blocks of every crop (a new mask per sample and step), fills them with 0 (the
mean of z-scored intensities), lets the full ResUNet (ReconstructionUNet) predict the whole volume and scores the
mean squared error on the hidden voxels only, against the raw normalised intensities (no per-patch
normalisation); voxels outside the volume (padding) count nowhere. SGD with Nesterov momentum and poly decay as
nnssl. The encoder (`encoder.*`) transfers to the downstream ResUNet.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from mass_nn.networks.baselines.block_masking import hidden_block_count, mask_at, mask_generator, mask_grid, \
    random_block_mask
from mass_nn.networks.baselines.reconstruction_unet import ReconstructionUNet, ReconstructionUNetConfig
from mass_nn.networks.network_base import Network
from mass_nn.training.data.augmentation import ViewAugmentation
from mass_nn.training.pretrain.image_pretrainer import ImagePretrainer

PAPER_BLOCK_SIZE = 16  # nnssl: 16-voxel blocks at 1 mm (10^3 blocks of a 160^3 patch); 8^3 blocks of 128^3 here
CPU_BLOCK_SIZE = 8  # 3d_cpu has twice the spacing: 8 voxels are the same 24 mm cubes as 16 at 3d_paper


@dataclass
class MAESettings:
    """-s settings of MAEPretrainer and S3DPretrainer."""

    block_size: int = 0  # voxels per block edge; 0: by the plans' baseline_size (paper 16, cpu 8)
    mask_ratio: float = 0.75  # share of the blocks hidden in each sample


def masked_input(image: Tensor, visible: Tensor) -> Tensor:
    """The network input: hidden voxels (visible = 0) set to 0, the mean of z-scored intensities."""
    return image * visible


def masked_reconstruction_loss(prediction: Tensor, target: Tensor, visible: Tensor, valid: Tensor) -> Tensor:
    """Mean squared error over the hidden (visible = 0), valid (valid = 1) voxels of every channel; 0 when the
    batch has none. visible and valid are (B, 1, *S), prediction and target (B, C, *S)."""
    weight = (1 - visible) * valid
    squared = (prediction.float() - target.float()).square() * weight
    return squared.sum() / (weight.sum() * prediction.shape[1]).clamp(min=1.0)


class MAEPretrainer(ImagePretrainer):
    """-s settings: block_size, mask_ratio (MAESettings)."""

    default_epochs: ClassVar[int] = 1000
    default_iters_per_epoch: ClassVar[int] = 250
    default_lr: ClassVar[float] = 1e-2
    default_grad_clip: ClassVar[float] = 12.0  # nnssl's value
    momentum: ClassVar[float] = 0.99
    weight_decay: ClassVar[float] = 3e-5
    settings_class: ClassVar[type] = MAESettings

    @staticmethod
    def augmentation() -> ViewAugmentation:
        """nnssl's MAE augmentation without mirroring (not offered by the shared pipeline): an affine warp
        (rotation up to 30 degrees, scale 0.7-1.4) in 20 % of the crops, no appearance changes."""
        return ViewAugmentation(affine_probability=0.2, scale_range=(0.7, 1.4), rotation_degrees=30.0,
                                appearance_probability=0.0)

    def reconstruction_config(self) -> ReconstructionUNetConfig:
        channels = len(self.plans.channels)
        return ReconstructionUNetConfig.from_configuration(self.configuration_plan, channels, out_channels=channels)

    def build_network(self) -> Network:
        config = self.reconstruction_config()
        return ReconstructionUNet(config)

    def setup(self) -> None:
        super().setup()
        block = self.settings.block_size or (
            PAPER_BLOCK_SIZE if self.configuration_plan.baseline_size == "paper" else CPU_BLOCK_SIZE)
        self.settings.block_size = block  # the run config records the block size really used
        self.mask_grid = mask_grid(self.patch_size_zyx, block)
        hidden_block_count(self.mask_grid, self.settings.mask_ratio)  # a bad ratio fails before training

    def build_optimizer(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.network.parameters(), lr=self.options.lr, momentum=self.momentum,
                               nesterov=True, weight_decay=self.weight_decay)

    def draw_mask(self, batch: dict) -> Tensor:
        """The block mask (B, 1, *grid) of a loader batch on the device, a function of (seed, batch index)."""
        generator = mask_generator(self.options.seed, batch["batch_index"])
        mask = random_block_mask(len(batch["image"]), self.mask_grid, self.settings.mask_ratio, generator)
        return mask.to(self.device)

    def reconstruct(self, network: nn.Module, image: Tensor, grid_mask: Tensor) -> Tensor:
        """The network's prediction of the whole crop from its visible blocks."""
        return network(masked_input(image, mask_at(grid_mask, image.shape[2:], image.dtype)))

    def loss_of(self, network: nn.Module, batch: dict) -> tuple[Tensor, dict[str, float]]:
        image, valid = self.batch_tensors(batch)
        grid_mask = self.draw_mask(batch)
        prediction = self.reconstruct(network, image, grid_mask)
        visible = mask_at(grid_mask, image.shape[2:])
        return masked_reconstruction_loss(prediction, image, visible, valid), {}
