"""NT-Xent, SimCLR's contrastive loss (normalised temperature-scaled cross-entropy).

The 2N embeddings are two halves: row i and row i + N come from two crops of the same place (a positive pair);
every other row is a negative for both. Each row is a 2N - 1 way classification of its partner among all the
other rows by cosine similarity / temperature; the loss is the summed cross-entropy divided by 2N (the mean).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def partner_indices(num_embeddings: int, device: torch.device | None = None) -> torch.Tensor:
    """The positive of each row: i + N for the first half, i - N for the second (num_embeddings = 2N)."""
    half = num_embeddings // 2
    first = torch.arange(half, device=device)
    return torch.cat([first + half, first])


def nt_xent_loss(embeddings: torch.Tensor, temperature: float = 0.5) -> torch.Tensor:
    """Mean over the 2N rows of -log softmax(similarity / temperature)[partner], the row itself left out.

    `embeddings` (2N, d) are L2-normalised here, so the similarity is the cosine. With all similarities equal
    (a collapsed or a random high-dimensional embedding) the value is log(2N - 1).
    """
    if embeddings.dim() != 2 or embeddings.shape[0] < 2 or embeddings.shape[0] % 2:
        raise ValueError(f"need (2N, d) embeddings with N >= 1, got shape {list(embeddings.shape)}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    unit = F.normalize(embeddings.float(), dim=1)
    logits = unit @ unit.t() / temperature
    # a row is not its own negative: -inf on the diagonal drops it from the softmax
    self_pairs = torch.eye(logits.shape[0], dtype=torch.bool, device=logits.device)
    logits = logits.masked_fill(self_pairs, float("-inf"))
    return F.cross_entropy(logits, partner_indices(logits.shape[0], logits.device), reduction="sum") / logits.shape[0]
