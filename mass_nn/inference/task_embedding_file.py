"""Saving and loading encoded references, so a reference set is encoded once and reused for any number of
queries (the decoupled design of the in-context model). Tensors plus one JSON string, read weights-only."""
from __future__ import annotations

import json
import pickle
import zipfile
from pathlib import Path

import torch

from mass_nn.errors import MassError
from mass_nn.io.atomic import atomic_path
from mass_nn.networks.in_context.task_ops import TaskEmbedding, concat_task_embeddings

EMBEDDING_FORMAT = "mass_nn.task_embedding"


def save_task_embedding(path: str | Path, embedding: TaskEmbedding, label_names: list[str],
                        label_values: list[int], meta: dict, context_embedding: TaskEmbedding | None = None) -> None:
    """Write a [1, K, T, C_i] embedding with its labels and `meta` (checkpoint, references) atomically; the E
    context tasks (context_tasks.py), when given, are stored after the K labelled ones."""
    if len(label_names) != len(label_values) or embedding[0].shape[1] != len(label_values):
        raise ValueError(f"{embedding[0].shape[1]} tasks for labels {label_names} / {label_values}")
    context_count = 0 if context_embedding is None else int(context_embedding[0].shape[1])
    stages = embedding if context_embedding is None else concat_task_embeddings([embedding, context_embedding])
    payload = {"format": EMBEDDING_FORMAT, "stages": [t.detach().cpu() for t in stages],
               "meta_json": json.dumps({"label_names": list(label_names), "label_values": list(label_values),
                                        "context_tasks": context_count, **meta})}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_task_embedding(path: str | Path) -> tuple[TaskEmbedding, dict, TaskEmbedding | None]:
    """(labelled tasks' embedding, meta with label_names and label_values, context tasks' embedding or None);
    unreadable or foreign files raise MassError."""
    path = Path(path)
    if not path.is_file():
        raise MassError(f"{path}: task embedding file not found; write one with mass_predict --save-embedding")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError) as err:
        raise MassError(f"{path}: cannot be read ({type(err).__name__}); encode the references again") from err
    if not isinstance(payload, dict) or payload.get("format") != EMBEDDING_FORMAT:
        raise MassError(f"{path}: not a mass_nn task embedding file")
    stages, meta = list(payload["stages"]), json.loads(payload["meta_json"])
    labels = len(meta["label_values"])
    if int(stages[0].shape[1]) != labels + int(meta.get("context_tasks", 0)):
        raise MassError(f"{path}: holds {int(stages[0].shape[1])} tasks for {labels} labels and "
                        f"{meta.get('context_tasks', 0)} context tasks; encode the references again")
    if not meta.get("context_tasks"):
        return stages, meta, None
    return [t[:, :labels] for t in stages], meta, [t[:, labels:] for t in stages]
