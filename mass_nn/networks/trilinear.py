"""Trilinear interpolation (align_corners=True) as three 1D linear maps, one per axis.

Trilinear resizing is separable: resizing [B, C, d, h, w] to (D, H, W) is the product of three matrices of 1D
linear interpolation, [W, w] along the width, [H, h] along the height and [D, d] along the depth. Applied as three
matrix products, forward and backward are plain GEMMs; on CPU that is about 3x faster than
`F.interpolate(mode="trilinear")` forward + backward for the decoder's upsampling (64×48×48 output, 16
channels, batch 2: 69 → 22 ms on a 2-core AVX2 EPYC), whose backward scatters into the input voxel by voxel.
The same matrices, transposed, give the adjoint used by the task encoder's foreground pooling.
"""
from __future__ import annotations

import torch
from torch import Tensor

from mass_nn.networks.conv_blocks import autocast_disabled


def linear_interpolation_matrix(in_size: int, out_size: int, device: torch.device,
                                dtype: torch.dtype = torch.float32) -> Tensor:
    """The [out_size, in_size] matrix of 1D linear interpolation with align_corners=True (the first and last
    samples of both grids coincide; one output sample reads the first input sample)."""
    scale = (in_size - 1) / (out_size - 1) if out_size > 1 else 0.0
    positions = torch.arange(out_size, dtype=torch.float64, device=device) * scale
    lower = positions.floor().long().clamp(max=in_size - 1)
    upper = (lower + 1).clamp(max=in_size - 1)
    weight_upper = positions - lower.double()
    rows = torch.arange(out_size, device=device)
    matrix = torch.zeros(out_size, in_size, dtype=torch.float64, device=device)
    matrix.index_put_((rows, lower), 1.0 - weight_upper, accumulate=True)
    matrix.index_put_((rows, upper), weight_upper, accumulate=True)
    return matrix.to(dtype)


def _computing_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)  # bf16 / fp16 are resized in fp32, fp64 stays fp64


def resize_trilinear(x: Tensor, size: tuple[int, int, int] | list[int]) -> Tensor:
    """Trilinear (align_corners=True) resize of [B, C, D, H, W] to `size`, computed in fp32 (fp64 for fp64
    input), returned in x's dtype; equal to `F.interpolate(x, size, mode="trilinear", align_corners=True)` within
    float rounding.

    Under bf16 autocast the interpolation would otherwise run in bf16, which visibly blurs upsampled features.
    The width comes first: its product reads x in memory order and needs no copy.
    """
    batch, channels, depth, height, width = x.shape
    out_depth, out_height, out_width = (int(side) for side in size)
    dtype = _computing_dtype(x.dtype)
    with autocast_disabled(x.device):
        along_depth, along_height, along_width = (
            linear_interpolation_matrix(low, high, x.device, dtype)
            for low, high in zip((depth, height, width), (out_depth, out_height, out_width)))
        resized = x.to(dtype) @ along_width.t()
        resized = along_height @ resized.reshape(batch * channels * depth, height, out_width)
        resized = along_depth @ resized.reshape(batch * channels, depth, out_height * out_width)
    return resized.reshape(batch, channels, out_depth, out_height, out_width).to(x.dtype)


def trilinear_upsample_adjoint(volumes: Tensor, low_size: tuple[int, ...] | list[int]) -> Tensor:
    """Apply the adjoint (transpose) of trilinear align_corners=True upsampling low_size → volumes' size.

    volumes [B, K, D, H, W] → [B, K, d, h, w] in fp32 (fp64 for fp64 input), such that
    ⟨upsample(z), volumes⟩ = ⟨z, adjoint(volumes)⟩ for every z of size low_size.
    """
    out = volumes.to(_computing_dtype(volumes.dtype))
    # the contiguous last axis first: its product needs no copy of the full-size volumes and shrinks them before
    # the strided axes are moved
    for axis, low in reversed(list(zip(range(2, 5), low_size))):
        matrix = linear_interpolation_matrix(low, out.shape[axis], out.device, out.dtype)
        out = (out.movedim(axis, -1) @ matrix).movedim(-1, axis)
    return out
