"""Operations on task embeddings (lists of per-stage tensors [B, K, T, C_i]): k-shot averaging, multi-class
concatenation, chunking and selection along the task axis K."""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from mass_nn.networks.in_context.task_encoder import TaskEmbedding

__all__ = ["TaskEmbedding", "average_task_embeddings", "concat_task_embeddings", "chunk_task_embedding",
           "select_tasks"]


def _check_same_stages(embeddings: Sequence[TaskEmbedding], what: str) -> None:
    if not embeddings:
        raise ValueError(f"{what}: need at least one task embedding")
    stage_counts = {len(e) for e in embeddings}
    if len(stage_counts) != 1:
        raise ValueError(f"{what}: embeddings have different numbers of stages {sorted(stage_counts)}")


def average_task_embeddings(embeddings: Sequence[TaskEmbedding]) -> TaskEmbedding:
    """k-shot ensemble: the element-wise mean, per stage, of embeddings with identical shapes (no re-normalising)."""
    _check_same_stages(embeddings, "average_task_embeddings")
    for stage, tensors in enumerate(zip(*embeddings)):
        if len({tuple(t.shape) for t in tensors}) != 1:
            shapes = [list(t.shape) for t in tensors]
            raise ValueError(f"average_task_embeddings: stage {stage} shapes differ: {shapes}")
    return [torch.stack(tensors).mean(dim=0) for tensors in zip(*embeddings)]


def concat_task_embeddings(embeddings: Sequence[TaskEmbedding]) -> TaskEmbedding:
    """Multi-class: concatenate the tasks of several embeddings (same batch size) along K, in the given order."""
    _check_same_stages(embeddings, "concat_task_embeddings")
    return [torch.cat(tensors, dim=1) for tensors in zip(*embeddings)]


def chunk_task_embedding(embedding: TaskEmbedding, max_tasks: int) -> list[TaskEmbedding]:
    """Split along K into consecutive embeddings of at most max_tasks (>= 1) tasks each, in order."""
    if max_tasks < 1:
        raise ValueError(f"chunk_task_embedding: max_tasks must be >= 1, got {max_tasks}")
    pieces = [t.split(max_tasks, dim=1) for t in embedding]
    return [list(chunk) for chunk in zip(*pieces)]


def select_tasks(embedding: TaskEmbedding, indices: Sequence[int] | Tensor) -> TaskEmbedding:
    """The embedding of the tasks at `indices` (any order, repeats allowed) along K."""
    index = torch.as_tensor(indices, dtype=torch.long, device=embedding[0].device).reshape(-1)
    return [t.index_select(1, index) for t in embedding]
