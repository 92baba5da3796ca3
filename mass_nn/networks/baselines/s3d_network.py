"""The S3D (SparK-3D) pretraining network: the ResUNet encoder run sparsely on the visible mask blocks, a densify
step per encoder level (sparse InstanceNorm, a learned mask token at the hidden positions, a projection), then the
plain ResUNet decoder of ReconstructionUNet.

Keys: `encoder.*` are exactly the dense ResUNetEncoder's (the sparse forward reuses its modules), so the encoder
goes into the downstream ResUNet like any CNN baseline's; `densify.*` (mask tokens, projections), `ups.*` and
`output.*` are pretraining-only.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from mass_nn.networks.baselines.reconstruction_unet import ReconstructionUNet, ReconstructionUNetConfig
from mass_nn.networks.baselines.sparse_encoder import ActiveMask, sparse_encode, sparse_instance_norm

MASK_TOKEN_STD = 0.02  # SparK's truncated-normal initialisation of the mask tokens


class Densify(nn.Module):
    """One encoder level: sparse InstanceNorm over the active positions, the level's learned mask token at the
    inactive ones, then a projection (identity at full resolution, a 3x3x3 conv at the other levels)."""

    def __init__(self, channels: int, full_resolution: bool, eps: float):
        super().__init__()
        self.eps = eps
        self.mask_token = nn.Parameter(torch.zeros(1, channels, 1, 1, 1))
        nn.init.trunc_normal_(self.mask_token, std=MASK_TOKEN_STD, a=-2 * MASK_TOKEN_STD, b=2 * MASK_TOKEN_STD)
        self.projection = nn.Identity() if full_resolution else nn.Conv3d(channels, channels, 3, padding=1, bias=False)

    def forward(self, x: Tensor, active: Tensor) -> Tensor:
        """x [B, C, *S] (0 at inactive positions), active [B, 1, *S] → dense [B, C, *S]."""
        normed = sparse_instance_norm(x, active, self.eps)
        return self.projection(normed + self.mask_token.to(normed.dtype) * (1 - active.to(normed.dtype)))


class S3DNetwork(ReconstructionUNet):
    """[B, in, D, H, W] and a block mask [B, 1, *grid] (1 = visible; None: all visible) → [B, out, D, H, W]. The
    output at every voxel depends on the visible blocks only."""

    def __init__(self, config: ReconstructionUNetConfig):
        super().__init__(config)
        channels, eps = config.encoder.channels, config.encoder.norm_eps
        self.densify = nn.ModuleList(Densify(c, full_resolution=i == 0, eps=eps) for i, c in enumerate(channels))

    def densify_features(self, features: list[Tensor], mask: ActiveMask) -> list[Tensor]:
        """The sparse encoder's maps (deepest first) made dense for the decoder."""
        levels = len(self.densify)
        return [self.densify[levels - 1 - j](f, mask.at(f.shape[2:], f.dtype)) for j, f in enumerate(features)]

    def forward(self, x: Tensor, grid_mask: Tensor | None = None) -> Tensor:
        if grid_mask is None:
            grid_mask = torch.ones(x.shape[0], 1, 1, 1, 1, dtype=x.dtype, device=x.device)
        features, mask = sparse_encode(self.encoder, x, grid_mask)
        return self.decode(self.densify_features(features, mask))
