"""The weight gradient of 3×3×3 kernels applied to one-channel maps, block by block.

gradient[s, a, b, c] = Σ grad_out[s, n, z, y, x] · maps[n, z + a - 1, y + b - 1, x + c - 1] for S kernels on the
same N maps: the mask merge's kernels (`in_context/shared_kernel_conv.py`) and any convolution with one input
channel (`conv_blocks.conv3d`: the stem on the image, whose weight gradient oneDNN computed at about 4 GFLOP/s, 30
ms for 1 → 8 channels on 2×64×48×48 on a 2-core AVX2 EPYC, against 10 ms here). With both volumes zero-padded by
one voxel and flattened, each of the 27 sums is a dot product between the padded gradient and the padded maps
shifted by a constant offset (a shift never crosses into the next map, because the gradient is zero on every
padding voxel).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

KERNEL = 3
PADDING = (1, 1) * 3


# Positions per block of the weight gradient: the block's 27 shifted copies of the maps (27 × 16384 fp32 values,
# 1.7 MiB) stay in cache while one matrix product reads them. Measured on a 2-core AVX2 EPYC against the 27
# matrix-vector products over the whole volumes that this replaced: 1.8x faster for three kernels on 26 maps of
# 64×48×48, 2.1x on 208 maps of 48³; blocks of 4,096 and 65,536 positions were slower.
BLOCK_POSITIONS = 16384


def _weight_gradients(padded_maps: Tensor, padded_grads: Tensor) -> Tensor:
    """padded maps [N, D+2, H+2, W+2] and padded gradients [S, N, D+2, H+2, W+2] (zero on the padding), both in
    the summing dtype → the S kernel gradients [S, 3, 3, 3].

    Block by block of flat positions: the maps shifted by the 27 tap offsets are one strided view of the
    padded maps (strides (H+2)(W+2), W+2 and 1 over the three kernel axes), copied into a [27, block] matrix and
    multiplied with the block's gradients, so each value of the volumes is read from memory once instead of 27
    times. The first and last (H+2)(W+2) + (W+2) + 1 positions lie in the padding, where the gradients are zero,
    so every shifted view stays inside the maps."""
    flat_maps, flat_grads = padded_maps.reshape(-1), padded_grads.reshape(padded_grads.shape[0], -1)
    plane, row = padded_maps.shape[2] * padded_maps.shape[3], padded_maps.shape[3]
    margin = plane + row + 1
    gradients = flat_grads.new_zeros(KERNEL ** 3, flat_grads.shape[0])
    for start in range(margin, flat_maps.numel() - margin, BLOCK_POSITIONS):
        stop = min(start + BLOCK_POSITIONS, flat_maps.numel() - margin)
        shifted = flat_maps.as_strided((KERNEL, KERNEL, KERNEL, stop - start), (plane, row, 1, 1), start - margin)
        gradients.addmm_(shifted.reshape(KERNEL ** 3, -1), flat_grads[:, start:stop].t())
    return gradients.t().reshape(-1, KERNEL, KERNEL, KERNEL)


def _zero_border(volumes: Tensor) -> Tensor:
    """Zero the one-voxel border of the last three axes in place (the interior is written next); returns it."""
    for axis in (-3, -2, -1):
        volumes.select(axis, 0).zero_()
        volumes.select(axis, -1).zero_()
    return volumes


def _summing_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)  # bf16 maps are summed in fp32, fp64 stays fp64


def padded_gradients(maps: Tensor, grads: Tensor | list[Tensor] | tuple[Tensor, ...]) -> Tensor:
    """The S kernels' gradients [S, 3, 3, 3] from maps [N, D, H, W] and one output gradient [N, D, H, W] per
    kernel ([S, N, D, H, W] or S tensors, any strides), summed in fp32 or wider: both are padded once, then
    `_weight_gradients`."""
    dtype = _summing_dtype(maps.dtype)
    padded_maps = F.pad(maps.to(dtype), PADDING)
    padded_grads = _zero_border(padded_maps.new_empty((len(grads), *padded_maps.shape)))
    for grad, padded_grad in zip(grads, padded_grads):
        padded_grad[:, 1:-1, 1:-1, 1:-1] = grad
    return _weight_gradients(padded_maps, padded_grads)
