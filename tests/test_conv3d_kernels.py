"""How `conv3d` (mass_nn/networks/conv_blocks.py) runs a CPU convolution: narrow ones channels-last (the layout
reaches oneDNN, only the narrow ones take it, values and gradients are those of F.conv3d in fp32 and under bf16
autocast), and fp32 convolutions of one image without autograd straight through oneDNN instead of torch's
reference kernel (same values; not when a gradient is recorded or autocast is on), and one-channel 3×3×3
convolutions with their weight gradient from kernel_gradients (same values and gradients as F.conv3d)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from mass_nn.networks import conv_blocks
from mass_nn.networks.conv_blocks import (ResBlock3d, bypasses_reference_kernel, conv3d, uses_channels_last,
                                         uses_tap_weight_gradient)
from mass_nn.training.precision import step_autocast

CPU = torch.device("cpu")


class ConvolutionLayouts(TorchDispatchMode):
    """Records, for every aten.convolution call, whether its input arrived channels-last, and which
    convolution operators were called."""

    def __init__(self):
        super().__init__()
        self.channels_last: list[bool] = []
        self.operators: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if "convolution" in func.__name__:
            self.operators.append(func.__name__.split(".")[0])
        if func is torch.ops.aten.convolution.default:
            self.channels_last.append(args[0].dim() == 5 and not args[0].is_contiguous()
                                      and args[0].is_contiguous(memory_format=torch.channels_last_3d))
        return func(*args, **(kwargs or {}))


def _relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return float((actual.double() - expected.double()).norm() / expected.double().norm())


def _output_and_gradients(convolution, inputs, weight, upstream, precision):
    inputs = inputs.clone().requires_grad_()
    weight = weight.clone().requires_grad_()
    with step_autocast(precision, CPU):
        output = convolution(inputs, weight, padding=1)
    output.float().backward(upstream)
    return output.detach(), inputs.grad, weight.grad


def _rule(in_channels: int, out_channels: int, dtype: torch.dtype = torch.float32, groups: int = 1,
          device: str = "cpu") -> bool:
    return uses_channels_last(torch.zeros(1, in_channels, 4, 4, 4, device=device),
                              torch.zeros(out_channels, in_channels // groups, 3, 3, 3, device=device), groups, dtype)


def test_only_dense_narrow_cpu_convolutions_take_channels_last():
    # both dtypes: 1 or 8 input channels with at most 16 outputs
    for dtype in (torch.float32, torch.bfloat16):
        assert _rule(1, 8, dtype) and _rule(8, 8, dtype) and _rule(8, 16, dtype)
        assert not _rule(16, 16, dtype) and not _rule(32, 32, dtype) and not _rule(48, 32, dtype)
    # fp32 only: 8 -> 32 and 24 -> 16, measured faster channels-last in fp32 but not in bf16
    assert _rule(8, 32) and _rule(24, 16)
    assert not _rule(8, 32, torch.bfloat16) and not _rule(24, 16, torch.bfloat16)
    assert not _rule(8, 64) and not _rule(24, 64) and not _rule(16, 8)
    # the dtype defaults to the input's
    assert uses_channels_last(torch.zeros(1, 24, 4, 4, 4), torch.zeros(16, 24, 3, 3, 3))
    assert not uses_channels_last(torch.zeros(1, 24, 4, 4, 4, dtype=torch.bfloat16),
                                  torch.zeros(16, 24, 3, 3, 3, dtype=torch.bfloat16))
    assert not _rule(8, 8, groups=8)
    assert not _rule(8, 8, device="meta")


@pytest.mark.parametrize("in_channels, out_channels, expect_channels_last", [(8, 8, True), (8, 16, True),
                                                                              (4, 8, True), (24, 16, True),
                                                                              (16, 16, False)])
def test_the_layout_reaches_the_convolution_and_comes_back_ncdhw(in_channels, out_channels, expect_channels_last):
    inputs, weight = torch.randn(2, in_channels, 6, 5, 4), torch.randn(out_channels, in_channels, 3, 3, 3)
    with ConvolutionLayouts() as layouts:
        output = conv3d(inputs, weight, padding=1)
    assert layouts.channels_last == [expect_channels_last]
    assert output.is_contiguous() and output.shape == (2, out_channels, 6, 5, 4)


@pytest.mark.parametrize("precision, expect_channels_last", [("fp32", True), ("bf16", False)])
def test_the_layout_follows_the_dtype_the_convolution_computes_in(precision, expect_channels_last):
    # 24 -> 16 (the decoder's full-resolution block) is channels-last in fp32 only, also when autocast casts an
    # fp32 input to bf16
    inputs, weight = torch.randn(2, 24, 6, 5, 4), torch.randn(16, 24, 3, 3, 3)
    with step_autocast(precision, CPU), ConvolutionLayouts() as layouts:
        output = conv3d(inputs, weight, padding=1)
    assert layouts.channels_last == [expect_channels_last]
    assert output.is_contiguous() and output.dtype == (torch.bfloat16 if precision == "bf16" else torch.float32)


@pytest.mark.parametrize("precision, tolerance", [("fp32", 1e-5), ("bf16", 1e-2)])
def test_channels_last_computes_what_f_conv3d_computes(precision, tolerance):
    torch.manual_seed(0)
    inputs, weight = torch.randn(2, 8, 10, 9, 8), torch.randn(16, 8, 3, 3, 3)
    upstream = torch.randn(2, 16, 10, 9, 8)
    ours = _output_and_gradients(conv3d, inputs, weight, upstream, precision)
    plain = _output_and_gradients(F.conv3d, inputs, weight, upstream, precision)
    assert ours[0].dtype == plain[0].dtype == (torch.bfloat16 if precision == "bf16" else torch.float32)
    assert ours[1].dtype == ours[2].dtype == torch.float32  # gradients of the fp32 leaves, as before
    for mine, reference in zip(ours, plain):
        assert _relative_error(mine.float(), reference.float()) < tolerance


def test_a_full_resolution_res_block_is_unchanged_by_the_layout(monkeypatch):
    torch.manual_seed(0)
    block = ResBlock3d(8, 8)
    inputs, upstream = torch.randn(2, 8, 8, 8, 8), torch.randn(2, 8, 8, 8, 8)

    def run():
        block.zero_grad()
        x = inputs.clone().requires_grad_()
        with ConvolutionLayouts() as layouts:
            output = block(x)
            output.backward(upstream)
        return output.detach(), x.grad, [p.grad.clone() for p in block.parameters()], layouts.channels_last

    output, input_grad, weight_grads, layouts = run()
    assert layouts and all(layouts)
    monkeypatch.setattr(conv_blocks, "CHANNELS_LAST_FORCED", False)
    plain_output, plain_input_grad, plain_weight_grads, plain_layouts = run()
    assert plain_layouts and not any(plain_layouts)
    assert _relative_error(output, plain_output) < 1e-5
    assert _relative_error(input_grad, plain_input_grad) < 1e-5
    for mine, reference in zip(weight_grads, plain_weight_grads):
        assert _relative_error(mine, reference) < 1e-5


def test_one_image_without_autograd_goes_straight_to_onednn():
    torch.manual_seed(0)
    conv = torch.nn.Conv3d(8, 16, 3, padding=1, bias=True)
    image = torch.randn(1, 8, 12, 10, 8)
    expected = F.conv3d(image, conv.weight, conv.bias, padding=1).detach()
    with torch.no_grad(), ConvolutionLayouts() as recorded:
        assert bypasses_reference_kernel(image, conv.weight)
        output = conv3d(image, conv.weight, conv.bias, padding=(1, 1, 1))
    assert recorded.operators == ["mkldnn_convolution"]
    assert output.is_contiguous() and _relative_error(output, expected) < 1e-5


@pytest.mark.parametrize("case", ["autograd", "batch of two", "bf16 autocast", "float64"])
def test_the_direct_onednn_call_only_where_torch_would_take_its_reference_kernel(case):
    weight = torch.randn(8, 8, 3, 3, 3, requires_grad=case == "autograd")
    image = torch.randn(2 if case == "batch of two" else 1, 8, 6, 6, 6,
                        dtype=torch.float64 if case == "float64" else torch.float32)
    if case == "float64":
        weight = weight.double()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=case == "bf16 autocast"):
        assert not bypasses_reference_kernel(image, weight)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_the_input_gradient_comes_back_ncdhw_in_the_input_dtype(precision):
    # a channels-last gradient meeting ReLU's NCDHW output made ReLU's backward 20x slower
    hidden = torch.randn(2, 8, 6, 5, 4, requires_grad=True)
    weight = torch.randn(8, 8, 3, 3, 3, requires_grad=True)
    arriving = []
    with step_autocast(precision, CPU):
        rectified = F.relu(hidden)
        rectified.register_hook(lambda grad: arriving.append((grad.dtype, grad.is_contiguous())))
        output = conv3d(rectified, weight, padding=1)
    output.float().sum().backward()
    assert arriving == [(torch.float32, True)]


@pytest.mark.parametrize("with_bias", [False, True])
def test_one_channel_convolution_has_the_gradients_of_f_conv3d(with_bias):
    torch.manual_seed(0)
    x = torch.randn(3, 1, 9, 8, 7, requires_grad=True)
    weight = torch.randn(5, 1, 3, 3, 3, requires_grad=True)
    bias = torch.randn(5, requires_grad=True) if with_bias else None
    assert uses_tap_weight_gradient(x, weight, 1, 1)
    upstream = torch.randn(3, 5, 9, 8, 7)
    inputs = [x, weight] + ([bias] if with_bias else [])
    out = conv3d(x, weight, bias, 1, 1)
    grads = torch.autograd.grad(out, inputs, upstream)
    expected_out = F.conv3d(x.double(), weight.double(), None if bias is None else bias.double(), 1, 1)
    expected = torch.autograd.grad(expected_out, inputs, upstream.double())
    assert _relative_error(out.detach(), expected_out.detach()) < 1e-6
    for grad, reference in zip(grads, expected):
        assert grad.dtype == torch.float32 and grad.shape == reference.shape
        assert _relative_error(grad, reference) < 1e-6


def test_one_channel_weight_gradient_only_where_it_applies():
    x, weight = torch.randn(2, 1, 6, 6, 6), torch.randn(4, 1, 3, 3, 3, requires_grad=True)
    assert uses_tap_weight_gradient(x, weight, 1, 1)
    assert not uses_tap_weight_gradient(x, weight, 2, 1)  # strided
    assert not uses_tap_weight_gradient(x, weight, 1, 0)  # unpadded
    two_channels = torch.randn(4, 2, 3, 3, 3, requires_grad=True)
    assert not uses_tap_weight_gradient(torch.randn(2, 2, 6, 6, 6), two_channels, 1, 1)
    assert not uses_tap_weight_gradient(x, weight.detach(), 1, 1)  # no weight gradient recorded
    with torch.no_grad():
        assert not uses_tap_weight_gradient(x, weight, 1, 1)
    with step_autocast("bf16", CPU):
        assert not uses_tap_weight_gradient(x, weight, 1, 1)

