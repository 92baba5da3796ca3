"""The hybrid convolution-transformer backbone of MiM (a 3D ConvViT in the MCMAE style).

n stages each halve the resolution with a non-overlapping 2x2x2 strided convolution. The first n - 1 stages are
convolutional (masked convolution blocks); the last stage turns its map into tokens (one per 2**n voxels per axis,
the "effective patch"), adds a fixed 3D sine-cosine position embedding and runs transformer blocks.

Masked mode (pretraining): given which tokens are visible, every convolution block multiplies the input of its
only spatial mixing (a depthwise convolution) by the visibility mask at its resolution, and only visible tokens
enter the transformer. Because the strided convolutions never cross a token's borders, the features at visible
positions do not depend on the content of masked tokens. Without a mask (downstream) all tokens are used.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from mass_nn.networks.attention import PreNormFeedForward, PreNormSelfAttention
from mass_nn.networks.network_base import NetworkConfig

SINCOS_TEMPERATURE = 10000.0


@dataclass
class MiMBackboneConfig(NetworkConfig):
    """Shape of a `MiMBackbone`.

    stage_dims: channels of the n stages (the last one is the transformer width; it and every width that gets a
    sine-cosine embedding must be divisible by 6). conv_depths: masked convolution blocks in each of the first
    n - 1 stages. input_size_zyx: the pretraining input (each side divisible by 2**n); the backbone accepts any
    such size, the position embedding is computed for the token grid it meets.
    """

    in_channels: int
    input_size_zyx: list[int]
    stage_dims: list[int]
    conv_depths: list[int]
    transformer_depth: int
    num_heads: int
    mlp_ratio: int = 4
    conv_kernel: int = 5


    @classmethod
    def paper(cls, in_channels: int = 1) -> "MiMBackboneConfig":
        """The paper's backbone (reference code `convmae_convvit_base_patch16`): 96^3 input, 4 stages
        48/96/192/384, depths 2/2/2 + 11 transformer blocks, 12 heads, effective patch 16 (6^3 tokens)."""
        return cls(in_channels=in_channels, input_size_zyx=[96, 96, 96], stage_dims=[48, 96, 192, 384],
                   conv_depths=[2, 2, 2], transformer_depth=11, num_heads=12)

    @classmethod
    def cpu(cls, input_size_zyx, in_channels: int = 1) -> "MiMBackboneConfig":
        """A CPU-sized backbone: 3 stages 12/24/48, one convolution block per conv stage, 2 transformer blocks,
        3 heads, effective patch 8."""
        return cls(in_channels=in_channels, input_size_zyx=[int(s) for s in input_size_zyx],
                   stage_dims=[12, 24, 48], conv_depths=[1, 1], transformer_depth=2, num_heads=3)

    @property
    def num_stages(self) -> int:
        return len(self.stage_dims)

    @property
    def patch_size(self) -> int:
        """Voxels per token along each axis (2**num_stages)."""
        return 2 ** self.num_stages

    def token_grid(self, size_zyx=None) -> tuple[int, int, int]:
        """Tokens per axis for an input of `size_zyx` (default: input_size_zyx)."""
        size = self.input_size_zyx if size_zyx is None else size_zyx
        return tuple(int(s) // self.patch_size for s in size)

    def validate(self) -> None:
        """Raise ValueError naming every field that cannot build a backbone."""
        problems = []
        n = self.num_stages
        if self.in_channels < 1 or n < 2 or min(self.stage_dims) < 1:
            problems.append(f"need in_channels >= 1 and at least 2 positive stage_dims, got {self.in_channels}, "
                            f"{self.stage_dims}")
        if len(self.conv_depths) != n - 1 or min(self.conv_depths, default=1) < 1:
            problems.append(f"conv_depths must be {n - 1} integers >= 1 (one per conv stage), got {self.conv_depths}")
        if len(self.input_size_zyx) != 3 or any(s < 1 or s % self.patch_size for s in self.input_size_zyx):
            problems.append(f"input_size_zyx must be 3 sides divisible by 2**{n} = {self.patch_size}, got "
                            f"{self.input_size_zyx}")
        width = self.stage_dims[-1] if self.stage_dims else 0
        if self.transformer_depth < 1 or self.num_heads < 1 or width % 6 or width % max(self.num_heads, 1):
            problems.append(f"the transformer width {width} must be divisible by 6 (sine-cosine embedding) and by "
                            f"num_heads = {self.num_heads}; transformer_depth >= 1 (got {self.transformer_depth})")
        if self.mlp_ratio < 1 or self.conv_kernel < 1 or self.conv_kernel % 2 == 0:
            problems.append(f"need mlp_ratio >= 1 and an odd conv_kernel, got {self.mlp_ratio}, {self.conv_kernel}")
        if problems:
            raise ValueError("invalid MiMBackboneConfig: " + "; ".join(problems))


def sincos_position_embedding(grid_zyx, dim: int, device=None) -> Tensor:
    """Fixed 3D sine-cosine embedding [gz*gy*gx, dim] of a token grid flattened row-major (z slowest).

    Per axis dim/6 frequencies omega_k = 1 / 10000**(k / (dim/6)); the channels are [sin z, cos z, sin y, cos y,
    sin x, cos x]."""
    if dim % 6:
        raise ValueError(f"a 3D sine-cosine embedding needs a width divisible by 6, got {dim}")
    per_axis = dim // 6
    omega = 1.0 / SINCOS_TEMPERATURE ** (torch.arange(per_axis, dtype=torch.float64) / per_axis)
    axes = torch.meshgrid(*[torch.arange(int(g), dtype=torch.float64) for g in grid_zyx], indexing="ij")
    parts = []
    for position in axes:
        angles = position.reshape(-1, 1) * omega.reshape(1, -1)
        parts += [torch.sin(angles), torch.cos(angles)]
    return torch.cat(parts, dim=1).to(device=device, dtype=torch.float32)


def visible_indices(visible: Tensor) -> Tensor:
    """Indices [B, n] of the visible tokens of each row of `visible` [B, N] (bool), ascending; every row must
    have the same number n of visible tokens."""
    counts = visible.sum(dim=1)
    if counts.numel() and bool((counts != counts[0]).any()):
        raise ValueError(f"every sample needs the same number of visible tokens, got {counts.tolist()}")
    order = torch.argsort((~visible).to(torch.int8), dim=1, stable=True)
    return order[:, : int(counts[0]) if counts.numel() else 0]


def gather_tokens(tokens: Tensor, index: Tensor) -> Tensor:
    """tokens [B, N, C] at index [B, n] -> [B, n, C]."""
    return torch.gather(tokens, 1, index.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))


class ChannelLayerNorm(nn.LayerNorm):
    """LayerNorm over the channels of each voxel of a [B, C, D, H, W] map."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.movedim(1, -1)).movedim(-1, 1)


