"""Separable trilinear resizing: the same values and gradients as F.interpolate, in the input's dtype."""
import pytest
import torch
import torch.nn.functional as F

from mass_nn.networks.trilinear import linear_interpolation_matrix, resize_trilinear, trilinear_upsample_adjoint


def _relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    actual, expected = actual.detach(), expected.detach()
    return float((actual - expected).abs().max() / expected.abs().max().clamp(min=1e-12))


@pytest.mark.parametrize("low, high", [((32, 24, 24), (64, 48, 48)), ((8, 6, 6), (16, 12, 12)),
                                       ((5, 7, 3), (9, 13, 11)), ((12, 10, 9), (5, 4, 9)), ((1, 4, 2), (3, 1, 5))])
def test_resize_equals_interpolate_forward_and_backward(low, high):
    torch.manual_seed(0)
    x = torch.randn(2, 3, *low, dtype=torch.float64, requires_grad=True)
    expected = F.interpolate(x, size=high, mode="trilinear", align_corners=True)
    resized = resize_trilinear(x, high)
    assert resized.shape == expected.shape and resized.dtype == torch.float64
    assert _relative_error(resized, expected) < 1e-12
    grad = torch.randn_like(expected)
    expected_grad, = torch.autograd.grad(expected, x, grad)
    resized_grad, = torch.autograd.grad(resized, x, grad)
    assert _relative_error(resized_grad, expected_grad) < 1e-12


def test_resize_of_fp32_and_bf16_inputs_computes_in_fp32_and_keeps_the_dtype():
    torch.manual_seed(0)
    x = torch.randn(2, 16, 8, 6, 6)
    expected = F.interpolate(x.double(), size=(16, 12, 12), mode="trilinear", align_corners=True)
    assert _relative_error(resize_trilinear(x, (16, 12, 12)).double(), expected) < 1e-5
    low_precision = x.bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        resized = resize_trilinear(low_precision, (16, 12, 12))
    assert resized.dtype == torch.bfloat16
    fp32_of_bf16 = F.interpolate(low_precision.float(), size=(16, 12, 12), mode="trilinear", align_corners=True)
    # computed in fp32, then rounded once: within half a bf16 step (2^-9 relative) of the fp32 resize, plus fp32
    # rounding where neighbours of opposite sign cancel
    scale = float(fp32_of_bf16.abs().max())
    assert torch.allclose(resized.float(), fp32_of_bf16, rtol=2 ** -8, atol=1e-5 * scale)


def test_interpolation_matrix_rows_sum_to_one_and_hit_the_grid_ends():
    for low, high in ((4, 7), (7, 4), (1, 5), (5, 1), (6, 6)):
        matrix = linear_interpolation_matrix(low, high, torch.device("cpu"), torch.float64)
        assert matrix.shape == (high, low)
        assert torch.allclose(matrix.sum(1), torch.ones(high, dtype=torch.float64))
        assert matrix[0, 0] == 1 and (high == 1 or matrix[-1, -1] == 1)
    assert torch.equal(linear_interpolation_matrix(6, 6, torch.device("cpu")), torch.eye(6))


def test_adjoint_is_the_transpose_of_the_resize():
    torch.manual_seed(0)
    z, volumes = torch.randn(1, 2, 4, 3, 5, dtype=torch.float64), torch.randn(1, 2, 9, 7, 11, dtype=torch.float64)
    inner_high = (resize_trilinear(z, (9, 7, 11)) * volumes).sum()
    inner_low = (z * trilinear_upsample_adjoint(volumes, (4, 3, 5)).double()).sum()
    assert abs(float(inner_high - inner_low)) < 1e-4 * float(inner_high.abs())
