"""3D convolutional building blocks of the ResUNet: pre-activation convs, residual blocks, the convolution call.

Every norm is InstanceNorm3d without affine parameters or running statistics and every conv is bias-free, as in the
released Iris/MASS network; this is what makes the parameter counts match the paper.
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mass_nn.networks.kernel_gradients import KERNEL, kernel_weight_gradients


def autocast_disabled(device: torch.device):
    """A context that turns autocast off on `device` (a no-op where autocast does not exist, e.g. meta)."""
    if torch.amp.is_autocast_available(device.type):
        return torch.autocast(device_type=device.type, enabled=False)
    return contextlib.nullcontext()


# Which dense CPU convolutions run channels-last (NDHWC) instead of NCDHW, by the dtype they compute in; from
# benchmarks/conv_layout.py (forward + backward of every convolution of the network in both layouts, layout copies
# included) on 2-core EPYCs with AVX-512 + bf16 and with AVX2 only, at 64x48x48 batch 2 and 48^3 batch 16:
# - 1 and 8 input channels with at most 16 output channels (the full-resolution stem and residual blocks):
#   channels-last is 1.1-2.4x faster in fp32 and bf16 on both machines;
# - in fp32 also 8 -> 32 (the fused conv1 + shortcut after the first pooling: 1.10-1.65x) and 24 -> 16 (the
#   decoder's full-resolution block on the concatenated skip: 1.10-1.42x), which bf16 runs no faster
#   channels-last (0.91-1.14x);
# - 16, 32, 48 and more input channels range from 0.6x to 2.5x by machine and shape, and stay NCDHW.
# In fp32 the faster ones are exactly the input widths that are not a multiple of 16 (oneDNN's NCDHW kernels
# work on blocks of 16 channels on AVX-512).
CHANNELS_LAST_FORCED: bool | None = None  # True / False: every dense CPU convolution one way (benchmarks, tests)


def uses_channels_last(x: Tensor, weight: Tensor, groups: int = 1, dtype: torch.dtype | None = None) -> bool:
    """Whether `conv3d` runs this convolution channels-last (dtype: what it computes in, default x's)."""
    if x.device.type != "cpu" or groups != 1:
        return False
    if CHANNELS_LAST_FORCED is not None:
        return CHANNELS_LAST_FORCED
    in_channels, out_channels = x.shape[1], weight.shape[0]
    if (dtype or x.dtype) == torch.float32:
        return in_channels % 16 != 0 and in_channels <= 24 and out_channels <= 32
    return in_channels <= 8 and out_channels <= 16


class _ToChannelsLast(torch.autograd.Function):
    """x.to(dtype, channels-last) whose gradient comes back NCDHW-contiguous in x's dtype in one copy. Autograd's
    own backward of `to` keeps the channels-last strides, and the elementwise backward that receives that
    gradient (ReLU's, beside its NCDHW saved output) then runs 20x slower than on matching layouts."""

    @staticmethod
    def forward(ctx, x: Tensor, dtype: torch.dtype) -> Tensor:
        ctx.input_dtype = x.dtype
        return x.to(dtype=dtype, memory_format=torch.channels_last_3d)

    @staticmethod
    def backward(ctx, grad: Tensor):
        return grad.to(dtype=ctx.input_dtype, memory_format=torch.contiguous_format), None


def bypasses_reference_kernel(x: Tensor, weight: Tensor) -> bool:
    """Whether `conv3d` calls oneDNN directly: fp32 CPU convolutions of a single image without autograd.

    For one fp32 image torch takes its reference kernel (slow_conv3d) instead of oneDNN whenever
    batch × channels × depth × height ≤ 20480, a threshold made for 2D images: every level of a 48³ window at
    batch 1, i.e. in-context inference window by window and reference encoding. Measured 14× slower forward at
    8 channels on 48³ (72 against 5 ms on one core of an AVX-512 EPYC). Its backward takes the same reference
    kernel, so only convolutions that record no gradient are sent to oneDNN.
    """
    return (x.device.type == "cpu" and x.dtype == torch.float32 and x.shape[0] == 1
            and torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled
            and not torch.is_autocast_enabled("cpu")
            and not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)))


