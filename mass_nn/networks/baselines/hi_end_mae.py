"""Hi-End-MAE (Tang et al., MedIA 2025): a masked autoencoder on a plain 3D ViT whose decoder reads the encoder's
intermediate layers.

The encoder sees only the visible patches. The decoder's queries are all L tokens (projected final encoder
tokens at the visible places, a learned mask token elsewhere, plus a fixed sin-cos decoder positional embedding)
and the cls token; they pass `decoder_self_depth` self-attention blocks, then one cross-attention block per
hierarchical layer, deepest first, each also attending (keys/values = the projected cls + visible tokens of that
encoder block's output, un-normed) - "encoder-driven reconstruction" with "hierarchical dense decoding". A final
LayerNorm and a linear head give one p³·C vector per token.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from mass_nn.networks.baselines.vit import (TOKEN_INIT_STD, Mlp, SelfAttention, TransformerBlock, ViTConfig, ViTEncoder,
                                  default_hierarchy, init_transformer_weights, merge_heads,
                                  sincos_position_embedding, split_heads)
from mass_nn.networks.network_base import Network, NetworkConfig

CPU_PATCH_SIZE = 8  # divides every 3d_cpu side (multiples of 16); 64³ -> 512 tokens, the paper's token count


@dataclass
class HiEndMAEConfig(NetworkConfig):
    """The ViT encoder, the hierarchical layers (0-based block outputs, deepest first), the decoder and the mask
    ratio; `downstream_feature_size` is the UNETR feature size its weights are finetuned in."""

    encoder: ViTConfig
    hier_layers: list[int] = field(default_factory=lambda: [9, 6, 3])
    decoder_dim: int = 528
    decoder_heads: int = 16
    decoder_self_depth: int = 2
    decoder_mlp_ratio: int = 4
    mask_ratio: float = 0.75
    downstream_feature_size: int = 32


    @classmethod
    def paper(cls, in_channels: int = 1, input_size_zyx: list[int] | None = None,
              patch_size: int = 12) -> "HiEndMAEConfig":
        """The released ViT-L (`hi_end_mae_vit_large_12p`): 96³ input, patch 12 (8³ tokens), dim 1536, 12 blocks,
        16 heads, layers (9, 6, 3), decoder 528 / 16 heads, 2 self-attention blocks, mask 0.75."""
        encoder = ViTConfig(in_channels=in_channels, input_size_zyx=list(input_size_zyx or [96, 96, 96]),
                            patch_size=patch_size, dim=1536, depth=12, heads=16)
        return cls(encoder=encoder)

    @classmethod
    def cpu(cls, in_channels: int, input_size_zyx: list[int], patch_size: int = CPU_PATCH_SIZE) -> "HiEndMAEConfig":
        """A CPU-sized Hi-End-MAE with the paper's structure: dim 96, 4 blocks, 4 heads, layers (3, 2, 1), decoder
        48 / 4 heads with 2 self-attention blocks, UNETR feature size 16."""
        encoder = ViTConfig(in_channels=in_channels, input_size_zyx=list(input_size_zyx), patch_size=patch_size,
                            dim=96, depth=4, heads=4)
        return cls(encoder=encoder, hier_layers=default_hierarchy(4), decoder_dim=48, decoder_heads=4,
                   downstream_feature_size=16)

    def validate(self) -> None:
        """Raise ValueError naming every field that cannot build the network."""
        self.encoder.validate()
        problems = []
        if not self.hier_layers or any(not 0 <= i < self.encoder.depth for i in self.hier_layers):
            problems.append(f"hier_layers {self.hier_layers} must be block indices in [0, {self.encoder.depth})")
        if self.decoder_dim % 6 or self.decoder_dim % max(self.decoder_heads, 1) or self.decoder_heads < 1:
            problems.append(f"decoder_dim {self.decoder_dim} must be divisible by 6 and by decoder_heads "
                            f"{self.decoder_heads}")
        if self.decoder_self_depth < 0 or self.decoder_mlp_ratio < 1 or self.downstream_feature_size < 1:
            problems.append("decoder_self_depth >= 0, decoder_mlp_ratio >= 1 and downstream_feature_size >= 1")
        if not 0.0 < self.mask_ratio < 1.0:
            problems.append(f"mask_ratio must be in (0, 1), got {self.mask_ratio}")
        if problems:
            raise ValueError("invalid HiEndMAEConfig: " + "; ".join(problems))

    def num_visible(self, num_tokens: int) -> int:
        """Visible tokens per sample: int(L · (1 - mask_ratio)), at least 1."""
        return max(1, int(num_tokens * (1.0 - self.mask_ratio)))


class CrossAttention(nn.Module):
    """Multi-head attention of queries x [B, N, D] to a context [B, M, D] (query and key/value projections with
    biases, output projection)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, context: Tensor) -> Tensor:
        q = split_heads(self.q(x), self.heads)
        k, v = (split_heads(t, self.heads) for t in self.kv(context).chunk(2, dim=-1))
        return self.proj(merge_heads(torch.nn.functional.scaled_dot_product_attention(q, k, v)))


