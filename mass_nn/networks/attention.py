"""Transformer pieces for the task encoder and the decoder fusion: pre-norm residual attention and FFN sub-layers,
`TaskQueryBlock` (task tokens read the reference) and `FusionBlock` (image and task tokens read each other).

Heads always have `head_dim` channels; dropout is 0. Self-attention and FFN sub-layers use one LayerNorm with
eps 1e-4; cross-attention normalises queries and keys with two separate LayerNorms (default eps), as in Iris.
Where a few query tokens read many context tokens (the task encoder), cross-attention folds the key and value
projections into the queries (`attend_normalised_context`) instead of projecting every context token.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mass_nn.networks.conv_blocks import autocast_disabled
from mass_nn.networks.standardised_attention import standardised_attention

PRE_NORM_EPS = 1e-4


def multi_head_attention(dim: int, head_dim: int) -> nn.MultiheadAttention:
    """Batch-first `nn.MultiheadAttention` with dim / head_dim heads, biases and no dropout."""
    if dim % head_dim:
        raise ValueError(f"attention width {dim} is not divisible by head_dim {head_dim}")
    return nn.MultiheadAttention(dim, dim // head_dim, dropout=0.0, bias=True, batch_first=True)


def attend(attention: nn.MultiheadAttention, query: Tensor, context: Tensor | None = None) -> Tensor:
    """`attention(query, context, context, need_weights=False)[0]` for batch-first [N, L, C] tokens without masks or
    dropout (context None: self-attention), with the module's own parameters.

    The module's training path moves the tokens to sequence-first order and back, copying every projection, its
    packed split and the output; on CPU those copies and the zero-filled gradients of the packed split cost
    about as much as the attention itself. Here the projections stay batch-first and the heads are strided views,
    so the only copy is the heads' output before the output projection.

    Under CPU autocast the attention itself runs in fp32: at these token counts (11-2,304 tokens, 32 channels per
    head) the CPU's bf16 attention kernels take 1.1-9x the time of fp32 ones, forward and backward (documentation/
    pretraining.md, "What makes a step cheaper"), and the tensors are small enough that the casts cost nothing.
    """
    dim, heads = attention.embed_dim, attention.num_heads
    weight, bias = attention.in_proj_weight, attention.in_proj_bias
    if context is None:
        q, k, v = F.linear(query, weight, bias).chunk(3, dim=-1)
    else:
        q = F.linear(query, weight[:dim], bias[:dim])
        k, v = F.linear(context, weight[dim:], bias[dim:]).chunk(2, dim=-1)
    q, k, v = (t.unflatten(-1, (heads, dim // heads)).transpose(1, 2) for t in (q, k, v))
    return attention.out_proj(_scaled_dot_product(q, k, v).transpose(1, 2).flatten(2))


def _scaled_dot_product(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """softmax(q kᵀ / sqrt(d)) v over [N, heads, L, d] views; in fp32 for low-precision CPU tensors (see attend)."""
    if q.device.type != "cpu" or q.dtype not in (torch.bfloat16, torch.float16):
        return F.scaled_dot_product_attention(q, k, v)
    with torch.autocast(device_type="cpu", enabled=False):
        return F.scaled_dot_product_attention(q.float(), k.float(), v.float()).to(q.dtype)


def folding_is_cheaper(attention: nn.MultiheadAttention, num_queries: int, num_context: int) -> bool:
    """Whether `attend_normalised_context` is the faster form: when the scores [heads·T, L] are at most half the
    size of the context [L, C] (its passes over them replace the context's projection) and there are at least C
    context tokens (below that both forms are a handful of small operations and the folded one has more).

    Measured forward + backward at batch 16 in bf16 on a 2-core AVX-512 EPYC: the task encoder's 11 tokens over
    12³ tokens of 32 channels 60 against 140 ms, over 6³ of 64 (2 heads) 27 against 44 ms, over 3³ of 128
    (4 heads) 24 against 16 ms; the decoder's 176 task tokens over 12³ image tokens of 32 channels 43 against
    26 ms."""
    dim, heads = attention.embed_dim, attention.num_heads
    return 2 * heads * num_queries <= dim <= num_context


def attend_normalised_context(attention: nn.MultiheadAttention, query: Tensor, context: Tensor,
                              norm: nn.LayerNorm) -> Tensor:
    """`attend(attention, query, norm(context))` without normalising or projecting the context tokens one by one.

    For one head, q·k_l = q·(W_k LN(x_l) + b_k) = ((W_kᵀ q) ∘ γ)·x̂_l + (terms that do not depend on l), and the
    softmax ignores the latter; the weighted sum of the values is W_v (γ ∘ Σ_l p_l x̂_l + β) + b_v because the
    weights sum to 1. So the queries are mapped into the context's channels (W_kᵀ q ∘ γ, per head), attend over
    the standardised context x̂_l = (x_l - μ_l) / σ_l (`standardised_attention`, which never materialises it),
    and the pooled context is projected afterwards: per context token the cost is heads·C multiply-adds for
    each query instead of the 2·C² of the key and value projections, and the context is read in whatever layout
    it comes (the task encoder's is channel-first), without copies. Same result up to rounding; b_k gets no
    gradient (its true gradient is zero).

    query [N, T, C] (already normalised), context [N, L, C] → [N, T, C]. In the parameters' precision (at least
    fp32) under autocast, like `attend`'s attention (these are small products); the output projection follows
    autocast.
    """
    dim, heads = attention.embed_dim, attention.num_heads
    head_dim = dim // heads
    num_queries = query.shape[1]
    w_query, w_key, w_value = attention.in_proj_weight.chunk(3)
    b_query, _, b_value = attention.in_proj_bias.chunk(3)  # b_key shifts all scores of a query alike
    gamma = norm.weight if norm.weight is not None else torch.ones_like(w_query[0])
    dtype = torch.promote_types(w_query.dtype, torch.float32)
    with autocast_disabled(query.device):
        queries = F.linear(query.to(dtype), w_query, b_query).unflatten(-1, (heads, head_dim))
        folded = torch.einsum("nthd,hdc->nhtc", queries, w_key.view(heads, head_dim, dim))
        folded = (folded * (gamma / math.sqrt(head_dim))).flatten(1, 2)  # [N, heads·T, C]
        pooled = standardised_attention(folded, context.to(dtype).transpose(1, 2), norm.eps)
        pooled = pooled * gamma if norm.bias is None else torch.addcmul(norm.bias, pooled, gamma)
        values = torch.einsum("nhtc,hdc->nthd", pooled.unflatten(1, (heads, num_queries)),
                              w_value.view(heads, head_dim, dim)).flatten(2) + b_value
    return attention.out_proj(values.to(query.dtype))


class FeedForward(nn.Sequential):
    """Linear(dim → ratio·dim) → GELU → Linear(ratio·dim → dim)."""

    def __init__(self, dim: int, ratio: int):
        super().__init__(nn.Linear(dim, dim * ratio), nn.GELU(), nn.Linear(dim * ratio, dim))


class PreNormFeedForward(nn.Module):
    """x + FFN(LayerNorm(x))."""

    def __init__(self, dim: int, ratio: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=PRE_NORM_EPS)
        self.ffn = FeedForward(dim, ratio)

    def forward(self, x: Tensor) -> Tensor:
        """[N, L, C] → [N, L, C]."""
        return x + self.ffn(self.norm(x))


class PreNormSelfAttention(nn.Module):
    """x + MHA(LayerNorm(x)) over the tokens of x."""

    def __init__(self, dim: int, head_dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=PRE_NORM_EPS)
        self.attention = multi_head_attention(dim, head_dim)

    def forward(self, x: Tensor) -> Tensor:
        """[N, L, C] → [N, L, C]."""
        return x + attend(self.attention, self.norm(x))


class PreNormCrossAttention(nn.Module):
    """x + MHA(query=LayerNorm_q(x), key=value=LayerNorm_kv(context))."""

    def __init__(self, dim: int, head_dim: int):
        super().__init__()
        self.norm_query = nn.LayerNorm(dim)
        self.norm_context = nn.LayerNorm(dim)
        self.attention = multi_head_attention(dim, head_dim)

    def forward(self, x: Tensor, context: Tensor) -> Tensor:
        """x [N, L, C] attends to context [N, M, C]; returns [N, L, C]. The key and value projections are folded
        into the queries where that is cheaper (`folding_is_cheaper`: few queries, many context tokens)."""
        if folding_is_cheaper(self.attention, x.shape[1], context.shape[1]):
            return x + attend_normalised_context(self.attention, self.norm_query(x), context, self.norm_context)
        return x + attend(self.attention, self.norm_query(x), self.norm_context(context))


class TaskQueryBlock(nn.Module):
    """Task tokens gather information from the reference: self-attention → FFN → cross-attention to the
    reference tokens → FFN → self-attention → FFN, each a pre-norm residual sub-layer."""

    def __init__(self, dim: int, head_dim: int, mlp_ratio: int):
        super().__init__()
        self.self_attention1 = PreNormSelfAttention(dim, head_dim)
        self.ffn1 = PreNormFeedForward(dim, mlp_ratio)
        self.cross_attention = PreNormCrossAttention(dim, head_dim)
        self.ffn2 = PreNormFeedForward(dim, mlp_ratio)
        self.self_attention2 = PreNormSelfAttention(dim, head_dim)
        self.ffn3 = PreNormFeedForward(dim, mlp_ratio)

    def forward(self, tokens: Tensor, context: Tensor) -> Tensor:
        """tokens [N, T, C], context [N, L, C] → tokens [N, T, C]; the N rows never interact."""
        tokens = self.ffn1(self.self_attention1(tokens))
        tokens = self.ffn2(self.cross_attention(tokens, context))
        return self.ffn3(self.self_attention2(tokens))


class FusionBlock(nn.Module):
    """Two-way fusion of query-image tokens and task tokens: task ← cross-attention to the image → FFN;
    image ← cross-attention to all task tokens → FFN; task ← self-attention over all tasks → FFN.

    Nothing depends on token order, so the block is equivariant to permutations of the task tokens.
    """

    def __init__(self, dim: int, head_dim: int, mlp_ratio: int):
        super().__init__()
        self.task_reads_image = PreNormCrossAttention(dim, head_dim)
        self.task_ffn1 = PreNormFeedForward(dim, mlp_ratio)
        self.image_reads_task = PreNormCrossAttention(dim, head_dim)
        self.image_ffn = PreNormFeedForward(dim, mlp_ratio)
        self.task_self_attention = PreNormSelfAttention(dim, head_dim)
        self.task_ffn2 = PreNormFeedForward(dim, mlp_ratio)

    def forward(self, image: Tensor, task: Tensor) -> tuple[Tensor, Tensor]:
        """image [B, N, C], task [B, K·T, C] → (image [B, N, C], task [B, K·T, C])."""
        task = self.task_ffn1(self.task_reads_image(task, image))
        image = self.image_ffn(self.image_reads_task(image, task))
        task = self.task_ffn2(self.task_self_attention(task))
        return image, task
