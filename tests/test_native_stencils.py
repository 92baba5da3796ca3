"""The compiled 3×3×3 stencil kernels: the same sums as torch's convolution, whatever the thread count, and a
clear fallback when they cannot be built."""
from __future__ import annotations

import logging

import pytest
import torch
import torch.nn.functional as F

from mass_nn.networks import native_stencils


@pytest.fixture
def compiled():
    if native_stencils.stencil_library() is None:
        pytest.skip("the compiled stencil kernels could not be built here (no C++ compiler?)")


@pytest.fixture
def fresh_library():
    """Forget the built library before and after the test (its lru_cache), so the test's environment decides."""
    native_stencils.stencil_library.cache_clear()
    yield
    native_stencils.stencil_library.cache_clear()


def _reference(maps: torch.Tensor, kernels: torch.Tensor) -> list[torch.Tensor]:
    """Each kernel, in the maps' dtype, applied in fp64 by torch's convolution."""
    return [F.conv3d(maps.double().unsqueeze(1), kernel.to(maps.dtype).double().reshape(1, 1, 3, 3, 3),
                     padding=1).squeeze(1) for kernel in kernels]


@pytest.mark.parametrize("dtype, rtol", [(torch.float64, 1e-12), (torch.float32, 1e-5), (torch.bfloat16, 1e-2)])
@pytest.mark.parametrize("shape", [(3, 5, 6, 7), (2, 1, 1, 1), (1, 4, 9, 33)])
def test_forward_equals_convolution(compiled, dtype, rtol, shape):
    torch.manual_seed(0)
    maps, kernels = torch.randn(shape).to(dtype), torch.randn(3, 3, 3, 3)
    outputs = native_stencils.stencil_forward(maps, kernels)
    assert len(outputs) == 3
    for output, expected in zip(outputs, _reference(maps, kernels)):
        assert output.dtype == dtype and output.shape == maps.shape
        # bf16: one rounding of the fp32 sum (relative 2⁻⁸ of each value), so compare against the output's scale
        error = (output.double() - expected).abs().max()
        assert error <= rtol * expected.abs().max() + 1e-12


@pytest.mark.parametrize("dtype, rtol", [(torch.float64, 1e-12), (torch.float32, 1e-5), (torch.bfloat16, 1e-5)])
def test_weight_gradient_equals_autograd_of_the_convolution(compiled, dtype, rtol):
    torch.manual_seed(1)
    maps = torch.relu(torch.randn(4, 6, 5, 11)).to(dtype)
    grads = [torch.randn(4, 6, 5, 11).to(dtype) for _ in range(2)]
    kernels = torch.zeros(2, 3, 3, 3, dtype=torch.float64, requires_grad=True)
    outputs = [F.conv3d(maps.double().unsqueeze(1), kernel.reshape(1, 1, 3, 3, 3), padding=1) for kernel in kernels]
    expected = torch.autograd.grad(outputs, kernels, [g.double().unsqueeze(1) for g in grads])[0]
    actual = native_stencils.stencil_weight_gradient(maps, grads)
    assert actual.dtype == torch.float64 and actual.shape == (2, 3, 3, 3)
    assert torch.allclose(actual, expected, rtol=rtol, atol=rtol * expected.abs().max().item())


def test_weight_gradient_reads_strided_gradients_in_the_wider_dtype(compiled):
    torch.manual_seed(2)
    maps = torch.randn(3, 4, 5, 6).to(torch.bfloat16)
    grads = torch.randn(3, 2, 4, 5, 6).transpose(0, 1)  # [S, N, ...] as a view: the stem's layout, fp32
    expected = native_stencils.stencil_weight_gradient(maps.float(), [g.contiguous() for g in grads])
    assert torch.equal(native_stencils.stencil_weight_gradient(maps, list(grads)), expected)


def test_results_do_not_depend_on_the_thread_count(compiled):
    torch.manual_seed(3)
    maps, kernels = torch.randn(5, 12, 8, 16), torch.randn(2, 3, 3, 3)
    grads = [torch.randn(5, 12, 8, 16) for _ in range(2)]
    threads = torch.get_num_threads()
    try:
        results = []
        for count in (1, 2, 3):
            torch.set_num_threads(count)
            results.append((native_stencils.stencil_forward(maps, kernels),
                            native_stencils.stencil_weight_gradient(maps, grads)))
    finally:
        torch.set_num_threads(threads)
    for outputs, gradient in results[1:]:
        assert all(torch.equal(a, b) for a, b in zip(outputs, results[0][0]))
        assert torch.equal(gradient, results[0][1])


def test_switched_off_by_the_environment(fresh_library, monkeypatch):
    monkeypatch.setenv(native_stencils.ENVIRONMENT_SWITCH, "0")
    assert native_stencils.stencil_library() is None
    assert not native_stencils.usable_for(torch.zeros(1, 1, 1, 1))


def test_a_failed_build_warns_once_and_leaves_the_torch_path(fresh_library, monkeypatch, tmp_path, caplog):
    monkeypatch.setenv(native_stencils.CACHE_VARIABLE, str(tmp_path / "cache"))
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    with caplog.at_level(logging.WARNING, logger=native_stencils.__name__):
        assert native_stencils.stencil_library() is None
        assert not native_stencils.usable_for(torch.zeros(1, 1, 1, 1))
    warnings = [record.getMessage() for record in caplog.records]
    assert len(warnings) == 1
    assert "compiled stencil kernels unavailable" in warnings[0] and "torch path runs instead" in warnings[0]
    assert native_stencils.ENVIRONMENT_SWITCH in warnings[0] and str(tmp_path / "cache") in warnings[0]


def test_the_cache_folder_depends_on_the_processor(monkeypatch):
    here = native_stencils.build_key()
    monkeypatch.setattr(native_stencils, "_processor_signature", lambda: "model name : another processor")
    assert native_stencils.build_key() != here


def test_other_devices_and_dtypes_take_the_torch_path():
    assert not native_stencils.usable_for(torch.zeros(1, 1, 1, 1, device="meta"))
    assert not native_stencils.usable_for(torch.zeros(1, 1, 1, 1, dtype=torch.float16))
