"""HiEndMAEPretrainer: Hi-End-MAE masked-autoencoder pretraining of a 3D ViT (see
`mass_nn.networks.baselines.hi_end_mae`).

Per step and sample, a uniformly random 75 % of the p³ patches is masked (noise from a torch.Generator seeded by
the run seed and the batch index, so --continue replays the same masks); the network reconstructs every patch and
the loss is the mean squared error on the masked patches against per-patch normalised targets ("norm-pix":
mean 0, biased variance 1, eps 1e-6). Padding voxels (`valid` = 0) count neither in the targets' statistics nor in
the loss. AdamW lr 1e-4, betas (0.9, 0.95), weight decay 0.05 (not on biases, norms and tokens).

Network size (-s network=): "paper" = the released ViT-L (dim 1536, 12 blocks, decoder 528), "cpu" = dim 96,
4 blocks, decoder 48; "auto" follows the plans' `baseline_size` (paper for 3d_paper, cpu for 3d_cpu). The input
size is the plans' patch size; the patch edge is -s patch_size or, when 0, 12 or 16 for the paper network
(whichever divides every side, 12 first as released) and 8 for the CPU network.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from mass_nn.errors import MassError
from mass_nn.networks.baselines.hi_end_mae import CPU_PATCH_SIZE, HiEndMAE, HiEndMAEConfig
from mass_nn.networks.baselines.vit import patchify
from mass_nn.networks.network_base import Network
from mass_nn.training.pretrain.image_pretrainer import ImagePretrainer
from mass_nn.training.trainer_settings import check_range

logger = logging.getLogger(__name__)

NORM_PIX_EPS = 1e-6
MASK_STREAM = 0x48454D  # keeps the mask generator's seeds apart from any other stream seeded by (seed, batch)
NETWORK_SIZES = ("auto", "paper", "cpu")
PAPER_PATCH_SIZES = (12, 16)
NO_DECAY_NAMES = ("cls_token", "mask_token", "pos_embed")


def mask_noise(seed: int, batch_index: int, shape: tuple[int, int], device: torch.device) -> Tensor:
    """Uniform noise [B, L] that decides the masks of batch `batch_index` of a run with `seed` (same inputs, same
    noise, on any device)."""
    state = np.random.SeedSequence([seed, batch_index, MASK_STREAM]).generate_state(1, dtype=np.uint64)[0]
    generator = torch.Generator().manual_seed(int(state))
    return torch.rand(shape, generator=generator).to(device)


def norm_pix_target(patches: Tensor, valid: Tensor, eps: float = NORM_PIX_EPS) -> Tensor:
    """Each patch [..., P] minus its mean, over sqrt(its biased variance + eps); mean and variance are taken over
    the valid voxels (`valid` [..., P], 1 = inside the volume) only."""
    count = valid.sum(-1, keepdim=True).clamp_min(1.0)
    mean = (patches * valid).sum(-1, keepdim=True) / count
    variance = ((patches - mean) ** 2 * valid).sum(-1, keepdim=True) / count
    return (patches - mean) / torch.sqrt(variance + eps)


def masked_patch_loss(prediction: Tensor, target: Tensor, visible: Tensor, valid: Tensor) -> Tensor:
    """Mean of (prediction - target)² over the valid voxels of the masked tokens. prediction, target and valid
    are [B, L, P]; visible is [B, L] (1 = visible: not in the loss). Zero when nothing masked is valid."""
    weight = (1.0 - visible)[..., None] * valid
    return ((prediction - target) ** 2 * weight).sum() / weight.sum().clamp_min(1.0)


def hi_end_mae_loss(network: nn.Module, image: Tensor, valid: Tensor, noise: Tensor, patch_size: int,
                    norm_pix: bool = True) -> tuple[Tensor, dict[str, float]]:
    """(loss, named parts) of one batch: reconstruct under the masks `noise` decides, score the masked patches."""
    prediction, visible = network(image, noise)
    target = patchify(image, patch_size)
    valid_patches = patchify(valid.expand_as(image), patch_size)
    if norm_pix:
        target = norm_pix_target(target, valid_patches)
    loss = masked_patch_loss(prediction[:, 1:].float(), target.detach(), visible, valid_patches)
    return loss, {"reconstruction_loss": float(loss.detach())}


def paper_patch_size(input_size: list[int]) -> int | None:
    """The released patch edges that divide every side (12 first), or None."""
    return next((p for p in PAPER_PATCH_SIZES if all(s % p == 0 for s in input_size)), None)


@dataclass
class HiEndMAESettings:
    """-s settings of HiEndMAEPretrainer. network: auto (the plans' baseline_size), paper or cpu; patch_size:
    the ViT patch edge (0: the released one that divides the plans' patch, or the CPU one); norm_pix: reconstruct
    per-patch normalised voxels."""

    network: str = "auto"
    patch_size: int = 0
    mask_ratio: float = 0.75
    weight_decay: float = 0.05
    norm_pix: bool = True

    def validate(self) -> None:
        if self.network not in NETWORK_SIZES:
            raise MassError(f"setting network={self.network!r}: expected one of {list(NETWORK_SIZES)}")
        check_range("weight_decay", self.weight_decay, 0.0, float("inf"))


def network_config(configuration_plan, in_channels: int, settings: HiEndMAESettings) -> HiEndMAEConfig:
    """The Hi-End-MAE of a plans configuration under the -s settings (network, patch_size, mask_ratio)."""
    size, input_size = settings.network, list(configuration_plan.patch_size_zyx)
    if size == "auto":
        size = configuration_plan.baseline_size
    patch = settings.patch_size or (paper_patch_size(input_size) if size == "paper" else CPU_PATCH_SIZE)
    if patch is None or patch < 1 or any(s % patch for s in input_size):
        raise MassError(f"the plans' patch size {input_size} ({configuration_plan.name}) does not split into "
                        f"{patch or list(PAPER_PATCH_SIZES)}³ ViT patches; pass -s patch_size=N with N dividing "
                        f"every side")
    maker = HiEndMAEConfig.paper if size == "paper" else HiEndMAEConfig.cpu
    config = maker(in_channels=in_channels, input_size_zyx=input_size, patch_size=patch)
    config.mask_ratio = settings.mask_ratio
    try:
        config.validate()
    except ValueError as error:
        raise MassError(f"Hi-End-MAE settings {settings}: {error}") from error
    return config


def decay_groups(network: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW parameter groups: weight decay on matrices, none on biases, norms and the cls/mask/position tokens
    (the reference meant this but decayed everything)."""
    decay, no_decay = [], []
    for name, parameter in network.named_parameters():
        if not parameter.requires_grad:
            continue
        skip = parameter.ndim < 2 or name.split(".")[-1] in NO_DECAY_NAMES
        (no_decay if skip else decay).append(parameter)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


class HiEndMAEPretrainer(ImagePretrainer):
    """Masked-patch reconstruction with the hierarchical encoder-driven decoder (Hi-End-MAE)."""

    default_lr: ClassVar[float] = 1e-4
    betas: ClassVar[tuple[float, float]] = (0.9, 0.95)
    settings_class: ClassVar[type] = HiEndMAESettings

    def build_network(self) -> Network:
        config = network_config(self.configuration_plan, len(self.plans.channels), self.settings)
        logger.info("Hi-End-MAE: ViT dim %d, depth %d, %d heads, patch %d on %s (%d tokens, %d visible), "
                    "hierarchical layers %s, decoder %d", config.encoder.dim, config.encoder.depth,
                    config.encoder.heads, config.encoder.patch_size, config.encoder.input_size_zyx,
                    int(np.prod(config.encoder.grid())), config.num_visible(int(np.prod(config.encoder.grid()))),
                    config.hier_layers, config.decoder_dim)
        return HiEndMAE(config)

    def build_optimizer(self) -> torch.optim.Optimizer:
        groups = decay_groups(self.network, self.settings.weight_decay)
        return torch.optim.AdamW(groups, lr=self.options.lr, betas=self.betas)

    def loss_of(self, network: nn.Module, batch: dict) -> tuple[Tensor, dict[str, float]]:
        image, valid = self.batch_tensors(batch)
        grid = self.network.grid(image.shape[2:])
        noise = mask_noise(self.options.seed, int(batch["batch_index"]), (image.shape[0], int(np.prod(grid))),
                           self.device)
        return hi_end_mae_loss(network, image, valid, noise, self.network.config.encoder.patch_size,
                               self.settings.norm_pix)
