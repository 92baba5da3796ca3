"""Multi-level masked volumes of MiM (Mask in Mask), generated before any network pass.

Level 1 is a large crop (region_grid x the network input per axis) resized to the network input. Its tokens are
grouped spatially into region_grid^3 regions (token (i, j, k) lies in region (i // tz, j // ty, k // tx)) and
whole regions are masked. Level 2 volumes are `children[0]` masked regions per level-1 volume, cut at native
resolution from the crop and resized to the network input; each level >= 2 masks single tokens, and level l + 1
volumes are `children[l - 1]` masked tokens per level-l volume, cut from its native source and resized. So each
child's content is exactly what its parent could not see. Every level uses mask ratio `mask_ratio`.

Choices (deviations from the public code, see documentation/baseline_pretrainers.md): region grouping is spatial
(the code groups runs of the flattened token index); among the masked regions, those holding image voxels
(valid > 0) are picked first, so children are not pure padding when the crop is larger than the volume.
All randomness comes from the given torch.Generator.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from mass_nn.errors import MassError
from mass_nn.networks.baselines.mim_network import LevelInput


@dataclass
class MiMLevelSettings:
    """region_grid: level-1 regions per axis (the level-1 crop is region_grid x the network input);
    children: volumes cut per parent for each level after the first (K2, K3, ...); mask_ratio: share of regions
    (level 1) or tokens (later levels) that are masked."""

    region_grid: int = 2
    children: tuple[int, ...] = (2, 2)
    mask_ratio: float = 0.6

    @property
    def num_levels(self) -> int:
        return 1 + len(self.children)

    def masked_count(self, num_regions: int) -> int:
        """How many of `num_regions` regions are masked (at least one stays visible)."""
        return num_regions - max(1, int(num_regions * (1.0 - self.mask_ratio)))

    def check(self, token_grid) -> None:
        """Raise MassError when these settings cannot cut levels from volumes with this token grid."""
        g = self.region_grid
        if g < 1 or any(t % g for t in token_grid):
            raise MassError(f"MiM setting region_grid={g}: the token grid {list(token_grid)} must be divisible by it "
                            f"on every axis; choose a region_grid that divides each of {list(token_grid)}")
        if not 1 <= len(self.children) <= 2:
            raise MassError(f"MiM: {1 + len(self.children)} levels asked; 2 or 3 are supported (a fourth level would "
                            f"cut blocks smaller than a voxel)")
        if not 0.0 < self.mask_ratio < 1.0:
            raise MassError(f"MiM setting mask_ratio={self.mask_ratio}: expected a number in (0, 1), e.g. 0.6")
        available = [self.masked_count(g ** 3)] + [self.masked_count(math.prod(token_grid))] * len(self.children)
        for level, (k, masked) in enumerate(zip(self.children, available), start=2):
            if not 1 <= k <= masked:
                raise MassError(f"MiM: level {level} cuts {k} volume(s) per parent, but a parent has only {masked} "
                                f"masked region(s) at mask_ratio {self.mask_ratio}; set -s k{level}=1..{masked}")


@dataclass
class MaskedLevel:
    """The volumes of one level. images / valid: the network inputs [M, C, *input] and [M, 1, *input] (1 inside
    the scanned volume); visible [M, N] bool; region_of_token [N] and num_regions: the partition children are cut
    from; parent / parent_region [M] (None at level 1): the parent volume in the previous level and the region of
    it this volume was cut from; native / native_valid: the volumes at native resolution (children's source)."""

    images: Tensor
    valid: Tensor
    visible: Tensor
    region_of_token: Tensor
    num_regions: int
    parent: Tensor | None
    parent_region: Tensor | None
    native: Tensor
    native_valid: Tensor

    def network_input(self) -> LevelInput:
        return LevelInput(self.images, self.visible, self.region_of_token, self.num_regions)


def resize_volume(x: Tensor, size, mask: bool = False) -> Tensor:
    """[M, C, *s] -> [M, C, *size]: area averaging when shrinking, trilinear otherwise, unchanged when equal;
    `mask`: then thresholded at 0.5."""
    size = tuple(int(s) for s in size)
    if tuple(x.shape[2:]) == size:
        return x
    shrinking = all(t <= s for t, s in zip(size, x.shape[2:]))
    resized = F.interpolate(x.float(), size=size, mode="area") if shrinking else \
        F.interpolate(x.float(), size=size, mode="trilinear", align_corners=False)
    return (resized >= 0.5).to(x.dtype) if mask else resized.to(x.dtype)


def region_of_token(token_grid, region_grid) -> Tensor:
    """Region index [N] of each token (row-major) for a partition of the token grid into region_grid blocks."""
    sizes = [t // r for t, r in zip(token_grid, region_grid)]
    axes = torch.meshgrid(*[torch.arange(t) // s for t, s in zip(token_grid, sizes)], indexing="ij")
    z, y, x = (a.reshape(-1) for a in axes)
    return (z * region_grid[1] + y) * region_grid[2] + x


def cut_blocks(volumes: Tensor, grid, index: Tensor) -> Tensor:
    """Blocks of volumes [M, C, *S] split into grid blocks (row-major), picked by index [M, k] -> [M*k, C, *S/grid]."""
    m, c = volumes.shape[:2]
    block = [s // g for s, g in zip(volumes.shape[2:], grid)]
    split = volumes.reshape(m, c, grid[0], block[0], grid[1], block[1], grid[2], block[2])
    blocks = split.permute(0, 2, 4, 6, 1, 3, 5, 7).reshape(m, math.prod(grid), c, *block)
    picked = torch.gather(blocks, 1, index.reshape(m, -1, 1, 1, 1, 1).expand(-1, -1, c, *block))
    return picked.reshape(-1, c, *block)


def blocks_with_content(valid: Tensor, grid) -> Tensor:
    """[M, R] bool: whether each grid block of valid [M, 1, *S] holds a voxel inside the scanned volume."""
    block = [s // g for s, g in zip(valid.shape[2:], grid)]
    return F.max_pool3d(valid.float(), block, stride=block).flatten(1) > 0


def random_visible_regions(count: int, num_regions: int, settings: MiMLevelSettings,
                           generator: torch.Generator) -> Tensor:
    """[count, R] bool: a uniformly random set of R - masked_count(R) visible regions per row."""
    keep = num_regions - settings.masked_count(num_regions)
    ranks = torch.argsort(torch.rand(count, num_regions, generator=generator), dim=1).argsort(dim=1)
    return ranks < keep


def pick_masked_regions(visible: Tensor, has_content: Tensor, k: int, generator: torch.Generator) -> Tensor:
    """[M, k] region indices drawn at random among the masked regions of each row, those with content first."""
    noise = torch.rand(visible.shape, generator=generator)
    priority = noise + 2.0 * (~has_content).float() + 4.0 * visible.float()
    return torch.argsort(priority, dim=1)[:, :k]


def first_level(crop: Tensor, crop_valid: Tensor, input_size, token_grid, settings: MiMLevelSettings,
                generator: torch.Generator) -> MaskedLevel:
    """Level 1: the crop resized to the input, masked by whole regions of region_grid^3."""
    grid = (settings.region_grid,) * 3
    regions = region_of_token(token_grid, grid).to(crop.device)
    visible_regions = random_visible_regions(crop.shape[0], math.prod(grid), settings, generator).to(crop.device)
    return MaskedLevel(resize_volume(crop, input_size), resize_volume(crop_valid, input_size, mask=True),
                       visible_regions[:, regions], regions, math.prod(grid), None, None, crop, crop_valid)


def child_level(parent: MaskedLevel, parent_grid, k: int, input_size, token_grid, settings: MiMLevelSettings,
                generator: torch.Generator) -> MaskedLevel:
    """The next level: k masked regions (of parent_grid) of each parent volume, cut at native resolution and
    resized to the input; tokens masked one by one."""
    device = parent.images.device
    region_visible = torch.zeros(parent.visible.shape[0], parent.num_regions, dtype=torch.bool, device=device)
    region_visible.index_put_((torch.arange(parent.visible.shape[0], device=device)[:, None],
                               parent.region_of_token[None, :]), parent.visible)
    content = blocks_with_content(parent.native_valid, parent_grid)
    picks = pick_masked_regions(region_visible.cpu(), content.cpu(), k, generator).to(device)
    native = cut_blocks(parent.native, parent_grid, picks)
    native_valid = cut_blocks(parent.native_valid, parent_grid, picks)
    n_tokens = math.prod(token_grid)
    visible = random_visible_regions(native.shape[0], n_tokens, settings, generator).to(device)
    return MaskedLevel(resize_volume(native, input_size), resize_volume(native_valid, input_size, mask=True),
                       visible, torch.arange(n_tokens, device=device), n_tokens,
                       torch.arange(parent.visible.shape[0], device=device).repeat_interleave(k), picks.reshape(-1),
                       native, native_valid)


def build_levels(crop: Tensor, crop_valid: Tensor, input_size, patch_size: int, settings: MiMLevelSettings,
                 generator: torch.Generator) -> list[MaskedLevel]:
    """All levels of a batch of level-1 crops [B, C, *(region_grid * input_size)] with valid [B, 1, ...]:
    B, B*K2, B*K2*K3, ... volumes."""
    token_grid = tuple(int(s) // patch_size for s in input_size)
    expected = tuple(settings.region_grid * int(s) for s in input_size)
    if tuple(crop.shape[2:]) != expected:
        raise ValueError(f"level-1 crops must be region_grid x input = {list(expected)}, got {list(crop.shape[2:])}")
    settings.check(token_grid)
    levels = [first_level(crop, crop_valid, input_size, token_grid, settings, generator)]
    grids = [(settings.region_grid,) * 3] + [token_grid] * (len(settings.children) - 1)
    for k, grid in zip(settings.children, grids):
        levels.append(child_level(levels[-1], grid, k, input_size, token_grid, settings, generator))
    return levels
