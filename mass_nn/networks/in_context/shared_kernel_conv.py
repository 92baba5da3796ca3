"""3×3×3 kernels applied to many single-channel maps, with a fast weight gradient.

The task encoder's mask merge convolves B·K one-channel maps with the same 3×3×3 kernel, once per prior stage,
and the maps (the normalised task masks) are the same in every stage. As a depthwise (grouped) convolution the
forward pass is fast on CPU, but the weight gradient of a depthwise convolution is one of oneDNN's slow paths
(about 150 ms for 26 maps of 64×48×48, against 18 ms for the forward). The weight gradient is only 27 numbers per
kernel: gradient[a, b, c] = Σ grad_out[n, z, y, x] · maps[n, z + a - 1, y + b - 1, x + c - 1]. With both volumes
zero-padded by one voxel and flattened, each of the 27 sums is a single dot product between the padded gradient
and the padded maps shifted by a constant offset (a shift never crosses into the next map, because the gradient
is zero on every padding voxel). With S kernels on the same maps, the S gradients of all 27 offsets are one
matrix product per block of positions (`_weight_gradients`), so the maps are padded once and each value is read
once. That is what the backward here computes, in fp32 or wider.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

KERNEL = 3
PADDING = (1, 1) * 3


def _grouped_conv(maps: Tensor, kernel: Tensor) -> Tensor:
    """maps [N, D, H, W] each convolved (padding 1) with kernel [3, 3, 3] → [N, D, H, W]."""
    count = maps.shape[0]
    weight = kernel.to(maps.dtype).reshape(1, 1, KERNEL, KERNEL, KERNEL).expand(count, 1, KERNEL, KERNEL, KERNEL)
    return F.conv3d(maps.unsqueeze(0), weight, padding=KERNEL // 2, groups=count).squeeze(0)


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


class _SharedMapsConv3d(torch.autograd.Function):
    """maps [N, D, H, W] and kernels [S, 3, 3, 3] → S outputs [N, D, H, W], one per kernel."""

    @staticmethod
    def forward(ctx, maps: Tensor, kernels: Tensor) -> tuple[Tensor, ...]:
        ctx.save_for_backward(maps, kernels)
        return tuple(_grouped_conv(maps, kernel) for kernel in kernels)

    @staticmethod
    def backward(ctx, *grad_outs: Tensor):  # autograd passes zeros for an output without gradient
        maps, kernels = ctx.saved_tensors
        grad_maps = grad_kernels = None
        if ctx.needs_input_grad[0]:
            # the adjoint of a same-padded correlation is the correlation with the kernel flipped in every axis
            grad_maps = sum(_grouped_conv(grad.contiguous(), kernel.flip(0, 1, 2))
                            for grad, kernel in zip(grad_outs, kernels))
        if ctx.needs_input_grad[1]:
            dtype = _summing_dtype(maps.dtype)
            padded_maps = F.pad(maps.to(dtype), PADDING)
            padded_grads = _zero_border(padded_maps.new_empty((len(kernels), *padded_maps.shape)))
            for grad, padded_grad in zip(grad_outs, padded_grads):
                padded_grad[:, 1:-1, 1:-1, 1:-1] = grad
            grad_kernels = _weight_gradients(padded_maps, padded_grads).to(kernels.dtype)
        return grad_maps, grad_kernels


def shared_maps_conv3d(maps: Tensor, kernels: Tensor) -> tuple[Tensor, ...]:
    """Convolve (cross-correlate, padding 1, no bias) each of the maps [N, D, H, W] with each of the kernels
    [S, 3, 3, 3]; returns S tensors [N, D, H, W], the i-th from kernel i. Differentiable in both arguments."""
    if maps.dim() != 4 or kernels.dim() != 4 or tuple(kernels.shape[1:]) != (KERNEL,) * 3 or not len(kernels):
        raise ValueError(f"expected maps [N, D, H, W] and kernels [S, 3, 3, 3], got {list(maps.shape)} and "
                         f"{list(kernels.shape)}")
    return _SharedMapsConv3d.apply(maps.contiguous(), kernels)


def shared_kernel_conv3d(maps: Tensor, kernel: Tensor) -> Tensor:
    """Convolve (cross-correlate, padding 1, no bias) each of the maps [N, D, H, W] with one kernel [3, 3, 3];
    returns [N, D, H, W]. Differentiable in both arguments."""
    if maps.dim() != 4 or tuple(kernel.shape) != (KERNEL,) * 3:
        raise ValueError(f"expected maps [N, D, H, W] and a kernel [3, 3, 3], got {list(maps.shape)} and "
                         f"{list(kernel.shape)}")
    return shared_maps_conv3d(maps, kernel.unsqueeze(0))[0]
