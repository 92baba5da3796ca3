"""The weight gradient of 3×3×3 kernels applied to one-channel maps, as a few wide matrix products.

gradient[s, a, b, c] = Σ grad_out[s, n, z, y, x] · maps[n, z + a - 1, y + b - 1, x + c - 1] for S kernels on the
same N maps: the mask merge's kernels (`in_context/shared_kernel_conv.py`) and any convolution with one input
channel (`conv_blocks.conv3d`: the stem on the image, whose weight gradient oneDNN computes at about 4 GFLOP/s).

Each row of x is cut into chunks of w voxels. With the maps padded by one voxel, a chunk of the gradient meets
the w + 2 map voxels from its start, in the 3 × 3 rows shifted by (a, b): one [w, 9 (w + 2)] outer product per
chunk, summed over all chunks as one matrix product [S·w, chunks] × [chunks, 9 (w + 2)] per block of positions.
Tap c of kernel s is then the sum of that product's diagonal x → x + c. The product computes (w + 2) / 3 times
the FLOPs the 27 sums need, but as a matrix product with 9 (w + 2) columns it runs near the processor's matrix
rate, where the 27 sums' [27, positions] × [positions, S] product (the earlier form of this module) is bound by
memory: 2.1× faster for three kernels on 208 maps of 48³ in bf16 on a 2-core Xeon (487 → 230 ms), and it never
builds a padded fp32 copy of the gradients (S × the maps), whose page faults a training step paid on top.
On the CPU the compiled stencil kernels (`native_stencils`) replace the matrix products where they are built: one
pass over the maps and gradients, 3.1× faster again for three kernels on 256 maps of 48³ (399 → 129 ms in bf16).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from mass_nn.networks import native_stencils

KERNEL = 3
TAPS_IN_PLANE = KERNEL * KERNEL
# Widest chunk first: the product's FLOPs grow as (w + 2) / 3 and the copied map rows shrink as (w + 2) / w;
# 16 was the fastest of 8, 16 and 24 on 208 maps of 48³ (266 / 230 / 249 ms in fp32 on a 2-core Xeon).
CHUNK_WIDTHS = (16, 12, 8, 6, 4, 3, 2, 1)
# Positions (voxels) per block, measured on a 2-core Xeon for 208 maps of 48³ (3 kernels) and 16 (8 kernels): 8,192
# / 32,768 / 131,072 / 10⁶ took 429 / 274 / 230 / 263 ms and 63 / 41 / 32 / 35 ms. Larger blocks are fewer matrix
# products; at 131,072 a block copies about 5 MiB of map rows (fp32, chunks of 16), which the whole volume multiplies.
BLOCK_POSITIONS = 131072


def _chunk_width(width: int) -> int:
    """The widest chunk that divides a row of `width` voxels."""
    return next(w for w in CHUNK_WIDTHS if width % w == 0)


def _blocks(count: int, depth: int, plane: int) -> list[tuple[int, int, int, int]]:
    """(first map, last map + 1, first slice, last slice + 1) of each block: whole maps together when a map holds
    at most BLOCK_POSITIONS voxels, else slabs of whole planes of one map."""
    if depth * plane <= BLOCK_POSITIONS:
        per_block = BLOCK_POSITIONS // (depth * plane)
        return [(n, min(n + per_block, count), 0, depth) for n in range(0, count, per_block)]
    slices = max(1, BLOCK_POSITIONS // plane)
    return [(n, n + 1, z, min(z + slices, depth)) for n in range(count) for z in range(0, depth, slices)]


def _summing_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)  # bf16 maps are summed in fp32, fp64 stays fp64


def kernel_weight_gradients(maps: Tensor, grads: Tensor | list[Tensor] | tuple[Tensor, ...]) -> Tensor:
    """The S kernels' gradients [S, 3, 3, 3] from maps [N, D, H, W] and one output gradient [N, D, H, W] per
    kernel ([S, N, D, H, W] or S tensors, any strides), summed in fp32 or wider (see the module docstring)."""
    if native_stencils.usable_for(maps):
        return native_stencils.stencil_weight_gradient(maps, list(grads)).to(_summing_dtype(maps.dtype))
    count, depth, height, width = maps.shape
    kernels, dtype, w = len(grads), _summing_dtype(maps.dtype), _chunk_width(width)
    chunks, columns = width // w, TAPS_IN_PLANE * (w + 2)
    padded = F.pad(maps.to(dtype), (1,) * 6)
    map_stride, slice_stride, row_stride, _ = padded.stride()
    products = padded.new_zeros(kernels * w, columns)  # on the maps' device: the task encoder runs on GPUs too
    for first, last, z0, z1 in _blocks(count, depth, height * width):
        # map rows: [maps, slices, rows, chunks, a, b, w + 2], the 3 × 3 shifted rows of every chunk
        rows = padded.as_strided((last - first, z1 - z0, height, chunks, KERNEL, KERNEL, w + 2),
                                 (map_stride, slice_stride, row_stride, w, slice_stride, row_stride, 1),
                                 padded.storage_offset() + first * map_stride + z0 * slice_stride)
        chunk_grads = padded.new_empty(kernels, w, last - first, z1 - z0, height, chunks)
        for grad, target in zip(grads, chunk_grads):
            target.copy_(grad[first:last, z0:z1].unflatten(-1, (chunks, w)).permute(4, 0, 1, 2, 3))
        products.addmm_(chunk_grads.reshape(kernels * w, -1), rows.reshape(-1, columns))
    # products[(s, x), (a, b, x')]: tap (a, b, c) of kernel s is the sum over x of products[(s, x), (a, b, x + c)]
    return products.as_strided((kernels, KERNEL, KERNEL, KERNEL, w),
                               (w * columns, KERNEL * (w + 2), w + 2, 1, columns + 1)).sum(-1)