class CrossBlock(nn.Module):
    """x + SA(LN0 x); x + CA(LN1 x, context) (the context is used as given: no norm); x + MLP(LN2 x)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int, eps: float):
        super().__init__()
        self.norm0 = nn.LayerNorm(dim, eps=eps)
        self.self_attention = SelfAttention(dim, heads)
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.cross_attention = CrossAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, mlp_ratio)

    def forward(self, x: Tensor, context: Tensor) -> Tensor:
        x = x + self.self_attention(self.norm0(x))
        x = x + self.cross_attention(self.norm1(x), context)
        return x + self.mlp(self.norm2(x))


class HierarchicalDecoder(nn.Module):
    """(normed final encoder tokens [B, 1 + n, D], hierarchical hidden states deepest first, each [B, 1 + n, D],
    visible token indices [B, n], grid) -> predictions [B, 1 + L, p³·C] in token order (0 = cls)."""

    def __init__(self, config: HiEndMAEConfig):
        super().__init__()
        enc, dim, eps = config.encoder, config.decoder_dim, config.encoder.norm_eps
        self.dim = dim
        self.project_final = nn.Linear(enc.dim, dim)
        self.project_hidden = nn.ModuleList(nn.Linear(enc.dim, dim) for _ in config.hier_layers)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.self_blocks = nn.ModuleList(TransformerBlock(dim, config.decoder_heads, config.decoder_mlp_ratio, eps)
                                         for _ in range(config.decoder_self_depth))
        self.cross_blocks = nn.ModuleList(CrossBlock(dim, config.decoder_heads, config.decoder_mlp_ratio, eps)
                                          for _ in config.hier_layers)
        self.norm = nn.LayerNorm(dim, eps=eps)
        self.head = nn.Linear(dim, enc.patch_dim)

    def queries(self, final: Tensor, keep: Tensor, grid: tuple[int, int, int]) -> Tensor:
        """[B, 1 + L, dim]: cls, then every token in grid order - its projected encoder token when visible, the
        mask token otherwise - plus the decoder's sin-cos positional embedding (none on cls). Attention ignores
        token order, so this equals the reference's shuffled (visible first) sequence."""
        projected = self.project_final(final)
        b, num_tokens = projected.shape[0], grid[0] * grid[1] * grid[2]
        tokens = self.mask_token.expand(b, num_tokens, -1).to(projected.dtype).clone()
        tokens = tokens.scatter(1, keep[..., None].expand(-1, -1, self.dim), projected[:, 1:])
        tokens = tokens + sincos_position_embedding(grid, self.dim).to(tokens)[None]
        return torch.cat([projected[:, :1], tokens], dim=1)

    def forward(self, final: Tensor, hierarchy: list[Tensor], keep: Tensor, grid: tuple[int, int, int]) -> Tensor:
        x = self.queries(final, keep, grid)
        for block in self.self_blocks:
            x = block(x)
        for block, project, hidden in zip(self.cross_blocks, self.project_hidden, hierarchy):
            x = block(x, project(hidden))
        return self.head(self.norm(x))


class HiEndMAE(Network):
    """forward(volumes [B, C, Z, Y, X], noise [B, L]) -> (predictions [B, 1 + L, p³·C] in token order, token 0
    = cls; visible [B, L], 1 = visible, 0 = masked). The `num_visible` tokens with the smallest noise are visible,
    so the caller owns the randomness."""

    encoder_key_prefix = "encoder."
    config_class = HiEndMAEConfig
    downstream_network = "UNETRSegmenter"
    classification_network = "ViTClassifier"

    def __init__(self, config: HiEndMAEConfig):
        super().__init__()
        config.validate()
        self.config = copy.deepcopy(config)
        self.encoder = ViTEncoder(config.encoder)
        self.decoder = HierarchicalDecoder(config)
        self.decoder.apply(init_transformer_weights)
        nn.init.normal_(self.decoder.mask_token, std=TOKEN_INIT_STD)

    def grid(self, spatial) -> tuple[int, int, int]:
        return self.encoder.grid(spatial)

    def visible_tokens(self, noise: Tensor) -> Tensor:
        """Indices [B, n] of the visible tokens: the n = num_visible(L) smallest noise values per sample."""
        return torch.argsort(noise, dim=1)[:, : self.config.num_visible(noise.shape[1])]

    def forward(self, volumes: Tensor, noise: Tensor) -> tuple[Tensor, Tensor]:
        grid = self.grid(volumes.shape[2:])
        if tuple(noise.shape) != (volumes.shape[0], grid[0] * grid[1] * grid[2]):
            raise ValueError(f"noise must be [B, L] = [{volumes.shape[0]}, {grid[0] * grid[1] * grid[2]}], got "
                             f"{list(noise.shape)}")
        keep = self.visible_tokens(noise)
        final, hidden = self.encoder(volumes, keep)
        prediction = self.decoder(final, [hidden[i] for i in self.config.hier_layers], keep, grid)
        visible = torch.zeros_like(noise).scatter(1, keep, 1.0)
        return prediction, visible
