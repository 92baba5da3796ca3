"""The task encoder: turns reference features and reference masks into task embeddings, one per prior stage.

For each task (mask) k and each prior stage, a set of m learnable query tokens plus one foreground token (the
masked mean of the reference features) attend to "context" tokens, in which the mask has been fused with the
features at full resolution through sub-pixel convolution. Tasks are processed as independent rows (B·K), so the
embedding of task k never depends on the other tasks.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mass_nn.networks.attention import TaskQueryBlock
from mass_nn.networks.conv_blocks import SmallMapSafeConv3d, autocast_disabled
from mass_nn.networks.in_context.config import InContextNetworkConfig
from mass_nn.networks.in_context.pixel_shuffle import pixel_shuffle_3d, pixel_unshuffle_3d, scale_triple
from mass_nn.networks.in_context.shared_kernel_conv import shared_kernel_conv3d, shared_maps_conv3d
from mass_nn.networks.trilinear import resize_trilinear, trilinear_upsample_adjoint

TaskEmbedding = list[Tensor]


def foreground_pool(features: Tensor, masks: Tensor, method: str = "adjoint") -> Tensor:
    """Masked mean of the trilinearly upsampled features: [B, C, d, h, w] × [B, K, D, H, W] → [B, K, C].

    The voxel count is clamped to at least 1, so an empty mask gives a zero vector. "upsample" materialises the
    full-resolution features (C·D·H·W values per image); "adjoint" moves the mask to the feature grid instead, which
    is exactly equivalent because upsampling is linear, and needs only K·D·H·W extra values.
    """
    with autocast_disabled(features.device):
        masks = masks.float()
        counts = masks.flatten(2).sum(-1).clamp(min=1.0)
        if method == "upsample":
            weights, values = masks, resize_trilinear(features.float(), masks.shape[2:])
        elif method == "adjoint":
            weights, values = trilinear_upsample_adjoint(masks, features.shape[2:]), features.float()
        else:
            raise ValueError(f"unknown foreground pool {method!r}; use 'upsample' or 'adjoint'")
        sums = torch.bmm(weights.flatten(2), values.flatten(2).transpose(1, 2))
        return (sums / counts.unsqueeze(-1)).to(features.dtype)


def _pre_act_conv(in_channels: int, out_channels: int, kernel_size: int, eps: float) -> nn.Sequential:
    """InstanceNorm → ReLU → Conv3d with bias (the task encoder's convs, unlike the backbone's, have biases; through
    `conv3d`, like the backbone's)."""
    return nn.Sequential(nn.InstanceNorm3d(in_channels, eps=eps), nn.ReLU(),
                         SmallMapSafeConv3d(in_channels, out_channels, kernel_size, padding=kernel_size // 2,
                                            bias=True))


def merge_dtype(masks: Tensor, features: Tensor) -> torch.dtype:
    """The dtype of a mask merge: autocast's where it is on for the masks' device (the merge's shared map comes
    out of a convolution), else the features'."""
    device_type = masks.device.type
    if torch.amp.is_autocast_available(device_type) and torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return features.dtype


class MaskMerge(nn.Module):
    """Per task, IN → ReLU → Conv3d(2 → 1, 3×3×3, bias) of the two-channel map [shared map; task mask].

    InstanceNorm and convolution act channel by channel, so the shared map's part is computed once per image and
    broadcast over the K tasks instead of being copied K times: same result, K× less work and memory for it, and
    no gradient computation for the mask channel. Both parts are `shared_kernel_conv3d` calls: on the CPU the
    compiled stencil kernels (`native_stencils`), elsewhere a depthwise (grouped) convolution forward and a weight
    gradient of 27 sums instead of the slow depthwise weight gradient. The mask part depends
    on the masks and this merge's mask kernel only, so a task encoder stage takes its two halves apart
    (`shared_part` here, `mask_parts` for all stages at once) instead of calling this module.
    """

    def __init__(self, eps: float = 1e-4):
        super().__init__()
        self.eps = eps
        self.conv = nn.Conv3d(2, 1, 3, padding=1, bias=True)

    def forward(self, shared: Tensor, masks: Tensor) -> Tensor:
        """shared [B, 1, D, H, W], masks [B, K, D, H, W] → merged [B·K, 1, D, H, W]."""
        mask_part = mask_parts([self], masks, shared.dtype)[0]
        return (mask_part + self.shared_part(shared)).reshape(-1, 1, *masks.shape[2:])

    def shared_part(self, shared: Tensor) -> Tensor:
        """The shared map's half of the merge plus the bias, once per image: [B, 1, D, H, W] → [B, 1, D, H, W]."""
        return shared_kernel_conv3d(self._norm_act(shared).flatten(0, 1), self.conv.weight[0, 0]).unsqueeze(1) \
            + self.conv.bias

    def _norm_act(self, x: Tensor) -> Tensor:
        return F.relu(F.instance_norm(x, eps=self.eps))


def mask_parts(merges: list[MaskMerge], masks: Tensor, dtype: torch.dtype) -> list[Tensor]:
    """Each merge's convolution of the instance-normalised, rectified task masks [B, K, D, H, W] (in `dtype`)
    with its mask kernel, one [B, K, D, H, W] tensor per merge. The masks are normalised and padded once for all
    merges, and the kernels' weight gradients share one pass over them (`shared_maps_conv3d`)."""
    epsilons = {merge.eps for merge in merges}
    if len(epsilons) != 1:
        raise ValueError(f"mask merges with different InstanceNorm eps {sorted(epsilons)} cannot share their masks")
    normed = F.relu(F.instance_norm(masks.to(dtype), eps=epsilons.pop()))  # per (b, k) map: a per-task norm
    parts = shared_maps_conv3d(normed.flatten(0, 1), torch.stack([merge.conv.weight[0, 1] for merge in merges]))
    return [part.reshape(masks.shape) for part in parts]


class TaskEncoderStage(nn.Module):
    """Task embedding at one feature level: features [B, C, d, h, w] at 1/scale of the masks [B, K, D, H, W]
    → [B, K, num_queries + 1, C]; token num_queries (the last) starts as the foreground token.

    Context stream: expand C → scale³ channels (the product of the per-axis factors), pixel-shuffle to one
    full-resolution map, merge it with each task's mask into one channel (`MaskMerge`), add the learnable
    positional map (sliced to D, H, W), pixel-unshuffle, squeeze back to C channels and add the features. Masks
    may not exceed positional_size.
    """

    def __init__(self, dim: int, scale: int | tuple[int, int, int], num_queries: int, depth: int, head_dim: int,
                 mlp_ratio: int, positional_size: list[int], eps: float = 1e-4, foreground_pool: str = "adjoint"):
        super().__init__()
        self.scale = scale_triple(scale)
        sub_pixels = math.prod(self.scale)
        self.foreground_pool = foreground_pool
        self.queries = nn.Parameter(torch.empty(num_queries, dim))
        nn.init.xavier_uniform_(self.queries)
        self.positional_map = nn.Parameter(torch.randn(1, 1, *positional_size))
        self.expand = _pre_act_conv(dim, sub_pixels, 1, eps)
        self.merge = MaskMerge(eps)
        self.squeeze = _pre_act_conv(sub_pixels, dim, 1, eps)
        self.norm_query = nn.LayerNorm(dim)
        self.norm_foreground = nn.LayerNorm(dim)
        self.norm_combined = nn.LayerNorm(dim)
        self.blocks = nn.ModuleList(TaskQueryBlock(dim, head_dim, mlp_ratio) for _ in range(depth))
        self.norm_post = nn.LayerNorm(dim)

    def forward(self, features: Tensor, masks: Tensor, mask_part: Tensor | None = None) -> Tensor:
        """features [B, C, d, h, w], masks [B, K, d·s, h·s, w·s] → task embedding [B, K, num_queries + 1, C];
        mask_part: this stage's `mask_parts` of the masks, when the caller computed them (see `MaskMerge`)."""
        self.check_sizes(features, masks)
        batch, num_tasks = masks.shape[:2]
        tokens = self.initial_tokens(self.foreground_tokens(features, masks))
        context = self.context_tokens(features, masks, mask_part)
        for block in self.blocks:
            tokens = block(tokens, context)
        tokens = self.norm_post(tokens)
        return tokens.reshape(batch, num_tasks, *tokens.shape[1:])

    def check_sizes(self, features: Tensor, masks: Tensor) -> None:
        """Raise ValueError unless masks are `scale` times the features and fit the positional map."""
        if features.dim() != 5 or masks.dim() != 5 or features.shape[0] != masks.shape[0]:
            raise ValueError(f"expected features [B, C, d, h, w] and masks [B, K, D, H, W], got "
                             f"{list(features.shape)} and {list(masks.shape)}")
        expected = [side * factor for side, factor in zip(features.shape[2:], self.scale)]
        if list(masks.shape[2:]) != expected:
            raise ValueError(f"masks of spatial size {list(masks.shape[2:])} must be {list(self.scale)}× the "
                             f"features' "
                             f"{list(features.shape[2:])}, i.e. {expected}")
        limit = list(self.positional_map.shape[2:])
        if any(side > most for side, most in zip(masks.shape[2:], limit)):
            raise ValueError(f"reference of spatial size {list(masks.shape[2:])} is larger than the positional map "
                             f"{limit} (the training patch, input_size_zyx) in at least one axis")

    def foreground_tokens(self, features: Tensor, masks: Tensor) -> Tensor:
        """Masked mean features per task, [B, K, C], before any LayerNorm (zero for an empty mask)."""
        return foreground_pool(features, masks, self.foreground_pool)

    def context_tokens(self, features: Tensor, masks: Tensor, mask_part: Tensor | None = None) -> Tensor:
        """Reference features fused with each task's mask: [B·K, d·h·w, C]."""
        batch, num_tasks, depth, height, width = masks.shape
        shuffled = pixel_shuffle_3d(self.expand(features), self.scale)
        if mask_part is None:
            mask_part = mask_parts([self.merge], masks, shuffled.dtype)[0]
        # merge → + positional map → pixel-unshuffle, with the per-image terms (shared half, bias, positional map)
        # unshuffled once per image and added after the per-task half is unshuffled: unshuffling is a
        # permutation, so the sum is the same, without two passes over B·K full-resolution maps
        per_image = self.merge.shared_part(shuffled) + self.positional_map[:, :, :depth, :height, :width]
        per_task = pixel_unshuffle_3d(mask_part, self.scale).unflatten(1, (num_tasks, -1))
        merged = per_task + pixel_unshuffle_3d(per_image, self.scale).unsqueeze(1)
        squeezed = self.squeeze(merged.flatten(0, 1))
        fused = squeezed.unflatten(0, (batch, num_tasks)) + features.unsqueeze(1)
        return fused.flatten(3).transpose(-1, -2).flatten(0, 1)

    def initial_tokens(self, foreground: Tensor) -> Tensor:
        """[LN(queries); LN(foreground)] followed by a joint LayerNorm: [B, K, C] → [B·K, num_queries + 1, C]."""
        foreground = self.norm_foreground(foreground.flatten(0, 1)).unsqueeze(1)
        queries = self.norm_query(self.queries).expand(foreground.shape[0], -1, -1)
        return self.norm_combined(torch.cat([queries, foreground.to(queries.dtype)], dim=1))


class TaskEncoder(nn.Module):
    """One `TaskEncoderStage` per prior stage: stage i works on the i-th deepest level with that level's stride as
    pixel-shuffle factor (ResUNet: 16 / 2**i, i.e. 16, 8, 4 for three stages)."""

    def __init__(self, config: InContextNetworkConfig):
        super().__init__()
        strides = config.level_strides()[::-1]  # deepest first, like the prior stages
        self.stages = nn.ModuleList(
            TaskEncoderStage(dim, tuple(strides[i]), config.num_queries, config.task_depth, config.head_dim,
                             config.mlp_ratio, list(config.input_size_zyx), config.norm_eps, config.foreground_pool)
            for i, dim in enumerate(config.prior_channels())
        )

    def forward(self, features: list[Tensor], masks: Tensor) -> TaskEmbedding:
        """Reference features (deepest first; only the first len(stages) are used) and float masks [B, K, D, H, W]
        → task embedding: one [B, K, num_queries + 1, C_i] tensor per stage."""
        if len(features) < len(self.stages):
            raise ValueError(f"need at least {len(self.stages)} feature levels, got {len(features)}")
        for stage, level in zip(self.stages, features):
            stage.check_sizes(level, masks)
        parts = mask_parts([stage.merge for stage in self.stages], masks, merge_dtype(masks, features[0]))
        return [stage(level, masks, part) for stage, level, part in zip(self.stages, features, parts)]
