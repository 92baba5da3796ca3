"""One decoder fusion stage: the query image's feature map and a task embedding exchange information."""
from __future__ import annotations

from torch import Tensor, nn

from mass_nn.networks.attention import FusionBlock


class FusionStage(nn.Module):
    """`depth` FusionBlocks between the voxels of a feature map (no positional encoding) and all K·T task tokens.

    Tasks interact here (task tokens self-attend across tasks), so a task's output depends on the other tasks in
    the pass; the stage is equivariant to permutations of the tasks.
    """

    def __init__(self, dim: int, depth: int, head_dim: int, mlp_ratio: int):
        super().__init__()
        self.blocks = nn.ModuleList(FusionBlock(dim, head_dim, mlp_ratio) for _ in range(depth))

    def forward(self, features: Tensor, task_tokens: Tensor) -> tuple[Tensor, Tensor]:
        """features [B, C, d, h, w], task_tokens [B, K, T, C] → (features [B, C, d, h, w], tokens [B, K, T, C])."""
        batch, channels = features.shape[:2]
        if task_tokens.dim() != 4 or task_tokens.shape[0] != batch or task_tokens.shape[-1] != channels:
            raise ValueError(f"task tokens {list(task_tokens.shape)} do not fit features {list(features.shape)}: "
                             f"expected [{batch}, K, T, {channels}]")
        image = features.flatten(2).transpose(1, 2)
        task = task_tokens.flatten(1, 2)
        for block in self.blocks:
            image, task = block(image, task)
        image = image.transpose(1, 2).reshape(features.shape)
        return image, task.reshape(task_tokens.shape)