class PatchEmbed3d(nn.Sequential):
    """Conv3d(kernel 2, stride 2) -> channel LayerNorm -> GELU: halves the resolution; each output voxel sees
    only its own 2x2x2 input block."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(nn.Conv3d(in_channels, out_channels, 2, stride=2), ChannelLayerNorm(out_channels),
                         nn.GELU())


class MaskedConvBlock(nn.Module):
    """x + conv1x1(depthwise_k(m * conv1x1(LN x))), then x + MLP(LN x) (1x1x1 convolutions, GELU).

    `visible` m [B, 1, D, H, W] (1 visible, 0 masked) gates the only spatial mixing, so nothing from masked
    positions reaches visible ones; None: everything visible."""

    def __init__(self, dim: int, kernel: int, mlp_ratio: int):
        super().__init__()
        self.norm1 = ChannelLayerNorm(dim)
        self.conv_in = nn.Conv3d(dim, dim, 1)
        self.depthwise = nn.Conv3d(dim, dim, kernel, padding=kernel // 2, groups=dim)
        self.conv_out = nn.Conv3d(dim, dim, 1)
        self.norm2 = ChannelLayerNorm(dim)
        self.mlp = nn.Sequential(nn.Conv3d(dim, dim * mlp_ratio, 1), nn.GELU(), nn.Conv3d(dim * mlp_ratio, dim, 1))

    def forward(self, x: Tensor, visible: Tensor | None = None) -> Tensor:
        mixed = self.conv_in(self.norm1(x))
        if visible is not None:
            mixed = mixed * visible.to(mixed.dtype)
        # channels-last input takes oneDNN's depthwise kernel on CPU (about 4x faster than the default path there,
        # same result)
        x = x + self.conv_out(self.depthwise(mixed.contiguous(memory_format=torch.channels_last_3d)))
        return x + self.mlp(self.norm2(x))


class TransformerBlock(nn.Module):
    """Pre-norm self-attention and feed-forward sub-layers over [B, L, dim] tokens."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: int):
        super().__init__()
        self.attention = PreNormSelfAttention(dim, dim // num_heads)
        self.feed_forward = PreNormFeedForward(dim, mlp_ratio)

    def forward(self, x: Tensor) -> Tensor:
        return self.feed_forward(self.attention(x))


@dataclass
class BackboneFeatures:
    """What the backbone computed: conv stage maps (shallow first, full maps; masked positions hold values that
    visible positions never used), transformer tokens ([B, n, C]: the visible ones in masked mode, else all N in
    grid order), their indices [B, n] into the grid, and the token grid."""

    stage_maps: list[Tensor]
    tokens: Tensor
    token_index: Tensor
    grid: tuple[int, int, int]


class MiMBackbone(nn.Module):
    """Images [B, in_channels, D, H, W] (sides divisible by 2**n) -> `BackboneFeatures`."""

    def __init__(self, config: MiMBackboneConfig):
        super().__init__()
        config.validate()
        self.config = copy.deepcopy(config)
        dims = config.stage_dims
        self.patch_embeds = nn.ModuleList(PatchEmbed3d(c_in, c_out)
                                          for c_in, c_out in zip([config.in_channels, *dims[:-1]], dims))
        self.conv_stages = nn.ModuleList(
            nn.ModuleList(MaskedConvBlock(dim, config.conv_kernel, config.mlp_ratio) for _ in range(depth))
            for dim, depth in zip(dims[:-1], config.conv_depths))
        self.token_projection = nn.Linear(dims[-1], dims[-1])
        self.blocks = nn.ModuleList(TransformerBlock(dims[-1], config.num_heads, config.mlp_ratio)
                                    for _ in range(config.transformer_depth))

    def check_input(self, image: Tensor) -> tuple[int, int, int]:
        """The token grid of `image`; a wrong channel count or side raises ValueError."""
        p, c = self.config.patch_size, self.config.in_channels
        if image.dim() != 5 or image.shape[1] != c or any(s % p for s in image.shape[2:]):
            raise ValueError(f"MiMBackbone needs images [B, {c}, D, H, W] with sides divisible by {p}, got "
                             f"{list(image.shape)}")
        return tuple(int(s) // p for s in image.shape[2:])

    def forward(self, image: Tensor, visible: Tensor | None = None) -> BackboneFeatures:
        """`visible` [B, N] bool (N = tokens of the grid, row-major; the same count per sample) selects the
        tokens of masked mode; None uses all tokens."""
        grid = self.check_input(image)
        n_tokens = math.prod(grid)
        if visible is not None and tuple(visible.shape) != (image.shape[0], n_tokens):
            raise ValueError(f"visible must be [B, {n_tokens}] for a {list(grid)} token grid, got "
                             f"{list(visible.shape)}")
        x, maps = image, []
        for stage, (embed, blocks) in enumerate(zip(self.patch_embeds, self.conv_stages)):
            x = embed(x)
            gate = None if visible is None else self._gate(visible, grid, 2 ** (self.config.num_stages - 1 - stage))
            for block in blocks:
                x = block(x, gate)
            maps.append(x)
        tokens = self.token_projection(self.patch_embeds[-1](x).flatten(2).transpose(1, 2))
        tokens = tokens + sincos_position_embedding(grid, tokens.shape[-1], tokens.device).to(tokens.dtype)
        if visible is None:
            index = torch.arange(n_tokens, device=image.device).expand(image.shape[0], -1)
        else:
            index = visible_indices(visible)
            tokens = gather_tokens(tokens, index)
        for block in self.blocks:
            tokens = block(tokens)
        return BackboneFeatures(maps, tokens, index, grid)

    @staticmethod
    def _gate(visible: Tensor, grid, factor: int) -> Tensor:
        """The token visibility [B, N] as a [B, 1, *grid * factor] map (each token repeated factor^3 times)."""
        gate = visible.reshape(visible.shape[0], 1, *grid).float()
        for axis in (2, 3, 4):
            gate = gate.repeat_interleave(factor, dim=axis)
        return gate

    def feature_maps(self, image: Tensor) -> list[Tensor]:
        """All n stage outputs as maps, shallow first; the last is the transformer's tokens [B, C, *grid]."""
        features = self(image)
        deepest = features.tokens.transpose(1, 2).reshape(image.shape[0], -1, *features.grid)
        return [*features.stage_maps, deepest]
