"""One 3×3×3 kernel applied to many single-channel maps, with a fast weight gradient.

The task encoder's mask merge convolves B·K one-channel maps with the same 3×3×3 kernel. As a depthwise (grouped)
convolution the forward pass is fast on CPU, but the weight gradient of a depthwise convolution is one of
oneDNN's slow paths (about 150 ms for 26 maps of 64×48×48, against 18 ms for the forward). The weight gradient
is only 27 numbers: gradient[a, b, c] = Σ grad_out[n, z, y, x] · maps[n, z + a - 1, y + b - 1, x + c - 1]. With
both volumes zero-padded by one voxel and flattened, each of the 27 sums is a single dot product between the
padded gradient and the padded maps shifted by a constant offset (a shift never crosses into the next map,
because the gradient is zero on every padding voxel). That is what the backward here computes, in fp32 or wider.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

KERNEL = 3


def _grouped_conv(maps: Tensor, kernel: Tensor) -> Tensor:
    """maps [N, D, H, W] each convolved (padding 1) with kernel [3, 3, 3] → [N, D, H, W]."""
    count = maps.shape[0]
    weight = kernel.to(maps.dtype).reshape(1, 1, KERNEL, KERNEL, KERNEL).expand(count, 1, KERNEL, KERNEL, KERNEL)
    return F.conv3d(maps.unsqueeze(0), weight, padding=KERNEL // 2, groups=count).squeeze(0)


def shared_kernel_weight_gradient(maps: Tensor, grad_out: Tensor) -> Tensor:
    """The [3, 3, 3] gradient of Σ grad_out · conv(maps, kernel) with respect to the kernel, in fp32 or wider.

    maps and grad_out are [N, D, H, W]. Equal to the weight gradient of the grouped convolution up to float
    rounding (the sums run in a different order).
    """
    dtype = torch.promote_types(maps.dtype, torch.float32)  # bf16 maps are summed in fp32, fp64 stays fp64
    padded_grad = F.pad(grad_out.to(dtype), (1, 1) * 3).reshape(-1)
    padded_maps = F.pad(maps.to(dtype), (1, 1) * 3).reshape(-1)
    height, width = maps.shape[2] + 2, maps.shape[3] + 2
    length = padded_grad.numel()
    gradient = padded_grad.new_empty(KERNEL ** 3)
    index = 0
    for dz in (-1, 0, 1):
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                offset = (dz * height + dy) * width + dx
                start, stop = max(0, -offset), length - max(0, offset)
                gradient[index] = torch.dot(padded_grad[start:stop], padded_maps[start + offset:stop + offset])
                index += 1
    return gradient.reshape(KERNEL, KERNEL, KERNEL)


class _SharedKernelConv3d(torch.autograd.Function):
    @staticmethod
    def forward(ctx, maps: Tensor, kernel: Tensor) -> Tensor:
        ctx.save_for_backward(maps, kernel)
        return _grouped_conv(maps, kernel)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        maps, kernel = ctx.saved_tensors
        grad_maps = grad_kernel = None
        if ctx.needs_input_grad[0]:
            # the adjoint of a same-padded correlation is the correlation with the kernel flipped in every axis
            grad_maps = _grouped_conv(grad_out.contiguous(), kernel.flip(0, 1, 2))
        if ctx.needs_input_grad[1]:
            grad_kernel = shared_kernel_weight_gradient(maps, grad_out).to(kernel.dtype)
        return grad_maps, grad_kernel


def shared_kernel_conv3d(maps: Tensor, kernel: Tensor) -> Tensor:
    """Convolve (cross-correlate, padding 1, no bias) each of the maps [N, D, H, W] with one kernel [3, 3, 3];
    returns [N, D, H, W]. Differentiable in both arguments."""
    if maps.dim() != 4 or tuple(kernel.shape) != (KERNEL,) * 3:
        raise ValueError(f"expected maps [N, D, H, W] and a kernel [3, 3, 3], got {list(maps.shape)} and "
                         f"{list(kernel.shape)}")
    return _SharedKernelConv3d.apply(maps.contiguous(), kernel)