def as_triple(value) -> list[int]:
    """A per-axis convolution argument (stride, padding, kernel size, ...) as three ints: [v, v, v] for one."""
    return [int(v) for v in value] if isinstance(value, (tuple, list)) else [int(value)] * 3


def uses_tap_weight_gradient(x: Tensor, weight: Tensor, stride=1, padding=0, dilation=1, groups: int = 1) -> bool:
    """Whether `conv3d` computes this convolution's weight gradient with `kernel_gradients` (the 27 sums from a
    matrix product per block of the padded input) instead of oneDNN: fp32 CPU convolutions that record a weight
    gradient, with one input channel and a 3×3×3 kernel at stride 1 and padding 1 (the stem on the image).
    oneDNN's weight gradient ran at about 4 GFLOP/s there: 30 against 10 ms for 1 → 8 channels on 2×64×48×48
    (2-core AVX2 EPYC, with the earlier block-wise sums)."""
    return (x.device.type == "cpu" and x.dtype == torch.float32 and not torch.is_autocast_enabled("cpu")
            and groups == 1 and weight.shape[1] == 1 and tuple(weight.shape[2:]) == (KERNEL,) * 3
            and as_triple(stride) == [1] * 3 and as_triple(padding) == [1] * 3 and as_triple(dilation) == [1] * 3
            and torch.is_grad_enabled() and weight.requires_grad)


class _OneChannelConv3d(torch.autograd.Function):
    """A 3×3×3, padding-1 convolution of a one-channel input: forward and input gradient by oneDNN, the weight
    gradient from `kernel_gradients` (each output channel a kernel over the batch's maps)."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return _conv3d_in_layout(x, weight, bias, 1, 1, 1, 1, x.dtype)

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, weight = ctx.saved_tensors
        grad_x = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.ops.aten.convolution_backward(grad, x, weight, None, [1] * 3, [1] * 3, [1] * 3, False,
                                                         [0] * 3, 1, [True, False, False])[0]
        if ctx.needs_input_grad[1]:
            grad_weight = kernel_weight_gradients(x[:, 0], grad.transpose(0, 1)).unsqueeze(1).to(weight.dtype)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = grad.sum((0, 2, 3, 4))
        return grad_x, grad_weight, grad_bias


def conv3d(x: Tensor, weight: Tensor, bias: Tensor | None = None, stride=1, padding=0, dilation=1,
           groups: int = 1) -> Tensor:
    """F.conv3d with the same result (up to summation order) through the CPU kernel that runs it fastest:
    oneDNN for one image without autograd (`bypasses_reference_kernel`), channels-last for narrow inputs
    (`uses_channels_last`), the block-wise weight gradient for one input channel (`uses_tap_weight_gradient`).
    Input and output are NCDHW-contiguous either way."""
    if bypasses_reference_kernel(x, weight):
        return torch.ops.aten.mkldnn_convolution(x.contiguous(), weight.contiguous(), bias, as_triple(padding),
                                                 as_triple(stride), as_triple(dilation), groups)
    if uses_tap_weight_gradient(x, weight, stride, padding, dilation, groups):
        return _OneChannelConv3d.apply(x, weight, bias)
    dtype = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else x.dtype
    return _conv3d_in_layout(x, weight, bias, stride, padding, dilation, groups, dtype)


def _conv3d_in_layout(x: Tensor, weight: Tensor, bias: Tensor | None, stride, padding, dilation, groups: int,
                      dtype: torch.dtype) -> Tensor:
    """F.conv3d in the layout `uses_channels_last` gives it (computing in `dtype`); NCDHW-contiguous output."""
    if not uses_channels_last(x, weight, groups, dtype):
        return F.conv3d(x, weight, bias, stride, padding, dilation, groups)
    # under autocast the cast to its dtype and the layout change are one copy instead of two
    layout = torch.channels_last_3d
    return F.conv3d(_ToChannelsLast.apply(x, dtype), weight.to(dtype=dtype, memory_format=layout), bias, stride,
                    padding, dilation, groups).contiguous()


def small_map_safe_conv3d(x: Tensor, weight: Tensor, bias: Tensor | None = None, stride=1, padding=0,
                          dilation=1, groups: int = 1) -> Tensor:
    """`conv3d`, computed in fp32 under CPU autocast when the kernel is larger than x along an axis.

    With torch 2.14 (oneDNN), the bf16 weight gradient of a 3×3×3, padding-1 convolution of a map two voxels deep
    is wrong: relative error about 1, often inf, NaN or 10³⁴, in every draw (measured on 2-deep maps of 1-16²
    in-plane voxels and 16-256 channels; the output, the input gradient, strided convolutions and every map at
    least 3 deep match fp32 within bf16 rounding). Such maps are a ResUNet's deepest level on small patches (a 32³ patch at
    stride 16). Their convolutions cost next to nothing, so fp32 there costs nothing measurable. CUDA and fp32 runs
    are untouched.
    """
    if x.device.type == "cpu" and torch.is_autocast_enabled("cpu") and any(
            side < kernel for side, kernel in zip(x.shape[2:], weight.shape[2:])):
        with autocast_disabled(x.device):
            return conv3d(x.float(), weight.float(), None if bias is None else bias.float(), stride, padding,
                          dilation, groups)
    return conv3d(x, weight, bias, stride, padding, dilation, groups)


class SmallMapSafeConv3d(nn.Conv3d):
    """nn.Conv3d (zero padding) through `small_map_safe_conv3d`: same parameters, same state dict."""

    def forward(self, x: Tensor) -> Tensor:
        return small_map_safe_conv3d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)


class PreActConv3d(nn.Sequential):
    """InstanceNorm3d(affine=False) → ReLU → Conv3d(kernel, padding kernel // 2, no bias)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
                 eps: float = 1e-4):
        super().__init__(
            nn.InstanceNorm3d(in_channels, eps=eps),
            nn.ReLU(),
            SmallMapSafeConv3d(in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2,
                               bias=False),
        )


