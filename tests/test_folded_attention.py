"""Cross-attention with the key and value projections folded into the queries (`attend_normalised_context`) and
its core with the hand-written backward (`standardised_attention`) against the plain formulation."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mass_nn.networks import attention as attention_module
from mass_nn.networks.attention import PreNormCrossAttention, attend, folding_is_cheaper, multi_head_attention
from mass_nn.networks.standardised_attention import standardised_attention


def _plain_standardised_attention(queries, context, eps):
    standardised = F.layer_norm(context.transpose(1, 2), context.shape[1:2], eps=eps)  # [N, L, C]
    weights = torch.bmm(queries, standardised.transpose(1, 2)).softmax(-1)
    return torch.bmm(weights, standardised)


def _perturbed_block(dim, head_dim, dtype=torch.float64):
    block = PreNormCrossAttention(dim, head_dim).to(dtype)
    with torch.no_grad():
        for parameter in block.parameters():  # LayerNorms away from (1, 0), biases away from 0
            parameter.add_(0.3 * torch.randn_like(parameter))
    return block


def test_standardised_attention_backward_passes_gradcheck():
    torch.manual_seed(0)
    queries = torch.randn(2, 3, 5, dtype=torch.float64, requires_grad=True)
    context = (torch.randn(2, 5, 7, dtype=torch.float64) * 2 + 1).requires_grad_()
    assert torch.autograd.gradcheck(lambda q, x: standardised_attention(q, x, 1e-5), (queries, context))


@pytest.mark.parametrize("channel_first", [True, False])
def test_standardised_attention_equals_layer_norm_then_attention(channel_first):
    torch.manual_seed(1)
    queries = torch.randn(3, 4, 8, dtype=torch.float64, requires_grad=True)
    tokens = torch.randn(3, 8, 50, dtype=torch.float64) * 3 + 5  # a mean far from 0: the corrections matter
    context = (tokens if channel_first else tokens.transpose(1, 2).contiguous().transpose(1, 2)).requires_grad_()
    upstream = torch.randn(3, 4, 8, dtype=torch.float64)
    expected = _plain_standardised_attention(queries, context, 1e-5)
    expected_grads = torch.autograd.grad(expected, (queries, context), upstream)
    actual = standardised_attention(queries, context, 1e-5)
    actual_grads = torch.autograd.grad(actual, (queries, context), upstream)
    assert torch.allclose(actual, expected, rtol=1e-10, atol=1e-12)
    for a, e in zip(actual_grads, expected_grads):
        assert torch.allclose(a, e, rtol=1e-9, atol=1e-11)


def test_standardised_attention_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match=r"queries \[N, M, C\] and context \[N, C, L\]"):
        standardised_attention(torch.zeros(2, 3, 4), torch.zeros(2, 5, 6), 1e-5)


@pytest.mark.parametrize("dim,head_dim,tokens", [(32, 32, 40), (64, 32, 30), (128, 32, 27), (64, 16, 64)])
def test_folded_cross_attention_equals_the_projected_one_with_same_gradients(monkeypatch, dim, head_dim, tokens):
    torch.manual_seed(2)
    block = _perturbed_block(dim, head_dim)
    x = torch.randn(3, 11, dim, dtype=torch.float64, requires_grad=True)
    # the task encoder's context is a channel-last view of channel-first features
    context = (torch.randn(3, dim, tokens, dtype=torch.float64) * 2 + 1).transpose(1, 2).requires_grad_()
    upstream = torch.randn(3, 11, dim, dtype=torch.float64)
    results = []
    for fold in (False, True):
        monkeypatch.setattr(attention_module, "folding_is_cheaper", lambda *args, fold=fold: fold)
        out = block(x, context)
        grads = torch.autograd.grad(out, [x, context, *block.parameters()], upstream)
        results.append((out, grads))
    (expected, expected_grads), (actual, actual_grads) = results
    assert torch.allclose(actual, expected, rtol=1e-10, atol=1e-12)
    names = ["x", "context", *(name for name, _ in block.named_parameters())]
    for name, a, e in zip(names, actual_grads, expected_grads):
        if name == "attention.in_proj_bias":  # only the key third differs: zero against rounding noise
            a = torch.cat([a[:dim], a[2 * dim:]])
            key_part, e = e[dim:2 * dim], torch.cat([e[:dim], e[2 * dim:]])
            assert key_part.abs().max() < 1e-10
        assert torch.allclose(a, e, rtol=1e-9, atol=1e-11), name


def test_the_key_bias_gets_a_zero_gradient_when_folded():
    torch.manual_seed(3)
    block = _perturbed_block(32, 32)
    out = block(torch.randn(2, 11, 32, dtype=torch.float64), torch.randn(2, 500, 32, dtype=torch.float64))
    out.sum().backward()
    assert torch.count_nonzero(block.attention.in_proj_bias.grad[32:64]) == 0
    assert torch.count_nonzero(block.attention.in_proj_bias.grad[64:]) > 0


def test_folding_is_chosen_for_few_queries_over_many_tokens_only():
    one_head, four_heads = multi_head_attention(32, 32), multi_head_attention(128, 32)
    assert folding_is_cheaper(one_head, 11, 12 ** 3)  # the task encoder's finest stage
    assert folding_is_cheaper(multi_head_attention(64, 32), 11, 6 ** 3)  # the next stage
    assert not folding_is_cheaper(four_heads, 11, 27)  # the deepest stage: fewer tokens than channels
    assert not folding_is_cheaper(one_head, 16 * 11, 12 ** 3)  # the decoder's task tokens reading the image
    assert not folding_is_cheaper(four_heads, 12 ** 3, 16 * 11)  # image tokens reading all task tokens


def test_folded_attention_under_cpu_autocast_computes_in_fp32_and_returns_like_the_projected_one():
    torch.manual_seed(4)
    block = _perturbed_block(32, 32, torch.float32)
    x = torch.randn(4, 11, 32)
    context = torch.randn(4, 32, 600).transpose(1, 2)
    expected = x + attend(block.attention, block.norm_query(x), block.norm_context(context))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        actual = block(x, context.bfloat16())
        plain = x + attend(block.attention, block.norm_query(x), block.norm_context(context.bfloat16()))
    assert actual.dtype == plain.dtype
    error = (actual.float() - expected).norm() / expected.norm()
    plain_error = (plain.float() - expected).norm() / expected.norm()
    assert error < 2e-2 and error <= 2 * plain_error + 1e-3
    actual.float().sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in block.parameters() if p.grad is not None)


def test_standardised_attention_backward_called_under_autocast_gives_the_same_gradients():
    torch.manual_seed(5)
    queries = torch.randn(3, 4, 16, requires_grad=True)
    context = (torch.randn(3, 16, 50) * 2 + 1).requires_grad_()
    upstream = torch.randn(3, 4, 16)
    expected = torch.autograd.grad(standardised_attention(queries, context, 1e-5), (queries, context), upstream)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # backward inside the autocast region, as some loops do
        actual = torch.autograd.grad(standardised_attention(queries, context, 1e-5), (queries, context), upstream)
    for got, want in zip(actual, expected):
        assert got.dtype == torch.float32
        torch.testing.assert_close(got, want, rtol=0, atol=0)
