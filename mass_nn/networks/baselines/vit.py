"""A plain 3D Vision Transformer encoder (Hi-End-MAE's, and the backbone of its UNETR and classifier), with the
patch <-> volume reshapes and the fixed 3D sin-cos positional embedding.

Conventions: volumes are [B, C, Z, Y, X]; a p³ patch is flattened in (pz, py, px, c) order; tokens run row-major
over the (gz, gy, gx) patch grid. A cls token (positional embedding 0) is prepended. The encoder can see a subset
of the tokens (`keep`), which is how masked pretraining hides the masked patches: their voxels are never read.
State-dict keys: `patch_embed.*`, `cls_token`, `pos_embed`, `blocks.<i>.*`, `norm.*`.
"""
from __future__ import annotations

import copy
import logging
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mass_nn.errors import MassError
from mass_nn.networks.network_base import NetworkConfig

logger = logging.getLogger(__name__)

SINCOS_TEMPERATURE = 10000.0
TOKEN_INIT_STD = 0.02


@dataclass
class ViTConfig(NetworkConfig):
    """Shape of a `ViTEncoder`. `input_size_zyx` fixes the grid of `pos_embed`; `learned_pos_embed` makes it a
    parameter (UNETR finetunes it, initialised from the pretraining sin-cos) instead of a fixed buffer."""

    in_channels: int
    input_size_zyx: list[int]
    patch_size: int
    dim: int
    depth: int
    heads: int
    mlp_ratio: int = 4
    learned_pos_embed: bool = False
    norm_eps: float = 1e-6


    def grid(self) -> tuple[int, int, int]:
        return tuple(side // self.patch_size for side in self.input_size_zyx)

    @property
    def patch_dim(self) -> int:
        """Length of a flattened patch: p³ · in_channels."""
        return self.patch_size ** 3 * self.in_channels

    def validate(self) -> None:
        """Raise ValueError naming every field that cannot build an encoder."""
        problems = []
        if self.in_channels < 1 or self.patch_size < 1 or self.depth < 1 or self.heads < 1 or self.mlp_ratio < 1:
            problems.append("in_channels, patch_size, depth, heads and mlp_ratio must be >= 1")
        if len(self.input_size_zyx) != 3 or any(s < 1 or s % max(self.patch_size, 1) for s in self.input_size_zyx):
            problems.append(f"input_size_zyx {self.input_size_zyx} must be 3 sides divisible by patch_size "
                            f"{self.patch_size}")
        if self.dim < 6 or self.dim % 6 or self.dim % max(self.heads, 1):
            problems.append(f"dim {self.dim} must be divisible by 6 (3D sin-cos) and by heads {self.heads}")
        if not self.norm_eps > 0:
            problems.append(f"norm_eps must be > 0, got {self.norm_eps}")
        if problems:
            raise ValueError("invalid ViTConfig: " + "; ".join(problems))


def patch_grid(spatial: tuple[int, ...] | torch.Size, patch_size: int) -> tuple[int, int, int]:
    """The (gz, gy, gx) token grid of a volume; sides that are not multiples of the patch raise MassError."""
    spatial = tuple(int(s) for s in spatial)
    if len(spatial) != 3 or any(s % patch_size or s == 0 for s in spatial):
        raise MassError(f"a window of size {list(spatial)} does not split into {patch_size}³ ViT patches; use windows "
                        f"(the plans' patch_size_zyx, or -s input_size) whose sides are multiples of {patch_size}")
    return tuple(s // patch_size for s in spatial)


def patchify(volume: Tensor, patch_size: int) -> Tensor:
    """[B, C, Z, Y, X] -> [B, L, p³·C]: non-overlapping patches, each flattened in (pz, py, px, c) order."""
    b, c = volume.shape[:2]
    gz, gy, gx = patch_grid(volume.shape[2:], patch_size)
    p = patch_size
    x = volume.reshape(b, c, gz, p, gy, p, gx, p).permute(0, 2, 4, 6, 3, 5, 7, 1)
    return x.reshape(b, gz * gy * gx, p ** 3 * c)


def unpatchify(patches: Tensor, grid: tuple[int, int, int], patch_size: int, channels: int) -> Tensor:
    """Inverse of `patchify`: [B, L, p³·C] on `grid` -> [B, C, gz·p, gy·p, gx·p]."""
    b = patches.shape[0]
    gz, gy, gx = grid
    p = patch_size
    x = patches.reshape(b, gz, gy, gx, p, p, p, channels).permute(0, 7, 1, 4, 2, 5, 3, 6)
    return x.reshape(b, channels, gz * p, gy * p, gx * p)


def tokens_to_grid(tokens: Tensor, grid: tuple[int, int, int]) -> Tensor:
    """Patch tokens [B, L, D] (no cls) -> feature map [B, D, gz, gy, gx]."""
    return tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], *grid)


