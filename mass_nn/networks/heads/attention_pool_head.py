"""Attention pooling classifier: one learned weight per voxel of a feature map, a weighted mean, then a linear layer.

As in the MASS release's classification probe: Conv1x1 C→hidden → ReLU → Conv1x1 hidden→1 gives a score per voxel,
a softmax over all voxels turns the scores into weights, the weighted sum of the features is one C-vector per
image, and Dropout → Linear(C → num_classes) gives the logits. Unlike global average pooling, the head can attend
to a small structure (a lesion) and ignore the rest of the volume.
"""
from __future__ import annotations

from torch import Tensor, nn


class AttentionPoolHead(nn.Module):
    """Logits [B, num_classes] from a feature map [B, in_channels, *spatial] (any number of spatial axes)."""

    def __init__(self, in_channels: int, num_classes: int, hidden_channels: int = 128, dropout: float = 0.1):
        super().__init__()
        if in_channels < 1 or num_classes < 1 or hidden_channels < 1 or not 0.0 <= dropout < 1.0:
            raise ValueError(f"AttentionPoolHead needs positive channel and class counts and dropout in [0, 1), got "
                             f"in_channels={in_channels}, num_classes={num_classes}, "
                             f"hidden_channels={hidden_channels}, dropout={dropout}")
        # 1x1 convolutions on the flattened voxels are linear layers applied per voxel
        self.score = nn.Sequential(nn.Conv1d(in_channels, hidden_channels, 1), nn.ReLU(inplace=True),
                                   nn.Conv1d(hidden_channels, 1, 1))
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(in_channels, num_classes)

    def attention_weights(self, features: Tensor) -> Tensor:
        """Weights [B, N] over the N voxels of `features`; each row is non-negative and sums to 1."""
        flat = self._flatten(features)
        # softmax in float32: under bf16 autocast thousands of voxels would otherwise round to equal weights
        return self.score(flat).squeeze(1).float().softmax(dim=-1).to(flat.dtype)

    def pool(self, features: Tensor) -> Tensor:
        """The attention-weighted mean feature vector [B, in_channels]."""
        weights = self.attention_weights(features)
        return (self._flatten(features) * weights.unsqueeze(1)).sum(dim=-1)

    def forward(self, features: Tensor) -> Tensor:
        return self.classifier(self.dropout(self.pool(features)))

    def _flatten(self, features: Tensor) -> Tensor:
        if features.dim() < 3:
            raise ValueError(f"features must be [B, C, *spatial], got shape {list(features.shape)}")
        return features.flatten(start_dim=2)
