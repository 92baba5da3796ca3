"""The per-channel sums every segmentation loss of MASS is built from, in one pass with a hand-written backward.

For logits x and a binary target t of shape [B, K, *spatial], with p = sigmoid(x):
    tp  = sum p * t                      (soft true positives)
    fp  = sum p * (1 - t)                (soft false positives)
    fn  = sum (1 - p) * t                (soft false negatives)
    bce = mean [max(x, 0) - x * t + log(1 + exp(-|x|))]   (binary cross-entropy with logits)
each [B, K]. The Dice-type terms and BCE only need these, so the full-size work of the loss is one sigmoid and a
few reductions, and the backward is one elementwise expression:
    d/dx = (g_fp + (g_tp - g_fp - g_fn) * t) * p * (1 - p) + g_bce * (p - t) / N.
Autograd over the separate formulas keeps about ten full-size intermediates alive and runs log_sigmoid, whose CPU
kernel alone cost as much as the rest of the loss (documentation/benchmarks.md, step profile). Both passes run
over blocks of about 1 MiB of rows, so each block's several reads come from cache: at batch 16 the loss's tensors
are far larger than that.

FP and FN are summed on their own rather than as sum p - TP and sum t - TP, and BCE's terms are combined per voxel
before the sum: for a nearly perfect prediction the differences of sums cancel in fp32 (relative error 3e-3 in
the loss at logits of +-8). For the same reason the log term is log(1 + exp(-|x|)) computed as such, not a
logarithm of p.
"""
from __future__ import annotations

import torch
from torch import Tensor

BLOCK_BYTES = 2 ** 20  # rows per block: about this much of one fp32 tensor, so a block's passes stay in cache


def _rows(tensor: Tensor) -> Tensor:
    """[B, K, *spatial] as [B * K, N] (a view when the tensor is contiguous)."""
    return tensor.reshape(tensor.shape[0] * tensor.shape[1], -1)


def _row_dot(a: Tensor, b: Tensor) -> Tensor:
    """sum(a * b) per row of two [R, N] blocks. The product is a block-size temporary on purpose: a matrix-product
    dot accumulates the 10^5 terms one after another (relative error 1e-4 in fp32), torch's sum in a tree."""
    return (a * b).sum(1)


def _row_blocks(rows: Tensor) -> list[slice]:
    """Slices of consecutive rows of an [R, N] tensor, about BLOCK_BYTES of it each (at least one row)."""
    per_block = max(1, BLOCK_BYTES // max(1, rows.shape[1] * rows.element_size()))
    return [slice(start, min(start + per_block, rows.shape[0])) for start in range(0, rows.shape[0], per_block)]


def _log1p_of_exp_minus_abs(x: Tensor) -> Tensor:
    """log(1 + exp(-|x|)) to fp32 rounding. With z = exp(-|x|) and u = 1 + z rounded, log(u) - ((u - 1) - z) / u
    adds back what the rounding of u lost (u - 1 - z is exact), so the result stays accurate down to z = 1e-38.
    Written with log rather than log1p: torch's CPU log1p is not vectorised and cost 7x a log per voxel."""
    z = x.abs().neg_().exp_()
    u = z + 1.0
    return torch.log(u).sub_((u - 1.0).sub_(z).div_(u))


class _ChannelStatistics(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits: Tensor, target: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        x, t = _rows(logits), _rows(target)
        p = torch.empty_like(x)
        tp, fp, fn, bce = (x.new_empty(x.shape[0]) for _ in range(4))
        for rows in _row_blocks(x):
            x_rows, t_rows, p_rows = x[rows], t[rows], p[rows]
            torch.sigmoid(x_rows, out=p_rows)
            tp[rows] = _row_dot(p_rows, t_rows)
            fp[rows] = _row_dot(p_rows, 1.0 - t_rows)
            fn[rows] = _row_dot(1.0 - p_rows, t_rows)
            # max(x, 0) - x t per voxel first: summed apart, the two terms would cancel for confident predictions
            per_voxel = x_rows.clamp_min(0.0).addcmul_(x_rows, t_rows, value=-1.0)
            per_voxel += _log1p_of_exp_minus_abs(x_rows)
            bce[rows] = per_voxel.sum(1)
        ctx.save_for_backward(p, t)
        ctx.shape = logits.shape
        shape = logits.shape[:2]
        return tp.reshape(shape), fp.reshape(shape), fn.reshape(shape), (bce / x.shape[1]).reshape(shape)

    @staticmethod
    def backward(ctx, grad_tp: Tensor, grad_fp: Tensor, grad_fn: Tensor, grad_bce: Tensor) -> tuple[Tensor, None]:
        p, t = ctx.saved_tensors
        g_fp = grad_fp.reshape(-1, 1)
        g_target = (grad_tp - grad_fp - grad_fn).reshape(-1, 1)
        g_bce = grad_bce.reshape(-1, 1) / p.shape[1]
        grad = torch.empty_like(p)
        for rows in _row_blocks(p):
            p_rows, t_rows, out = p[rows], t[rows], grad[rows]
            torch.addcmul(g_fp[rows], t_rows, g_target[rows], out=out)
            out.mul_(p_rows).mul_(1.0 - p_rows)
            out.addcmul_(p_rows, g_bce[rows]).addcmul_(t_rows, g_bce[rows], value=-1.0)
        return grad.reshape(ctx.shape), None


def channel_statistics(logits: Tensor, target: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(tp, fp, fn, bce) of logits and a binary target of the same dtype, both [B, K, *spatial]; each [B, K]
    (module doc). Gradients flow to the logits only."""
    return _ChannelStatistics.apply(logits.contiguous(), target.contiguous())
