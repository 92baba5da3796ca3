"""The decoder: one upsampling stage per encoder level below the deepest, with skip connections, conditioned on
the task embedding by fusion stages at the deepest `num_prior_stages` resolutions."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from mass_nn.networks.conv_blocks import res_blocks
from mass_nn.networks.in_context.config import InContextNetworkConfig
from mass_nn.networks.in_context.fusion import FusionStage
from mass_nn.networks.trilinear import resize_trilinear


class UpBlock(nn.Module):
    """Trilinear upsampling (align_corners=True, fp32) to the skip's size, concatenation [skip, upsampled], then
    `num_blocks` ResBlock3d ((skip + in) → out, then out → out)."""

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int, num_blocks: int, eps: float = 1e-4):
        super().__init__()
        self.blocks = res_blocks(skip_channels + in_channels, out_channels, num_blocks, eps)

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        """x [B, in, d, h, w], skip [B, skip, D, H, W] → [B, out, D, H, W]."""
        upsampled = resize_trilinear(x, skip.shape[2:])
        return self.blocks(torch.cat([skip, upsampled.to(skip.dtype)], dim=1))


class MaskDecoder(nn.Module):
    """Decodes the query image's features under a task embedding.

    Level i (deepest first) is fused with task_embedding[i] before being upsampled, for i < num_prior_stages. The
    fused task tokens are not carried to the next level; only each level's token 0 per task (the first learnable
    query) is kept as that level's "posterior" for the mask head. With L levels, up stage j brings level L-1-j to
    level L-2-j with num_blocks[L-2-j] blocks (the ResUNet: mirrors down stage 3 - j).
    """

    def __init__(self, config: InContextNetworkConfig):
        super().__init__()
        channels, eps, last = config.channels, config.norm_eps, len(config.channels) - 1
        self.fusions = nn.ModuleList(
            FusionStage(dim, config.fusion_depth, config.head_dim, config.mlp_ratio)
            for dim in config.prior_channels()
        )
        self.ups = nn.ModuleList(
            UpBlock(channels[last - j], channels[last - 1 - j], channels[last - 1 - j],
                    config.num_blocks[last - 1 - j], eps)
            for j in range(last)
        )

    def forward(self, features: list[Tensor], task_embedding: list[Tensor]) -> tuple[Tensor, list[Tensor]]:
        """features: the encoder's maps, deepest first; task_embedding: num_prior_stages tensors [B, K, T, C_i].
        Returns (dense [B, c0, D, H, W], posteriors: one [B, K, C_i] per prior stage)."""
        if len(features) != len(self.ups) + 1 or len(task_embedding) != len(self.fusions):
            raise ValueError(f"decoder needs {len(self.ups) + 1} feature maps and {len(self.fusions)} task-embedding "
                             f"stages, got {len(features)} and {len(task_embedding)}")
        x, posteriors = features[0], []
        for j, (up, skip) in enumerate(zip(self.ups, features[1:])):
            if j < len(self.fusions):
                x, task_tokens = self.fusions[j](x, task_embedding[j])
                posteriors.append(task_tokens[:, :, 0])
            x = up(x, skip)
        return x, posteriors
