"""The MiM pretraining network: the hybrid backbone, multi-scale fusion, an MAE decoder with a pixel head, and the
two projectors of the cross-level alignment.

Per masked volume: the conv stage maps are projected onto the token grid (strided convolutions, kernel = stride)
and added to the visible tokens after the transformer, then LayerNorm; the decoder embeds them, puts a learned
mask token at every masked position, adds a fixed sine-cosine embedding, runs transformer blocks and a LayerNorm
(the features F used for alignment) and a linear head predicting each token's p^3 * C voxels. For alignment, a
volume's context vector is child_projector(mean over tokens of F), and its region embeddings are
parent_projector(mean of stop-gradient F over each region of a partition of its tokens).

Only `backbone.*` transfers downstream (MiMSegmenter, MiMClassifier); fusion, decoder and projectors stay here.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mass_nn.networks.baselines.mim_backbone import (MiMBackbone, MiMBackboneConfig, TransformerBlock, gather_tokens,
                                           sincos_position_embedding)
from mass_nn.networks.network_base import Network, NetworkConfig


@dataclass
class MiMNetworkConfig(NetworkConfig):
    """The backbone and the decoder (width divisible by 6 and by decoder_heads). The projectors map
    decoder_dim -> decoder_dim -> decoder_dim."""

    backbone: MiMBackboneConfig
    decoder_dim: int
    decoder_depth: int
    decoder_heads: int


    @classmethod
    def paper(cls, in_channels: int = 1) -> "MiMNetworkConfig":
        """The paper's network: the paper backbone and a 576-wide decoder of 8 blocks with 16 heads."""
        return cls(MiMBackboneConfig.paper(in_channels), decoder_dim=576, decoder_depth=8, decoder_heads=16)

    @classmethod
    def cpu(cls, input_size_zyx, in_channels: int = 1) -> "MiMNetworkConfig":
        """The CPU network: the CPU backbone and a 24-wide decoder of one block with 3 heads."""
        return cls(MiMBackboneConfig.cpu(input_size_zyx, in_channels), decoder_dim=24, decoder_depth=1,
                   decoder_heads=3)

    def validate(self) -> None:
        self.backbone.validate()
        d, h = self.decoder_dim, self.decoder_heads
        if d < 6 or d % 6 or h < 1 or d % h or self.decoder_depth < 1:
            raise ValueError(f"invalid MiMNetworkConfig: decoder_dim {d} must be divisible by 6 and by decoder_heads "
                             f"{h}; decoder_depth >= 1 (got {self.decoder_depth})")


class LevelInput(NamedTuple):
    """One level's masked volumes: images [M, C, D, H, W], visible [M, N] bool, and the partition of the tokens
    into regions for the alignment (region_of_token [N] long in [0, num_regions))."""

    images: Tensor
    visible: Tensor
    region_of_token: Tensor
    num_regions: int


@dataclass
class LevelOutput:
    """prediction [M, N, p^3 * C] (every token), features F [M, N, decoder_dim] (after the decoder LayerNorm),
    context [M, decoder_dim] (child side of the alignment), regions [M, R, decoder_dim] (parent side)."""

    prediction: Tensor
    features: Tensor
    context: Tensor
    regions: Tensor


def patchify(volumes: Tensor, patch: int) -> Tensor:
    """[M, C, D, H, W] -> [M, N, p^3 * C]: the voxels of each token (row-major grid), ordered (pz, py, px, c) like
    the pixel head's output."""
    m, c, d, h, w = volumes.shape
    grid = (d // patch, h // patch, w // patch)
    split = volumes.reshape(m, c, grid[0], patch, grid[1], patch, grid[2], patch)
    return split.permute(0, 2, 4, 6, 3, 5, 7, 1).reshape(m, grid[0] * grid[1] * grid[2], patch ** 3 * c)


def projector(dim: int) -> nn.Sequential:
    """Linear -> GELU -> Linear, dim -> dim -> dim."""
    return nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, dim))


def region_means(features: Tensor, region_of_token: Tensor, num_regions: int) -> Tensor:
    """Mean of features [M, N, C] over the tokens of each region -> [M, R, C]."""
    membership = F.one_hot(region_of_token, num_regions).to(features.dtype)  # [N, R]
    membership = membership / membership.sum(dim=0, keepdim=True).clamp(min=1)
    return torch.einsum("mnc,nr->mrc", features, membership)


class MiMNetwork(Network):
    """forward(levels: list[LevelInput]) -> list[LevelOutput]; one call per training step serves every level, so
    a DistributedDataParallel wrapper sees a single forward."""

    encoder_key_prefix = "backbone."
    config_class = MiMNetworkConfig
    downstream_network = "MiMSegmenter"
    classification_network = "MiMClassifier"

    def __init__(self, config: MiMNetworkConfig):
        super().__init__()
        config.validate()
        self.config = copy.deepcopy(config)
        b = config.backbone
        width, n = b.stage_dims[-1], b.num_stages
        self.backbone = MiMBackbone(b)
        self.stage_projections = nn.ModuleList(
            nn.Conv3d(dim, width, 2 ** (n - 1 - i), stride=2 ** (n - 1 - i)) for i, dim in enumerate(b.stage_dims[:-1]))
        self.encoder_norm = nn.LayerNorm(width)
        self.decoder_embed = nn.Linear(width, config.decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, config.decoder_dim))
        self.decoder_blocks = nn.ModuleList(TransformerBlock(config.decoder_dim, config.decoder_heads, b.mlp_ratio)
                                            for _ in range(config.decoder_depth))
        self.decoder_norm = nn.LayerNorm(config.decoder_dim)
        self.pixel_head = nn.Linear(config.decoder_dim, b.patch_size ** 3 * b.in_channels)
        self.child_projector = projector(config.decoder_dim)
        self.parent_projector = projector(config.decoder_dim)
        nn.init.normal_(self.mask_token, std=0.02)

    @property
    def patch_size(self) -> int:
        return self.config.backbone.patch_size

    def reconstruct(self, images: Tensor, visible: Tensor) -> tuple[Tensor, Tensor]:
        """(prediction [M, N, p^3 C], decoder features [M, N, decoder_dim]) of masked volumes."""
        encoded = self.backbone(images, visible)
        tokens = encoded.tokens
        for projection, stage_map in zip(self.stage_projections, encoded.stage_maps):
            tokens = tokens + gather_tokens(projection(stage_map).flatten(2).transpose(1, 2), encoded.token_index)
        embedded = self.decoder_embed(self.encoder_norm(tokens))
        m, n_tokens = visible.shape
        full = self.mask_token.to(embedded.dtype).expand(m, n_tokens, -1).clone()
        full = full.scatter(1, encoded.token_index.unsqueeze(-1).expand(-1, -1, embedded.shape[-1]), embedded)
        x = full + sincos_position_embedding(encoded.grid, full.shape[-1], full.device).to(full.dtype)
        for block in self.decoder_blocks:
            x = block(x)
        features = self.decoder_norm(x)
        return self.pixel_head(features), features

    def forward(self, levels: list[LevelInput]) -> list[LevelOutput]:
        outputs = []
        for level in levels:
            prediction, features = self.reconstruct(level.images, level.visible)
            context = self.child_projector(features.mean(dim=1))
            parent = region_means(features.detach(), level.region_of_token, level.num_regions)
            outputs.append(LevelOutput(prediction, features, context, self.parent_projector(parent)))
        return outputs
