"""The training step's speed-ups compute what the plain formulation computes: same outputs and gradients within
float tolerance, on fixed inputs, and the same parameter counts (see documentation/pretraining.md, step cost)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mass_nn.networks.attention import attend, multi_head_attention
from mass_nn.networks.conv_blocks import ResBlock3d
from mass_nn.networks import kernel_gradients, native_stencils
from mass_nn.networks.in_context.config import InContextNetworkConfig
from mass_nn.networks.in_context.in_context_model import InContextSegmenter
from mass_nn.networks.in_context.shared_kernel_conv import shared_kernel_conv3d, shared_maps_conv3d
from mass_nn.networks.in_context.task_encoder import MaskMerge, TaskEncoder
from mass_nn.training.optim.lamb import Lamb
from tests.step_reference import step_record

REFERENCE = Path(__file__).parent / "data" / "step_reference_a3d41a4.json"


def _close(actual: torch.Tensor, expected: torch.Tensor, rtol: float = 1e-4) -> bool:
    """Equal up to rtol relative to the expected tensor's largest magnitude (robust to the CPU's kernels)."""
    scale = float(expected.abs().max()) or 1.0
    return bool((actual - expected).abs().max() <= rtol * scale)


def _grads(module: nn.Module) -> list[torch.Tensor]:
    return [p.grad.clone() for p in module.parameters()]


def test_shared_kernel_conv_matches_grouped_convolution_and_its_gradients(stencil_path):
    torch.manual_seed(0)
    maps = torch.randn(5, 6, 7, 9, dtype=torch.float64, requires_grad=True)
    kernel = torch.randn(3, 3, 3, dtype=torch.float64, requires_grad=True)
    expected = F.conv3d(maps.unsqueeze(1), kernel.reshape(1, 1, 3, 3, 3), padding=1).squeeze(1)
    actual = shared_kernel_conv3d(maps, kernel)
    assert torch.allclose(actual, expected, rtol=1e-12, atol=1e-12)
    upstream = torch.randn_like(expected)
    expected_grads = torch.autograd.grad(expected, (maps, kernel), upstream)
    actual_grads = torch.autograd.grad(actual, (maps, kernel), upstream)
    for a, e in zip(actual_grads, expected_grads):
        assert torch.allclose(a, e, rtol=1e-10, atol=1e-10)
    assert torch.autograd.gradcheck(shared_kernel_conv3d, (maps[:2, :4, :3, :5].detach().requires_grad_(),
                                                           kernel.detach().requires_grad_()))


def test_shared_kernel_weight_gradient_in_float32_at_training_size(stencil_path):
    torch.manual_seed(1)
    maps, grad_out = torch.relu(torch.randn(6, 32, 24, 24)), torch.randn(6, 32, 24, 24)
    kernel = torch.zeros(1, 1, 3, 3, 3, requires_grad=True)
    F.conv3d(maps.unsqueeze(1), kernel, padding=1).backward(grad_out.unsqueeze(1))
    shared_kernel = torch.zeros(3, 3, 3, requires_grad=True)
    shared_kernel_conv3d(maps, shared_kernel).backward(grad_out)
    assert _close(shared_kernel.grad, kernel.grad[0, 0], rtol=1e-5)


def test_shared_kernel_conv_rejects_wrong_shapes():
    with pytest.raises(ValueError, match=r"maps \[N, D, H, W\] and a kernel \[3, 3, 3\]"):
        shared_kernel_conv3d(torch.zeros(1, 2, 4, 4, 4), torch.zeros(3, 3, 3))


def test_shared_maps_conv_equals_one_convolution_per_kernel_with_same_gradients(stencil_path):
    torch.manual_seed(5)
    maps = torch.randn(4, 5, 6, 7, dtype=torch.float64, requires_grad=True)
    kernels = torch.randn(3, 3, 3, 3, dtype=torch.float64, requires_grad=True)
    upstreams = [torch.randn(4, 5, 6, 7, dtype=torch.float64) for _ in range(3)]
    outputs = shared_maps_conv3d(maps, kernels)
    expected = [F.conv3d(maps.unsqueeze(1), kernel.reshape(1, 1, 3, 3, 3), padding=1).squeeze(1) for kernel in kernels]
    assert len(outputs) == 3
    assert all(torch.allclose(a, e, rtol=1e-12, atol=1e-12) for a, e in zip(outputs, expected))
    actual_grads = torch.autograd.grad(outputs, (maps, kernels), upstreams)
    expected_grads = torch.autograd.grad(expected, (maps, kernels), upstreams)
    for a, e in zip(actual_grads, expected_grads):
        assert torch.allclose(a, e, rtol=1e-10, atol=1e-10)
    small_maps, small_kernels = maps[:2, :3, :4, :3].detach().requires_grad_(), kernels[:2].detach().requires_grad_()
    assert torch.autograd.gradcheck(lambda m, k: shared_maps_conv3d(m, k), (small_maps, small_kernels))


@pytest.mark.parametrize("block_positions", [37, 500, 10 ** 6])
@pytest.mark.parametrize("width", [7, 12, 17, 32])
def test_shared_maps_weight_gradients_are_the_same_block_by_block(monkeypatch, block_positions, width):
    # 37 positions: one plane per block; 500: two whole maps (rows of 7), one map (12) or slabs of planes (17, 32)
    # per block; 10**6: one block for all maps. Rows of 7, 12, 17 and 32 voxels are cut into chunks of 7, 12, 1, 16
    monkeypatch.setattr(kernel_gradients, "BLOCK_POSITIONS", block_positions)
    monkeypatch.setattr(native_stencils, "usable_for", lambda maps: False)  # the torch path's blocks
    torch.manual_seed(7)
    maps = torch.relu(torch.randn(3, 6, 5, width, dtype=torch.float64))
    kernels = torch.randn(3, 3, 3, 3, dtype=torch.float64, requires_grad=True)
    upstreams = [torch.randn(3, 6, 5, width, dtype=torch.float64) for _ in range(3)]
    actual = torch.autograd.grad(shared_maps_conv3d(maps, kernels), kernels, upstreams)[0]
    expected = torch.autograd.grad([F.conv3d(maps.unsqueeze(1), kernel.reshape(1, 1, 3, 3, 3), padding=1)
                                    for kernel in kernels], kernels, [u.unsqueeze(1) for u in upstreams])[0]
    assert torch.allclose(actual, expected, rtol=1e-12, atol=1e-12)


def test_task_encoder_with_shared_mask_path_equals_its_stages_one_by_one(stencil_path):
    torch.manual_seed(6)
    config = InContextNetworkConfig(in_channels=1, channels=[4, 8, 16, 32], num_blocks=[1, 1, 1],
                                    input_size_zyx=[16, 16, 16], num_queries=2, task_depth=1, head_dim=8)
    encoder = TaskEncoder(config)
    features = [torch.randn(2, c, s, s, s) for c, s in zip(config.prior_channels(), (2, 4, 8))]
    masks = (torch.rand(2, 3, 16, 16, 16) > 0.7).float()
    upstreams = [torch.randn(2, 3, 3, c) for c in config.prior_channels()]
    torch.autograd.backward(encoder(features, masks), upstreams)
    shared_grads = _grads(encoder)
    encoder.zero_grad()
    one_by_one = [stage(level, masks) for stage, level in zip(encoder.stages, features)]
    torch.autograd.backward(one_by_one, upstreams)
    for shared, single in zip(encoder(features, masks), one_by_one):
        assert _close(shared, single.detach())
    assert all(_close(a, e) for a, e in zip(shared_grads, _grads(encoder)))


@pytest.mark.parametrize("in_channels,out_channels,stride", [(6, 4, 1), (4, 4, 1), (3, 5, 2)])
def test_res_block_equals_plain_composition_with_same_gradients(in_channels, out_channels, stride):
    torch.manual_seed(2)
    block = ResBlock3d(in_channels, out_channels, stride=stride)
    x = torch.randn(2, in_channels, 8, 10, 6)
    x_fast, x_plain = x.clone().requires_grad_(), x.clone().requires_grad_()
    upstream = torch.randn_like(block(x))
    block(x_fast).backward(upstream)
    fast_grads = _grads(block)
    block.zero_grad()
    plain = block.conv2(block.conv1(x_plain)) + block.shortcut(x_plain)
    assert _close(block(x), plain.detach())
    plain.backward(upstream)
    assert _close(x_fast.grad, x_plain.grad)
    assert all(_close(a, e) for a, e in zip(fast_grads, _grads(block)))


def test_mask_merge_gradients_equal_convolution_of_concatenated_pairs(stencil_path):
    torch.manual_seed(3)
    merge = MaskMerge()
    shared = torch.randn(2, 1, 8, 8, 8)
    masks = (torch.rand(2, 3, 8, 8, 8) > 0.5).float()
    shared_fast, shared_plain = shared.clone().requires_grad_(), shared.clone().requires_grad_()
    upstream = torch.randn(6, 1, 8, 8, 8)
    merge(shared_fast, masks).backward(upstream)
    fast_grads = _grads(merge)
    merge.zero_grad()
    pairs = torch.cat([shared_plain.unsqueeze(1).expand(-1, 3, -1, -1, -1, -1), masks.unsqueeze(2)], 2).flatten(0, 1)
    merge.conv(F.relu(F.instance_norm(pairs, eps=merge.eps))).backward(upstream)
    assert _close(shared_fast.grad, shared_plain.grad)
    assert all(_close(a, e) for a, e in zip(fast_grads, _grads(merge)))


def test_lamb_updates_many_tensors_like_one_at_a_time():
    torch.manual_seed(4)
    shapes = [(3, 4), (7,), (2, 2, 3), (5,)]
    together = [nn.Parameter(torch.randn(s, dtype=torch.float64)) for s in shapes]
    apart = [nn.Parameter(p.detach().clone()) for p in together]
    optimizer = Lamb(together, lr=0.01, weight_decay=0.1)
    optimizers = [Lamb([p], lr=0.01, weight_decay=0.1) for p in apart]
    for step in range(3):
        grads = [torch.randn(s, dtype=torch.float64) for s in shapes]
        for index, (a, b, g) in enumerate(zip(together, apart, grads)):
            a.grad = None if (index == 3 and step == 1) else g.clone()  # a tensor without gradient is skipped
            b.grad = None if (index == 3 and step == 1) else g.clone()
        optimizer.step()
        for single in optimizers:
            single.step()
    for a, b in zip(together, apart):
        assert torch.allclose(a, b, rtol=0, atol=1e-14)
    assert optimizer.state[together[3]]["step"] == 2 and optimizer.state[together[0]]["step"] == 3


def test_parameter_count_of_the_cpu_network_is_unchanged():
    config = InContextNetworkConfig(in_channels=1, channels=[8, 16, 32, 64, 128], num_blocks=[1, 1, 1, 1],
                                    input_size_zyx=[64, 48, 48])
    with torch.device("meta"):
        network = InContextSegmenter(config)
    assert sum(p.numel() for p in network.parameters()) == 6_963_541


def test_whole_step_matches_the_record_of_commit_a3d41a4():
    expected = json.loads(REFERENCE.read_text())
    actual = step_record()
    assert actual["loss"] == pytest.approx(expected["loss"], rel=1e-5)
    assert actual["total_gradient_norm"] == pytest.approx(expected["total_gradient_norm"], rel=1e-4)
    logits = torch.tensor(actual["sampled_logits"])
    assert _close(logits, torch.tensor(expected["sampled_logits"]), rtol=1e-4)
    assert actual["gradient_norms"].keys() == expected["gradient_norms"].keys()
    for name, value in expected["gradient_norms"].items():
        assert actual["gradient_norms"][name] == pytest.approx(value, rel=1e-3, abs=1e-7), name
    for name, value in expected["weight_change_norms"].items():
        assert actual["weight_change_norms"][name] == pytest.approx(value, rel=1e-3, abs=1e-9), name
    assert actual["ema_sum"] == pytest.approx(expected["ema_sum"], rel=1e-6)


@pytest.mark.parametrize("cross", [False, True])
def test_attend_equals_the_multihead_attention_module_with_same_gradients(cross):
    torch.manual_seed(7)
    module = multi_head_attention(16, 8).double()
    query = torch.randn(3, 5, 16, dtype=torch.float64, requires_grad=True)
    context = torch.randn(3, 7, 16, dtype=torch.float64, requires_grad=True) if cross else None
    keys = context if cross else query
    upstream = torch.randn(3, 5, 16, dtype=torch.float64)
    inputs = (query, context) if cross else (query,)
    expected = module(query, keys, keys, need_weights=False)[0]
    expected_grads = torch.autograd.grad(expected, [*inputs, *module.parameters()], upstream)
    actual = attend(module, query, context)
    actual_grads = torch.autograd.grad(actual, [*inputs, *module.parameters()], upstream)
    assert torch.allclose(actual, expected, rtol=1e-10, atol=1e-12)
    for a, e in zip(actual_grads, expected_grads):
        assert torch.allclose(a, e, rtol=1e-10, atol=1e-12)


def test_kernel_weight_gradients_stay_on_the_maps_device():
    # the task encoder's mask merge takes this path on every device; "meta" stands in for a GPU here (CPU-only
    # tests): every buffer must be made where the maps are, in the summing dtype
    maps = torch.empty(3, 4, 5, 16, device="meta", dtype=torch.bfloat16)
    gradients = kernel_gradients.kernel_weight_gradients(maps, torch.empty(2, 3, 4, 5, 16, device="meta",
                                                                            dtype=torch.bfloat16))
    assert (gradients.device.type, gradients.dtype, tuple(gradients.shape)) == ("meta", torch.float32, (2, 3, 3, 3))
