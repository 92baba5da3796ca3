"""Random block masks of the MAE and S3D baselines (nnssl's masking): the patch is cut into cubes of `block_size`
voxels, a fixed share of the cubes is hidden, independently per sample and anew every step, and the mask is
resampled to any feature map of the encoder. Convention everywhere: 1 = visible (active), 0 = masked.

A mask lives on its block grid, (B, 1, *grid); `mask_at` repeats every block to a map of any size that is a whole
multiple of the grid, and makes a map smaller than the grid all visible (the S3D bottleneck rule).
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from mass_nn.errors import MassError

MASK_STREAM = 0x6D61736B  # keeps the mask generator's stream apart from the loader's per-batch seeds


def mask_generator(seed: int, batch_index: int) -> torch.Generator:
    """A CPU generator that is a pure function of (run seed, global batch index), so the masks of batch i are
    the same in an uninterrupted and in a resumed run."""
    state = np.random.SeedSequence([int(seed), int(batch_index), MASK_STREAM]).generate_state(1, dtype=np.uint64)
    return torch.Generator().manual_seed(int(state[0]))


def mask_grid(patch_size_zyx, block_size: int, source: str = "-s block_size") -> tuple[int, int, int]:
    """Blocks per axis of a patch; MassError unless `block_size` is a power of two (the encoder halves the
    resolution per stage, so the blocks then tile every feature map at least as large as the grid), divides every
    side and leaves at least two blocks per axis."""
    sides = [int(s) for s in patch_size_zyx]
    power_of_two = block_size >= 1 and block_size & (block_size - 1) == 0
    if not power_of_two or any(side % block_size or side // block_size < 2 for side in sides):
        raise MassError(f"{source}={block_size}: the block size must be a power of two that divides every side of "
                        f"the patch {sides} at least twice; choose e.g. 8 or 16 for this configuration")
    return tuple(side // block_size for side in sides)


def hidden_block_count(grid, mask_ratio: float) -> int:
    """How many blocks of a grid are hidden: int(ratio x blocks) as nnssl; MassError unless at least one block
    is hidden and one stays visible."""
    blocks = math.prod(grid)
    hidden = int(mask_ratio * blocks)
    if not 0 < hidden < blocks:
        raise MassError(f"-s mask_ratio={mask_ratio}: hides {hidden} of {blocks} blocks on the grid {list(grid)}; "
                        f"choose a ratio that hides at least one block and keeps one visible (default 0.75)")
    return hidden


def random_block_mask(batch_size: int, grid, mask_ratio: float, generator: torch.Generator) -> Tensor:
    """(B, 1, *grid) float32 on the CPU: in each sample exactly `hidden_block_count(grid, ratio)` blocks are 0,
    chosen uniformly at random and independently of the other samples; the rest are 1."""
    blocks, hidden = math.prod(grid), hidden_block_count(grid, mask_ratio)
    order = torch.rand(batch_size, blocks, generator=generator).argsort(dim=1)
    mask = torch.ones(batch_size, blocks)
    mask.scatter_(1, order[:, :hidden], 0.0)
    return mask.view(batch_size, 1, *grid)


def mask_at(grid_mask: Tensor, size, dtype: torch.dtype | None = None) -> Tensor:
    """The block mask on a map of spatial `size`: (B, 1, *size), each block repeated size / grid times along each
    axis; all ones where the map is smaller than the grid on every axis. ValueError for any other size."""
    grid, size = tuple(grid_mask.shape[2:]), tuple(int(s) for s in size)
    dtype = dtype or grid_mask.dtype
    if all(s < g for s, g in zip(size, grid)):
        return torch.ones(grid_mask.shape[0], 1, *size, dtype=dtype, device=grid_mask.device)
    if any(s % g for s, g in zip(size, grid)):
        raise ValueError(f"a feature map of size {list(size)} is neither a whole multiple of the mask grid "
                         f"{list(grid)} nor smaller than it on every axis")
    mask = grid_mask.to(dtype)
    for axis, (s, g) in enumerate(zip(size, grid), start=2):
        mask = mask.repeat_interleave(s // g, dim=axis)
    return mask
