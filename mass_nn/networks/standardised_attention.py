"""Single-head attention of a few queries over standardised context tokens, with a hand-written backward pass.

`standardised_attention(queries, context, eps)` computes, per row n,

    x̂_l = (x_l - μ_l) / sqrt(σ²_l + eps)           (x_l: context token l's C channels; μ, σ² over the channels)
    p_m = softmax_l(q_m · x̂_l)
    out_m = Σ_l p_ml x̂_l

for queries [N, M, C] and context [N, C, L] (channel-first). It is the core of `attend_normalised_context`, where
M (queries × heads) is much smaller than C·L: the standardised context x̂ is never stored, both directions read the
context a few times through batched matrix products, and the LayerNorm-style statistics enter as per-token
corrections. Autograd through the same formula in torch ops spends most of its time in `var_mean` over the channel
axis and its backward (a strided reduction), hence the explicit backward:

    dp = G x̂ (the output gradient G [M, C] against each standardised token), ds = p ∘ (dp - Σ_l p dp),
    dq = ds x̂ᵀ,  dx̂ = qᵀ ds + Gᵀ p = Aᵀ B with A = [q; G], B = [ds; p],
    dx = r (dx̂ - mean_c dx̂ - x̂ mean_c(dx̂ ∘ x̂)),

where r = 1 / sqrt(σ² + eps) and both channel means come from products that are already at hand (Σ_c A_mc and
A x̂ = [s; dp]), so the backward reads the context three times and writes its gradient once. The variance is
E[x²] - μ² (clamped at 0), computed in the inputs' precision: its relative error grows as (μ/σ)² times the unit
roundoff, about 6e-4 in fp32 for a token whose channel mean lies 100 standard deviations from 0.
"""
from __future__ import annotations

import torch
from torch import Tensor

from mass_nn.networks.conv_blocks import autocast_disabled


def _standardise_products(products: Tensor, left_sums: Tensor, mean: Tensor, inverse_std: Tensor) -> Tensor:
    """In place: left x [N, M, L] → left x̂ = (left x - (Σ_c left) μ) r, with left_sums = Σ_c left [N, M, 1]."""
    return products.addcmul_(left_sums, mean, value=-1.0).mul_(inverse_std)


def _pool(weights: Tensor, context: Tensor, mean: Tensor) -> Tensor:
    """Σ_l w_ml (x_l - μ_l) for weights [N, M, L], context [N, C, L], mean [N, 1, L]: [N, M, C]."""
    return torch.bmm(weights, context.transpose(1, 2)).sub_(torch.bmm(weights, mean.transpose(1, 2)))


class _StandardisedAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, queries: Tensor, context: Tensor, eps: float) -> Tensor:
        batch, num_queries, channels = queries.shape
        # one product gives the scores' raw part and, from a row of ones, the channel sums for the mean
        ones = queries.new_ones(batch, 1, channels)
        products = torch.bmm(torch.cat([queries, ones], dim=1), context)
        mean = products[:, num_queries:] / channels  # [N, 1, L]
        variance = (torch.linalg.vecdot(context, context, dim=1).unsqueeze(1) / channels
                    - mean.square()).clamp_min_(0.0)
        inverse_std = variance.add_(eps).rsqrt_()
        scores = _standardise_products(products[:, :num_queries], queries.sum(-1, keepdim=True), mean, inverse_std)
        weights = scores.softmax(-1)
        pooled = _pool(weights * inverse_std, context, mean)  # Σ_l p_l x̂_l = Σ_l p_l r_l (x_l - μ_l)
        ctx.save_for_backward(queries, context, mean, inverse_std, scores, weights)
        return pooled

    @staticmethod
    def backward(ctx, grad_pooled: Tensor):
        # in the saved tensors' dtype whatever autocast the caller's backward runs under: its products would
        # otherwise come out in the autocast dtype beside saved fp32 tensors (the softmax backward rejects the mix)
        with autocast_disabled(grad_pooled.device):
            return _StandardisedAttention._backward(ctx, grad_pooled)

    @staticmethod
    def _backward(ctx, grad_pooled: Tensor):
        queries, context, mean, inverse_std, scores, weights = ctx.saved_tensors
        batch, num_queries, channels = queries.shape
        grad_pooled = grad_pooled.contiguous()
        grad_weights = _standardise_products(torch.bmm(grad_pooled, context), grad_pooled.sum(-1, keepdim=True),
                                             mean, inverse_std)  # G x̂: [N, M, L]
        grad_scores = torch.ops.aten._softmax_backward_data(grad_weights, weights, -1, weights.dtype)
        # B r = [ds r; p r; token shift], with the last row filled below
        right = torch.empty(batch, 2 * num_queries + 1, context.shape[2], dtype=context.dtype, device=context.device)
        scaled_grad_scores = torch.mul(grad_scores, inverse_std, out=right[:, :num_queries])
        scaled_weights = torch.mul(weights, inverse_std, out=right[:, num_queries:2 * num_queries])
        grad_queries = _pool(scaled_grad_scores, context, mean)
        left = torch.cat([queries, grad_pooled, queries.new_ones(batch, 1, channels)], dim=1)  # [A; 1]
        # r mean_c dx̂ and r mean_c(dx̂ x̂), from Σ_c A and A x̂ = [s; dp]
        scaled_channel_mean = torch.bmm(left[:, :-1].sum(-1).unsqueeze(1), right[:, :-1]) / channels
        scaled_product_mean = (torch.linalg.vecdot(scaled_grad_scores, scores, dim=1)
                               + torch.linalg.vecdot(scaled_weights, grad_weights, dim=1)).unsqueeze(1) / channels
        # dx = r dx̂ - r mean_c dx̂ - (x - μ) r² mean_c(dx̂ x̂): the last two terms per token, x's factor apart
        token_scale = -inverse_std * scaled_product_mean
        torch.sub(mean * scaled_product_mean * inverse_std, scaled_channel_mean, out=right[:, -1:])
        grad_context = torch.bmm(left.transpose(1, 2), right).addcmul_(context, token_scale)
        return grad_queries, grad_context, None


def standardised_attention(queries: Tensor, context: Tensor, eps: float) -> Tensor:
    """Σ_l softmax_l(q_m · x̂_l) x̂_l for queries [N, M, C] and context [N, C, L] of one floating dtype, x̂ the
    context standardised over its C channels per token (LayerNorm without affine, `eps` added to the variance):
    [N, M, C]. Differentiable in both inputs; both directions compute in the inputs' dtype, autocast or not."""
    if queries.dim() != 3 or context.dim() != 3 or queries.shape[0] != context.shape[0] \
            or queries.shape[2] != context.shape[1]:
        raise ValueError(f"expected queries [N, M, C] and context [N, C, L], got {list(queries.shape)} and "
                         f"{list(context.shape)}")
    with autocast_disabled(queries.device):
        return _StandardisedAttention.apply(queries, context, eps)
