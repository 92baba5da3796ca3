"""The ResUNet encoder run sparsely, SparK style (S3D baseline): only the positions of visible mask blocks carry
features, so nothing of a hidden block reaches a visible position.

The sparse forward walks the dense encoder's own modules (same parameters, same state-dict keys, so the weights
load into the dense downstream ResUNet) and changes what each one computes:
- the input is multiplied by the mask (a 3x3x3 stem would otherwise read hidden voxels at block borders),
- every Conv3d and MaxPool3d output is multiplied by the mask resampled to that map,
- every InstanceNorm3d takes its statistics over the active positions only and writes zeros elsewhere,
- ReLU keeps zeros at zero, residual sums of masked maps stay masked.
A map smaller than the mask grid is all active (`mask_at`); by then it only holds what visible positions gave.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mass_nn.networks.baselines.block_masking import mask_at
from mass_nn.networks.conv_blocks import ResBlock3d
from mass_nn.networks.in_context.encoder import ResUNetEncoder, check_spatial_size


class ActiveMask:
    """A block mask (B, 1, *grid), 1 = visible, and its resampling to each feature-map size (cached per size and
    dtype for one forward pass)."""

    def __init__(self, grid_mask: Tensor):
        self.grid_mask = grid_mask
        self._cache: dict[tuple, Tensor] = {}

    def at(self, size, dtype: torch.dtype = torch.float32) -> Tensor:
        """(B, 1, *size) in `dtype`: see `mask_at`."""
        key = (tuple(int(s) for s in size), dtype)
        if key not in self._cache:
            self._cache[key] = mask_at(self.grid_mask, key[0], dtype)
        return self._cache[key]


def sparse_instance_norm(x: Tensor, active: Tensor, eps: float, weight: Tensor | None = None,
                         bias: Tensor | None = None) -> Tensor:
    """Instance norm of x (B, C, *S) whose mean and biased variance per sample and channel are taken over the
    positions where `active` (B, 1, *S) is 1; inactive positions are 0 in the result (also after the optional
    per-channel affine). A sample without active positions gives zeros. Computed in fp32, returned in x's dtype."""
    values, active = x.float(), active.float()
    dims = tuple(range(2, x.dim()))
    count = active.sum(dim=dims, keepdim=True).clamp(min=1.0)
    mean = (values * active).sum(dim=dims, keepdim=True) / count
    centred = (values - mean) * active
    variance = centred.square().sum(dim=dims, keepdim=True) / count
    normed = centred * torch.rsqrt(variance + eps)
    if weight is not None:
        shape = (1, -1) + (1,) * len(dims)
        normed = normed * weight.float().view(shape) + (bias.float().view(shape) if bias is not None else 0.0)
        normed = normed * active
    return normed.to(x.dtype)


def _sparse_norm(norm: nn.InstanceNorm3d, x: Tensor, mask: ActiveMask) -> Tensor:
    if norm.track_running_stats:
        raise TypeError("sparse forward: InstanceNorm3d with running statistics has no sparse counterpart here")
    return sparse_instance_norm(x, mask.at(x.shape[2:], x.dtype), norm.eps, norm.weight, norm.bias)


def sparse_forward(module: nn.Module, x: Tensor, mask: ActiveMask) -> Tensor:
    """`module`(x) with every conv, pooling and norm restricted to the active positions of `mask`; x must already
    be 0 at inactive positions. Knows the modules of the ResUNet encoder; TypeError for any other module."""
    if isinstance(module, ResBlock3d):
        return sparse_forward(module.conv2, sparse_forward(module.conv1, x, mask), mask) \
            + sparse_forward(module.shortcut, x, mask)
    if isinstance(module, nn.Sequential):
        for child in module:
            x = sparse_forward(child, x, mask)
        return x
    if isinstance(module, nn.InstanceNorm3d):
        return _sparse_norm(module, x, mask)
    if isinstance(module, (nn.Conv3d, nn.MaxPool3d)):
        out = module(x)
        return out * mask.at(out.shape[2:], out.dtype)
    if isinstance(module, nn.ReLU):
        return F.relu(x)
    if isinstance(module, nn.Identity):
        return x
    raise TypeError(f"sparse forward: no sparse rule for {type(module).__name__}")


def sparse_encode(encoder: ResUNetEncoder, x: Tensor, grid_mask: Tensor) -> tuple[list[Tensor], ActiveMask]:
    """The encoder's five feature maps (deepest first, like `encoder(x)`) computed from the visible blocks of x
    only, and the mask that says which of their positions are active. With an all-visible mask this is the dense
    forward."""
    check_spatial_size(x)
    mask = ActiveMask(grid_mask)
    features = [sparse_forward(encoder.stem, x * mask.at(x.shape[2:], x.dtype), mask)]
    for stage in encoder.stages:
        features.append(sparse_forward(stage, features[-1], mask))
    return features[::-1], mask
