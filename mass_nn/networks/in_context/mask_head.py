"""The dynamic mask head: per-task 1×1 classifiers generated from the decoder's task tokens."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from mass_nn.networks.attention import FeedForward


class DynamicMaskHead(nn.Module):
    """Maps each task's concatenated posterior tokens to a weight vector w_k ∈ R^{c0} and returns
    logits[b, k, voxel] = ⟨w_{b,k}, dense[b, :, voxel]⟩ (no bias).

    Weights come from LayerNorm(Σ C_i) → MLP(Σ → Σ → c0) → MLP(c0 → c0 → c0), GELU inside each MLP; the
    Linear layers are xavier-initialised with zero biases.
    """

    def __init__(self, posterior_dim: int, feature_dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(posterior_dim)
        self.mlp1 = nn.Sequential(nn.Linear(posterior_dim, posterior_dim), nn.GELU(),
                                  nn.Linear(posterior_dim, feature_dim))
        self.mlp2 = FeedForward(feature_dim, 1)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, dense: Tensor, posteriors: list[Tensor]) -> Tensor:
        """dense [B, c0, D, H, W], posteriors: per prior stage [B, K, C_i] → logits [B, K, D, H, W]."""
        weights = self.mlp2(self.mlp1(self.norm(torch.cat(posteriors, dim=-1))))
        return torch.einsum("bkc,bcdhw->bkdhw", weights.to(dense.dtype), dense)
