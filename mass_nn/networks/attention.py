"""Transformer pieces for the task encoder and the decoder fusion: pre-norm residual attention and FFN sub-layers,
`TaskQueryBlock` (task tokens read the reference) and `FusionBlock` (image and task tokens read each other).

Heads always have `head_dim` channels; dropout is 0. Self-attention and FFN sub-layers use one LayerNorm with
eps 1e-4; cross-attention normalises queries and keys with two separate LayerNorms (default eps), as in Iris.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

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
        """x [N, L, C] attends to context [N, M, C]; returns [N, L, C]."""
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
