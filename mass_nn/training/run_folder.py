"""Where a run lives: MASS_results/<Dataset>/<Trainer>__<plans>__<configuration>[__<tag>]/, the identity of a source
checkpoint, which every run and result folder built from a checkpoint carries in its name (so the results of
checkpoint A are never reused as checkpoint B's), and the tags of finetuning and probe runs built from it."""
from __future__ import annotations

import functools
import hashlib
import os
import re
from pathlib import Path

from mass_nn.errors import MassError


def run_folder_name(trainer: str, plans_name: str, configuration: str, tag: str = "") -> str:
    if tag and not re.fullmatch(r"[A-Za-z0-9_.-]+", tag):
        raise MassError(f"--tag {tag!r}: use letters, digits, '.', '_' or '-' only (it becomes part of a folder name)")
    name = f"{trainer}__{plans_name}__{configuration}"
    return f"{name}__{tag}" if tag else name


def run_folder(results_root: Path, dataset_name: str, trainer: str, plans_name: str, configuration: str,
               tag: str = "") -> Path:
    return Path(results_root) / dataset_name / run_folder_name(trainer, plans_name, configuration, tag)


CHECKPOINT_ID_LENGTH = 8


def checkpoint_identity(path: str | os.PathLike) -> str:
    """The first CHECKPOINT_ID_LENGTH hex digits of the SHA-256 of the checkpoint file's bytes."""
    path = Path(path)
    if not path.is_file():
        raise MassError(f"{path}: checkpoint not found; check the path")
    stat = path.stat()
    return _content_digest(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _content_digest(resolved: str, size: int, mtime_ns: int) -> str:
    """Cached per (file, size, modification time): a rewritten checkpoint is hashed again."""
    digest = hashlib.sha256()
    with open(resolved, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()[:CHECKPOINT_ID_LENGTH]


def finetune_run_tag(pretrained: str | os.PathLike | None, shots: int | None, seed: int, tag: str = "") -> str:
    """The run folder tag of a finetuning run: initialisation (the source checkpoint's identity), shots and seed,
    then the user's --tag."""
    base = f"{_initialisation(pretrained)}_{'all' if shots is None else shots}shot_seed{seed}"
    return f"{base}__{tag}" if tag else base


def probe_run_tag(pretrained: str | os.PathLike | None, train_fraction: float | None, seed: int,
                  finetune_encoder: bool, tag: str = "") -> str:
    """<pretrained-<checkpoint id>|scratch>_frac<F>_seed<S>[_full][_<--tag>]: runs that differ in these never
    share a folder."""
    parts = [_initialisation(pretrained), f"frac{1.0 if train_fraction is None else train_fraction:g}", f"seed{seed}"]
    if finetune_encoder:
        parts.append("full")
    return "_".join(parts + ([tag] if tag else []))


def _initialisation(pretrained: str | os.PathLike | None) -> str:
    """The first part of a downstream run's tag: pretrained-<source checkpoint identity>, or scratch."""
    return f"pretrained-{checkpoint_identity(pretrained)}" if pretrained else "scratch"