class ResBlock3d(nn.Module):
    """Pre-activation residual block: two 3×3×3 `PreActConv3d` plus a shortcut, with no activation after the sum.

    The shortcut is itself a pre-activation 3×3×3 conv when the channels or the stride change, else the identity.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, eps: float = 1e-4):
        super().__init__()
        self.conv1 = PreActConv3d(in_channels, out_channels, 3, stride, eps)
        self.conv2 = PreActConv3d(out_channels, out_channels, 3, 1, eps)
        needs_projection = in_channels != out_channels or stride != 1
        self.shortcut = PreActConv3d(in_channels, out_channels, 3, stride, eps) if needs_projection else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        """[B, in, D, H, W] → [B, out, D / stride, H / stride, W / stride]."""
        if isinstance(self.shortcut, nn.Identity):
            return self.conv2(self.conv1(x)) + x
        # conv1 and a projection shortcut start from the same IN → ReLU of x (no affine, same eps), so that map is
        # computed once and both convolutions run as one with their weights stacked: identical sums per output
        # channel, one pass over the input instead of two (measured 1.5x faster at full resolution on CPU)
        normed = self.conv1[1](self.conv1[0](x))
        first, projection = self.conv1[2], self.shortcut[2]
        joint = small_map_safe_conv3d(normed, torch.cat([first.weight, projection.weight]), stride=first.stride,
                                      padding=first.padding)
        hidden, shortcut = joint.split(first.out_channels, dim=1)
        return self.conv2(hidden) + shortcut


def res_blocks(in_channels: int, out_channels: int, count: int, eps: float) -> nn.Sequential:
    """`count` ResBlock3d: the first maps in → out channels, the rest keep out channels."""
    blocks = [ResBlock3d(in_channels, out_channels, eps=eps)]
    blocks += [ResBlock3d(out_channels, out_channels, eps=eps) for _ in range(count - 1)]
    return nn.Sequential(*blocks)
