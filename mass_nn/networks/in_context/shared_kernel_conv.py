"""3×3×3 kernels applied to many single-channel maps, with a fast weight gradient.

The task encoder's mask merge convolves B·K one-channel maps with the same 3×3×3 kernel, once per prior stage,
and the maps (the normalised task masks) are the same in every stage. As a depthwise (grouped) convolution the
forward pass is fast on CPU, but the weight gradient of a depthwise convolution is one of oneDNN's slow paths
(about 150 ms for 26 maps of 64×48×48, against 18 ms for the forward). The weight gradient is only 27 numbers per
kernel; with S kernels on the same maps, `kernel_gradients.kernel_weight_gradients` computes the S gradients of
all 27 offsets in one pass, in fp32 or wider. That is what the backward here uses. On the CPU both directions run
the compiled stencil kernels where they are built (`native_stencils`): the forward 4.8-6.4× faster than oneDNN's
depthwise path at batch 16 (which spends most of its time reordering the maps), with the torch path as fallback.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from mass_nn.networks import native_stencils
from mass_nn.networks.kernel_gradients import KERNEL, kernel_weight_gradients


def _grouped_conv(maps: Tensor, kernel: Tensor) -> Tensor:
    """maps [N, D, H, W] each convolved (padding 1) with kernel [3, 3, 3] → [N, D, H, W]."""
    count = maps.shape[0]
    weight = kernel.to(maps.dtype).reshape(1, 1, KERNEL, KERNEL, KERNEL).expand(count, 1, KERNEL, KERNEL, KERNEL)
    return F.conv3d(maps.unsqueeze(0), weight, padding=KERNEL // 2, groups=count).squeeze(0)


class _SharedMapsConv3d(torch.autograd.Function):
    """maps [N, D, H, W] and kernels [S, 3, 3, 3] → S outputs [N, D, H, W], one per kernel."""

    @staticmethod
    def forward(ctx, maps: Tensor, kernels: Tensor) -> tuple[Tensor, ...]:
        ctx.save_for_backward(maps, kernels)
        if native_stencils.usable_for(maps):
            return tuple(native_stencils.stencil_forward(maps, kernels))
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
            grad_kernels = kernel_weight_gradients(maps, grad_outs).to(kernels.dtype)
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