def sincos_position_embedding(grid: tuple[int, int, int], dim: int) -> Tensor:
    """Fixed 3D sin-cos embedding [L, dim] of the tokens of `grid` (row-major): per axis dim/6 frequencies
    ω_k = 1 / 10000^(k / (dim/6)); [sin z, cos z, sin y, cos y, sin x, cos x]."""
    if dim % 6:
        raise ValueError(f"a 3D sin-cos embedding needs dim divisible by 6, got {dim}")
    per_axis = dim // 6
    omega = 1.0 / SINCOS_TEMPERATURE ** (torch.arange(per_axis, dtype=torch.float64) / per_axis)
    axes = torch.meshgrid(*[torch.arange(n, dtype=torch.float64) for n in grid], indexing="ij")
    parts = []
    for coordinate in axes:
        angles = coordinate.reshape(-1, 1) * omega.reshape(1, -1)
        parts += [torch.sin(angles), torch.cos(angles)]
    return torch.cat(parts, dim=1).float()


def init_transformer_weights(module: nn.Module) -> None:
    """Xavier-uniform Linear weights with zero biases, unit LayerNorms (the MAE initialisation)."""
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def split_heads(x: Tensor, heads: int) -> Tensor:
    """[B, N, D] -> [B, heads, N, D / heads]."""
    b, n, d = x.shape
    return x.reshape(b, n, heads, d // heads).transpose(1, 2)


def merge_heads(x: Tensor) -> Tensor:
    """[B, heads, N, d] -> [B, N, heads · d]."""
    b, h, n, d = x.shape
    return x.transpose(1, 2).reshape(b, n, h * d)


class SelfAttention(nn.Module):
    """Multi-head self-attention with a fused qkv projection (biases) and an output projection."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        """[B, N, D] -> [B, N, D]."""
        q, k, v = (split_heads(t, self.heads) for t in self.qkv(x).chunk(3, dim=-1))
        return self.proj(merge_heads(F.scaled_dot_product_attention(q, k, v)))


class Mlp(nn.Module):
    """Linear(dim -> ratio·dim) -> GELU -> Linear(ratio·dim -> dim)."""

    def __init__(self, dim: int, ratio: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, dim * ratio)
        self.fc2 = nn.Linear(dim * ratio, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class TransformerBlock(nn.Module):
    """Pre-LN transformer block: x + SA(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int, eps: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attention = SelfAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, mlp_ratio)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attention(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ViTEncoder(nn.Module):
    """Volumes [B, C, Z, Y, X] (sides multiples of the patch) -> (normed final tokens [B, 1 + n, D], the n
    un-normed block outputs `hidden[i]` of block i, each [B, 1 + n, D]); token 0 is the cls token and n is the
    number of patches kept (all, or `keep`'s)."""

    def __init__(self, config: ViTConfig):
        super().__init__()
        config.validate()
        self.config = copy.deepcopy(config)
        self.patch_embed = nn.Linear(config.patch_dim, config.dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, config.dim))
        initial = sincos_position_embedding(config.grid(), config.dim)[None]
        if config.learned_pos_embed:
            self.pos_embed = nn.Parameter(initial)
        else:
            self.register_buffer("pos_embed", initial)
        self.blocks = nn.ModuleList(TransformerBlock(config.dim, config.heads, config.mlp_ratio, config.norm_eps)
                                    for _ in range(config.depth))
        self.norm = nn.LayerNorm(config.dim, eps=config.norm_eps)
        self.apply(init_transformer_weights)
        nn.init.normal_(self.cls_token, std=TOKEN_INIT_STD)
        self._warned_grids: set[tuple[int, int, int]] = set()

    def grid(self, spatial) -> tuple[int, int, int]:
        """The token grid of a volume with these spatial sides (MassError when they are not patch multiples)."""
        return patch_grid(spatial, self.config.patch_size)

    def position_embedding(self, grid: tuple[int, int, int]) -> Tensor:
        """[1, L, D] for `grid`: the stored one on its own grid; on another grid the exact sin-cos of that grid
        (fixed embedding) or a trilinear interpolation of the learned one (logged once per grid)."""
        own = self.config.grid()
        if tuple(grid) == own:
            return self.pos_embed
        if not self.config.learned_pos_embed:
            return sincos_position_embedding(grid, self.config.dim)[None].to(self.pos_embed)
        if tuple(grid) not in self._warned_grids:
            self._warned_grids.add(tuple(grid))
            logger.warning("ViT windows of grid %s differ from the positional embedding's grid %s (input %s): the "
                           "learned positional embedding is trilinearly interpolated", list(grid), list(own),
                           self.config.input_size_zyx)
        as_map = tokens_to_grid(self.pos_embed, own)
        resized = F.interpolate(as_map, size=tuple(grid), mode="trilinear", align_corners=False)
        return resized.flatten(2).transpose(1, 2)

    def embed(self, volume: Tensor) -> Tensor:
        """Patch embeddings plus positional embeddings of all tokens [B, L, D] (no cls)."""
        if volume.dim() != 5 or volume.shape[1] != self.config.in_channels:
            raise ValueError(f"expected volumes [B, {self.config.in_channels}, Z, Y, X], got {list(volume.shape)}")
        grid = self.grid(volume.shape[2:])
        return self.patch_embed(patchify(volume, self.config.patch_size)) + self.position_embedding(grid)

    def forward(self, volume: Tensor, keep: Tensor | None = None) -> tuple[Tensor, list[Tensor]]:
        """Encode all tokens, or only those at `keep` ([B, n] token indices; only their voxels are read)."""
        if keep is None:
            tokens = self.embed(volume)
        else:
            grid = self.grid(volume.shape[2:])
            patches = patchify(volume, self.config.patch_size)
            patches = torch.gather(patches, 1, keep[..., None].expand(-1, -1, patches.shape[-1]))
            position = self.position_embedding(grid).expand(volume.shape[0], -1, -1)
            position = torch.gather(position, 1, keep[..., None].expand(-1, -1, position.shape[-1]))
            tokens = self.patch_embed(patches) + position
        x = torch.cat([self.cls_token.expand(tokens.shape[0], -1, -1), tokens], dim=1)
        hidden = []
        for block in self.blocks:
            x = block(x)
            hidden.append(x)
        return self.norm(x), hidden


def default_hierarchy(depth: int) -> list[int]:
    """Hi-End-MAE's hidden-state indices for a depth (0-based block outputs, deepest first): (3d/4, d/2, d/4)
    rounded down, i.e. (9, 6, 3) for 12 blocks and (3, 2, 1) for 4."""
    layers = [math.floor(3 * depth / 4), depth // 2, depth // 4]
    if depth < 4 or len(set(layers)) != 3:
        raise ValueError(f"the hierarchical layers need a depth of at least 4, got {depth}")
    return layers
