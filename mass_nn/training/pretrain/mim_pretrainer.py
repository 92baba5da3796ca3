"""MiMPretrainer: Mask in Mask (Zhuang et al., IEEE TMI 2025) - masked autoencoding of nested masked volumes.

Each step cuts B level-1 crops (region_grid x the network input per axis, read at native resolution), builds
the levels of mim_levels.py (B, B*K2, B*K2*K3 volumes) and runs all of them through one MiMNetwork. Loss =
sum over levels of the masked-patch reconstruction (per-patch normalised targets, masked tokens only, voxels
outside the scanned volume left out) + align_weight * (alignment 1->2 + alignment 2->3): a child's context vector
must pick, by cosine similarity / temperature and cross-entropy, the parent region it was cut from among all
regions of its parent (parent side without gradient into the parent's features).

Presets: "paper" (96^3 input, 4 stages 48/96/192/384, 2/2/2 + 11 blocks, decoder 576 x 8, K2 = K3 = 4, level-1
crop 192^3) and "cpu" (the plans configuration's patch as input, 3 stages 12/24/48, 1/1 + 2 blocks, decoder
24 x 1, K2 = K3 = 2, level-1 crop 2 x the patch); "auto" follows the plans' `baseline_size`. AdamW (betas 0.9,
0.95; weight decay 0.05, none on biases, norms and the mask token), lr 1e-4.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mass_nn.errors import MassError
from mass_nn.networks.baselines.mim_network import LevelOutput, MiMNetwork, MiMNetworkConfig, patchify
from mass_nn.networks.network_base import Network
from mass_nn.training.data.augmentation import ViewAugmentation
from mass_nn.training.pretrain.image_pretrainer import ImagePretrainer
from mass_nn.training.pretrain.mim_levels import MaskedLevel, MiMLevelSettings, build_levels

logger = logging.getLogger(__name__)

NORM_PIX_EPS = 1e-6
PRESETS = ("auto", "paper", "cpu")
CHILDREN_PER_PRESET = {"paper": 4, "cpu": 2}
ADAMW_BETAS = (0.9, 0.95)
GENERATOR_STREAM = 0x4D694D  # separates the mask stream from the loader's numpy stream of the same batch


def batch_generator(seed: int, batch_index: int) -> torch.Generator:
    """A CPU torch.Generator that is a pure function of (run seed, batch index)."""
    state = np.random.SeedSequence([int(seed), int(batch_index), GENERATOR_STREAM]).generate_state(2, np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def masked_patch_loss(prediction: Tensor, images: Tensor, valid: Tensor, visible: Tensor, patch: int) -> Tensor:
    """Mean over the masked tokens of mean over their valid voxels of (prediction - normalised target)^2.

    Targets are per-patch normalised over the patch's valid voxels, (x - mean) / sqrt(biased var + 1e-6); tokens
    without a valid voxel and visible tokens do not count (0 when nothing counts)."""
    target = patchify(images.float(), patch)
    weight = patchify(valid.float().expand_as(images), patch)
    count = weight.sum(dim=-1, keepdim=True)
    mean = (target * weight).sum(dim=-1, keepdim=True) / count.clamp(min=1)
    var = ((target - mean) ** 2 * weight).sum(dim=-1, keepdim=True) / count.clamp(min=1)
    normalised = ((target - mean) / torch.sqrt(var + NORM_PIX_EPS)).detach()
    per_token = ((prediction.float() - normalised) ** 2 * weight).sum(dim=-1) / count.squeeze(-1).clamp(min=1)
    used = (~visible) & (count.squeeze(-1) > 0)
    return (per_token * used).sum() / used.sum().clamp(min=1)


def alignment_loss(child: LevelOutput, parent: LevelOutput, child_level: MaskedLevel, temperature: float) -> Tensor:
    """Cross-entropy of cos(child context, each region embedding of its parent) / temperature against the region
    the child was cut from."""
    regions = parent.regions[child_level.parent]  # [M, R, C]
    logits = F.cosine_similarity(child.context.float().unsqueeze(1), regions.float(), dim=-1) / temperature
    return F.cross_entropy(logits, child_level.parent_region)


def mim_loss(levels: list[MaskedLevel], outputs: list[LevelOutput], patch: int, align_weight: float,
             temperature: float) -> tuple[Tensor, dict[str, float]]:
    """Total loss and its parts rec<l>_loss (level l) and align<l><l+1>_loss."""
    parts, total = {}, 0.0
    for number, (level, output) in enumerate(zip(levels, outputs), start=1):
        loss = masked_patch_loss(output.prediction, level.images, level.valid, level.visible, patch)
        parts[f"rec{number}_loss"], total = float(loss.detach()), total + loss
    for number in range(1, len(levels)):
        loss = alignment_loss(outputs[number], outputs[number - 1], levels[number], temperature)
        parts[f"align{number}{number + 1}_loss"], total = float(loss.detach()), total + align_weight * loss
    return total, parts


@dataclass
class MiMSettings:
    """-s settings of MiMPretrainer. preset: auto (the plans' baseline_size), paper or cpu; k2, k3: children
    per parent at levels 2 and 3 (0: the preset's); region_grid: the level-1 crop in network inputs per axis."""

    preset: str = "auto"
    mask_ratio: float = 0.6
    k2: int = 0
    k3: int = 0
    region_grid: int = 2
    align_weight: float = 0.1
    align_temperature: float = 1.0
    weight_decay: float = 0.05

    def validate(self) -> None:
        if self.preset not in PRESETS:
            raise MassError(f"MiM setting preset={self.preset!r}: expected one of {list(PRESETS)}")
        if not self.align_temperature > 0:
            raise MassError(f"MiM setting align_temperature={self.align_temperature}: expected a positive number")

class MiMPretrainer(ImagePretrainer):
    """Mask in Mask pretraining of the hybrid ConvViT backbone (MiMNetwork)."""

    default_lr: ClassVar[float] = 1e-4
    settings_class: ClassVar[type] = MiMSettings

    @staticmethod
    def augmentation() -> ViewAugmentation:
        """None: MiM pretrains on plain crops (no flips, no intensity changes)."""
        return ViewAugmentation.none()

    def build_network(self) -> Network:
        s = self.settings
        if s.preset == "auto":
            s.preset = self.configuration_plan.baseline_size
        s.k2, s.k3 = s.k2 or CHILDREN_PER_PRESET[s.preset], s.k3 or CHILDREN_PER_PRESET[s.preset]
        in_channels = len(self.plans.channels)
        try:
            config = MiMNetworkConfig.paper(in_channels) if s.preset == "paper" else \
                MiMNetworkConfig.cpu(self.configuration_plan.patch_size_zyx, in_channels)
            config.validate()
        except ValueError as error:
            raise MassError(f"MiM cannot use the patch {list(self.configuration_plan.patch_size_zyx)} of "
                            f"{self.options.configuration}: {error}; re-plan with a patch divisible by 8, or use "
                            f"-s preset=paper") from error
        self.level_settings = MiMLevelSettings(s.region_grid, (s.k2, s.k3), s.mask_ratio)
        self.level_settings.check(config.backbone.token_grid())
        return MiMNetwork(config)

    @property
    def input_size_zyx(self) -> tuple[int, int, int]:
        return tuple(self.network.config.backbone.input_size_zyx)

    @property
    def patch_size_zyx(self) -> tuple[int, int, int]:
        """The crop the loaders cut: the level-1 crop, region_grid x the network input per axis (larger than the
        plans' patch; what lies outside the case is padding with valid = 0)."""
        return tuple(self.level_settings.region_grid * s for s in self.input_size_zyx)

    def build_optimizer(self) -> torch.optim.Optimizer:
        """AdamW; biases, norm weights and the mask token (every parameter with fewer than 2 dimensions or the
        mask token) get no weight decay."""
        decay, no_decay = [], []
        for name, parameter in self.network.named_parameters():
            (no_decay if parameter.ndim < 2 or name == "mask_token" else decay).append(parameter)
        groups = [{"params": decay, "weight_decay": self.settings.weight_decay},
                  {"params": no_decay, "weight_decay": 0.0}]
        return torch.optim.AdamW(groups, lr=self.options.lr, betas=ADAMW_BETAS)

    def levels_of(self, batch: dict) -> list[MaskedLevel]:
        """The masked volumes of every level of a loader batch (masks drawn from the batch's generator)."""
        image, valid = self.batch_tensors(batch)
        generator = batch_generator(self.options.seed, int(batch["batch_index"]))
        return build_levels(image, valid, self.input_size_zyx, self.network.patch_size, self.level_settings,
                            generator)

    def loss_of(self, network: nn.Module, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        levels = self.levels_of(batch)
        outputs = network([level.network_input() for level in levels])
        return mim_loss(levels, outputs, self.network.patch_size, self.settings.align_weight,
                        self.settings.align_temperature)
